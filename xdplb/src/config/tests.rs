//! Unit tests for config parsing and validation.

use std::{fmt::Write as _, net::Ipv4Addr};

use super::*;

const ORIGIN: &str = "test.toml";

/// Line 1 of most test configs.
const IFACES: &str = "interfaces = [\"lo\"]\n";

fn err(text: &str) -> ConfigError {
    match parse(text, ORIGIN) {
        Ok(cfg) => panic!("expected an error, got {cfg:#?}\nfor config:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts that the message contains each of `parts`.
fn assert_msg(e: &ConfigError, parts: &[&str]) {
    let msg = e.to_string();
    for part in parts {
        assert!(msg.contains(part), "message {msg:?} lacks {part:?}");
    }
}

fn line(n: u32) -> String {
    format!("{ORIGIN}:{n}:")
}

fn ok(text: &str) -> Config {
    match parse(text, ORIGIN) {
        Ok(cfg) => cfg,
        Err(e) => panic!("unexpected error: {e}\nfor config:\n{text}"),
    }
}

/// A one-service config (lines 1..=5) whose service `demo` has the given extra
/// lines (starting at line 5) before its single backend.
fn one_service(extra: &str) -> String {
    format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n{extra}[[service.backend]]\naddress = \"127.0.0.1:9876\"\n"
    )
}

/// A one-service config whose vip is `vip` (on line 4).
fn with_vip(vip: &str) -> String {
    format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"{vip}\"\n[[service.backend]]\naddress = \"127.0.0.1:9876\"\n"
    )
}

/// A one-service config with one backend whose body is `backend` (starting on line 6).
fn with_backend(backend: &str) -> String {
    format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n[[service.backend]]\n{backend}"
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

// ---- positions ---------------------------------------------------------------

#[test]
fn error_is_small() {
    // Keeps `Result<_, ConfigError>` cheap and clippy's `result_large_err` quiet
    // for every caller.
    assert!(
        size_of::<ConfigError>() <= 128,
        "{}",
        size_of::<ConfigError>()
    );
}

#[test]
fn line_col_counts_lines_and_characters() {
    let text = "ab\ncdé\nfg";
    assert_eq!(error::line_col(text, 0), (1, 1));
    assert_eq!(error::line_col(text, 3), (2, 1));
    assert_eq!(error::line_col(text, 8), (3, 1));
    assert_eq!(error::line_col(text, 9), (3, 2));
    // Inside the two-byte 'é' (bytes 5..7): clamped to its start, column 3.
    assert_eq!(error::line_col(text, 6), (2, 3));
    // Past the end.
    assert_eq!(error::line_col(text, 100), (3, 3));
}

// ---- TOML-level errors -------------------------------------------------------

#[test]
fn syntax_error_reports_line() {
    let e = err("interfaces = [\"lo\"]\n[[service]]\nname = \"demo\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_msg(&e, &[&line(3), "string"]);
}

#[test]
fn unknown_top_level_field() {
    let text = format!(
        "{IFACES}colour = \"blue\"\n{}",
        &one_service("")[IFACES.len()..]
    );
    let e = err(&text);
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "colour");
            assert_eq!(*table, "the top level");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["colour", &format!("{ORIGIN}:2:1"), "`interfaces`"]);
}

#[test]
fn unknown_service_field() {
    let e = err(&one_service("algorithm = \"rr\"\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "algorithm");
            assert_eq!(*table, "[[service]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "algorithm",
            &format!("{ORIGIN}:5:1"),
            "[[service]]",
            "`vip`",
        ],
    );
}

#[test]
fn unknown_backend_field() {
    let e = err(&with_backend("address = \"127.0.0.1:9876\"\nwieght = 2\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "wieght");
            assert_eq!(*table, "[[service.backend]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["wieght", &format!("{ORIGIN}:7:1"), "`weight`"]);
}

#[test]
fn unknown_limits_field() {
    let e = err(&format!("{IFACES}[limits]\nmax_flow = 5\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "max_flow");
            assert_eq!(*table, "[limits]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["max_flow", &line(3)]);
}

#[test]
fn misplaced_top_level_key_gets_a_hint() {
    // `xdp_mode` written after `[limits]` belongs to the limits table in TOML.
    let e = err(&format!(
        "{IFACES}[limits]\nmax_flows = 2048\nxdp_mode = \"native\"\n{}",
        &one_service("")[IFACES.len()..]
    ));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "xdp_mode");
            assert_eq!(*table, "[limits]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["xdp_mode", "belongs in the top level", &line(4)]);
}

#[test]
fn wrong_type_reports_line() {
    let e = err(&with_backend(
        "address = \"127.0.0.1:9876\"\nweight = \"1\"\n",
    ));
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_msg(&e, &[&line(7), "string"]);
}

// ---- top level ---------------------------------------------------------------

#[test]
fn missing_interfaces() {
    let text = &one_service("")[IFACES.len()..];
    let e = err(text);
    assert!(
        matches!(
            e,
            ConfigError::MissingField {
                field: "interfaces",
                ..
            }
        ),
        "{e:?}"
    );
    assert_msg(&e, &[ORIGIN, "interfaces"]);
}

#[test]
fn empty_interface_list() {
    let text = format!("interfaces = []\n{}", &one_service("")[IFACES.len()..]);
    let e = err(&text);
    assert!(matches!(e, ConfigError::NoInterfaces { .. }), "{e:?}");
    assert_msg(&e, &[&line(1), "interfaces"]);
}

#[test]
fn duplicate_interface() {
    let text = format!(
        "interfaces = [\"eth0\",\n  \"eth1\",\n  \"eth0\"]\n{}",
        &one_service("")[IFACES.len()..]
    );
    let e = err(&text);
    match &e {
        ConfigError::DuplicateInterface { name, .. } => assert_eq!(name, "eth0"),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["\"eth0\"", &format!("{ORIGIN}:3:3")]);
}

#[test]
fn invalid_interface_names() {
    for bad in ["", "a/b", "eth 0", ".", "..", "abcdefghijklmnop", "eth0:1"] {
        let text = format!(
            "interfaces = [\"lo\",\n\"{bad}\"]\n{}",
            &one_service("")[IFACES.len()..]
        );
        let e = err(&text);
        match &e {
            ConfigError::InvalidInterfaceName { name, .. } => assert_eq!(name, bad),
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[&format!("{bad:?}"), &line(2)]);
    }
    // 15 bytes is the maximum.
    let text = format!(
        "interfaces = [\"abcdefghijklmno\"]\n{}",
        &one_service("")[IFACES.len()..]
    );
    assert_eq!(ok(&text).interfaces, ["abcdefghijklmno"]);
}

#[test]
fn bad_xdp_mode() {
    let text = format!(
        "{IFACES}xdp_mode = \"turbo\"\n{}",
        &one_service("")[IFACES.len()..]
    );
    let e = err(&text);
    match &e {
        ConfigError::InvalidXdpMode { value, .. } => assert_eq!(value, "turbo"),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["\"turbo\"", &line(2), "\"native\""]);
}

#[test]
fn xdp_modes_parse() {
    for (text, mode) in [
        ("auto", XdpModeSetting::Auto),
        ("native", XdpModeSetting::Native),
        ("generic", XdpModeSetting::Generic),
    ] {
        let cfg = ok(&format!(
            "{IFACES}xdp_mode = \"{text}\"\n{}",
            &one_service("")[IFACES.len()..]
        ));
        assert_eq!(cfg.xdp_mode, mode);
    }
}

#[test]
fn no_services() {
    let e = err(IFACES);
    assert!(matches!(e, ConfigError::NoServices { .. }), "{e:?}");
    assert_msg(&e, &[ORIGIN, "[[service]]"]);
}

// ---- limits ------------------------------------------------------------------

fn with_limits(limits: &str) -> String {
    format!(
        "{IFACES}[limits]\n{limits}{}",
        &one_service("")[IFACES.len()..]
    )
}

#[test]
fn limits_out_of_range() {
    for (field, value, range) in [
        ("max_services", "0", "1..=65536"),
        ("max_services", "65537", "1..=65536"),
        ("max_services", "-1", "1..=65536"),
        ("max_backends_per_service", "0", "1..=65536"),
        ("max_backends_per_service", "70000", "1..=65536"),
        ("max_flows", "1023", "1024..=67108864"),
        ("max_flows", "67108865", "1024..=67108864"),
        ("max_flows", "9999999999999", "1024..=67108864"),
        ("max_lookup_entries", "1023", "1024..=67108864"),
        ("max_lookup_entries", "67108865", "1024..=67108864"),
        ("max_lookup_entries", "-4194304", "1024..=67108864"),
    ] {
        let e = err(&with_limits(&format!("{field} = {value}\n")));
        match &e {
            ConfigError::LimitOutOfRange {
                field: f, value: v, ..
            } => {
                assert_eq!(*f, field);
                assert_eq!(v.to_string(), value);
            }
            other => panic!("wrong variant for {field} = {value}: {other:?}"),
        }
        assert_msg(&e, &[field, &format!("got {value}"), range, &line(3)]);
    }
}

#[test]
fn limits_product_too_big() {
    let e = err(&with_limits(
        "max_services = 4096\nmax_backends_per_service = 1025\n",
    ));
    match &e {
        ConfigError::BackendTableTooLarge { product, .. } => assert_eq!(*product, 4096 * 1025),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "4096",
            "1025",
            "4198400",
            "4194304",
            "backend table",
            &line(4),
        ],
    );
    // Exactly at the limit is fine.
    let cfg = ok(&with_limits(
        "max_services = 4096\nmax_backends_per_service = 1024\n",
    ));
    assert_eq!(cfg.limits.max_services, 4096);
}

#[test]
fn limits_partial_table_uses_defaults() {
    let cfg = ok(&with_limits("max_flows = 2048\n"));
    assert_eq!(
        cfg.limits,
        Limits {
            max_flows: 2048,
            ..Limits::DEFAULT
        }
    );
}

#[test]
fn too_many_services() {
    let mut text = format!("{IFACES}[limits]\nmax_services = 2\n");
    for i in 0..3 {
        let _ = write!(
            text,
            "[[service]]\nname = \"s{i}\"\nvip = \"127.0.0.1:{}\"\n[[service.backend]]\naddress = \"127.0.0.1:{}\"\n",
            1000 + i,
            9000 + i
        );
    }
    let e = err(&text);
    match &e {
        ConfigError::TooManyServices { count, limit, .. } => {
            assert_eq!((*count, *limit), (3, 2));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    // The third service starts on line 14.
    assert_msg(
        &e,
        &[
            "3 services",
            "limit is 2",
            "[limits] max_services",
            &line(14),
        ],
    );
}

#[test]
fn too_many_backends() {
    let text = format!(
        "{IFACES}[limits]\nmax_backends_per_service = 2\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:1\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:2\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:3\"\n"
    );
    let e = err(&text);
    match &e {
        ConfigError::TooManyBackends {
            service,
            count,
            limit,
            ..
        } => {
            assert_eq!(service, "service \"demo\"");
            assert_eq!((*count, *limit), (3, 2));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "\"demo\"",
            "3 backends",
            "limit is 2",
            "[limits] max_backends_per_service",
            &line(11),
        ],
    );
}

// ---- services ----------------------------------------------------------------

#[test]
fn duplicate_service_name() {
    let text = format!(
        "{IFACES}[[service]]\nname = \"dns\"\nvip = \"127.0.0.1:53\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n\
         [[service]]\nname = \"dns\"\nvip = \"127.0.0.1:54\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n"
    );
    let e = err(&text);
    match &e {
        ConfigError::DuplicateServiceName {
            name,
            index,
            first_index,
            ..
        } => {
            assert_eq!(name, "dns");
            assert_eq!((*index, *first_index), (2, 1));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &["\"dns\"", "service #2", "service #1 (line 3)", &line(8)],
    );
}

#[test]
fn duplicate_vip() {
    let text = format!(
        "{IFACES}[[service]]\nname = \"a\"\nvip = \"127.0.0.1:53\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n\
         [[service]]\nname = \"b\"\nvip = \"127.0.0.1:53\"\nprotocol = \"udp\"\n[[service.backend]]\naddress = \"127.0.0.1:5354\"\n"
    );
    let e = err(&text);
    match &e {
        ConfigError::DuplicateVip {
            service,
            other,
            vip,
            protocol,
            ..
        } => {
            assert_eq!(service, "service \"b\"");
            assert_eq!(other, "service \"a\"");
            assert_eq!(*vip, local(53));
            assert_eq!(*protocol, Protocol::Udp);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "service \"a\" (line 4)",
            "service \"b\"",
            "127.0.0.1:53",
            "udp",
            &line(9),
        ],
    );
}

#[test]
fn same_port_on_different_addresses_is_fine() {
    let text = format!(
        "{IFACES}[[service]]\nname = \"a\"\nvip = \"127.0.0.1:53\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n\
         [[service]]\nname = \"b\"\nvip = \"0.0.0.0:53\"\n[[service.backend]]\naddress = \"127.0.0.1:5354\"\n"
    );
    assert_eq!(ok(&text).services.len(), 2);
}

#[test]
fn invalid_service_name() {
    for bad in ["", "has space", "a/b", &"x".repeat(65)] {
        let e = err(&format!(
            "{IFACES}[[service]]\nname = \"{bad}\"\nvip = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n"
        ));
        match &e {
            ConfigError::InvalidServiceName { name, index, .. } => {
                assert_eq!(name, bad);
                assert_eq!(*index, 1);
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[&format!("{bad:?}"), &line(3), "service #1"]);
    }
    let long = "A-z_0.9".repeat(9) + "x"; // 64 characters
    let cfg = ok(&format!(
        "{IFACES}[[service]]\nname = \"{long}\"\nvip = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n"
    ));
    assert_eq!(cfg.services[0].name, long);
}

#[test]
fn missing_service_fields() {
    // No name: the service is named by index, at its header line.
    let e = err(&format!(
        "{IFACES}[[service]]\nname = \"a\"\nvip = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n\
         [[service]]\nvip = \"127.0.0.1:3\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n"
    ));
    assert!(
        matches!(e, ConfigError::MissingField { field: "name", .. }),
        "{e:?}"
    );
    assert_msg(&e, &["service #2", "`name`", &line(7)]);

    // No vip.
    let e = err(&format!(
        "{IFACES}[[service]]\nname = \"a\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n"
    ));
    assert!(
        matches!(e, ConfigError::MissingField { field: "vip", .. }),
        "{e:?}"
    );
    assert_msg(&e, &["service \"a\"", "`vip`", &line(2)]);

    // No backend address.
    let e = err(&with_backend("weight = 3\n"));
    assert!(
        matches!(
            e,
            ConfigError::MissingField {
                field: "address",
                ..
            }
        ),
        "{e:?}"
    );
    assert_msg(&e, &["service \"demo\" backend #1", "`address`", &line(5)]);
}

#[test]
fn invalid_vip_addresses() {
    for (bad, reason) in [
        ("127.0.0.300:1", "not a valid IPv4 address"),
        ("nonsense", "\"nonsense\""),
        ("127.0.0.1", "port is missing"),
        ("127.0.0.1:", "port after ':' is missing"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("127.0.0.1:dns", "\"dns\" is not a number"),
        ("localhost:53", "host names are not resolved"),
        (":53", "address before ':' is missing"),
        ("", "empty"),
    ] {
        let e = err(&with_vip(bad));
        match &e {
            ConfigError::InvalidVip { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[&format!("{bad:?}"), reason, &line(4), "IPV4:PORT"]);
    }
}

/// An IPv6 vip with IPv6 backends is accepted, loopback (the tutorial on `lo`) and the
/// wildcard included, as IPv4 accepts 127.0.0.1 and 0.0.0.0.
#[test]
fn ipv6_vip_is_accepted() {
    for (vip, backend) in [
        ("[::1]:53", "[::1]:5353"),
        ("[2001:db8::1]:9875", "[2001:db8:1::5]:53"),
        ("[::]:9875", "[2001:db8:1::5]:9875"),
    ] {
        let cfg = ok(&format!(
            "{IFACES}[[service]]\nname = \"demo\"\nvip = \"{vip}\"\n[[service.backend]]\naddress = \"{backend}\"\n"
        ));
        let svc = &cfg.services[0];
        assert_eq!(svc.vip, vip.parse::<SocketAddr>().unwrap());
        assert_eq!(svc.vip.to_string(), vip, "shown as written");
        assert_eq!(
            svc.backends[0].address,
            backend.parse::<SocketAddr>().unwrap()
        );
    }
    let cfg = ok(&format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[::]:9875\"\n[[service.backend]]\naddress = \"[::1]:9876\"\n"
    ));
    assert!(cfg.describe().contains("any address"), "{}", cfg.describe());
}

/// IPv6 written without brackets, with a scope, IPv4-mapped or multicast is refused with a
/// reason saying how to write it.
#[test]
fn ipv6_vip_problems_are_explained() {
    for (bad, reason) in [
        (
            "::1",
            "written in brackets before its port, as \"[::1]:PORT\"",
        ),
        ("2001:db8::1:53", "\"[2001:db8::1:53]:PORT\""),
        ("[2001:db8::1]", "\":PORT\" after ']' is missing"),
        ("[2001:db8::1", "no closing ']'"),
        ("[2001:db8::zz]:53", "not a valid IPv6 address"),
        ("[2001:db8::1]:0", "port 0"),
        ("[2001:db8::1]:99999", "port 99999 is out of range"),
        ("[fe80::1%2]:53", "scope %2 is not supported"),
        (
            "[::ffff:10.0.0.1]:53",
            "write the IPv4 address as IPv4 (\"10.0.0.1:53\")",
        ),
        ("[ff02::1]:53", "multicast address (ff00::/8)"),
        ("[fe80::1]:53", "link-local address (fe80::/10)"),
    ] {
        let e = err(&with_vip(bad));
        match &e {
            ConfigError::InvalidVip { value, .. } => assert_eq!(value, bad),
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[reason, &line(4), "[IPV6]:PORT"]);
    }
}

#[test]
fn unspecified_vip_is_accepted() {
    let cfg = ok(&with_vip("0.0.0.0:9875"));
    assert_eq!(
        cfg.services[0].vip,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9875))
    );
    assert!(cfg.describe().contains("any address"));
}

#[test]
fn tcp_is_not_supported_yet() {
    let e = err(&one_service("protocol = \"tcp\"\n"));
    match &e {
        ConfigError::UnsupportedProtocol { value, .. } => assert_eq!(value, "tcp"),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["\"tcp\"", "not supported yet", &line(5)]);

    let e = err(&one_service("protocol = \"sctp\"\n"));
    match &e {
        ConfigError::InvalidProtocol { value, .. } => assert_eq!(value, "sctp"),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["\"sctp\"", "expected \"udp\"", &line(5)]);
}

#[test]
fn bad_timeouts() {
    for (bad, reason) in [
        ("0s", "shorter than the minimum of 1s"),
        ("999ms", "shorter than the minimum of 1s"),
        ("banana", "not a duration"),
        ("2d", "longer than the maximum of 24h"),
        ("24h 1s", "longer than the maximum of 24h"),
        ("", "not a duration"),
    ] {
        let e = err(&one_service(&format!("flow_idle_timeout = \"{bad}\"\n")));
        match &e {
            ConfigError::InvalidTimeout { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[&format!("{bad:?}"), reason, &line(5), "flow_idle_timeout"],
        );
    }
}

#[test]
fn timeout_bounds_are_inclusive() {
    for (text, secs) in [("1s", 1), ("24h", 86_400), ("1h 30m", 5400), ("1500ms", 1)] {
        let cfg = ok(&one_service(&format!("flow_idle_timeout = \"{text}\"\n")));
        assert_eq!(cfg.services[0].flow_idle_timeout.as_secs(), secs, "{text}");
    }
}

#[test]
fn service_without_backends() {
    // No backend key at all: reported at the service header.
    let e = err(&format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n"
    ));
    match &e {
        ConfigError::NoBackends { service, .. } => assert_eq!(service, "service \"demo\""),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["\"demo\"", "no backends", &line(2)]);

    // An explicitly empty list: reported at the list.
    let e = err(&one_service("backend = []\n")
        .replace("[[service.backend]]\naddress = \"127.0.0.1:9876\"\n", ""));
    assert!(matches!(e, ConfigError::NoBackends { .. }), "{e:?}");
    assert_msg(&e, &["\"demo\"", "no backends", &format!("{ORIGIN}:5:11")]);
}

// ---- backends ----------------------------------------------------------------

#[test]
fn invalid_weights() {
    for bad in ["0", "65536", "-1", "70000"] {
        let e = err(&with_backend(&format!(
            "address = \"127.0.0.1:9876\"\nweight = {bad}\n"
        )));
        match &e {
            ConfigError::InvalidWeight {
                value,
                index,
                address,
                service,
                ..
            } => {
                assert_eq!(value.to_string(), bad);
                assert_eq!(*index, 1);
                assert_eq!(address, "127.0.0.1:9876");
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("weight must be 1..=65535, got {bad}"),
                "backend #1",
                "\"127.0.0.1:9876\"",
                &format!("{ORIGIN}:7:10"),
            ],
        );
    }
    let cfg = ok(&with_backend(
        "address = \"127.0.0.1:9876\"\nweight = 65535\n",
    ));
    assert_eq!(cfg.services[0].backends[0].weight, 65535);
}

#[test]
fn invalid_backend_addresses() {
    for (bad, reason) in [
        ("0.0.0.0:9876", "0.0.0.0 is not a host address"),
        ("255.255.255.255:9876", "broadcast"),
        ("239.1.2.3:9876", "multicast"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1", "port is missing"),
        ("backend.example:80", "host names are not resolved"),
    ] {
        let e = err(&with_backend(&format!("address = \"{bad}\"\n")));
        match &e {
            ConfigError::InvalidBackendAddress { value, index, .. } => {
                assert_eq!(value, bad);
                assert_eq!(*index, 1);
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("{bad:?}"),
                reason,
                "backend #1",
                "\"demo\"",
                &line(6),
            ],
        );
    }
}

/// A backend of the other family than the vip is refused, naming the field, the value, the
/// line and why (no NAT64/NAT46).
#[test]
fn backend_of_the_other_family_is_refused() {
    let e = err(&with_backend("address = \"[::1]:9876\"\n"));
    match &e {
        ConfigError::MixedFamilies {
            what, value, vip, ..
        } => {
            assert_eq!(what, "service \"demo\" backend #1 address");
            assert_eq!(value, "[::1]:9876");
            assert_eq!(*vip, local(9875));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "service \"demo\" backend #1 address \"[::1]:9876\" is IPv6",
            "vip 127.0.0.1:9875 is IPv4",
            "NAT64",
            &line(6),
        ],
    );
    // And the other way round, on the second backend.
    let e = err(&format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:53\"\n[[service.backend]]\naddress = \"[2001:db8::2]:53\"\n[[service.backend]]\naddress = \"10.0.0.2:53\"\n"
    ));
    assert_msg(
        &e,
        &[
            "backend #2 address \"10.0.0.2:53\" is IPv4",
            "vip [2001:db8::1]:53 is IPv6",
            &line(8),
        ],
    );
}

/// IPv6 backends get the same refusals as IPv4 ones.
#[test]
fn ipv6_backend_problems() {
    let v6 = |backend: &str| {
        format!(
            "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:53\"\n[[service.backend]]\naddress = \"{backend}\"\n"
        )
    };
    for (bad, reason) in [
        ("[::]:53", ":: is not a host address"),
        ("[ff02::1]:53", "ff02::1 is a multicast address (ff00::/8)"),
        ("[::ffff:10.0.0.1]:53", "IPv4-mapped"),
        ("2001:db8::2:53", "written in brackets"),
        ("[fe80::2]:53", "link-local address (fe80::/10)"),
    ] {
        let e = err(&v6(bad));
        match &e {
            ConfigError::InvalidBackendAddress { value, .. } => assert_eq!(value, bad),
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[reason, &line(6)]);
    }
    // Loopback is for local mode only, in both families.
    let e = err(&format!(
        "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:53\"\nforwarding = \"nat\"\n[[service.backend]]\naddress = \"[::1]:53\"\n"
    ));
    assert!(matches!(e, ConfigError::NatLoopbackBackend { .. }), "{e:?}");
}

#[test]
fn duplicate_backend() {
    let e = err(&with_backend(
        "address = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\nweight = 2\n",
    ));
    match &e {
        ConfigError::DuplicateBackend {
            index,
            first_index,
            address,
            ..
        } => {
            assert_eq!((*index, *first_index), (3, 1));
            assert_eq!(*address, local(9876));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "127.0.0.1:9876",
            "backend #3",
            "backend #1 (line 6)",
            &line(10),
        ],
    );
}

/// One `[[service]]` table: `extra` lines (each ending in a newline) after the vip, then one
/// backend table per address.
fn svc(name: &str, vip: &str, extra: &str, backends: &[&str]) -> String {
    let mut out = format!("[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\n{extra}");
    for b in backends {
        let _ = writeln!(out, "[[service.backend]]\naddress = \"{b}\"");
    }
    out
}

/// `ORIGIN:LINE:COL` of the `nth` (0-based) occurrence of `needle` in `text`, found
/// independently of the parser.
fn pos(text: &str, needle: &str, nth: usize) -> String {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in:\n{text}"))
        .0;
    let (line, col) = error::line_col(text, offset);
    format!("{ORIGIN}:{line}:{col}")
}

const NAT: &str = "forwarding = \"nat\"\n";
const FULLNAT: &str = "forwarding = \"fullnat\"\nfullnat_source = \"10.86.0.1\"\n";
const DSR_L2: &str = "forwarding = \"dsr-l2\"\n";

fn ipip(prefix: &str) -> String {
    format!("forwarding = \"dsr-ipip\"\nencap_source = \"{prefix}\"\n")
}

#[test]
fn configs_that_cannot_run_are_rejected_at_the_offending_value() {
    /// (what, config, the value the error must point at (needle, occurrence), message parts)
    type Case<'a> = (&'a str, String, (&'a str, usize), Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "metrics_listen equal to api_listen",
            format!(
                "{IFACES}metrics_listen = \"127.0.0.1:9100\"\napi_listen = \"127.0.0.1:9100\"\n{}",
                svc("a", "10.9.0.1:53", "", &["127.0.0.1:53"])
            ),
            ("\"127.0.0.1:9100\"", 1),
            vec![
                "metrics_listen 127.0.0.1:9100",
                "api_listen 127.0.0.1:9100",
                "same socket address",
                "different ports",
            ],
        ),
        (
            "metrics_listen on every address, api_listen's port",
            format!(
                "{IFACES}api_listen = \"127.0.0.1:9180\"\nmetrics_listen = \"0.0.0.0:9180\"\n{}",
                svc("a", "10.9.0.1:53", "", &["127.0.0.1:53"])
            ),
            ("\"0.0.0.0:9180\"", 0),
            vec!["0.0.0.0:9180", "covers"],
        ),
        (
            "encap_source 0.0.0.0/0",
            format!(
                "{IFACES}{}",
                svc("i", "10.9.0.1:53", &ipip("0.0.0.0/0"), &["10.1.0.2:53"])
            ),
            ("\"0.0.0.0/0\"", 0),
            vec![
                "encap_source \"0.0.0.0/0\"",
                "/0 is shorter than /8",
                "/8 to /32",
            ],
        ),
        (
            "encap_source shorter than /8",
            format!(
                "{IFACES}{}",
                svc("i", "10.9.0.1:53", &ipip("8.0.0.0/5"), &["10.1.0.2:53"])
            ),
            ("\"8.0.0.0/5\"", 0),
            vec!["/5 is shorter than /8"],
        ),
        (
            "encap_source in 0.0.0.0/8",
            format!(
                "{IFACES}{}",
                svc("i", "10.9.0.1:53", &ipip("0.0.0.0/8"), &["10.1.0.2:53"])
            ),
            ("\"0.0.0.0/8\"", 0),
            vec!["0.0.0.0/8 is not a source"],
        ),
        (
            "encap_source on loopback",
            format!(
                "{IFACES}{}",
                svc("i", "10.9.0.1:53", &ipip("127.1.0.0/16"), &["10.1.0.2:53"])
            ),
            ("\"127.1.0.0/16\"", 0),
            vec!["loopback"],
        ),
        (
            "encap_source in multicast",
            format!(
                "{IFACES}{}",
                svc("i", "10.9.0.1:53", &ipip("239.0.0.0/8"), &["10.1.0.2:53"])
            ),
            ("\"239.0.0.0/8\"", 0),
            vec!["multicast"],
        ),
        (
            "multicast vip",
            format!(
                "{IFACES}{}",
                svc("m", "224.0.0.251:5353", "", &["127.0.0.1:53"])
            ),
            ("\"224.0.0.251:5353\"", 0),
            vec![
                "invalid vip \"224.0.0.251:5353\"",
                "multicast",
                "0.0.0.0 for any address",
            ],
        ),
        (
            "broadcast vip",
            format!(
                "{IFACES}{}",
                svc("b", "255.255.255.255:67", "", &["127.0.0.1:67"])
            ),
            ("\"255.255.255.255:67\"", 0),
            vec!["broadcast"],
        ),
        (
            "vip in 0.0.0.0/8 other than the wildcard",
            format!("{IFACES}{}", svc("z", "0.1.2.3:53", "", &["127.0.0.1:53"])),
            ("\"0.1.2.3:53\"", 0),
            vec!["0.0.0.0/8", "0.0.0.0 alone is the wildcard"],
        ),
        (
            "nat backend equal to its vip",
            format!(
                "{IFACES}{}",
                svc("n", "10.9.0.1:53", NAT, &["10.1.0.2:53", "10.9.0.1:53"])
            ),
            ("\"10.9.0.1:53\"", 1),
            vec![
                "service \"n\"",
                "backend 10.9.0.1:53",
                "own vip address 10.9.0.1:",
                "loop",
            ],
        ),
        (
            "nat backend on its vip address, another port",
            format!(
                "{IFACES}{}",
                svc("n", "10.9.0.1:53", NAT, &["10.9.0.1:5353"])
            ),
            ("\"10.9.0.1:5353\"", 0),
            vec!["backend 10.9.0.1:5353", "own vip address"],
        ),
        (
            "fullnat backend equal to its vip",
            format!(
                "{IFACES}{}",
                svc("f", "10.9.0.1:53", FULLNAT, &["10.9.0.1:53"])
            ),
            ("\"10.9.0.1:53\"", 1),
            vec!["fullnat", "own vip address"],
        ),
        (
            "fullnat_source equal to its own vip",
            format!(
                "{IFACES}{}",
                svc("f", "10.86.0.1:53", FULLNAT, &["10.1.0.2:53"])
            ),
            ("\"10.86.0.1\"", 0),
            vec![
                "fullnat_source 10.86.0.1",
                "vip address of service \"f\" itself (line 4)",
            ],
        ),
        (
            "fullnat_source equal to another service's vip",
            format!(
                "{IFACES}{}{}",
                svc("f", "10.9.0.1:53", FULLNAT, &["10.1.0.2:53"]),
                svc("other", "10.86.0.1:123", "", &["127.0.0.1:123"])
            ),
            ("\"10.86.0.1\"", 0),
            vec![
                "fullnat_source 10.86.0.1",
                "vip address of service \"other\" (line 11)",
            ],
        ),
        (
            "wildcard port inside the default fullnat_ports",
            format!(
                "{IFACES}{}{}",
                svc("f", "10.9.0.1:53", FULLNAT, &["10.1.0.2:53"]),
                svc("any", "0.0.0.0:30000", "", &["127.0.0.1:30000"])
            ),
            ("\"0.0.0.0:30000\"", 0),
            vec![
                "service \"any\"",
                "0.0.0.0:30000",
                "fullnat_ports 20000-59999 of service \"f\" (line 6)",
            ],
        ),
        (
            "wildcard port inside explicit fullnat_ports",
            format!(
                "{IFACES}{}{}",
                svc("any", "0.0.0.0:40005", "", &["127.0.0.1:5000"]),
                svc(
                    "f",
                    "10.9.0.1:53",
                    &format!("{FULLNAT}fullnat_ports = \"40000-40009\"\n"),
                    &["10.1.0.2:53"]
                )
            ),
            ("\"0.0.0.0:40005\"", 0),
            vec!["fullnat_ports 40000-40009 of service \"f\" (line 12)"],
        ),
        (
            "two local services with one backend",
            format!(
                "{IFACES}{}{}",
                svc("a", "127.0.0.1:53", "", &["127.0.0.1:5353"]),
                svc(
                    "b",
                    "127.0.0.1:54",
                    "",
                    &["127.0.0.1:5354", "127.0.0.1:5353"]
                )
            ),
            ("\"127.0.0.1:5353\"", 1),
            vec![
                "service \"b\" and service \"a\" (line 6)",
                "backend 127.0.0.1:5353",
                "could not be told apart",
                "fullnat, dsr-l2 and dsr-ipip services may share",
            ],
        ),
        (
            "a local and a nat service with one backend",
            format!(
                "{IFACES}{}{}",
                svc("l", "10.9.0.1:53", "", &["10.1.0.2:53"]),
                svc("n", "10.9.0.2:53", NAT, &["10.1.0.2:53"])
            ),
            ("\"10.1.0.2:53\"", 1),
            vec!["service \"n\" and service \"l\"", "could not be told apart"],
        ),
    ];
    for (what, text, (needle, nth), parts) in &cases {
        let e = err(text);
        let mut parts = parts.clone();
        let at = pos(text, needle, *nth);
        parts.push(&at);
        let msg = e.to_string();
        for part in &parts {
            assert!(msg.contains(part), "{what}: message {msg:?} lacks {part:?}");
        }
    }
}

#[test]
fn what_the_rules_between_services_still_allow() {
    for (what, text) in [
        (
            "one backend in a local and in fullnat and dsr services",
            format!(
                "{IFACES}{}{}{}{}",
                svc("l", "10.9.0.1:53", "", &["10.1.0.2:53"]),
                svc("f1", "10.9.0.2:53", FULLNAT, &["10.1.0.2:53"]),
                svc("f2", "10.9.0.3:53", FULLNAT, &["10.1.0.2:53"]),
                svc("d", "10.9.0.4:53", DSR_L2, &["10.1.0.2:53"])
            ),
        ),
        (
            "two local services on one backend address, other ports",
            format!(
                "{IFACES}{}{}",
                svc("a", "127.0.0.1:53", "", &["127.0.0.1:5353"]),
                svc("b", "127.0.0.1:54", "", &["127.0.0.1:5354"])
            ),
        ),
        (
            "a wildcard port outside every fullnat_ports range",
            format!(
                "{IFACES}{}{}",
                svc("f", "10.9.0.1:53", FULLNAT, &["10.1.0.2:53"]),
                svc("any", "0.0.0.0:60000", "", &["127.0.0.1:5000"])
            ),
        ),
        (
            "metrics and api on one address, other ports",
            format!(
                "{IFACES}metrics_listen = \"0.0.0.0:9100\"\napi_listen = \"127.0.0.1:9180\"\n{}",
                svc("a", "10.9.0.1:53", "", &["127.0.0.1:53"])
            ),
        ),
        (
            "the widest and narrowest encap_source",
            format!(
                "{IFACES}{}{}",
                svc("i", "10.9.0.1:53", &ipip("10.0.0.0/8"), &["10.1.0.2:53"]),
                svc("j", "10.9.0.2:53", &ipip("10.200.0.7/32"), &["10.1.0.2:53"])
            ),
        ),
    ] {
        match parse(&text, ORIGIN) {
            Ok(cfg) => assert!(
                cfg.services.len() >= 2 || what.starts_with("metrics"),
                "{what}"
            ),
            Err(e) => panic!("{what}: {e}\n{text}"),
        }
    }
}

// ---- hash seed ---------------------------------------------------------------

fn with_hash_seed(value: &str) -> String {
    format!(
        "{IFACES}hash_seed = {value}\n{}",
        &one_service("")[IFACES.len()..]
    )
}

#[test]
fn hash_seed_parses() {
    assert_eq!(ok(&one_service("")).hash_seed, 0x5eed_1b1b);
    for (text, seed) in [("1234", 1234), ("0", 0), ("4294967295", u32::MAX)] {
        assert_eq!(ok(&with_hash_seed(text)).hash_seed, seed, "{text}");
    }
}

#[test]
fn hash_seed_out_of_range() {
    for bad in ["-1", "4294967296", "-9223372036854775808"] {
        let e = err(&with_hash_seed(bad));
        match &e {
            ConfigError::InvalidHashSeed { value, .. } => assert_eq!(value.to_string(), bad),
            other => panic!("wrong variant for {bad}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("got {bad}"),
                "hash_seed must be 0..=4294967295",
                "ECMP",
                &format!("{ORIGIN}:2:13"),
            ],
        );
    }
    let e = err(&with_hash_seed("\"1234\""));
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_msg(&e, &[&line(2)]);
}

// ---- schedulers and hashing --------------------------------------------------

#[test]
fn schedulers_parse() {
    for (text, scheduler) in [
        ("maglev", Scheduler::Maglev),
        ("round-robin", Scheduler::RoundRobin),
        ("weighted-round-robin", Scheduler::WeightedRoundRobin),
        ("random", Scheduler::Random),
        ("source-hash", Scheduler::SourceHash),
    ] {
        let cfg = ok(&one_service(&format!("scheduler = \"{text}\"\n")));
        assert_eq!(cfg.services[0].scheduler, scheduler, "{text}");
        assert_eq!(scheduler.to_string(), text);
    }
}

#[test]
fn scheduling_defaults() {
    let svc = &ok(&one_service("")).services[0];
    assert_eq!(svc.scheduler, Scheduler::Maglev);
    assert_eq!(svc.hash, HashFields::FiveTuple);
    assert_eq!(svc.maglev_table_size, 65537);
}

#[test]
fn unknown_scheduler() {
    let e = err(&one_service("scheduler = \"least-conn\"\n"));
    match &e {
        ConfigError::InvalidScheduler { value, service, .. } => {
            assert_eq!(value, "least-conn");
            assert_eq!(service, "service \"demo\"");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "\"least-conn\"",
            "\"demo\"",
            "\"maglev\"",
            "\"weighted-round-robin\"",
            "\"source-hash\"",
            &format!("{ORIGIN}:5:13"),
        ],
    );
}

#[test]
fn hash_values_parse() {
    for (text, fields) in [
        ("5-tuple", HashFields::FiveTuple),
        ("source-ip", HashFields::SourceIp),
        ("source-ip-port", HashFields::SourceIpPort),
    ] {
        let cfg = ok(&one_service(&format!("hash = \"{text}\"\n")));
        assert_eq!(cfg.services[0].hash, fields, "{text}");
        assert_eq!(fields.to_string(), text);
        let cfg = ok(&one_service(&format!(
            "scheduler = \"maglev\"\nhash = \"{text}\"\n"
        )));
        assert_eq!(cfg.services[0].hash, fields, "{text}");
    }
}

#[test]
fn bad_hash_value() {
    let e = err(&one_service("hash = \"dst-ip\"\n"));
    match &e {
        ConfigError::InvalidHash { value, service, .. } => {
            assert_eq!(value, "dst-ip");
            assert_eq!(service, "service \"demo\"");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "\"dst-ip\"",
            "\"5-tuple\"",
            "\"source-ip-port\"",
            &format!("{ORIGIN}:5:8"),
        ],
    );
}

#[test]
fn hash_with_non_hashing_scheduler_is_rejected() {
    for (text, scheduler) in [
        ("round-robin", Scheduler::RoundRobin),
        ("weighted-round-robin", Scheduler::WeightedRoundRobin),
        ("random", Scheduler::Random),
    ] {
        let e = err(&one_service(&format!(
            "scheduler = \"{text}\"\nhash = \"source-ip\"\n"
        )));
        match &e {
            ConfigError::HashNotApplicable {
                scheduler: s,
                value,
                ..
            } => {
                assert_eq!(*s, scheduler);
                assert_eq!(value, "source-ip");
            }
            other => panic!("wrong variant for {text}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                "\"source-ip\"",
                &format!("\"{text}\" does not hash"),
                "only applies to the \"maglev\" and \"source-hash\" schedulers",
                &line(6),
            ],
        );
    }
}

#[test]
fn source_hash_with_other_fields_is_rejected() {
    for bad in ["5-tuple", "source-ip-port"] {
        let e = err(&one_service(&format!(
            "scheduler = \"source-hash\"\nhash = \"{bad}\"\n"
        )));
        match &e {
            ConfigError::SourceHashFields { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("{bad:?}"),
                "source-hash",
                "only the client address",
                &line(6),
            ],
        );
    }
}

#[test]
fn source_hash_defaults_to_source_ip() {
    let cfg = ok(&one_service("scheduler = \"source-hash\"\n"));
    assert_eq!(cfg.services[0].hash, HashFields::SourceIp);
    let cfg = ok(&one_service(
        "scheduler = \"source-hash\"\nhash = \"source-ip\"\n",
    ));
    assert_eq!(cfg.services[0].hash, HashFields::SourceIp);
}

// ---- maglev table size -------------------------------------------------------

/// A one-service config with `n` backends (ports 1..=n) and extra service lines
/// starting at line 5.
fn with_backends(n: u16, extra: &str) -> String {
    let mut text =
        format!("{IFACES}[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n{extra}");
    for port in 1..=n {
        let _ = write!(
            text,
            "[[service.backend]]\naddress = \"127.0.0.1:{port}\"\n"
        );
    }
    text
}

#[test]
fn maglev_table_size_parses() {
    for extra in [
        "maglev_table_size = 131071\n",
        "scheduler = \"maglev\"\nmaglev_table_size = 131071\n",
    ] {
        let cfg = ok(&one_service(extra));
        assert_eq!(cfg.services[0].maglev_table_size, 131_071, "{extra}");
    }
    // 100 entries per backend is enough.
    let cfg = ok(&with_backends(3, "maglev_table_size = 307\n"));
    assert_eq!(cfg.services[0].maglev_table_size, 307);
    let cfg = ok(&one_service("maglev_table_size = 101\n"));
    assert_eq!(cfg.services[0].maglev_table_size, 101);
}

#[test]
fn maglev_table_size_not_prime() {
    for bad in ["65536", "0", "1", "100", "16777216", "-7"] {
        let e = err(&one_service(&format!("maglev_table_size = {bad}\n")));
        match &e {
            ConfigError::InvalidMaglevTableSize { value, service, .. } => {
                assert_eq!(value.to_string(), bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad}: {other:?}"),
        }
        let reason = if bad == "-7" {
            "negative"
        } else {
            "not prime; try 65537, 131071, 262147 or 655373"
        };
        assert_msg(
            &e,
            &[
                &format!("maglev_table_size {bad}"),
                reason,
                &format!("{ORIGIN}:5:21"),
            ],
        );
    }
}

#[test]
fn maglev_table_size_too_small_for_the_backends() {
    let e = err(&with_backends(3, "maglev_table_size = 101\n"));
    match &e {
        ConfigError::MaglevTableTooSmall {
            size,
            defaulted,
            backends,
            min,
            suggestion,
            ..
        } => {
            assert_eq!((*size, *defaulted, *backends), (101, false, 3));
            assert_eq!((*min, *suggestion), (300, 307));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "\"demo\"",
            "3 backends",
            "maglev_table_size 101 is too small",
            "100 x 3 = 300",
            "such as 307",
            &format!("{ORIGIN}:5:21"),
        ],
    );

    // The default (65537) holds 655 backends; the 656th needs a bigger table. Reported
    // at the service, since there is no maglev_table_size line to point at.
    assert_eq!(ok(&with_backends(655, "")).services[0].backends.len(), 655);
    let e = err(&with_backends(656, ""));
    match &e {
        ConfigError::MaglevTableTooSmall {
            size,
            defaulted,
            min,
            suggestion,
            ..
        } => {
            assert_eq!((*size, *defaulted), (65537, true));
            assert_eq!((*min, *suggestion), (65600, 65609));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "656 backends",
            "65537 (the default)",
            "65600",
            "65609",
            &line(2),
        ],
    );
}

#[test]
fn maglev_table_size_too_big() {
    let e = err(&one_service("maglev_table_size = 16777259\n"));
    match &e {
        ConfigError::InvalidMaglevTableSize { value, .. } => assert_eq!(*value, 16_777_259),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &["16777259", "larger than the maximum of 16777216", &line(5)],
    );
    // The largest prime below 2^24 is accepted (given a lookup pool that holds it).
    let cfg = ok(&format!(
        "{IFACES}[limits]\nmax_lookup_entries = 67108864\n{}",
        &one_service("maglev_table_size = 16777213\n")[IFACES.len()..]
    ));
    assert_eq!(cfg.services[0].maglev_table_size, 16_777_213);
}

#[test]
fn maglev_table_size_with_another_scheduler() {
    for (text, scheduler) in [
        ("round-robin", Scheduler::RoundRobin),
        ("weighted-round-robin", Scheduler::WeightedRoundRobin),
        ("random", Scheduler::Random),
        ("source-hash", Scheduler::SourceHash),
    ] {
        let e = err(&one_service(&format!(
            "scheduler = \"{text}\"\nmaglev_table_size = 65537\n"
        )));
        match &e {
            ConfigError::MaglevSizeNotApplicable {
                scheduler: s,
                value,
                ..
            } => {
                assert_eq!(*s, scheduler);
                assert_eq!(*value, 65537);
            }
            other => panic!("wrong variant for {text}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                "maglev_table_size = 65537",
                &format!("\"{text}\""),
                "only applies to scheduler = \"maglev\"",
                &line(6),
            ],
        );
    }
}

#[test]
fn suggested_sizes_are_prime() {
    for p in [2, 3, 101, 307, 65537, 131_071, 262_147, 655_373, 16_777_213] {
        assert!(validate::is_prime(p), "{p}");
    }
    for n in [0, 1, 4, 100, 65536, 16_777_216] {
        assert!(!validate::is_prime(n), "{n}");
    }
    assert_eq!(validate::next_prime(300), 307);
    assert_eq!(validate::next_prime(307), 307);
    assert_eq!(validate::next_prime(0), 2);
}

// ---- draining ----------------------------------------------------------------

#[test]
fn drain_parses() {
    let cfg = ok(&with_backend(
        "address = \"127.0.0.1:9876\"\ndrain = true\n\
         [[service.backend]]\naddress = \"127.0.0.1:9877\"\ndrain = false\n\
         [[service.backend]]\naddress = \"127.0.0.1:9878\"\n",
    ));
    let drain: Vec<bool> = cfg.services[0].backends.iter().map(|b| b.drain).collect();
    assert_eq!(drain, [true, false, false]);

    let e = err(&with_backend("address = \"127.0.0.1:9876\"\ndrain = 1\n"));
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_msg(&e, &[&line(7)]);
}

#[test]
fn all_backends_drained_is_rejected() {
    let e = err(&with_backend(
        "address = \"127.0.0.1:9876\"\ndrain = true\n\
         [[service.backend]]\naddress = \"127.0.0.1:9877\"\ndrain = true\n",
    ));
    match &e {
        ConfigError::AllBackendsDrained { service, .. } => {
            assert_eq!(service, "service \"demo\"");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "every backend of service \"demo\" is drained",
            "at least one must accept new flows",
            &format!("{ORIGIN}:10:9"),
        ],
    );
}

#[test]
fn new_fields_in_the_wrong_table_get_a_hint() {
    let e = err(&one_service("drain = true\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "drain");
            assert_eq!(*table, "[[service]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["belongs in [[service.backend]]", &line(5)]);

    let e = err(&with_limits("hash_seed = 7\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "hash_seed");
            assert_eq!(*table, "[limits]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["belongs in the top level", &line(3)]);

    let e = err(&with_backend(
        "address = \"127.0.0.1:9876\"\nscheduler = \"random\"\n",
    ));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "scheduler");
            assert_eq!(*table, "[[service.backend]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["belongs in [[service]]", &line(7)]);
}

// ---- health checks -----------------------------------------------------------

/// A one-service config whose service `demo` has a `[service.health_check]` table (its
/// header on line 5) with `fields` starting on line 6.
fn with_check(fields: &str) -> String {
    one_service(&format!("[service.health_check]\n{fields}"))
}

fn check_of(text: &str) -> HealthCheck {
    ok(text).services[0]
        .health_check
        .clone()
        .expect("a health check")
}

#[test]
fn health_check_absent_by_default() {
    let svc = &ok(&one_service("")).services[0];
    assert_eq!(svc.health_check, None);
    assert_eq!(svc.when_all_down, WhenAllDown::Drop);
}

#[test]
fn health_check_types_parse_with_defaults() {
    let defaults = |kind| HealthCheck {
        kind,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        port: None,
        on_failure: OnFailure::KeepFlows,
    };
    for (text, kind) in [
        (
            "udp",
            HealthCheckKind::Udp {
                payload: b"xdplb-health".to_vec(),
                expect: None,
            },
        ),
        ("tcp", HealthCheckKind::Tcp),
        (
            "http",
            HealthCheckKind::Http {
                path: "/".to_owned(),
                expect_status: 200,
            },
        ),
    ] {
        let hc = check_of(&with_check(&format!("type = \"{text}\"\n")));
        assert_eq!(hc.kind.kind().to_string(), text);
        assert_eq!(hc, defaults(kind.clone()), "{text}");
        // The same as an inline table.
        let hc = check_of(&one_service(&format!(
            "health_check = {{ type = \"{text}\" }}\n"
        )));
        assert_eq!(hc, defaults(kind), "{text} inline");
    }
}

#[test]
fn health_check_all_fields_parse() {
    let hc = check_of(&with_check(
        "type = \"udp\"\ninterval = \"2s\"\ntimeout = \"1500ms\"\nrise = 1\nfall = 100\n\
         port = 8080\npayload = \"ping\"\nexpect = \"pong\"\non_failure = \"move-flows\"\n",
    ));
    assert_eq!(
        hc,
        HealthCheck {
            kind: HealthCheckKind::Udp {
                payload: b"ping".to_vec(),
                expect: Some(b"pong".to_vec()),
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(1500),
            rise: 1,
            fall: 100,
            port: Some(8080),
            on_failure: OnFailure::MoveFlows,
        }
    );

    let hc = check_of(&with_check(
        "type = \"http\"\ninterval = \"1h\"\ntimeout = \"10ms\"\nrise = 100\nfall = 1\n\
         port = 65535\npath = \"/healthz?full=1\"\nexpect_status = 204\non_failure = \"keep-flows\"\n",
    ));
    assert_eq!(
        hc,
        HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/healthz?full=1".to_owned(),
                expect_status: 204,
            },
            interval: Duration::from_hours(1),
            timeout: Duration::from_millis(10),
            rise: 100,
            fall: 1,
            port: Some(65535),
            on_failure: OnFailure::KeepFlows,
        }
    );

    let hc = check_of(&with_check(
        "type = \"tcp\"\ninterval = \"100ms\"\nport = 1\non_failure = \"move-flows\"\n",
    ));
    assert_eq!(hc.kind, HealthCheckKind::Tcp);
    assert_eq!(hc.interval, Duration::from_millis(100));
    // The default timeout (500ms) shrinks to a shorter interval.
    assert_eq!(hc.timeout, Duration::from_millis(100));
    assert_eq!(hc.port, Some(1));
    assert_eq!(hc.on_failure.to_string(), "move-flows");

    // The health check table may also follow the backends.
    let text = format!(
        "{}[service.health_check]\ntype = \"tcp\"\n",
        one_service("")
    );
    assert_eq!(check_of(&text).kind, HealthCheckKind::Tcp);
}

#[test]
fn health_check_without_type() {
    let e = err(&with_check("interval = \"2s\"\n"));
    match &e {
        ConfigError::MissingField { field, context, .. } => {
            assert_eq!(*field, "type");
            assert_eq!(context, "service \"demo\" health_check");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "service \"demo\" health_check",
            "`type`",
            "\"udp\"",
            &line(5),
        ],
    );
}

#[test]
fn unknown_health_check_type() {
    for bad in ["icmp", "UDP", ""] {
        let e = err(&with_check(&format!("type = \"{bad}\"\n")));
        match &e {
            ConfigError::InvalidHealthCheckType { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("health_check type {bad:?}"),
                "\"demo\"",
                "expected \"udp\", \"tcp\" or \"http\"",
                &format!("{ORIGIN}:6:8"),
            ],
        );
    }
}

#[test]
fn udp_only_fields_with_other_types_are_rejected() {
    for (kind, field, value) in [
        ("tcp", "payload", "\"ping\""),
        ("http", "payload", "\"ping\""),
        ("tcp", "expect", "\"pong\""),
        ("http", "expect", "\"pong\""),
    ] {
        let e = err(&with_check(&format!(
            "type = \"{kind}\"\ninterval = \"2s\"\n{field} = {value}\n"
        )));
        match &e {
            ConfigError::HealthCheckFieldNotApplicable {
                field: f,
                kind: k,
                value: v,
                service,
                ..
            } => {
                assert_eq!((*f, k.as_str(), v.as_str()), (field, kind, value));
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {field} with {kind}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("sets {field} = {value}"),
                &format!("its type is \"{kind}\""),
                "only applies to type = \"udp\"",
                &line(8),
            ],
        );
    }
}

#[test]
fn http_only_fields_with_other_types_are_rejected() {
    for (kind, field, value) in [
        ("udp", "path", "\"/healthz\""),
        ("tcp", "path", "\"/healthz\""),
        ("udp", "expect_status", "200"),
        ("tcp", "expect_status", "204"),
    ] {
        let e = err(&with_check(&format!(
            "type = \"{kind}\"\n{field} = {value}\n"
        )));
        match &e {
            ConfigError::HealthCheckFieldNotApplicable {
                field: f,
                kind: k,
                value: v,
                ..
            } => assert_eq!((*f, k.as_str(), v.as_str()), (field, kind, value)),
            other => panic!("wrong variant for {field} with {kind}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("sets {field} = {value}"),
                &format!("its type is \"{kind}\""),
                "only applies to type = \"http\"",
                &line(7),
            ],
        );
    }
    // With several misplaced fields, the first in the file is reported.
    let e = err(&with_check(
        "type = \"tcp\"\nexpect_status = 200\npayload = \"x\"\n",
    ));
    assert!(
        matches!(
            e,
            ConfigError::HealthCheckFieldNotApplicable {
                field: "expect_status",
                ..
            }
        ),
        "{e:?}"
    );
    assert_msg(&e, &[&line(7)]);
}

#[test]
fn health_check_timeout_longer_than_interval() {
    let e = err(&with_check(
        "type = \"udp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
    ));
    match &e {
        ConfigError::HealthCheckTimeoutTooLong {
            value,
            interval,
            interval_defaulted,
            service,
            ..
        } => {
            assert_eq!(value, "2s");
            assert_eq!(*interval, Duration::from_secs(1));
            assert!(!interval_defaulted);
            assert_eq!(service, "service \"demo\"");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "timeout \"2s\"",
            "longer than its interval 1s;",
            "at most 1s",
            &format!("{ORIGIN}:8:11"),
        ],
    );

    // Against the default interval.
    let e = err(&with_check("type = \"tcp\"\ntimeout = \"1001ms\"\n"));
    assert!(
        matches!(
            e,
            ConfigError::HealthCheckTimeoutTooLong {
                interval_defaulted: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert_msg(&e, &["\"1001ms\"", "interval 1s (the default)", &line(7)]);

    // Equal is fine.
    let hc = check_of(&with_check(
        "type = \"tcp\"\ninterval = \"3s\"\ntimeout = \"3s\"\n",
    ));
    assert_eq!(
        (hc.interval, hc.timeout),
        (Duration::from_secs(3), Duration::from_secs(3))
    );
}

#[test]
fn bad_health_check_timeouts() {
    for (bad, reason) in [
        ("9ms", "shorter than the minimum of 10ms"),
        ("0s", "shorter than the minimum of 10ms"),
        ("banana", "not a duration"),
        ("", "not a duration"),
    ] {
        let e = err(&with_check(&format!(
            "type = \"tcp\"\ntimeout = \"{bad}\"\n"
        )));
        match &e {
            ConfigError::InvalidHealthCheckTimeout { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("health_check timeout {bad:?}"),
                reason,
                "at least 10ms and at most the interval",
                &line(7),
            ],
        );
    }
}

#[test]
fn bad_health_check_intervals() {
    for (bad, reason) in [
        ("0s", "shorter than the minimum of 100ms"),
        ("99ms", "shorter than the minimum of 100ms"),
        ("banana", "not a duration"),
        ("1s banana", "not a duration"),
        ("1h 1ms", "longer than the maximum of 1h"),
        ("2d", "longer than the maximum of 1h"),
    ] {
        let e = err(&with_check(&format!(
            "type = \"udp\"\ninterval = \"{bad}\"\n"
        )));
        match &e {
            ConfigError::InvalidHealthCheckInterval { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("health_check interval {bad:?}"),
                reason,
                "from 100ms to 1h",
                &format!("{ORIGIN}:7:12"),
            ],
        );
    }
}

#[test]
fn health_check_numbers_out_of_range() {
    for (extra, field, value, range) in [
        ("", "rise", "0", "1..=100"),
        ("", "rise", "101", "1..=100"),
        ("", "rise", "-1", "1..=100"),
        ("", "fall", "0", "1..=100"),
        ("", "fall", "101", "1..=100"),
        ("", "port", "0", "1..=65535"),
        ("", "port", "65536", "1..=65535"),
        ("", "port", "-80", "1..=65535"),
        ("type = \"http\"\n", "expect_status", "99", "100..=599"),
        ("type = \"http\"\n", "expect_status", "600", "100..=599"),
        ("type = \"http\"\n", "expect_status", "-200", "100..=599"),
    ] {
        let kind = if extra.is_empty() {
            "type = \"udp\"\n"
        } else {
            extra
        };
        let e = err(&with_check(&format!("{kind}{field} = {value}\n")));
        match &e {
            ConfigError::HealthCheckOutOfRange {
                field: f,
                value: v,
                service,
                ..
            } => {
                assert_eq!(*f, field);
                assert_eq!(v.to_string(), value);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {field} = {value}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("health_check {field} must be {range}, got {value}"),
                &format!("; {field} is"),
                &line(7),
            ],
        );
    }
    // The bounds of expect_status are accepted.
    for status in [100, 599] {
        let hc = check_of(&with_check(&format!(
            "type = \"http\"\nexpect_status = {status}\n"
        )));
        assert!(
            matches!(hc.kind, HealthCheckKind::Http { expect_status, .. } if expect_status == status),
            "{hc:?}"
        );
    }
}

#[test]
fn bad_http_paths() {
    for (bad, reason) in [
        ("healthz", "does not start with '/'"),
        ("", "does not start with '/'"),
        ("http://x/healthz", "does not start with '/'"),
        ("/health z", "contains ' '"),
        ("/a\\r\\nHost: evil", "contains '\\r'"),
    ] {
        let e = err(&with_check(&format!("type = \"http\"\npath = \"{bad}\"\n")));
        let written = bad.replace("\\r", "\r").replace("\\n", "\n");
        match &e {
            ConfigError::InvalidHealthCheckPath { value, service, .. } => {
                assert_eq!(*value, written);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("health_check path {written:?}"),
                reason,
                "\"/healthz\"",
                &format!("{ORIGIN}:7:8"),
            ],
        );
    }
}

#[test]
fn bad_on_failure() {
    for bad in ["keep", "move_flows", "drop"] {
        let e = err(&with_check(&format!(
            "type = \"tcp\"\non_failure = \"{bad}\"\n"
        )));
        match &e {
            ConfigError::InvalidOnFailure { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("on_failure {bad:?}"),
                "\"keep-flows\"",
                "\"move-flows\"",
                &format!("{ORIGIN}:7:14"),
            ],
        );
    }
}

#[test]
fn udp_payload_too_long() {
    let long = "x".repeat(65_508);
    for field in ["payload", "expect"] {
        let e = err(&with_check(&format!(
            "type = \"udp\"\n{field} = \"{long}\"\n"
        )));
        match &e {
            ConfigError::HealthCheckPayloadTooLong { field: f, len, .. } => {
                assert_eq!((*f, *len), (field, 65_508));
            }
            other => panic!("wrong variant for {field}: {other:?}"),
        }
        assert_msg(&e, &[field, "65508 bytes", "at most 65507", &line(7)]);
    }
    let hc = check_of(&with_check(&format!(
        "type = \"udp\"\npayload = \"{}\"\n",
        &long[1..]
    )));
    assert!(matches!(hc.kind, HealthCheckKind::Udp { payload, .. } if payload.len() == 65_507));
}

#[test]
fn forwarding_parses_and_rejects_garbage_and_loopback_nat_backends() {
    let cfg = ok(&one_service(""));
    assert_eq!(
        cfg.services[0].forwarding,
        Forwarding::Local,
        "local by default"
    );
    let nat = "interfaces = [\"lo\"]\n[[service]]\nname = \"n\"\nvip = \"10.9.0.1:53\"\nforwarding = \"nat\"\n[[service.backend]]\naddress = \"10.1.0.2:53\"\n";
    let cfg = ok(nat);
    assert_eq!(cfg.services[0].forwarding, Forwarding::Nat);
    assert_eq!(Forwarding::Nat.to_string(), "nat");
    for bad in ["dsr", "NAT", ""] {
        let e = err(&one_service(&format!("forwarding = \"{bad}\"\n")));
        assert!(
            matches!(&e, ConfigError::InvalidForwarding { value, .. } if value == bad),
            "{bad:?}: {e:?}"
        );
        assert_msg(
            &e,
            &[&format!("forwarding {bad:?}"), "\"local\"", "\"nat\""],
        );
    }
    let e = err(&nat.replace("10.1.0.2:53", "127.0.0.1:53"));
    assert!(matches!(e, ConfigError::NatLoopbackBackend { .. }), "{e:?}");
    assert_msg(
        &e,
        &[
            "with nat",
            "127.0.0.1:53",
            "loopback",
            "forwarding = \"local\"",
        ],
    );

    let dsr = nat.replace("\"nat\"", "\"dsr-l2\"");
    assert_eq!(ok(&dsr).services[0].forwarding, Forwarding::DsrL2);
    assert_eq!(Forwarding::DsrL2.to_string(), "dsr-l2");
    let e = err(&dsr.replace("10.1.0.2:53", "10.1.0.2:5353"));
    assert!(
        matches!(e, ConfigError::DsrPortMismatch { vip_port: 53, .. }),
        "{e:?}"
    );
    assert_msg(&e, &["dsr-l2", "10.1.0.2:5353", "port 53", "directly"]);
    let e = err(&dsr.replace("10.1.0.2:53", "127.0.0.2:53"));
    assert_msg(&e, &["with dsr-l2", "127.0.0.2:53", "loopback"]);
    let ipip = nat.replace(
        "forwarding = \"nat\"",
        "forwarding = \"dsr-ipip\"\nencap_source = \"10.200.0.0/24\"",
    );
    let svc = &ok(&ipip).services[0];
    assert_eq!(svc.forwarding, Forwarding::DsrIpip);
    assert_eq!(
        svc.encap_source.map(|e| e.to_string()).as_deref(),
        Some("10.200.0.0/24")
    );
    for bad in [
        "10.200.0.1/24",
        "10.200.0.0/33",
        "10.200.0.0",
        "x/8",
        "10.200.0.0/-1",
    ] {
        let e = err(&ipip.replace("10.200.0.0/24", bad));
        assert!(
            matches!(e, ConfigError::InvalidEncapSource { .. }),
            "{bad}: {e:?}"
        );
        assert_msg(&e, &[&format!("{bad:?}"), "no host bits"]);
    }
    let e = err(&nat.replace("forwarding = \"nat\"", "forwarding = \"dsr-ipip\""));
    assert_msg(&e, &["dsr-ipip", "needs encap_source"]);
    let e = err(&nat.replace(
        "forwarding = \"nat\"",
        "forwarding = \"nat\"\nencap_source = \"10.200.0.0/24\"",
    ));
    assert_msg(&e, &["encap_source applies only", "dsr-ipip"]);
    let e = err(&ipip.replace("10.1.0.2:53", "10.1.0.2:54"));
    assert_msg(&e, &["with dsr-ipip", "10.1.0.2:54", "port 53"]);

    let fullnat = nat.replace(
        "forwarding = \"nat\"",
        "forwarding = \"fullnat\"\nfullnat_source = \"10.86.0.1\"",
    );
    let svc = &ok(&fullnat).services[0];
    assert_eq!(svc.forwarding, Forwarding::FullNat);
    assert_eq!(
        svc.fullnat,
        Some(FullnatConfig {
            source: Ipv4Addr::new(10, 86, 0, 1).into(),
            port_first: 20000,
            port_last: 59999
        }),
        "the default port range"
    );
    let ranged = fullnat.replace(
        "fullnat_source = \"10.86.0.1\"",
        "fullnat_source = \"10.86.0.1\"\nfullnat_ports = \"40000-40009\"",
    );
    let f = ok(&ranged).services[0].fullnat.expect("fullnat");
    assert_eq!((f.port_first, f.port_last), (40000, 40009));
    for bad in ["0-10", "10-9", "40000", "1-65536", "a-b"] {
        let e = err(&ranged.replace("40000-40009", bad));
        assert!(
            matches!(
                e,
                ConfigError::InvalidFullnat {
                    field: "fullnat_ports",
                    ..
                }
            ),
            "{bad}: {e:?}"
        );
        assert_msg(&e, &[&format!("{bad:?}"), "FIRST-LAST"]);
    }
    for bad in ["127.0.0.1", "0.0.0.0", "224.0.0.1", "nope"] {
        let e = err(&fullnat.replace("10.86.0.1", bad));
        assert!(
            matches!(
                e,
                ConfigError::InvalidFullnat {
                    field: "fullnat_source",
                    ..
                }
            ),
            "{bad}: {e:?}"
        );
    }
    let e = err(&nat.replace("forwarding = \"nat\"", "forwarding = \"fullnat\""));
    assert_msg(&e, &["needs fullnat_source"]);
    let e = err(&nat.replace(
        "forwarding = \"nat\"",
        "forwarding = \"nat\"\nfullnat_ports = \"1-2\"",
    ));
    assert_msg(&e, &["fullnat_ports applies only"]);
}

#[test]
fn when_all_down_parses_and_rejects_garbage() {
    for (text, policy) in [("drop", WhenAllDown::Drop), ("pass", WhenAllDown::Pass)] {
        let cfg = ok(&one_service(&format!("when_all_down = \"{text}\"\n")));
        assert_eq!(cfg.services[0].when_all_down, policy, "{text}");
        assert_eq!(policy.to_string(), text);
        let cfg = ok(&one_service(&format!(
            "when_all_down = \"{text}\"\n[service.health_check]\ntype = \"tcp\"\n"
        )));
        assert_eq!(cfg.services[0].when_all_down, policy, "{text}");
        assert!(cfg.services[0].health_check.is_some());
    }
    for bad in ["accept", "Drop", ""] {
        let e = err(&one_service(&format!("when_all_down = \"{bad}\"\n")));
        match &e {
            ConfigError::InvalidWhenAllDown { value, service, .. } => {
                assert_eq!(value, bad);
                assert_eq!(service, "service \"demo\"");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(
            &e,
            &[
                &format!("when_all_down {bad:?}"),
                "\"drop\"",
                "\"pass\"",
                &format!("{ORIGIN}:5:17"),
            ],
        );
    }
    let e = err(&one_service("when_all_down = true\n"));
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_msg(&e, &[&line(5)]);
}

#[test]
fn flow_state_second_packet_only_for_dsr_with_a_consistent_scheduler() {
    // dsr-l2 keeps the port: a backend on the VIP's port.
    let one_service = |extra: &str| {
        one_service(extra)
            .replace("127.0.0.1:9876", "10.0.0.2:9875")
            .replace("127.0.0.1:9875", "10.0.0.1:9875")
    };
    let dsr = "forwarding = \"dsr-l2\"\n";
    let cfg = ok(&one_service(&format!(
        "{dsr}flow_state = \"second-packet\"\n"
    )));
    assert_eq!(cfg.services[0].flow_state, FlowState::SecondPacket);
    let cfg = ok(&one_service(""));
    assert_eq!(cfg.services[0].flow_state, FlowState::FirstPacket);
    let cfg = ok(&one_service(&format!(
        "{dsr}scheduler = \"source-hash\"\nflow_state = \"second-packet\"\n"
    )));
    assert_eq!(cfg.services[0].flow_state, FlowState::SecondPacket);
    // local keeps its replies' translation in the flow entry; round robin is not consistent.
    for extra in [
        "flow_state = \"second-packet\"\n".to_owned(),
        format!("{dsr}scheduler = \"round-robin\"\nflow_state = \"second-packet\"\n"),
    ] {
        let e = err(&one_service(&extra));
        assert!(
            matches!(e, ConfigError::FlowStateNeedsConsistentDsr { .. }),
            "{e:?}"
        );
        assert_msg(
            &e,
            &["second-packet", "dsr-l2", "maglev", "service \"demo\""],
        );
    }
    let e = err(&one_service("flow_state = \"later\"\n"));
    assert!(matches!(e, ConfigError::InvalidFlowState { .. }), "{e:?}");
    assert_msg(&e, &["\"first-packet\"", "\"second-packet\"", &line(5)]);
}

#[test]
fn flow_stale_after_parses_defaults_off_and_round_trips() {
    // Default: never (off), whatever the scheduler.
    assert_eq!(ok(&one_service("")).services[0].flow_stale_after, None);
    let rr = "scheduler = \"round-robin\"\n";
    assert_eq!(ok(&one_service(rr)).services[0].flow_stale_after, None);
    for (text, want) in [
        ("3s", Some(Duration::from_secs(3))),
        ("2s", Some(Duration::from_secs(2))),
        ("2500ms", Some(Duration::from_millis(2500))),
        ("102s 300ms", Some(Duration::from_millis(102_300))),
        ("never", None),
    ] {
        let text = format!("flow_idle_timeout = \"5m\"\nflow_stale_after = \"{text}\"\n");
        let cfg = ok(&one_service(&text));
        assert_eq!(cfg.services[0].flow_stale_after, want, "{text}");
        // Written back and checked as the API does: the same service.
        assert_eq!(parse(&to_toml(&cfg), ORIGIN).expect("round trip"), cfg);
        assert_eq!(check(&cfg, "the change").expect("typed check"), cfg);
    }
    let cfg = ok(&one_service(
        "scheduler = \"source-hash\"\nflow_stale_after = \"3s\"\n",
    ));
    assert_eq!(
        cfg.services[0].flow_stale_after,
        Some(Duration::from_secs(3))
    );
    // "never" is accepted by every scheduler.
    let cfg = ok(&one_service(&format!("{rr}flow_stale_after = \"never\"\n")));
    assert_eq!(cfg.services[0].flow_stale_after, None);
    assert_eq!(parse(&to_toml(&cfg), ORIGIN).expect("round trip"), cfg);
}

#[test]
fn flow_stale_after_rejects_what_the_data_plane_cannot_keep_or_would_misuse() {
    for (bad, reason) in [
        ("soon", "not a duration"),
        ("1s", "shorter than the minimum of 2s"),
        ("1s 900ms", "refreshed at most once a second"),
        ("102s 400ms", "longer than the maximum of 102.3s"),
        ("2m", "10 bits of 100ms"),
        ("2s 50ms", "100ms steps"),
        (
            "30s",
            "not shorter than this service's flow_idle_timeout (30s)",
        ),
        ("45s", "flow_idle_timeout"),
    ] {
        let e = err(&one_service(&format!("flow_stale_after = \"{bad}\"\n")));
        assert!(matches!(e, ConfigError::InvalidStaleAfter { .. }), "{e:?}");
        assert_msg(
            &e,
            &[
                &format!("{bad:?}"),
                reason,
                &line(5),
                "flow_stale_after",
                "\"never\"",
            ],
        );
    }
    for scheduler in ["round-robin", "weighted-round-robin", "random"] {
        let e = err(&one_service(&format!(
            "scheduler = \"{scheduler}\"\nflow_stale_after = \"3s\"\n"
        )));
        assert!(
            matches!(e, ConfigError::StaleAfterNeedsConsistentScheduler { .. }),
            "{e:?}"
        );
        assert_msg(
            &e,
            &[
                &line(6),
                "service \"demo\"",
                "\"maglev\" or \"source-hash\"",
                scheduler,
                "not a function of the flow",
            ],
        );
    }
}

#[test]
fn flow_guard_rate_defaults_and_rejects_what_does_not_fit() {
    let cfg = ok(&one_service(""));
    assert_eq!(cfg.flow_guard_rate, DEFAULT_FLOW_GUARD_RATE);
    let cfg = ok(&format!("flow_guard_rate = 0\n{}", one_service("")));
    assert_eq!(cfg.flow_guard_rate, 0);
    for bad in ["-1", "4294967296"] {
        let e = err(&format!("flow_guard_rate = {bad}\n{}", one_service("")));
        assert!(
            matches!(e, ConfigError::InvalidFlowGuardRate { .. }),
            "{e:?}"
        );
        assert_msg(&e, &["flow_guard_rate", bad, &line(1)]);
    }
}

#[test]
fn unknown_health_check_field() {
    let e = err(&with_check("type = \"udp\"\nretries = 3\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "retries");
            assert_eq!(*table, "[service.health_check]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "retries",
            "[service.health_check]",
            "`expect_status`",
            "remove it or fix the spelling",
            &format!("{ORIGIN}:7:1"),
        ],
    );

    // A service field written below the health check header belongs to the service.
    let e = err(&with_check("type = \"udp\"\nwhen_all_down = \"pass\"\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "when_all_down");
            assert_eq!(*table, "[service.health_check]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["belongs in [[service]]", &line(7)]);

    // And a health check field written in the service table belongs to the check.
    let e = err(&one_service("rise = 2\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "rise");
            assert_eq!(*table, "[[service]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["belongs in [service.health_check]", &line(5)]);
}

#[test]
fn health_check_wrong_types() {
    for field in [
        "rise = \"2\"",
        "interval = 1",
        "type = 1",
        "expect_status = \"200\"",
    ] {
        let e = err(&with_check(
            &format!("type = \"http\"\n{field}\n").replace("type = \"http\"\ntype = 1", "type = 1"),
        ));
        assert!(matches!(e, ConfigError::WrongType { .. }), "{field}: {e:?}");
    }
}

#[test]
fn describe_mentions_health_checks() {
    let text = r#"
interfaces = ["lo"]
[[service]]
name = "dns"
vip = "192.0.2.1:53"
when_all_down = "pass"
backend = [{ address = "10.0.0.1:53" }]
[service.health_check]
type = "udp"
[[service]]
name = "web"
vip = "192.0.2.2:80"
backend = [{ address = "10.0.0.2:80" }]
[service.health_check]
type = "http"
interval = "5s"
timeout = "2s"
rise = 1
fall = 5
port = 8080
path = "/healthz"
expect_status = 204
on_failure = "move-flows"
[[service]]
name = "plain"
vip = "192.0.2.3:53"
backend = [{ address = "10.0.0.3:53" }]
"#;
    let d = ok(text).describe();
    for part in [
        "health check: udp every 1s, timeout 500ms, rise 2, fall 3, keep-flows",
        "\"xdplb-health\"",
        "any reply",
        "health check: http every 5s, timeout 2s, rise 1, fall 5, move-flows",
        "GET /healthz on port 8080, needs status 204",
        "when_all_down = \"pass\"",
    ] {
        assert!(d.contains(part), "description lacks {part:?}:\n{d}");
    }
    assert_eq!(d.matches("health check:").count(), 2, "{d}");
    assert_eq!(d.matches("when_all_down").count(), 1, "{d}");

    let d = default_config().describe();
    assert!(!d.contains("health check"), "{d}");
    assert!(!d.contains("when_all_down"), "{d}");
}

// ---- lookup-table pool -------------------------------------------------------

#[test]
fn table_capacity_per_scheduler() {
    let limits = Limits {
        max_backends_per_service: 16,
        ..Limits::DEFAULT
    };
    let mut svc = default_config().services.remove(0);
    svc.maglev_table_size = 131_071;
    for (scheduler, capacity) in [
        (Scheduler::Maglev, 131_071),
        (Scheduler::WeightedRoundRobin, 65537),
        (Scheduler::RoundRobin, 16),
        (Scheduler::Random, 16),
        (Scheduler::SourceHash, 16),
    ] {
        svc.scheduler = scheduler;
        assert_eq!(table_capacity(&svc, &limits), capacity, "{scheduler:?}");
    }
}

#[test]
fn lookup_pool_overflow() {
    let e = err(&with_limits("max_lookup_entries = 1024\n"));
    match &e {
        ConfigError::LookupPoolTooSmall {
            service,
            needed,
            limit,
            ..
        } => {
            assert_eq!(service, "service \"demo\"");
            assert_eq!((*needed, *limit), (131_074, 1024));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "131074",
            "max_lookup_entries is 1024",
            "service \"demo\" is the first that does not fit",
            "raise `[limits] max_lookup_entries` to at least 131074",
            "smaller `maglev_table_size`",
            &line(4),
        ],
    );
}

#[test]
fn lookup_pool_overflow_names_the_first_service_that_does_not_fit() {
    // Two Maglev services fit exactly in 4 x 65537 entries; the third does not.
    let mut text = format!("{IFACES}[limits]\nmax_lookup_entries = 262148\n");
    for i in 0..3 {
        let _ = write!(
            text,
            "[[service]]\nname = \"s{i}\"\nvip = \"127.0.0.1:{}\"\n[[service.backend]]\naddress = \"127.0.0.1:{}\"\n",
            1000 + i,
            9000 + i
        );
    }
    let e = err(&text);
    match &e {
        ConfigError::LookupPoolTooSmall {
            service,
            needed,
            limit,
            ..
        } => {
            assert_eq!(service, "service \"s2\"");
            assert_eq!((*needed, *limit), (3 * 131_074, 262_148));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    // The third service starts on line 14.
    assert_msg(&e, &["393222", "262148", "\"s2\"", &line(14)]);

    let two = text.replace("name = \"s2\"", "name = \"s2\"\nscheduler = \"random\"");
    // Round robin, random and source hash take 2 x max_backends_per_service (1024).
    let e = err(&two);
    assert!(
        matches!(
            e,
            ConfigError::LookupPoolTooSmall {
                needed: 264_196,
                ..
            }
        ),
        "{e:?}"
    );
    let fits = two.replace("262148", "264196");
    assert_eq!(ok(&fits).services.len(), 3);
}

/// Each default Maglev service takes 2 x 65537 entries, so the default pool of 4194304
/// (2^22) holds 31 of them, not 32.
#[test]
fn default_lookup_pool_holds_31_default_maglev_services() {
    let mut text = IFACES.to_owned();
    for i in 0..32 {
        let _ = write!(
            text,
            "[[service]]\nname = \"s{i}\"\nvip = \"127.0.0.1:{}\"\n[[service.backend]]\naddress = \"127.0.0.1:{}\"\n",
            1000 + i,
            9000 + i
        );
    }
    let e = err(&text);
    assert!(
        matches!(
            e,
            ConfigError::LookupPoolTooSmall {
                needed: 4_194_368,
                limit: 4_194_304,
                ..
            }
        ),
        "{e:?}"
    );
    let end = text
        .find("[[service]]\nname = \"s31\"")
        .expect("service s31");
    assert_eq!(ok(&text[..end]).services.len(), 31);
}

// ---- whole configs -----------------------------------------------------------

#[test]
fn full_config_with_defaults_filled() {
    let text = r#"
interfaces = ["eth0", "eth1"]

[[service]]
name = "dns"
vip = "192.0.2.10:53"

[[service.backend]]
address = "10.0.0.1:53"

[[service.backend]]
address = "10.0.0.2:5353"
weight = 3

[[service]]
name = "syslog"
vip = "0.0.0.0:514"
protocol = "udp"
flow_idle_timeout = "5m"
backend = [{ address = "10.0.1.1:514", weight = 10 }]
"#;
    let cfg = ok(text);
    let ip = Ipv4Addr::new;
    let expected = Config {
        interfaces: vec!["eth0".to_owned(), "eth1".to_owned()],
        xdp_mode: XdpModeSetting::Auto,
        debug_log: false,
        hash_seed: 0x5eed_1b1b,
        flow_guard_rate: DEFAULT_FLOW_GUARD_RATE,
        metrics_listen: None,
        api_listen: None,
        limits: Limits::DEFAULT,
        announce: None,
        services: vec![
            ServiceConfig {
                name: "dns".to_owned(),
                vip: SocketAddrV4::new(ip(192, 0, 2, 10), 53).into(),
                protocol: Protocol::Udp,
                flow_idle_timeout: Duration::from_secs(30),
                flow_stale_after: None,
                scheduler: Scheduler::Maglev,
                hash: HashFields::FiveTuple,
                maglev_table_size: 65537,
                health_check: None,
                when_all_down: WhenAllDown::Drop,
                flow_state: FlowState::FirstPacket,
                forwarding: Forwarding::Local,
                encap_source: None,
                fullnat: None,
                backends: vec![
                    BackendConfig {
                        address: SocketAddrV4::new(ip(10, 0, 0, 1), 53).into(),
                        weight: 1,
                        drain: false,
                    },
                    BackendConfig {
                        address: SocketAddrV4::new(ip(10, 0, 0, 2), 5353).into(),
                        weight: 3,
                        drain: false,
                    },
                ],
            },
            ServiceConfig {
                name: "syslog".to_owned(),
                vip: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 514).into(),
                protocol: Protocol::Udp,
                flow_idle_timeout: Duration::from_mins(5),
                flow_stale_after: None,
                scheduler: Scheduler::Maglev,
                hash: HashFields::FiveTuple,
                maglev_table_size: 65537,
                health_check: None,
                when_all_down: WhenAllDown::Drop,
                flow_state: FlowState::FirstPacket,
                forwarding: Forwarding::Local,
                encap_source: None,
                fullnat: None,
                backends: vec![BackendConfig {
                    address: SocketAddrV4::new(ip(10, 0, 1, 1), 514).into(),
                    weight: 10,
                    drain: false,
                }],
            },
        ],
    };
    assert_eq!(cfg, expected);
}

#[test]
fn debug_log_parses() {
    let cfg = ok(&format!(
        "{IFACES}debug_log = true\n{}",
        &one_service("")[IFACES.len()..]
    ));
    assert!(cfg.debug_log);
}

#[test]
fn default_toml_parses_to_default_config() {
    assert_eq!(
        parse(DEFAULT_CONFIG_TOML, "<built-in>").ok(),
        Some(default_config())
    );
}

#[test]
fn default_config_is_the_tutorial_scenario() {
    let cfg = default_config();
    assert_eq!(cfg.interfaces, ["lo"]);
    assert_eq!(cfg.xdp_mode, XdpModeSetting::Auto);
    assert!(!cfg.debug_log);
    assert_eq!(cfg.hash_seed, 1_592_597_275);
    assert_eq!(cfg.limits, Limits::DEFAULT);
    assert_eq!(cfg.services.len(), 1);
    let svc = &cfg.services[0];
    assert_eq!(svc.name, "demo");
    assert_eq!(svc.vip, local(9875));
    assert_eq!(svc.protocol, Protocol::Udp);
    assert_eq!(svc.flow_idle_timeout, Duration::from_secs(30));
    assert_eq!(svc.scheduler, Scheduler::RoundRobin);
    let backends: Vec<_> = svc
        .backends
        .iter()
        .map(|b| (b.address, b.weight, b.drain))
        .collect();
    assert_eq!(
        backends,
        [
            (local(9876), 1, false),
            (local(9877), 1, false),
            (local(9878), 1, false)
        ]
    );
}

#[test]
fn describe_mentions_everything() {
    let text = r#"
interfaces = ["eth0", "eth1"]
xdp_mode = "generic"
[limits]
max_flows = 4096
[[service]]
name = "dns"
vip = "192.0.2.10:53"
flow_idle_timeout = "90s"
backend = [{ address = "10.0.0.1:53" }, { address = "10.0.0.2:5353", weight = 3 }]
[[service]]
name = "syslog"
vip = "0.0.0.0:514"
scheduler = "round-robin"
backend = [{ address = "10.0.1.1:514", weight = 10 }]
"#;
    let d = ok(text).describe();
    for part in [
        "eth0",
        "eth1",
        "generic",
        "4096",
        "\"dns\"",
        "192.0.2.10:53",
        "1m 30s",
        "10.0.0.1:53  weight 1",
        "10.0.0.2:5353  weight 3",
        "\"syslog\"",
        "0.0.0.0:514",
        "any address",
        "10.0.1.1:514  weight 10",
        "round-robin",
        "udp",
    ] {
        assert!(d.contains(part), "description lacks {part:?}:\n{d}");
    }

    let d = default_config().describe();
    for part in [
        "lo",
        "auto",
        "\"demo\"",
        "127.0.0.1:9875",
        "30s",
        "127.0.0.1:9878",
    ] {
        assert!(d.contains(part), "description lacks {part:?}:\n{d}");
    }
}

#[test]
fn describe_mentions_scheduling_and_draining() {
    let text = r#"
interfaces = ["lo"]
hash_seed = 1234
[[service]]
name = "game"
vip = "192.0.2.1:7777"
hash = "source-ip-port"
maglev_table_size = 131071
backend = [{ address = "10.0.0.1:7777" }, { address = "10.0.0.2:7777", drain = true }]
[[service]]
name = "sticky"
vip = "192.0.2.2:53"
scheduler = "source-hash"
backend = [{ address = "10.0.1.1:53" }]
[[service]]
name = "wrr"
vip = "192.0.2.3:53"
scheduler = "weighted-round-robin"
backend = [{ address = "10.0.2.1:53", weight = 2 }]
"#;
    let d = ok(text).describe();
    // 2 x 131071 + 2 x 1024 + 2 x 65537
    let pool = 2 * 131_071 + 2 * 1024 + 2 * 65537;
    for part in [
        "Hash seed: 1234",
        "Scheduler: maglev, hash source-ip-port, table size 131071",
        "Scheduler: source-hash, hash source-ip",
        "Scheduler: weighted-round-robin",
        "10.0.0.1:7777  weight 1\n",
        "10.0.0.2:7777  weight 1, draining",
        &format!("{pool} of 4194304 lookup entries"),
    ] {
        assert!(d.contains(part), "description lacks {part:?}:\n{d}");
    }

    let d = default_config().describe();
    for part in [
        "Hash seed: 1592597275",
        "Scheduler: round-robin",
        "2048 of 4194304 lookup entries",
    ] {
        assert!(d.contains(part), "description lacks {part:?}:\n{d}");
    }
    assert!(!d.contains("draining"), "{d}");
}

// ---- interfaces on the host --------------------------------------------------

#[test]
fn check_interfaces_reports_missing_one() {
    let mut cfg = default_config();
    cfg.interfaces = vec!["lo".to_owned(), "eth9".to_owned(), "eth10".to_owned()];
    let e = match check_interfaces(&cfg, "/etc/xdplb.toml", |name| name == "lo") {
        Ok(()) => panic!("expected an error"),
        Err(e) => e,
    };
    match &e {
        ConfigError::InterfaceNotFound { name, .. } => assert_eq!(name, "eth9"),
        other => panic!("wrong variant: {other:?}"),
    }
    // Config carries no positions, so the message names the file but no line.
    assert_msg(&e, &["/etc/xdplb.toml", "\"eth9\"", "does not exist"]);
    assert!(check_interfaces(&cfg, "x", |_| true).is_ok());
}

// ---- files -------------------------------------------------------------------

#[test]
fn load_missing_file_names_path() {
    let path = std::env::temp_dir().join("xdplb-config-test-does-not-exist/none.toml");
    let Err(e) = load(&path) else {
        panic!("expected an error")
    };
    match &e {
        ConfigError::Read { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &[&path.display().to_string()]);
}

#[test]
fn load_reads_and_names_file() {
    let dir = std::env::temp_dir().join(format!("xdplb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let good = dir.join("good.toml");
    std::fs::write(&good, DEFAULT_CONFIG_TOML).expect("write temp file");
    assert_eq!(load(&good).expect("load"), default_config());

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, with_vip("1.2.3.4")).expect("write temp file");
    let e = load(&bad).expect_err("bad vip");
    assert_msg(&e, &[&format!("{}:4:7", bad.display())]);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- capacity ----------------------------------------------------------------

/// `services` services with `backends` backends each, backends written inline to
/// keep the text small.
/// Backend `b` of service `s` in [`big_config`].
fn big_backend(s: u32, b: u32) -> String {
    format!("10.{}.{}.1:{}", 64 + s / 256, s % 256, b + 1)
}

fn big_config(services: u32, backends: u32) -> String {
    let mut text = String::with_capacity(64 + services as usize * (64 + backends as usize * 26));
    text.push_str(IFACES);
    for s in 0..services {
        // Round robin: Maglev's default table would be too small for 1024 backends, and
        // its tables for 1024 services would not fit the default lookup pool.
        let _ = write!(
            text,
            "[[service]]\nname = \"s{s}\"\nvip = \"10.0.{}.{}:53\"\nscheduler = \"round-robin\"\nbackend = [",
            s / 256,
            s % 256
        );
        // Each service its own backends: local services may not share one (replies).
        for b in 0..backends {
            let _ = write!(text, "{{address=\"{}\"}},", big_backend(s, b));
        }
        text.push_str("]\n");
    }
    text
}

#[test]
fn capacity_boundaries_via_text() {
    let d = Limits::DEFAULT;
    let cfg = ok(&big_config(d.max_services, 1));
    assert_eq!(cfg.services.len(), 1024);
    let cfg = ok(&big_config(1, d.max_backends_per_service));
    assert_eq!(cfg.services[0].backends.len(), 1024);

    assert!(matches!(
        err(&big_config(d.max_services + 1, 1)),
        ConfigError::TooManyServices { count: 1025, .. }
    ));
    assert!(matches!(
        err(&big_config(1, d.max_backends_per_service + 1)),
        ConfigError::TooManyBackends { count: 1025, .. }
    ));
}

/// 1024 services x 1024 backends under the default limits. Parsing 26 MB of TOML
/// with the `toml` crate is slow unoptimized, so this test builds one service from
/// TOML text and replicates its parsed form; `full_capacity_from_text` below does the
/// whole thing from text.
#[test]
fn full_capacity_is_accepted() {
    let d = Limits::DEFAULT;
    let text = big_config(1, d.max_backends_per_service);
    let mut raw: raw::RawConfig = toml::from_str(&text).expect("valid TOML");
    let template = raw
        .service
        .as_ref()
        .and_then(|s| s.first())
        .cloned()
        .expect("one service");
    let services = (0..d.max_services)
        .map(|s| {
            let mut svc = template.clone();
            let inner = svc.get_mut();
            let span = inner.name.as_ref().map(toml::Spanned::span).unwrap_or(0..0);
            inner.name = Some(toml::Spanned::new(span, format!("s{s}")));
            let span = inner.vip.as_ref().map(toml::Spanned::span).unwrap_or(0..0);
            inner.vip = Some(toml::Spanned::new(
                span,
                format!("10.0.{}.{}:53", s / 256, s % 256),
            ));
            for (b, backend) in inner
                .backend
                .as_mut()
                .expect("backends")
                .get_mut()
                .iter_mut()
                .enumerate()
            {
                let backend = backend.get_mut();
                let span = backend
                    .address
                    .as_ref()
                    .map(toml::Spanned::span)
                    .unwrap_or(0..0);
                let b = u32::try_from(b).expect("1024 at most");
                backend.address = Some(toml::Spanned::new(span, big_backend(s, b)));
            }
            svc
        })
        .collect();
    raw.service = Some(services);
    let src = validate::Source {
        text: &text,
        origin: ORIGIN,
    };
    let cfg = match validate::validate(raw, src) {
        Ok(cfg) => cfg,
        Err(e) => panic!("rejected: {e}"),
    };
    assert_eq!(cfg.services.len(), 1024);
    assert!(cfg.services.iter().all(|s| s.backends.len() == 1024));
    // 1024 services x 2 tables x 1024 entries.
    assert_eq!(lookup_entries_needed(&cfg.services, &cfg.limits), 2_097_152);
}

/// The same as `full_capacity_is_accepted`, entirely from TOML text (26 MB). Takes
/// about 2 s with optimizations but over 10 s (and ~1.4 GB) in a debug build, so it
/// only runs by default in optimized test builds (`cargo test --release`).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "slow unoptimized; run with --release or --include-ignored"
)]
fn full_capacity_from_text() {
    let d = Limits::DEFAULT;
    let cfg = ok(&big_config(d.max_services, d.max_backends_per_service));
    assert_eq!(cfg.services.len(), 1024);
    assert!(cfg.services.iter().all(|s| s.backends.len() == 1024));
}

#[test]
fn metrics_listen_parses_and_rejects_garbage() {
    let base = "interfaces = [\"lo\"]\n[[service]]\nname = \"a\"\nvip = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n";
    let cfg = ok(&format!("metrics_listen = \"127.0.0.1:9100\"\n{base}"));
    assert_eq!(
        cfg.metrics_listen,
        Some("127.0.0.1:9100".parse().expect("literal"))
    );
    assert_eq!(ok(base).metrics_listen, None, "off by default");
    let err = parse(
        &format!("metrics_listen = \"localhost\"\n{base}"),
        "test.toml",
    )
    .expect_err("not an address");
    assert!(
        matches!(err, ConfigError::InvalidMetricsListen { .. }),
        "{err:?}"
    );
    assert_msg(&err, &["test.toml:1:", "localhost", "127.0.0.1:9100"]);
}

#[test]
fn api_listen_is_off_by_default_and_loopback_only() {
    let base = "interfaces = [\"lo\"]\n[[service]]\nname = \"a\"\nvip = \"127.0.0.1:1\"\n[[service.backend]]\naddress = \"127.0.0.1:2\"\n";
    assert_eq!(ok(base).api_listen, None, "off by default");
    for good in ["127.0.0.1:9180", "127.0.0.2:80", "[::1]:9180"] {
        let cfg = ok(&format!("api_listen = \"{good}\"\n{base}"));
        assert_eq!(cfg.api_listen, Some(good.parse().expect("literal")));
    }
    for bad in [
        "0.0.0.0:9180",
        "10.0.0.1:9180",
        "[::]:9180",
        "localhost:9180",
        "9180",
    ] {
        let err = parse(&format!("api_listen = \"{bad}\"\n{base}"), "test.toml")
            .expect_err("not a loopback address");
        assert!(
            matches!(err, ConfigError::InvalidApiListen { .. }),
            "{bad}: {err:?}"
        );
        assert_msg(
            &err,
            &["test.toml:1:", bad, "loopback", "no authentication"],
        );
    }
}

// ---- writing TOML ------------------------------------------------------------

/// Asserts that `cfg` comes back unchanged from `to_toml` and `parse`; returns the text.
fn round_trip(cfg: &Config) -> String {
    let text = to_toml(cfg);
    match parse(&text, ORIGIN) {
        Ok(back) => assert_eq!(&back, cfg, "changed by the round trip; text:\n{text}"),
        Err(e) => panic!("to_toml wrote text that does not parse: {e}\ntext:\n{text}"),
    }
    assert_eq!(text.lines().next(), Some(write::HEADER));
    assert_schema_order(&text);
    text
}

/// The lines of TOML `text` that do not start inside a multi-line string.
fn lines_outside_strings(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    // The closing delimiter of the multi-line string the next line starts in.
    let mut open: Option<&[u8]> = None;
    for line in text.lines() {
        if open.is_none() {
            out.push(line);
        }
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match open {
                Some(delim) if delim == b"\"\"\"" && b[i] == b'\\' => i += 2,
                Some(delim) if b[i..].starts_with(delim) => {
                    // Up to two more quotes are content just before the delimiter.
                    i += 3;
                    while i < b.len() && b[i] == delim[0] {
                        i += 1;
                    }
                    open = None;
                }
                Some(_) => i += 1,
                None if b[i..].starts_with(b"\"\"\"") => {
                    open = Some(b"\"\"\"");
                    i += 3;
                }
                None if b[i..].starts_with(b"'''") => {
                    open = Some(b"'''");
                    i += 3;
                }
                None if b[i] == b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                None if b[i] == b'\'' => {
                    i += 1;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                None if b[i] == b'#' => break,
                None => i += 1,
            }
        }
    }
    out
}

#[test]
fn lines_outside_strings_skips_multi_line_strings() {
    let text = "a = \"\"\"\n[x]\nb = \\\"\"\"\n\"\"\"\"\nc = 'q\"' # \"\"\"\nd = '''\ne = \"\"\"\n'''\nf = 1";
    assert_eq!(
        lines_outside_strings(text),
        ["a = \"\"\"", "c = 'q\"' # \"\"\"", "d = '''", "f = 1"]
    );
}

/// Asserts that the tables in `text` (as `to_toml` writes it) come in the schema's
/// order, and that within each table every key is a field of that table, written at
/// most once and in the schema's order. Lines inside multi-line strings and lines
/// that are not `key = ...` with a plain key are skipped.
fn assert_schema_order(text: &str) {
    fn rank(table: &str) -> usize {
        [
            "the top level",
            "[limits]",
            "[announce]",
            "[[service]]",
            "[service.health_check]",
            "[[service.backend]]",
        ]
        .iter()
        .position(|t| *t == table)
        .unwrap_or_else(|| panic!("unknown table {table}"))
    }
    let mut table = "the top level";
    let mut last: Option<usize> = None;
    for line in lines_outside_strings(text) {
        if line.starts_with('[') && line.ends_with(']') && !line.contains(' ') {
            let next = match line {
                "[limits]"
                | "[announce]"
                | "[[service]]"
                | "[service.health_check]"
                | "[[service.backend]]" => line,
                _ => panic!("unexpected header {line}\nin:\n{text}"),
            };
            let in_order = match next {
                "[[service]]" => rank(table) >= rank("[limits]"),
                "[[service.backend]]" => rank(table) >= rank("[[service]]"),
                _ => rank(next) > rank(table),
            };
            assert!(in_order, "{next} after {table}\nin:\n{text}");
            table = next;
            last = None;
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let fields = raw::TABLES
            .iter()
            .find(|(name, _)| *name == table)
            .map_or_else(|| panic!("no fields for {table}"), |(_, fields)| *fields);
        let pos = fields
            .iter()
            .position(|f| *f == key)
            .unwrap_or_else(|| panic!("{key} is not a field of {table}\nin:\n{text}"));
        assert!(
            last.is_none_or(|l| l < pos),
            "{key} out of order in {table}\nin:\n{text}"
        );
        last = Some(pos);
    }
}

#[test]
fn to_toml_round_trips_default_config() {
    round_trip(&default_config());
}

#[test]
fn to_toml_round_trips_the_built_in_text() {
    round_trip(&ok(DEFAULT_CONFIG_TOML));
}

#[test]
fn to_toml_writes_every_field_explicitly() {
    let expected = "\
# Written by xdplb in canonical form: every field, defaults included.

interfaces = [\"lo\"]
xdp_mode = \"auto\"
debug_log = false
hash_seed = 1592597275
flow_guard_rate = 100000

[limits]
max_services = 1024
max_backends_per_service = 1024
max_flows = 262144
max_lookup_entries = 4194304

[[service]]
name = \"demo\"
vip = \"127.0.0.1:9875\"
protocol = \"udp\"
flow_idle_timeout = \"30s\"
scheduler = \"round-robin\"
when_all_down = \"drop\"
flow_state = \"first-packet\"
forwarding = \"local\"

[[service.backend]]
address = \"127.0.0.1:9876\"
weight = 1
drain = false

[[service.backend]]
address = \"127.0.0.1:9877\"
weight = 1
drain = false

[[service.backend]]
address = \"127.0.0.1:9878\"
weight = 1
drain = false
";
    assert_eq!(to_toml(&default_config()), expected);

    // A service with nothing but the required fields gets every default written out.
    let cfg = ok(&one_service("[service.health_check]\ntype = \"udp\"\n"));
    let text = round_trip(&cfg);
    let service = text.split("[[service]]\n").nth(1).expect("a service table");
    assert_eq!(
        service,
        "\
name = \"demo\"
vip = \"127.0.0.1:9875\"
protocol = \"udp\"
flow_idle_timeout = \"30s\"
scheduler = \"maglev\"
hash = \"5-tuple\"
flow_stale_after = \"never\"
maglev_table_size = 65537
when_all_down = \"drop\"
flow_state = \"first-packet\"
forwarding = \"local\"

[service.health_check]
type = \"udp\"
interval = \"1s\"
timeout = \"500ms\"
rise = 2
fall = 3
payload = \"xdplb-health\"
on_failure = \"keep-flows\"

[[service.backend]]
address = \"127.0.0.1:9876\"
weight = 1
drain = false
"
    );
}

/// Uses every field of the schema with a value other than its default where it has one.
const EVERY_FIELD_TOML: &str = r#"
interfaces = ["eth0", "eth1.100", "bond-0"]
xdp_mode = "native"
debug_log = true
hash_seed = 4294967295
metrics_listen = "[::1]:9100"

[limits]
max_services = 16
max_backends_per_service = 512
max_flows = 1048576
max_lookup_entries = 8388608

[[service]]
name = "dns.udp-primary_1"
vip = "0.0.0.0:53"
protocol = "udp"
flow_idle_timeout = "1500ms"
scheduler = "maglev"
hash = "source-ip-port"
maglev_table_size = 131071
when_all_down = "pass"

[service.health_check]
type = "udp"
interval = "2s 250ms"
timeout = "750ms"
rise = 5
fall = 7
port = 5353
payload = "ping \"quoted\" \\ tab\t'''\"\"\" newline\n nul\u0000 é ☃"
expect = "pong\r\n"
on_failure = "move-flows"

[[service.backend]]
address = "10.0.0.1:53"
weight = 100

[[service.backend]]
address = "10.0.0.2:53"
weight = 65535
drain = true

[[service.backend]]
address = "10.0.0.3:5353"

[[service]]
name = "web-check"
vip = "192.0.2.10:8080"
flow_idle_timeout = "90s"
scheduler = "source-hash"
hash = "source-ip"

[service.health_check]
type = "http"
interval = "1m"
timeout = "59s 999ms"
rise = 1
fall = 100
port = 8081
path = "/healthz?probe=\"x\"&y='é'\\#"
expect_status = 204

[[service.backend]]
address = "192.0.2.20:8080"
drain = true

[[service.backend]]
address = "192.0.2.21:8080"

[[service]]
name = "tcp-probed"
vip = "192.0.2.10:8081"
flow_idle_timeout = "2h"
scheduler = "weighted-round-robin"
when_all_down = "drop"

[service.health_check]
type = "tcp"
interval = "100ms"
timeout = "10ms"
port = 1
on_failure = "move-flows"

[[service.backend]]
address = "192.0.2.30:8081"
weight = 3

[[service.backend]]
address = "192.0.2.31:8081"
weight = 1
drain = true

[[service.backend]]
address = "192.0.2.32:8081"
weight = 2

[[service]]
name = "RR"
vip = "198.51.100.1:1"
flow_idle_timeout = "24h"
scheduler = "round-robin"

[[service.backend]]
address = "255.255.255.254:65535"

[[service]]
name = "rand"
vip = "198.51.100.1:65535"
flow_idle_timeout = "1s"
scheduler = "random"
when_all_down = "pass"

[service.health_check]
type = "udp"
interval = "1h"
timeout = "1h"
port = 65535

[[service.backend]]
address = "1.1.1.1:1"

[[service]]
name = "maglev-defaults"
vip = "203.0.113.7:4789"
flow_idle_timeout = "1h 30m 15s"

[service.health_check]
type = "http"

[[service.backend]]
address = "203.0.113.8:4789"
"#;

#[test]
fn to_toml_round_trips_every_field() {
    let cfg = ok(EVERY_FIELD_TOML);
    // The config really does use the interesting values.
    assert_eq!(cfg.xdp_mode, XdpModeSetting::Native);
    assert!(cfg.debug_log);
    assert_eq!(cfg.services.len(), 6);
    let [dns, web, tcp, rr, rand, mag] = &cfg.services[..] else {
        panic!("six services");
    };
    assert_eq!(dns.flow_idle_timeout, Duration::from_millis(1500));
    assert!(matches!(
        &dns.health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Udp {
                expect: Some(_),
                ..
            },
            port: Some(5353),
            on_failure: OnFailure::MoveFlows,
            ..
        })
    ));
    assert_eq!(web.scheduler, Scheduler::SourceHash);
    assert!(matches!(
        &web.health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                expect_status: 204,
                ..
            },
            ..
        })
    ));
    assert!(matches!(
        &tcp.health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Tcp,
            ..
        })
    ));
    assert_eq!(rr.scheduler, Scheduler::RoundRobin);
    assert_eq!(rand.scheduler, Scheduler::Random);
    assert_eq!(mag.scheduler, Scheduler::Maglev);

    let text = round_trip(&cfg);
    for line in [
        "interfaces = [\"eth0\", \"eth1.100\", \"bond-0\"]",
        "xdp_mode = \"native\"",
        "debug_log = true",
        "hash_seed = 4294967295",
        "metrics_listen = \"[::1]:9100\"",
        "max_services = 16",
        "max_backends_per_service = 512",
        "max_flows = 1048576",
        "max_lookup_entries = 8388608",
        "name = \"dns.udp-primary_1\"",
        "vip = \"0.0.0.0:53\"",
        "flow_idle_timeout = \"1500ms\"",
        "hash = \"source-ip-port\"",
        "maglev_table_size = 131071",
        "when_all_down = \"pass\"",
        "interval = \"2250ms\"",
        "timeout = \"750ms\"",
        "rise = 5",
        "fall = 7",
        "port = 5353",
        "on_failure = \"move-flows\"",
        "weight = 65535",
        "drain = true",
        "flow_idle_timeout = \"90s\"",
        "scheduler = \"source-hash\"",
        "hash = \"source-ip\"",
        "interval = \"1m\"",
        "timeout = \"59999ms\"",
        "expect_status = 204",
        "flow_idle_timeout = \"2h\"",
        "scheduler = \"weighted-round-robin\"",
        "timeout = \"10ms\"",
        "flow_idle_timeout = \"24h\"",
        "address = \"255.255.255.254:65535\"",
        "interval = \"1h\"",
        "timeout = \"1h\"",
        "flow_idle_timeout = \"5415s\"",
        "path = \"/\"",
        "expect_status = 200",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    // Only the services that hash get `hash`, only maglev ones `maglev_table_size`.
    assert_eq!(text.matches("\nhash = ").count(), 3);
    assert_eq!(text.matches("\nmaglev_table_size = ").count(), 2);
    assert_eq!(text.matches("\n[[service.backend]]\n").count(), 11);
    assert_eq!(text.matches("\n[service.health_check]\n").count(), 5);
    // Written text is stable: writing the parsed text again gives the same text.
    assert_eq!(to_toml(&ok(&text)), text);
}

#[test]
fn to_toml_escapes_strings() {
    let mut cfg = default_config();
    cfg.interfaces = [
        "q\"uote", "back\\sl", "'apos'", "#h=[x]", "é☃", "\"\"\"", "'''",
    ]
    .map(str::to_owned)
    .to_vec();
    let svc = &mut cfg.services[0];
    svc.name = "a.b-c_D.9".to_owned();
    svc.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Udp {
            payload: "\"\\'\n\r\n\t\0\u{1}\u{1b}\u{7f}\u{80}\u{2028}\u{feff}'''\"\"\"😀"
                .as_bytes()
                .to_vec(),
            expect: Some(b"\"\"\" # not a comment".to_vec()),
        },
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        port: None,
        on_failure: OnFailure::KeepFlows,
    });
    round_trip(&cfg);
    cfg.services[0].health_check = Some(HealthCheck {
        kind: HealthCheckKind::Http {
            path: "/\"q\"/\\b/'a'/'''/\"\"\"/#/é?x=[1]".to_owned(),
            expect_status: 599,
        },
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        port: Some(8080),
        on_failure: OnFailure::MoveFlows,
    });
    round_trip(&cfg);
}

#[test]
fn to_toml_writes_payloads_that_are_not_text_as_hex() {
    // Bytes that are not UTF-8 go out as payload_hex/expect_hex and come back the same.
    let mut cfg = default_config();
    cfg.services[0].health_check = Some(HealthCheck {
        kind: HealthCheckKind::Udp {
            payload: vec![b'o', 0xff, b'k'],
            expect: Some(vec![0xc3]),
        },
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        port: None,
        on_failure: OnFailure::KeepFlows,
    });
    let back = ok(&to_toml(&cfg));
    let Some(HealthCheck {
        kind: HealthCheckKind::Udp { payload, expect },
        ..
    }) = &back.services[0].health_check
    else {
        panic!("a udp check: {back:#?}");
    };
    assert_eq!(payload, &[b'o', 0xff, b'k']);
    assert_eq!(expect.as_deref(), Some(&[0xc3][..]));
    let text = to_toml(&cfg);
    assert!(
        text.contains("payload_hex = \"6fff6b\"") && text.contains("expect_hex = \"c3\""),
        "{text}"
    );
}

#[test]
fn written_durations_parse_back_exactly() {
    use std::time::Duration;
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ns"),
        (Duration::from_micros(250), "250us"),
        (Duration::from_millis(10), "10ms"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::new(1, 1), "1000000001ns"),
        (Duration::new(86_399, 999_999_000), "86399999999us"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_secs(59), "59s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_mins(2), "2m"),
        (Duration::from_mins(90), "90m"),
        (Duration::from_secs(5415), "5415s"),
        (Duration::from_hours(2), "2h"),
        (Duration::from_hours(24), "24h"),
        (Duration::MAX, "18446744073709551615s 999999999ns"),
    ];
    for (d, text) in cases {
        assert_eq!(write::duration_text(d), text, "{d:?}");
        assert_eq!(humantime::parse_duration(text), Ok(d), "{text}");
    }
    let mut rng = Rng(7);
    for _ in 0..10_000 {
        let d = rng.duration(Duration::ZERO, Duration::from_hours(48));
        let text = write::duration_text(d);
        assert_eq!(humantime::parse_duration(&text), Ok(d), "{text}");
    }
}

#[test]
fn to_toml_round_trips_random_configs() {
    let mut rng = Rng(0xddc0_ffee);
    // How often the generator produced each scheduler, each health check type (and
    // none), and a metrics address of each kind (and none), so that a change to the
    // generator cannot quietly stop exercising one of them.
    let mut schedulers = [0usize; 5];
    let mut checks = [0usize; 4];
    let mut metrics = [0usize; 3];
    for i in 0..200 {
        let cfg = random_config(&mut rng);
        for svc in &cfg.services {
            schedulers[svc.scheduler as usize] += 1;
            checks[match &svc.health_check {
                None => 0,
                Some(hc) => match hc.kind {
                    HealthCheckKind::Udp { .. } => 1,
                    HealthCheckKind::Tcp => 2,
                    HealthCheckKind::Http { .. } => 3,
                },
            }] += 1;
        }
        metrics[match cfg.metrics_listen {
            None => 0,
            Some(addr) if addr.is_ipv4() => 1,
            Some(_) => 2,
        }] += 1;
        let text = to_toml(&cfg);
        match parse(&text, ORIGIN) {
            Ok(back) => assert_eq!(back, cfg, "config #{i} changed; text:\n{text}"),
            Err(e) => panic!("config #{i} does not parse: {e}\ntext:\n{text}\nconfig: {cfg:#?}"),
        }
        assert_schema_order(&text);
    }
    assert!(
        schedulers.iter().all(|&n| n > 20),
        "schedulers: {schedulers:?}"
    );
    assert!(checks.iter().all(|&n| n > 20), "health checks: {checks:?}");
    assert!(
        metrics.iter().all(|&n| n > 20),
        "metrics_listen: {metrics:?}"
    );
}

/// A small deterministic PRNG (SplitMix64) for property-style tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value of `lo..=hi` (with a negligible modulo bias).
    fn range<T>(&mut self, lo: T, hi: T) -> T
    where
        T: Into<u64> + TryFrom<u64>,
        <T as TryFrom<u64>>::Error: fmt::Debug,
    {
        let (lo, hi) = (lo.into(), hi.into());
        assert!(lo <= hi, "{lo} > {hi}");
        let v = match (hi - lo).checked_add(1) {
            Some(n) => lo + self.next() % n,
            None => self.next(),
        };
        T::try_from(v).expect("in range")
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let len = u64::try_from(items.len()).expect("small");
        items[usize::try_from(self.next() % len).expect("small")]
    }

    /// `n` pieces of `atoms` joined.
    fn text(&mut self, atoms: &[&str], n: usize) -> String {
        (0..n).map(|_| self.pick(atoms)).collect()
    }

    /// A duration of `min..=max`, often a whole number of hours, minutes, seconds,
    /// milliseconds or microseconds, sometimes exactly a bound.
    fn duration(&mut self, min: Duration, max: Duration) -> Duration {
        if self.chance(10) {
            return min;
        }
        if self.chance(10) {
            return max;
        }
        let min = u64::try_from(min.as_nanos()).expect("small");
        let max = u64::try_from(max.as_nanos()).expect("small");
        let unit = self.pick(&[
            3_600_000_000_000,
            60_000_000_000,
            1_000_000_000,
            1_000_000,
            1_000,
            1,
        ]);
        let (lo, hi) = (min.div_ceil(unit), max / unit);
        let nanos = if lo <= hi {
            self.range(lo, hi) * unit
        } else {
            self.range(min, max)
        };
        Duration::from_nanos(nanos)
    }
}

/// Pieces of payloads: quotes, escapes, control characters and non-ASCII.
const TEXT_ATOMS: &[&str] = &[
    "a", "Z", "0", " ", "\"", "'", "\\", "\"\"\"", "'''", "\n", "\r\n", "\t", "\0", "\u{1b}",
    "\u{7f}", "\u{80}", "é", "☃", "😀", "#", "=", "[[", "]", "\u{2028}", "\u{feff}", "\\u0041",
];
/// Pieces of HTTP paths: no whitespace or control characters.
const PATH_ATOMS: &[&str] = &[
    "/", "a", "Z", "0", "\"", "'", "\\", "\"\"\"", "'''", "%20", "?x=1", "&", "#", "é", "☃", "😀",
    "=", "[", "]",
];
/// Pieces of interface names: no whitespace, control characters, '/' or ':'.
const IFACE_ATOMS: &[&str] = &[
    "e", "t", "h", "0", "1", ".", "-", "_", "\"", "'", "\\", "#", "=", "[", "]", "é", "☃", "@",
];
const NAME_CHARS: &[&str] = &["a", "b", "z", "A", "Q", "Z", "0", "5", "9", "_", ".", "-"];

fn random_config(rng: &mut Rng) -> Config {
    loop {
        if let Some(cfg) = try_random_config(rng) {
            return cfg;
        }
    }
}

/// A random valid config, or `None` if its scheduling tables do not fit in the
/// largest lookup pool.
fn try_random_config(rng: &mut Rng) -> Option<Config> {
    use std::{collections::HashSet, net::SocketAddr, time::Duration};

    let mut interfaces: Vec<String> = Vec::new();
    let count = rng.range(1u8, 3);
    while interfaces.len() < usize::from(count) {
        let n = usize::from(rng.range(1u8, 6));
        let name = rng.text(IFACE_ATOMS, n);
        if name.len() <= 15 && name != "." && name != ".." && !interfaces.contains(&name) {
            interfaces.push(name);
        }
    }
    let xdp_mode = rng.pick(&[
        XdpModeSetting::Auto,
        XdpModeSetting::Native,
        XdpModeSetting::Generic,
    ]);
    let hash_seed = match rng.range(0u8, 9) {
        0 => 0,
        1 => u32::MAX,
        2 => validate::DEFAULT_HASH_SEED,
        _ => rng.range(0, u32::MAX),
    };
    let metrics_listen = match rng.range(0u8, 2) {
        0 => None,
        1 => Some(SocketAddr::from((
            Ipv4Addr::from_bits(rng.range(0, u32::MAX)),
            rng.range(0, u16::MAX),
        ))),
        _ => {
            let ip = std::net::Ipv6Addr::from_bits(
                u128::from(rng.next()) << 64 | u128::from(rng.next()),
            );
            let scope = if rng.chance(30) {
                rng.range(1, u32::MAX)
            } else {
                0
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                rng.range(0, u16::MAX),
                0,
                scope,
            )))
        }
    };

    let mut services = Vec::new();
    let mut names = HashSet::new();
    let mut vips = HashSet::new();
    let service_count = usize::from(rng.range(1u8, 6));
    while services.len() < service_count {
        let n = if rng.chance(10) {
            64
        } else {
            usize::from(rng.range(1u8, 12))
        };
        let name = rng.text(NAME_CHARS, n);
        let vip_ip = if rng.chance(15) {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::from_bits(rng.range(0, u32::MAX))
        };
        let vip = SocketAddr::from((vip_ip, rng.range(1, u16::MAX)));
        // Multicast, broadcast and 0.0.0.0/8 (but the wildcard) are no vips.
        let unusable_vip = !vip_ip.is_unspecified()
            && (vip_ip.is_multicast() || vip_ip.is_broadcast() || vip_ip.octets()[0] == 0);
        if unusable_vip || names.contains(&name) || vips.contains(&vip) {
            continue;
        }
        names.insert(name.clone());
        vips.insert(vip);

        let mut backends: Vec<BackendConfig> = Vec::new();
        let backend_count = usize::from(rng.range(1u8, 6));
        while backends.len() < backend_count {
            let ip = Ipv4Addr::from_bits(rng.range(0, u32::MAX));
            let address = SocketAddr::from((ip, rng.range(1, u16::MAX)));
            if ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || backends.iter().any(|b| b.address == address)
            {
                continue;
            }
            backends.push(BackendConfig {
                address,
                weight: if rng.chance(30) {
                    1
                } else {
                    rng.range(1, u16::MAX)
                },
                drain: rng.chance(25),
            });
        }
        if backends.iter().all(|b| b.drain) {
            let keep = usize::from(rng.range(0, u8::try_from(backends.len() - 1).expect("few")));
            backends[keep].drain = false;
        }

        let scheduler = rng.pick(&[
            Scheduler::Maglev,
            Scheduler::RoundRobin,
            Scheduler::WeightedRoundRobin,
            Scheduler::Random,
            Scheduler::SourceHash,
        ]);
        let hash = match scheduler {
            Scheduler::Maglev => rng.pick(&[
                HashFields::FiveTuple,
                HashFields::SourceIp,
                HashFields::SourceIpPort,
            ]),
            Scheduler::SourceHash => HashFields::SourceIp,
            _ => HashFields::FiveTuple,
        };
        let maglev_table_size = if scheduler == Scheduler::Maglev {
            let min = 100 * u64::try_from(backends.len()).expect("few");
            let start = match rng.range(0u8, 3) {
                0 => min,
                1 => rng.range(min, 70_000),
                2 => rng.pick(&[65_537, 131_071, 262_147, 655_373]),
                _ => rng.range(min, 1 << 24),
            };
            let size = validate::next_prime(start);
            if size > 1 << 24 {
                validate::DEFAULT_MAGLEV_TABLE_SIZE
            } else {
                u32::try_from(size).expect("at most 2^24")
            }
        } else {
            validate::DEFAULT_MAGLEV_TABLE_SIZE
        };

        let health_check = if rng.chance(35) {
            None
        } else {
            let kind = match rng.range(0u8, 2) {
                0 => {
                    let payload = if rng.chance(3) {
                        vec![b'x'; 65_507]
                    } else {
                        let n = usize::from(rng.range(0u8, 12));
                        rng.text(TEXT_ATOMS, n).into_bytes()
                    };
                    let expect = if rng.chance(50) {
                        let n = usize::from(rng.range(0u8, 8));
                        Some(rng.text(TEXT_ATOMS, n).into_bytes())
                    } else {
                        None
                    };
                    HealthCheckKind::Udp { payload, expect }
                }
                1 => HealthCheckKind::Tcp,
                _ => {
                    let n = usize::from(rng.range(0u8, 10));
                    HealthCheckKind::Http {
                        path: format!("/{}", rng.text(PATH_ATOMS, n)),
                        expect_status: rng.range(100, 599),
                    }
                }
            };
            let interval = rng.duration(Duration::from_millis(100), Duration::from_hours(1));
            Some(HealthCheck {
                kind,
                interval,
                timeout: rng.duration(Duration::from_millis(10), interval),
                rise: rng.range(1, 100),
                fall: rng.range(1, 100),
                port: rng.chance(40).then(|| rng.range(1, u16::MAX)),
                on_failure: rng.pick(&[OnFailure::KeepFlows, OnFailure::MoveFlows]),
            })
        };

        let forwarding = if backends.iter().any(|b| b.address.ip().is_loopback()) {
            Forwarding::Local
        } else if backends.iter().any(|b| b.address.ip() == vip.ip()) {
            // nat and fullnat may not send to the vip's own address.
            Forwarding::Local
        } else if backends.iter().all(|b| b.address.port() == vip.port()) {
            rng.pick(&[
                Forwarding::Local,
                Forwarding::Nat,
                Forwarding::DsrL2,
                Forwarding::DsrIpip,
                Forwarding::FullNat,
            ])
        } else {
            rng.pick(&[Forwarding::Local, Forwarding::Nat, Forwarding::FullNat])
        };
        let flow_idle_timeout = rng.duration(Duration::from_secs(1), Duration::from_hours(24));
        // 2s..=102.3s in 100 ms steps, shorter than the idle timeout; hashing schedulers only.
        let flow_stale_after =
            if matches!(scheduler, Scheduler::Maglev | Scheduler::SourceHash) && rng.chance(50) {
                Some(Duration::from_millis(
                    100 * u64::from(rng.range(20u16, 1023)),
                ))
                .filter(|d| *d < flow_idle_timeout)
            } else {
                None
            };
        services.push(ServiceConfig {
            name,
            vip,
            protocol: Protocol::Udp,
            flow_idle_timeout,
            flow_stale_after,
            scheduler,
            hash,
            maglev_table_size,
            health_check,
            when_all_down: rng.pick(&[WhenAllDown::Drop, WhenAllDown::Pass]),
            flow_state: if matches!(forwarding, Forwarding::DsrL2 | Forwarding::DsrIpip)
                && matches!(scheduler, Scheduler::Maglev | Scheduler::SourceHash)
            {
                rng.pick(&[FlowState::FirstPacket, FlowState::SecondPacket])
            } else {
                FlowState::FirstPacket
            },
            forwarding,
            encap_source: (forwarding == Forwarding::DsrIpip).then(|| {
                // /8 to /32 of unicast space outside 0.0.0.0/8 and loopback.
                let prefix_len = rng.range(8u8, 32);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                let first = loop {
                    let first = rng.range(1u32, 223);
                    if first != 127 {
                        break first;
                    }
                };
                EncapSource {
                    base: Ipv4Addr::from_bits((first << 24 | rng.range(0, 0xff_ffff)) & mask)
                        .into(),
                    prefix_len,
                }
            }),
            fullnat: (forwarding == Forwarding::FullNat).then(|| {
                let port_first = rng.range(1, u16::MAX);
                FullnatConfig {
                    source: Ipv4Addr::new(
                        10,
                        rng.range(0, 255),
                        rng.range(0, 255),
                        rng.range(1, 254),
                    )
                    .into(),
                    port_first,
                    port_last: rng.range(port_first, u16::MAX),
                }
            }),
            backends,
        });
    }

    let limits = if rng.chance(25) {
        Limits::DEFAULT
    } else {
        let most_backends = services
            .iter()
            .map(|s| s.backends.len())
            .max()
            .expect("some");
        let max_services = rng.range(u32::try_from(services.len()).expect("few"), 65_536);
        let max_backends_per_service = rng.range(
            u32::try_from(most_backends).expect("few"),
            (4_194_304 / max_services).min(65_536),
        );
        let mut limits = Limits {
            max_services,
            max_backends_per_service,
            max_flows: rng.range(1024, 67_108_864),
            max_lookup_entries: 0,
        };
        let needed = lookup_entries_needed(&services, &limits).max(1024);
        if needed > 67_108_864 {
            return None;
        }
        let needed = u32::try_from(needed).expect("at most 2^26");
        limits.max_lookup_entries = if rng.chance(20) {
            needed
        } else {
            rng.range(needed, 67_108_864)
        };
        limits
    };
    if lookup_entries_needed(&services, &limits) > u64::from(limits.max_lookup_entries) {
        return None;
    }
    // The rules between services: no backend shared by two local/nat services, no
    // fullnat_source on a vip address, no wildcard port inside a fullnat_ports range.
    let reply_backends: Vec<SocketAddr> = services
        .iter()
        .filter(|s| matches!(s.forwarding, Forwarding::Local | Forwarding::Nat))
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    let shared = reply_backends.iter().collect::<HashSet<_>>().len() != reply_backends.len();
    let ranges: Vec<FullnatConfig> = services.iter().filter_map(|s| s.fullnat).collect();
    let source_on_vip = ranges
        .iter()
        .any(|f| services.iter().any(|t| t.vip.ip() == f.source));
    let wildcard_in_range = services
        .iter()
        .filter(|w| w.vip.ip().is_unspecified())
        .any(|w| {
            ranges
                .iter()
                .any(|f| (f.port_first..=f.port_last).contains(&w.vip.port()))
        });
    if shared || source_on_vip || wildcard_in_range {
        return None;
    }
    let api_listen = match rng.range(0u8, 3) {
        0 => None,
        1 => Some(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            rng.range(1, u16::MAX),
        ))),
        _ => Some(SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            rng.range(1, u16::MAX),
        ))),
    };
    // metrics_listen and api_listen may not share a port (when they could collide).
    if let (Some(m), Some(a)) = (metrics_listen, api_listen)
        && m.port() == a.port()
    {
        return None;
    }

    Some(Config {
        interfaces,
        xdp_mode,
        debug_log: rng.chance(50),
        hash_seed,
        flow_guard_rate: rng.pick(&[0, 1, 100_000, u32::MAX]),
        metrics_listen,
        api_listen,
        limits,
        announce: rng.chance(30).then(|| Announce {
            table: rng.pick(&[1, 4242, 252, 256, u32::MAX]),
            drained: rng.chance(50),
        }),
        services,
    })
}

// ---- saving the file -----------------------------------------------------------

/// A directory of its own under the system temp dir, removed on drop (even on failure).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdplb-save-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn save_writes_through_a_symlink_and_keeps_the_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("symlink");
    let real_dir = dir.0.join("etc");
    std::fs::create_dir(&real_dir).expect("mkdir");
    let target = real_dir.join("real.toml");
    std::fs::write(&target, "old\n").expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.0.join("xdplb.toml");
    std::os::unix::fs::symlink("etc/real.toml", &link).expect("symlink");

    assert_eq!(save(&link, b"new\n").expect("save"), Saved::Replaced);

    let meta = std::fs::symlink_metadata(&link).expect("lstat");
    assert!(
        meta.file_type().is_symlink(),
        "the config path must still be a symlink: {meta:?}"
    );
    assert_eq!(
        std::fs::read_link(&link).expect("readlink"),
        Path::new("etc/real.toml"),
        "the link must point where it pointed"
    );
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "new\n");
    assert_eq!(
        std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o600,
        "the target keeps its mode"
    );
    assert_eq!(
        dir.names(),
        ["etc", "xdplb.toml"],
        "nothing left beside the link"
    );
    let mut left: Vec<_> = std::fs::read_dir(&real_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["real.toml"], "no temporary file beside the target");
}

#[test]
fn save_keeps_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = TempDir::new("mode");
    let path = dir.0.join("xdplb.toml");
    for mode in [0o600, 0o640, 0o644] {
        std::fs::write(&path, "old\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        // As root, give the file another owner, which a plain new file would not have.
        let owner = if running_as_root() {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
            (65534, 65534)
        } else {
            let m = std::fs::metadata(&path).expect("stat");
            (m.uid(), m.gid())
        };
        save(&path, b"new\n").expect("save");
        let m = std::fs::metadata(&path).expect("stat");
        assert_eq!(m.permissions().mode() & 0o7777, mode, "mode {mode:o} kept");
        assert_eq!((m.uid(), m.gid()), owner, "owner kept");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new\n");
        assert_eq!(dir.names(), ["xdplb.toml"], "no temporary file left");
    }
}

/// Whether this process runs as root (reads /proc, no unsafe).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn save_of_a_missing_file_names_it_and_creates_nothing() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("gone.toml");
    let e = save(&path, b"x").expect_err("nothing to save over");
    assert!(e.to_string().contains("gone.toml"), "{e}");
    assert!(dir.names().is_empty(), "{:?}", dir.names());
}

// ---- IPv6: typed as SocketAddr/IpAddr, refused until the data plane takes it ---------

/// Every address field takes IPv6 with an IPv6 vip.
#[test]
fn ipv6_is_accepted_in_every_address_field() {
    let backend = "[[service.backend]]\naddress = \"[2001:db8:1::5]:9875\"\n";
    let cfg = ok(&format!(
        "{IFACES}[[service]]\nname = \"ipip\"\nvip = \"[2001:db8::1]:9875\"\nforwarding = \"dsr-ipip\"\nencap_source = \"2001:db8:ff::/64\"\n{backend}\
         [[service]]\nname = \"full\"\nvip = \"[2001:db8::2]:9875\"\nforwarding = \"fullnat\"\nfullnat_source = \"2001:db8:86::1\"\n{backend}"
    ));
    let ipip = &cfg.services[0];
    let e = ipip.encap_source.expect("encap_source");
    assert_eq!(e.base, "2001:db8:ff::".parse::<IpAddr>().unwrap());
    assert_eq!(e.prefix_len, 64);
    assert_eq!(e.to_string(), "2001:db8:ff::/64");
    let f = cfg.services[1].fullnat.expect("fullnat");
    assert_eq!(f.source, "2001:db8:86::1".parse::<IpAddr>().unwrap());
}

/// IPv6 `encap_source` and `fullnat_source` get the sanity refusals IPv4 gets.
#[test]
fn ipv6_sources_are_checked_like_ipv4_ones() {
    let backend = "[[service.backend]]\naddress = \"[2001:db8:1::5]:9875\"\n";
    let ipip = |prefix: &str| {
        format!(
            "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:9875\"\nforwarding = \"dsr-ipip\"\nencap_source = \"{prefix}\"\n{backend}"
        )
    };
    for (bad, variant, reason) in [
        ("2001:db8:ff::1/64", "invalid", "no host bits set"),
        ("2001:db8:ff::/129", "invalid", "no host bits set"),
        ("2000::/8", "unusable", "shorter than /16"),
        ("::/16", "unusable", "::/8 holds the unspecified, loopback"),
        ("ff05::/16", "unusable", "multicast space (ff00::/8)"),
        ("fe80::/64", "unusable", "link-local address (fe80::/10)"),
    ] {
        let e = err(&ipip(bad));
        match (&e, variant) {
            (ConfigError::InvalidEncapSource { value, .. }, "invalid")
            | (ConfigError::UnusableEncapSource { value, .. }, "unusable") => {
                assert_eq!(value, bad);
            }
            (other, _) => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[reason, &line(6)]);
    }
    ok(&ipip("2001:db8:ff::/128"));
    let fullnat = |source: &str| {
        format!(
            "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:9875\"\nforwarding = \"fullnat\"\nfullnat_source = \"{source}\"\n{backend}"
        )
    };
    for bad in [
        "::",
        "::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "2001:db8::zz",
        "fe80::1",
    ] {
        let e = err(&fullnat(bad));
        match &e {
            ConfigError::InvalidFullnat { field, value, .. } => {
                assert_eq!(*field, "fullnat_source");
                assert_eq!(value, bad);
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &["unicast IPv4 or IPv6 address", &line(6)]);
    }
}

/// `encap_source` and `fullnat_source` of the other family than the vip are refused with the
/// field, the value, the line and the reason.
#[test]
fn sources_of_the_other_family_are_refused() {
    let backend_v4 = "[[service.backend]]\naddress = \"10.0.0.1:9875\"\n";
    let backend_v6 = "[[service.backend]]\naddress = \"[2001:db8::5]:9875\"\n";
    let cases = [
        (
            format!(
                "{IFACES}[[service]]\nname = \"demo\"\nvip = \"10.1.0.1:9875\"\nforwarding = \"dsr-ipip\"\nencap_source = \"2001:db8::/64\"\n{backend_v4}"
            ),
            "encap_source \"2001:db8::/64\" is IPv6",
        ),
        (
            format!(
                "{IFACES}[[service]]\nname = \"demo\"\nvip = \"10.1.0.1:9875\"\nforwarding = \"fullnat\"\nfullnat_source = \"2001:db8::9\"\n{backend_v4}"
            ),
            "fullnat_source \"2001:db8::9\" is IPv6",
        ),
        (
            format!(
                "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:9875\"\nforwarding = \"dsr-ipip\"\nencap_source = \"10.200.0.0/24\"\n{backend_v6}"
            ),
            "encap_source \"10.200.0.0/24\" is IPv4",
        ),
        (
            format!(
                "{IFACES}[[service]]\nname = \"demo\"\nvip = \"[2001:db8::1]:9875\"\nforwarding = \"fullnat\"\nfullnat_source = \"10.86.0.1\"\n{backend_v6}"
            ),
            "fullnat_source \"10.86.0.1\" is IPv4",
        ),
    ];
    for (text, what) in cases {
        let e = err(&text);
        assert!(matches!(e, ConfigError::MixedFamilies { .. }), "{e:?}");
        assert_msg(&e, &[what, "must all be of one family", "NAT64", &line(6)]);
    }
}

/// The data-plane writers check families too: a typed config that mixes them (one that skipped
/// validation) is refused, not written.
#[test]
fn the_data_plane_refuses_an_unvalidated_mixed_family() {
    let mut cfg = default_config();
    cfg.services[0].backends[0].address = "[::1]:9876".parse().expect("literal");
    let e = crate::dataplane::reconcile::desired_state(&cfg, None).expect_err("refused");
    assert!(e.to_string().contains("not of the vip's family"), "{e}");
    assert_eq!(
        socket_v4("[::1]:1".parse().expect("literal")),
        Err(Ipv6Unsupported("::1".parse().expect("literal")))
    );
}

// ---- hex payloads of udp health checks -----------------------------------------------

/// `payload_hex`/`expect_hex` carry bytes that are not text (a DNS query whose ID is >= 0x80),
/// and each mistake gets its own error at its place: (fields, expected bytes or error parts).
#[test]
fn hex_payloads_table() {
    type Expect = Result<(&'static [u8], Option<&'static [u8]>), &'static [&'static str]>;
    let cases: &[(&str, Expect)] = &[
        (
            "payload_hex = \"ABcd0100000100000000000003777777\"\nexpect_hex = \"abcd\"\n",
            Ok((
                &[
                    0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w',
                ],
                Some(&[0xab, 0xcd]),
            )),
        ),
        ("payload_hex = \"00ff\"\n", Ok((&[0, 0xff], None))),
        (
            "payload = \"ping\"\npayload_hex = \"00\"\n",
            Err(&["sets both payload and payload_hex", "test.toml:8:"]),
        ),
        (
            "expect = \"x\"\nexpect_hex = \"00\"\n",
            Err(&["sets both expect and expect_hex", "test.toml:8:"]),
        ),
        (
            "payload_hex = \"abc\"\n",
            Err(&["payload_hex is not hex bytes", "odd number", "test.toml:7:"]),
        ),
        (
            "expect_hex = \"zz\"\n",
            Err(&["expect_hex is not hex bytes", "'z' is not a hex digit"]),
        ),
        (
            "payload_hex = \"\"\n",
            Err(&["payload_hex is not hex bytes", "empty"]),
        ),
        (
            "payload_hex = \"0x00\"\n",
            Err(&["payload_hex is not hex bytes", "'x' is not a hex digit"]),
        ),
    ];
    for (fields, expect) in cases {
        let text = with_check(&format!("type = \"udp\"\n{fields}"));
        match expect {
            Ok((payload, expected)) => {
                let cfg = ok(&text);
                let hc = cfg.services[0].health_check.as_ref().expect("a check");
                assert_eq!(
                    hc.kind,
                    HealthCheckKind::Udp {
                        payload: payload.to_vec(),
                        expect: expected.map(<[u8]>::to_vec),
                    },
                    "{fields}"
                );
                // And it round-trips through the writer.
                assert_eq!(ok(&to_toml(&cfg)), cfg, "{fields}");
            }
            Err(parts) => assert_msg(&err(&text), parts),
        }
    }
    // Hex fields belong to udp checks only.
    let e = err(&with_check("type = \"tcp\"\npayload_hex = \"00\"\n"));
    assert_msg(&e, &["payload_hex", "only applies to type = \"udp\""]);
}

// ---- one validation path for the file and for changes made to the typed model ---------

/// A typed config changed in memory (as the API changes it) gets, from [`check`], the same
/// error the file with that config gets from [`parse`], less the file position.
#[test]
fn typed_changes_get_the_files_errors_without_positions() {
    let base = ok("interfaces = [\"lo\"]\n\
         [[service]]\nname = \"a\"\nvip = \"10.9.0.1:53\"\nforwarding = \"fullnat\"\nfullnat_source = \"10.86.0.1\"\n\
         [[service.backend]]\naddress = \"10.0.0.1:53\"\n\
         [[service]]\nname = \"b\"\nvip = \"10.9.0.2:53\"\nscheduler = \"round-robin\"\n\
         [[service.backend]]\naddress = \"10.0.0.2:53\"\n[[service.backend]]\naddress = \"10.0.0.3:53\"\n");
    type Change = fn(&mut Config);
    let cases: &[(&str, Change, &str)] = &[
        (
            "same vip",
            |c| c.services[1].vip = c.services[0].vip,
            "already used by service \"a\"",
        ),
        (
            "shared reply backend",
            |c| {
                c.services[1].forwarding = Forwarding::Nat;
                c.services[1].backends[1].address = "10.0.0.2:53".parse().expect("literal");
            },
            "10.0.0.2:53",
        ),
        (
            "fullnat source on a vip",
            |c| {
                let vip = c.services[1].vip.ip();
                if let Some(f) = c.services[0].fullnat.as_mut() {
                    f.source = vip;
                }
            },
            "fullnat_source",
        ),
        (
            "every backend drained",
            |c| {
                c.services[1]
                    .backends
                    .iter_mut()
                    .for_each(|b| b.drain = true);
            },
            "drain",
        ),
        (
            "a wildcard vip in the fullnat ports",
            |c| c.services[1].vip = "0.0.0.0:30000".parse().expect("literal"),
            "fullnat_ports",
        ),
        (
            "a duplicate name",
            |c| c.services[1].name = "a".into(),
            "\"a\"",
        ),
        ("no services", |c| c.services.clear(), "service"),
        (
            "an IPv6 backend of an IPv4 service",
            |c| c.services[1].backends[0].address = "[2001:db8::1]:53".parse().expect("literal"),
            "is IPv6 but the service's vip 10.9.0.2:53 is IPv4",
        ),
    ];
    assert_eq!(check(&base, "the change").expect("valid"), base);
    for (name, change, needle) in cases {
        let mut cfg = base.clone();
        change(&mut cfg);
        let typed = change_error_message(&check(&cfg, "the change").expect_err(name));
        let file = err(&to_toml(&cfg)).to_string();
        assert!(typed.contains(needle), "{name}: {typed}");
        assert!(
            typed.starts_with("the change: ") && !typed.contains("line"),
            "{name}: no file position: {typed}"
        );
        // The same message once the file's positions are taken out.
        let mut unplaced = file.clone();
        while let Some(i) = unplaced.find(" (line ") {
            let Some(j) = unplaced[i..].find(')') else {
                break;
            };
            unplaced.replace_range(i..=(i + j), "");
        }
        let file_message = unplaced.split_once(": ").map_or("", |(_, m)| m);
        let typed_message = typed.split_once(": ").map_or("", |(_, m)| m);
        assert_eq!(typed_message, file_message, "{name}: file {file}");
    }
}

// ---- [announce] ------------------------------------------------------------------

fn with_announce(section: &str) -> String {
    format!(
        "{IFACES}[announce]\n{section}{}",
        &one_service("")[IFACES.len()..]
    )
}

#[test]
fn announce_section_is_optional_and_parsed_with_its_defaults() {
    assert_eq!(ok(&one_service("")).announce, None);
    assert_eq!(
        ok(&with_announce("table = 4242\n")).announce,
        Some(Announce {
            table: 4242,
            drained: false
        })
    );
    assert_eq!(
        ok(&with_announce("table = 1\ndrained = true\n")).announce,
        Some(Announce {
            table: 1,
            drained: true
        })
    );
    // Written back, it reads the same.
    let cfg = ok(&with_announce("table = 77\ndrained = true\n"));
    assert_eq!(ok(&to_toml(&cfg)), cfg);
    assert_eq!(check(&cfg, "the change").expect("valid"), cfg);
}

#[test]
fn announce_refuses_the_hosts_own_tables_a_missing_table_and_unknown_keys() {
    for bad in ["0", "253", "254", "255", "-1", "4294967296"] {
        let e = parse(&with_announce(&format!("table = {bad}\n")), ORIGIN)
            .expect_err(bad)
            .to_string();
        assert!(
            e.contains("[announce] table must be a kernel routing table id")
                && e.contains(&format!("got {bad}")),
            "{bad}: {e}"
        );
    }
    let e = parse(&with_announce("drained = true\n"), ORIGIN)
        .expect_err("no table")
        .to_string();
    assert!(
        e.contains("[announce] is missing the required field `table`"),
        "{e}"
    );
    let e = parse(&with_announce("table = 4242\nprefix = 24\n"), ORIGIN)
        .expect_err("unknown key")
        .to_string();
    assert!(e.contains("unknown field `prefix` in [announce]"), "{e}");
}
