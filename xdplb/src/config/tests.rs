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

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

// ---- positions ---------------------------------------------------------------

#[test]
fn error_is_small() {
    // Keeps `Result<_, ConfigError>` cheap and clippy's `result_large_err` quiet
    // for every caller.
    assert!(
        std::mem::size_of::<ConfigError>() <= 128,
        "{}",
        std::mem::size_of::<ConfigError>()
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
    let e = err(&one_service("scheduler = \"rr\"\n"));
    match &e {
        ConfigError::UnknownField { field, table, .. } => {
            assert_eq!(field, "scheduler");
            assert_eq!(*table, "[[service]]");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(
        &e,
        &[
            "scheduler",
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
            "[[service]]\nname = \"s{i}\"\nvip = \"127.0.0.1:{}\"\n[[service.backend]]\naddress = \"127.0.0.1:9000\"\n",
            1000 + i
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

#[test]
fn ipv6_vip_is_not_supported_yet() {
    for bad in ["[::1]:53", "::1", "[2001:db8::1]:9875", "2001:db8::1:53"] {
        let e = err(&with_vip(bad));
        match &e {
            ConfigError::Ipv6NotSupported { value, what, .. } => {
                assert_eq!(value, bad);
                assert_eq!(what, "service \"demo\" vip");
            }
            other => panic!("wrong variant for {bad:?}: {other:?}"),
        }
        assert_msg(&e, &[bad, "IPv6 is not supported yet", &line(4)]);
    }
}

#[test]
fn unspecified_vip_is_accepted() {
    let cfg = ok(&with_vip("0.0.0.0:9875"));
    assert_eq!(
        cfg.services[0].vip,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9875)
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

#[test]
fn ipv6_backend_is_not_supported_yet() {
    let e = err(&with_backend("address = \"[::1]:9876\"\n"));
    match &e {
        ConfigError::Ipv6NotSupported { what, value, .. } => {
            assert_eq!(what, "service \"demo\" backend #1 address");
            assert_eq!(value, "[::1]:9876");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_msg(&e, &["[::1]:9876", "IPv6", &line(6)]);
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

#[test]
fn same_backend_in_two_services_is_fine() {
    let text = format!(
        "{IFACES}[[service]]\nname = \"a\"\nvip = \"127.0.0.1:53\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n\
         [[service]]\nname = \"b\"\nvip = \"127.0.0.1:54\"\n[[service.backend]]\naddress = \"127.0.0.1:5353\"\n"
    );
    assert_eq!(ok(&text).services.len(), 2);
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
        limits: Limits::DEFAULT,
        services: vec![
            ServiceConfig {
                name: "dns".to_owned(),
                vip: SocketAddrV4::new(ip(192, 0, 2, 10), 53),
                protocol: Protocol::Udp,
                flow_idle_timeout: Duration::from_secs(30),
                backends: vec![
                    BackendConfig {
                        address: SocketAddrV4::new(ip(10, 0, 0, 1), 53),
                        weight: 1,
                    },
                    BackendConfig {
                        address: SocketAddrV4::new(ip(10, 0, 0, 2), 5353),
                        weight: 3,
                    },
                ],
            },
            ServiceConfig {
                name: "syslog".to_owned(),
                vip: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 514),
                protocol: Protocol::Udp,
                flow_idle_timeout: Duration::from_secs(300),
                backends: vec![BackendConfig {
                    address: SocketAddrV4::new(ip(10, 0, 1, 1), 514),
                    weight: 10,
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
    assert_eq!(cfg.limits, Limits::DEFAULT);
    assert_eq!(cfg.services.len(), 1);
    let svc = &cfg.services[0];
    assert_eq!(svc.name, "demo");
    assert_eq!(svc.vip, local(9875));
    assert_eq!(svc.protocol, Protocol::Udp);
    assert_eq!(svc.flow_idle_timeout, Duration::from_secs(30));
    let backends: Vec<_> = svc.backends.iter().map(|b| (b.address, b.weight)).collect();
    assert_eq!(
        backends,
        [(local(9876), 1), (local(9877), 1), (local(9878), 1)]
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
    let e = match load(&path) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
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
fn big_config(services: u32, backends: u32) -> String {
    let mut text = String::with_capacity(64 + services as usize * (64 + backends as usize * 26));
    text.push_str(IFACES);
    for s in 0..services {
        let _ = write!(
            text,
            "[[service]]\nname = \"s{s}\"\nvip = \"10.0.{}.{}:53\"\nbackend = [",
            s / 256,
            s % 256
        );
        for b in 0..backends {
            let _ = write!(text, "{{address=\"10.1.0.1:{}\"}},", b + 1);
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
