//! Tier 2: the IPv6 data plane (`xdplb_ingress6`, tail-called by `xdplb_ingress` for IPv6
//! frames, and `xdplb_nat_reply6`) through BPF_PROG_TEST_RUN: the IPv6 counterparts of the
//! IPv4 cases of xdp_testrun, forwarding_testrun and hardening_testrun for `local`, `nat`,
//! `fullnat` and `dsr-l2`, and the extension-header policy. Needs root.
//!
//! The services are the IPv4 test configs written with IPv6 addresses (`a.b.c.d` becomes
//! `2001:db8::a.b.c.d`, `0.0.0.0:PORT` the wildcard `[::]:PORT`), loaded as the daemon loads
//! them: parsed and validated, planned by `reconcile::desired_state` and written by
//! `Dataplane::apply_config`. Expected frames are built independently (`Udp6Frame`, checked
//! with etherparse's `decode6`).

use xdplb::{
    config::{self, Config},
    dataplane::{Dataplane, MapWriter, reconcile},
    packet::FRAME_DST_MAC,
    testrun::{self, XdpRun},
};
use xdplb_common::{Service, Stat};
use xdplb_test_support::{v6::*, *};

/// The tutorial's three backends (round robin) and a wildcard service, as in xdp_testrun,
/// over IPv6.
const LO_CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "demo"
vip = "[2001:db8::7f00:1]:9875"
scheduler = "round-robin"
[[service.backend]]
address = "[2001:db8::7f00:1]:9876"
[[service.backend]]
address = "[2001:db8::7f00:1]:9877"
[[service.backend]]
address = "[2001:db8::7f00:1]:9878"

[[service]]
name = "any-address"
vip = "[::]:7000"
[[service.backend]]
address = "[2001:db8::a00:7]:7001"
"#;

const CLIENT: &str = "[2001:db8::a01:203]:4444";
const VIP: &str = "[2001:db8::7f00:1]:9875";
const BACKENDS: [&str; 3] = [
    "[2001:db8::7f00:1]:9876",
    "[2001:db8::7f00:1]:9877",
    "[2001:db8::7f00:1]:9878",
];

/// Loads the data plane with the IPv6 config `toml` as the daemon does (parse and validate,
/// plan, write the maps), frames to FRAME_DST_MAC accepted on lo, round-robin cursors at 0.
fn load_v6(toml: &str) -> (Config, Dataplane) {
    let cfg = config::parse(toml, "test").expect("test config is valid");
    assert!(
        cfg.services.iter().all(|s| s.vip.is_ipv6()),
        "an IPv6 test config"
    );
    let dp = load_config(&cfg);
    (cfg, dp)
}

/// Checks that `out` is `input` with only the destination moved to `to`, with a UDP checksum
/// etherparse verifies.
fn assert_rewritten6(case: &str, input: &[u8], out: &[u8], to: &str) {
    let before = decode6(input).expect("input decodes");
    let after =
        decode6(out).unwrap_or_else(|| panic!("{case}: output does not decode: {out:02x?}"));
    assert_eq!(after.dst, addr6(to), "{case}: destination");
    assert_eq!(after.src, before.src, "{case}: source must not change");
    assert_eq!(after.payload, before.payload, "{case}: payload");
    assert_eq!(
        after.ext_headers, before.ext_headers,
        "{case}: extension headers"
    );
    assert_eq!(out.len(), input.len(), "{case}: length");
    assert!(
        after.udp_checksum_ok,
        "{case}: UDP checksum is wrong after rewrite"
    );
}

/// Runs `frame` and checks it passed untouched with exactly `stat` counted once.
fn assert_passed_untouched(dp: &mut Dataplane, case: &str, frame: &[u8], stat: Stat) {
    let before = counters(dp);
    let out = run(dp, frame);
    assert_eq!(out.action, XDP_PASS, "{case}: action");
    assert_eq!(out.frame, frame, "{case}: the frame must pass untouched");
    assert_eq!(
        deltas(&before, &counters(dp)),
        vec![(stat, 1)],
        "{case}: counters"
    );
}

fn frame(f: impl FnOnce(&mut Udp6Frame)) -> Vec<u8> {
    let mut u = udp6(CLIENT, VIP);
    f(&mut u);
    u.build()
}

#[test]
fn local_requests_are_spread_round_robin_and_rewritten() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    for (i, backend) in BACKENDS.iter().enumerate() {
        let input = udp6(&format!("[2001:db8::a01:203]:{}", 5000 + i), VIP).build();
        let before = counters(&dp);
        let out = run(&mut dp, &input);
        assert_eq!(out.action, XDP_PASS, "local: passed to the stack");
        assert_rewritten6("round robin", &input, &out.frame, backend);
        let d = deltas(&before, &counters(&dp));
        assert!(d.contains(&(Stat::Forwarded, 1)), "counters: {d:?}");
        assert!(d.contains(&(Stat::FlowCreated, 1)), "counters: {d:?}");
    }
}

#[test]
fn a_flow_sticks_to_its_backend() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    let input = udp6(CLIENT, VIP).build();
    let first = run(&mut dp, &input);
    assert_rewritten6("first", &input, &first.frame, BACKENDS[0]);
    // Another flow moves the round-robin cursor; the first flow keeps its backend.
    let other = udp6("[2001:db8::a01:204]:4444", VIP).build();
    assert_rewritten6("other", &other, &run(&mut dp, &other).frame, BACKENDS[1]);
    for _ in 0..3 {
        let again = run(&mut dp, &input);
        assert_rewritten6("sticky", &input, &again.frame, BACKENDS[0]);
    }
}

#[test]
fn the_wildcard_service_takes_any_address_on_its_port() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    for dst in ["[2001:db8::99]:7000", "[fd00::1]:7000"] {
        let input = udp6(CLIENT, dst).build();
        let out = run(&mut dp, &input);
        assert_eq!(out.action, XDP_PASS, "{dst}");
        assert_rewritten6(dst, &input, &out.frame, "[2001:db8::a00:7]:7001");
    }
    assert_passed_untouched(
        &mut dp,
        "another port",
        &udp6(CLIENT, "[2001:db8::99]:7002").build(),
        Stat::PassNoService,
    );
}

#[test]
fn skippable_extension_headers_are_walked_and_the_packet_balanced() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    let chains: [&[(u8, u8)]; 4] = [
        &[(NEXT_HOP_BY_HOP, 0), (NEXT_DEST_OPTIONS, 0)],
        &[
            (NEXT_HOP_BY_HOP, 1),
            (NEXT_ROUTING, 0),
            (NEXT_DEST_OPTIONS, 2),
        ],
        &[(NEXT_DEST_OPTIONS, 0); 4],
        &[(NEXT_ROUTING, 3)],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let input = frame(|f| {
            f.src = addr6(&format!("[2001:db8::a01:203]:{}", 6000 + i));
            f.ext = chain.to_vec();
        });
        assert_eq!(
            decode6(&input).expect("decodes").ext_headers,
            chain.len(),
            "test frame"
        );
        let out = run(&mut dp, &input);
        assert_eq!(out.action, XDP_PASS, "chain {chain:?}");
        assert_rewritten6(
            &format!("chain {chain:?}"),
            &input,
            &out.frame,
            BACKENDS[i % 3],
        );
    }
}

#[test]
fn packets_outside_the_extension_header_policy_pass_untouched_and_counted() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
        (
            "five extension headers",
            frame(|f| f.ext = vec![(NEXT_DEST_OPTIONS, 0); 5]),
            Stat::PassIpv6ExtHeaders,
        ),
        (
            "hop-by-hop not first",
            frame(|f| f.ext = vec![(NEXT_DEST_OPTIONS, 0), (NEXT_HOP_BY_HOP, 0)]),
            Stat::PassIpv6ExtHeaders,
        ),
        (
            "an extension header past the payload",
            {
                let mut b = frame(|f| f.ext = vec![(NEXT_DEST_OPTIONS, 0)]);
                b[14 + 40 + 1] = 200;
                b
            },
            Stat::PassIpv6ExtHeaders,
        ),
        (
            // RFC 8200 8.1: the UDP checksum covers the routing header's final address, and
            // the receiving kernel would forward the packet, not deliver it.
            "a routing header with segments left",
            {
                let mut b = frame(|f| f.ext = vec![(NEXT_ROUTING, 0)]);
                b[14 + 40 + 3] = 1;
                b
            },
            Stat::PassIpv6ExtHeaders,
        ),
        (
            "a fragment header",
            frame(|f| f.ext = vec![(NEXT_FRAGMENT, 0)]),
            Stat::PassIpv6Fragment,
        ),
        (
            "a fragment header after a destination options header",
            frame(|f| f.ext = vec![(NEXT_DEST_OPTIONS, 0), (NEXT_FRAGMENT, 0)]),
            Stat::PassIpv6Fragment,
        ),
        (
            "TCP",
            frame(|f| f.upper = NEXT_TCP),
            Stat::PassIpv6UnknownHeader,
        ),
        (
            "ESP",
            frame(|f| f.ext = vec![(NEXT_ESP, 0)]),
            Stat::PassIpv6UnknownHeader,
        ),
        (
            "a zero UDP checksum",
            frame(|f| f.zero_udp_checksum = true),
            Stat::PassUdpZeroChecksum,
        ),
        (
            "version 4 in an IPv6 frame",
            {
                let mut b = frame(|_| {});
                b[14] = 0x40;
                b
            },
            Stat::PassBadIpv6Header,
        ),
        (
            "a payload length past the frame",
            {
                let mut b = frame(|_| {});
                b[18] = 0x10;
                b
            },
            Stat::PassBadIpv6Header,
        ),
        (
            "a UDP length past the payload",
            {
                let mut b = frame(|_| {});
                let udp_len = 14 + 40 + 4;
                b[udp_len] = 0x10;
                b
            },
            Stat::PassBadUdpHeader,
        ),
        (
            "a truncated IPv6 header",
            frame(|_| {})[..14 + 30].to_vec(),
            Stat::PassTruncated,
        ),
    ];
    for (case, input, stat) in cases {
        assert_passed_untouched(&mut dp, case, &input, stat);
    }
}

#[test]
fn what_is_not_ours_passes_untouched() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    assert_passed_untouched(
        &mut dp,
        "another host's frame",
        &frame(|f| f.dst_mac = [0x02, 0, 0, 0, 0, 0x77]),
        Stat::PassNotForUs,
    );
    assert_passed_untouched(
        &mut dp,
        "no service",
        &udp6(CLIENT, "[2001:db8::7f00:1]:9999").build(),
        Stat::PassNoService,
    );
    // An IPv4-mapped destination is how the maps hold IPv4: never an IPv4 service's.
    assert_passed_untouched(
        &mut dp,
        "an IPv4-mapped destination",
        &udp6(CLIENT, "[::ffff:127.0.0.1]:9875").build(),
        Stat::PassNoService,
    );
}

#[test]
fn ipv4_is_still_balanced_beside_ipv6() {
    let cfg = config::parse(TUTORIAL_CONFIG, "test").expect("valid");
    let mut dp = load_config(&cfg);
    let input = udp("10.1.2.3:4444", "127.0.0.1:9875").build();
    let out = run(&mut dp, &input);
    let after = decode(&out.frame).expect("decodes");
    assert_eq!(after.dst, addr("127.0.0.1:9876"));
    assert!(after.udp_checksum_ok && after.ip_checksum_ok);
    // With only IPv4 services, an IPv6 frame to the same port finds none.
    assert_passed_untouched(
        &mut dp,
        "IPv6 beside IPv4 services",
        &udp6(CLIENT, VIP).build(),
        Stat::PassNoService,
    );
}

#[test]
fn a_partial_checksum_stays_partial_for_local_delivery() {
    let (_, mut dp) = load_v6(LO_CONFIG);
    let input = frame(|f| f.partial_checksum = true);
    let out = run(&mut dp, &input);
    assert_eq!(out.action, XDP_PASS);
    let after = decode6(&out.frame).expect("decodes");
    assert_eq!(after.dst, addr6(BACKENDS[0]));
    // The kernel trusts a partial skb it delivers locally: nothing is completed here (the
    // field is updated incrementally, as for IPv4), and nothing but the destination moves.
    assert_eq!(after.src, addr6(CLIENT));
    assert_eq!(after.payload, decode6(&input).expect("input").payload);
    assert!(!after.udp_checksum_ok, "not completed");
}

#[test]
fn no_backend_drops_or_passes_as_the_policy_says() {
    let (cfg, mut dp) = load_v6(LO_CONFIG);
    let state = reconcile::desired_state(&cfg, None).expect("plan");
    let plan = &state.services[0];
    for (flags, action, stat) in [
        (0, XDP_DROP, Stat::DropNoBackend),
        (
            xdplb_common::SERVICE_FLAG_PASS_WHEN_EMPTY,
            XDP_PASS,
            Stat::PassNoBackend,
        ),
    ] {
        let empty = Service {
            table_len: 0,
            flags,
            ..plan.service
        };
        dp.writer()
            .expect("maps")
            .put_service(&plan.key, &empty)
            .expect("write");
        let input = udp6("[2001:db8::a01:203]:7777", VIP).build();
        let before = counters(&dp);
        let out = run(&mut dp, &input);
        assert_eq!(out.action, action, "{stat:?}");
        assert_eq!(out.frame, input, "{stat:?}: untouched");
        assert!(
            deltas(&before, &counters(&dp)).contains(&(stat, 1)),
            "{stat:?} counted"
        );
    }
}

#[test]
fn a_backend_of_the_other_family_takes_no_flow() {
    let (cfg, mut dp) = load_v6(LO_CONFIG);
    // The IPv6 service's table pointing at IPv4 backends (what the config never writes): the
    // IPv6 plan with the backends of the same config in IPv4.
    let v4_cfg = config::parse(TUTORIAL_CONFIG, "test").expect("valid");
    let v4 = reconcile::desired_state(&v4_cfg, None).expect("plan");
    let mut state = reconcile::desired_state(&cfg, None).expect("plan");
    for (s6, s4) in state.services.iter_mut().zip(&v4.services) {
        s6.backends.clone_from(&s4.backends);
    }
    dp.apply(state).expect("apply");
    let input = udp6(CLIENT, VIP).build();
    let before = counters(&dp);
    let out = run(&mut dp, &input);
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(out.frame, input);
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::DropNoBackend, 1)));
}

// ---- Forwarding through the FIB: a namespace with the forwarding tests' two veths, given
// IPv6 addresses (the IPv4 ones written as `2001:db8::a.b.c.d`). ----

/// The hardening tests' services (nat, dsr-l2, fullnat, a wildcard nat), moved to IPv6.
const FIB_CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "nat"
vip = "[2001:db8::a63:1]:7000"
forwarding = "nat"
[[service.backend]]
address = "[2001:db8::a3c:102]:7000"

[[service]]
name = "dsr"
vip = "[2001:db8::a63:4]:7000"
forwarding = "dsr-l2"
[[service.backend]]
address = "[2001:db8::a3c:102]:7000"

[[service]]
name = "fullnat"
vip = "[2001:db8::a63:7]:7000"
forwarding = "fullnat"
fullnat_source = "2001:db8::a3c:101"
fullnat_ports = "40000-40009"
[[service.backend]]
address = "[2001:db8::a3c:102]:7001"

[[service]]
name = "wild"
vip = "[::]:5601"
forwarding = "nat"
[[service.backend]]
address = "[2001:db8::a3c:103]:7000"
"#;

const NAT_VIP: &str = "[2001:db8::a63:1]:7000";
const DSR_VIP: &str = "[2001:db8::a63:4]:7000";
const FULLNAT_VIP: &str = "[2001:db8::a63:7]:7000";
const BACKEND: &str = "[2001:db8::a3c:102]:7000";
const FULLNAT_BACKEND: &str = "[2001:db8::a3c:102]:7001";
const WILD_BACKEND: &str = "[2001:db8::a3c:103]:7000";
const FIB_CLIENT: &str = "[2001:db8::a3c:202]:5530";
const FULLNAT_SOURCE: &str = "2001:db8::a3c:101";

/// Runs `cases` in the forwarding topology with IPv6 on: fa 2001:db8::a3c:101/120 (the
/// backends' side), fb 2001:db8::a3c:201/120 (the clients'), permanent neighbours for the
/// backends and the client, IPv6 forwarding on.
fn in_topology6(tag: &str, cases: impl FnOnce() + Send) {
    require_root();
    netns::in_fib_topology(tag, &netns::fib_neighbours(), "the cases pass", || {
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("run ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["addr", "add", "2001:db8::a3c:101/120", "dev", "fa", "nodad"]);
        ip(&["addr", "add", "2001:db8::a3c:201/120", "dev", "fb", "nodad"]);
        for (addr, mac, dev) in [
            ("2001:db8::a3c:102", "02:00:00:00:01:02", "fa"),
            ("2001:db8::a3c:103", "02:00:00:00:01:03", "fa"),
            ("2001:db8::a3c:202", "02:00:00:00:02:02", "fb"),
        ] {
            ip(&netns::permanent_neighbour(addr, mac, dev));
        }
        let st = std::process::Command::new("sysctl")
            .args(["-qw", "net.ipv6.conf.all.forwarding=1"])
            .status()
            .expect("sysctl");
        assert!(st.success(), "IPv6 forwarding on");
        cases();
    });
}

struct Fib6 {
    dp: Dataplane,
    prog: aya::programs::Xdp,
    a: u32,
    b: u32,
}

impl Fib6 {
    fn new() -> Self {
        Self::with(FIB_CONFIG)
    }

    fn with(toml: &str) -> Self {
        let (_, mut dp) = load_v6(toml);
        let (a, b) = (ifindex("fa"), ifindex("fb"));
        dp.set_interface_mac(a, FRAME_DST_MAC, false)
            .expect("fa's address");
        dp.set_interface_mac(b, FRAME_DST_MAC, false)
            .expect("fb's address");
        let prog = ingress_program(&mut dp);
        Fib6 { dp, prog, a, b }
    }

    fn run(&self, frame: &[u8], on: u32) -> XdpRun {
        testrun::run_xdp_on(&self.prog, frame, on).expect("test run")
    }

    /// Runs `frame` on `on` and checks it left as `expected` (addresses, ports, hop limit,
    /// MACs, a valid checksum) with `action`, counting `stat`.
    fn expect_sent(
        &self,
        case: &str,
        frame: &[u8],
        on: u32,
        expected: &Decoded6,
        action: u32,
        stat: Stat,
    ) {
        let before = counters(&self.dp);
        let out = self.run(frame, on);
        assert_eq!(out.action, action, "{case}: action");
        let got = decode6(&out.frame)
            .unwrap_or_else(|| panic!("{case}: output does not decode: {:02x?}", out.frame));
        assert_eq!(
            (got.src, got.dst, got.hop_limit),
            (expected.src, expected.dst, expected.hop_limit),
            "{case}: addresses and hop limit"
        );
        assert_eq!(
            (got.src_mac, got.dst_mac),
            (expected.src_mac, expected.dst_mac),
            "{case}: MAC addresses"
        );
        assert_eq!(got.payload, expected.payload, "{case}: payload");
        assert!(got.udp_checksum_ok, "{case}: UDP checksum");
        let d = deltas(&before, &counters(&self.dp));
        assert!(d.contains(&(stat, 1)), "{case}: counters {d:?}");
    }

    /// Sends a plain UDP frame `from` -> `to` on `on` and checks it was redirected as sent from
    /// `src` to `dst` with `hop_limit`, between `macs`, counting `stat`.
    fn expect_redirected(
        &self,
        case: &str,
        (from, to, on): (&str, &str, u32),
        (src, dst, hop_limit): (&str, &str, u8),
        macs: ([u8; 6], [u8; 6]),
        stat: Stat,
    ) {
        let input = udp6(from, to).build();
        let want = expected(&input, src, dst, hop_limit, macs);
        self.expect_sent(case, &input, on, &want, XDP_REDIRECT, stat);
    }
}

/// What `input` must look like once sent from `src` to `dst` with `hop_limit`, between the
/// given MACs: built from the expected values, not from the output.
fn expected(
    input: &[u8],
    src: &str,
    dst: &str,
    hop_limit: u8,
    macs: ([u8; 6], [u8; 6]),
) -> Decoded6 {
    let before = decode6(input).expect("input decodes");
    Decoded6 {
        src: addr6(src),
        dst: addr6(dst),
        hop_limit,
        ext_headers: before.ext_headers,
        payload: before.payload,
        udp_checksum: 0,
        udp_checksum_ok: true,
        src_mac: macs.0,
        dst_mac: macs.1,
    }
}

#[test]
fn nat_fullnat_and_dsr_l2_requests_and_replies_are_forwarded() {
    in_topology6("v6fwd", || {
        let f = Fib6::new();
        // (case, sent from, to, on, expected from, to, hop limit, MACs, counter)
        for (case, sent, want, macs, stat) in [
            // nat: the destination becomes the backend, hop limit 64 -> 63, sent out of fa (a
            // redirect: it came in on fb).
            (
                "nat request",
                (FIB_CLIENT, NAT_VIP, f.b),
                (FIB_CLIENT, BACKEND, 63),
                (MAC_A, MAC_BACKEND),
                Stat::ForwardedFib,
            ),
            // Its reply, from the backend to the client, leaves from the VIP.
            (
                "nat reply",
                (BACKEND, FIB_CLIENT, f.a),
                (NAT_VIP, FIB_CLIENT, 63),
                (MAC_B, MAC_CLIENT),
                Stat::NatReplyTranslated,
            ),
            // dsr-l2: only the MACs change (the backend holds the VIP), no hop limit change.
            (
                "dsr-l2 request",
                (FIB_CLIENT, DSR_VIP, f.b),
                (FIB_CLIENT, DSR_VIP, 64),
                (MAC_A, MAC_BACKEND),
                Stat::ForwardedFib,
            ),
        ] {
            f.expect_redirected(case, sent, want, macs, stat);
        }

        // fullnat: from the balancer's source and the first port of its range.
        let input = udp6(FIB_CLIENT, FULLNAT_VIP).build();
        let before = counters(&f.dp);
        let out = f.run(&input, f.b);
        assert_eq!(out.action, XDP_REDIRECT, "fullnat request");
        let got = decode6(&out.frame).expect("fullnat request decodes");
        assert_eq!(
            *got.src.ip(),
            FULLNAT_SOURCE.parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert!(
            (40000..=40009).contains(&got.src.port()),
            "fullnat port {}",
            got.src.port()
        );
        assert_eq!(got.dst, addr6(FULLNAT_BACKEND));
        assert_eq!(got.hop_limit, 63);
        assert!(got.udp_checksum_ok, "fullnat request checksum");
        assert!(deltas(&before, &counters(&f.dp)).contains(&(Stat::ForwardedFib, 1)));
        // Its reply, to that source and port, goes back to the client from the VIP.
        let source = format!("[{FULLNAT_SOURCE}]:{}", got.src.port());
        f.expect_redirected(
            "fullnat reply",
            (FULLNAT_BACKEND, &source, f.a),
            (FULLNAT_VIP, FIB_CLIENT, 63),
            (MAC_B, MAC_CLIENT),
            Stat::FullnatReplyTranslated,
        );
    });
}

#[test]
fn a_wildcard_nat_service_and_its_replies() {
    in_topology6("v6wild", || {
        let f = Fib6::new();
        let vip = "[2001:db8::a63:9]:5601";
        f.expect_redirected(
            "wildcard request",
            (FIB_CLIENT, vip, f.b),
            (FIB_CLIENT, WILD_BACKEND, 63),
            (MAC_A, [0x02, 0, 0, 0, 0x01, 0x03]),
            Stat::ForwardedFib,
        );
        // The backend's reply leaves from the address the client used.
        f.expect_redirected(
            "wildcard reply",
            (WILD_BACKEND, FIB_CLIENT, f.a),
            (vip, FIB_CLIENT, 63),
            (MAC_B, MAC_CLIENT),
            Stat::NatReplyTranslated,
        );
        // A request from a nat backend's port (7000) that is no known reply, to the wildcard
        // port: `xdplb_nat_reply6` finds no reply and hands it back to ingress6 (marked as
        // checked), which balances it as a request.
        let other = udp6("[2001:db8::a3c:202]:7000", "[2001:db8::a63:9]:5601").build();
        let out = f.run(&other, f.b);
        assert_eq!(out.action, XDP_REDIRECT, "a request to the wildcard port");
        assert_eq!(
            decode6(&out.frame).expect("decodes").dst,
            addr6(WILD_BACKEND)
        );
    });
}

#[test]
fn hop_limit_one_passes_to_the_kernel_and_partial_checksums_are_completed() {
    in_topology6("v6hop", || {
        let f = Fib6::new();
        let input = udp6(FIB_CLIENT, NAT_VIP);
        let input = Udp6Frame {
            hop_limit: 1,
            ..input
        }
        .build();
        let before = counters(&f.dp);
        let out = f.run(&input, f.b);
        assert_eq!(out.action, XDP_PASS, "hop limit 1");
        let got = decode6(&out.frame).expect("decodes");
        assert_eq!(got.dst, addr6(BACKEND), "rewritten, then passed");
        assert_eq!(got.hop_limit, 1, "the kernel answers time exceeded");
        assert!(deltas(&before, &counters(&f.dp)).contains(&(Stat::PassTtlExceeded, 1)));

        // A partial checksum leaves through XDP completed, the request's and its reply's.
        let input = Udp6Frame {
            partial_checksum: true,
            ..udp6("[2001:db8::a3c:202]:5540", NAT_VIP)
        }
        .build();
        f.expect_sent(
            "partial checksum completed",
            &input,
            f.b,
            &expected(
                &input,
                "[2001:db8::a3c:202]:5540",
                BACKEND,
                63,
                (MAC_A, MAC_BACKEND),
            ),
            XDP_REDIRECT,
            Stat::ForwardedFib,
        );
        let d = counters(&f.dp);
        assert!(
            d[Stat::PartialChecksumFixed as usize] >= 1,
            "counted as fixed"
        );
    });
}

#[test]
fn a_second_packet_service_defers_the_flow_entry() {
    // As flow_state_testrun: a dsr-l2 Maglev service whose first packet creates no entry.
    let toml = r#"
interfaces = ["lo"]
flow_guard_rate = 0

[[service]]
name = "deferred"
vip = "[2001:db8::a63:4]:7000"
forwarding = "dsr-l2"
scheduler = "maglev"
flow_state = "second-packet"
[[service.backend]]
address = "[2001:db8::a3c:102]:7000"
[[service.backend]]
address = "[2001:db8::a3c:103]:7000"
"#;
    in_topology6("v6defer", || {
        let f = Fib6::with(toml);
        let input = udp6(FIB_CLIENT, DSR_VIP).build();
        let before = counters(&f.dp);
        let first = f.run(&input, f.b);
        assert_eq!(first.action, XDP_REDIRECT, "first packet");
        let to = decode6(&first.frame).expect("decodes").dst_mac;
        let d = deltas(&before, &counters(&f.dp));
        assert!(d.contains(&(Stat::FlowStateDeferred, 1)), "{d:?}");
        assert!(!d.iter().any(|(s, _)| *s == Stat::FlowCreated), "{d:?}");
        let before = counters(&f.dp);
        let second = f.run(&input, f.b);
        assert_eq!(
            decode6(&second.frame).expect("decodes").dst_mac,
            to,
            "the same backend"
        );
        assert!(deltas(&before, &counters(&f.dp)).contains(&(Stat::FlowCreated, 1)));
    });
}

#[test]
fn the_flood_guard_drops_new_ipv6_flows_above_its_rate() {
    // A round-robin service needs an entry per flow: above the rate, new flows are dropped,
    // and a flow admitted before keeps going.
    let toml = "interfaces = [\"lo\"]\nflow_guard_rate = 2\n\n[[service]]\nname = \"flooded\"\n\
                vip = \"[2001:db8::7f00:1]:9875\"\nscheduler = \"round-robin\"\n\
                backend = [{ address = \"[2001:db8::a00:7]:7001\" }, { address = \"[2001:db8::a00:8]:7001\" }]\n";
    let (_, mut dp) = load_v6(toml);
    let flow = |port: u16| udp6(&format!("[2001:db8::a01:203]:{port}"), VIP).build();
    let before = counters(&dp);
    let actions: Vec<u32> = (0..4)
        .map(|i| run(&mut dp, &flow(6000 + i)).action)
        .collect();
    let d = deltas(&before, &counters(&dp));
    assert_eq!(actions, [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP], "{d:?}");
    assert!(d.contains(&(Stat::GuardDropped, 2)), "{d:?}");
    assert!(d.contains(&(Stat::FlowTableInsert, 2)), "{d:?}");
    let again = flow(6000);
    assert_rewritten6(
        "an admitted flow",
        &again,
        &run(&mut dp, &again).frame,
        "[2001:db8::a00:7]:7001",
    );
}

#[test]
fn maglev_spreads_ipv6_flows_over_every_backend_and_keeps_them() {
    let toml = r#"
interfaces = ["lo"]

[[service]]
name = "maglev"
vip = "[2001:db8::7f00:1]:9875"
scheduler = "maglev"
[[service.backend]]
address = "[2001:db8::7f00:1]:9876"
[[service.backend]]
address = "[2001:db8::7f00:1]:9877"
[[service.backend]]
address = "[2001:db8::7f00:1]:9878"
"#;
    let (_, mut dp) = load_v6(toml);
    let mut per_backend = std::collections::BTreeMap::new();
    let mut first = Vec::new();
    for i in 0..300u16 {
        let input = udp6(&format!("[2001:db8::{:x}]:{}", 0x100 + i, 7000 + i), VIP).build();
        let out = run(&mut dp, &input);
        let to = decode6(&out.frame).expect("decodes").dst;
        assert!(BACKENDS.contains(&to.to_string().as_str()), "{to}");
        *per_backend.entry(to).or_insert(0u32) += 1;
        first.push((input, to));
    }
    assert_eq!(
        per_backend.len(),
        3,
        "every backend gets flows: {per_backend:?}"
    );
    assert!(
        per_backend.values().all(|&n| n > 50),
        "a fair spread: {per_backend:?}"
    );
    for (input, to) in first.iter().step_by(7) {
        let out = run(&mut dp, input);
        assert_eq!(decode6(&out.frame).expect("decodes").dst, *to, "sticky");
    }
}

#[test]
fn a_packet_bigger_than_the_egress_mtu_goes_to_the_kernel_or_is_dropped() {
    in_topology6("v6mtu", || {
        let st = std::process::Command::new("ip")
            .args(["link", "set", "fa", "mtu", "1280"])
            .status()
            .expect("ip");
        assert!(st.success(), "fa's MTU");
        let f = Fib6::new();
        let big = |dst: &str| {
            Udp6Frame {
                payload: vec![0x5a; 1300],
                ..udp6(FIB_CLIENT, dst)
            }
            .build()
        };
        // nat: rewritten, then passed: the kernel answers Packet Too Big.
        let input = big(NAT_VIP);
        let before = counters(&f.dp);
        let out = f.run(&input, f.b);
        assert_eq!(out.action, XDP_PASS, "nat, too big");
        let got = decode6(&out.frame).expect("decodes");
        assert_eq!(got.dst, addr6(BACKEND), "rewritten before it is passed");
        assert!(got.udp_checksum_ok);
        assert!(deltas(&before, &counters(&f.dp)).contains(&(Stat::PassFragNeeded, 1)));
        // dsr-l2: the kernel would deliver the VIP locally, so the balancer answers as a
        // router: ICMPv6 Packet Too Big (type 2) from the VIP to the client, for the egress
        // MTU itself (nothing is added to the packet), back out of the interface it came in on.
        let input = big(DSR_VIP);
        let before = counters(&f.dp);
        let out = f.run(&input, f.b);
        assert_eq!(out.action, XDP_TX, "dsr-l2, too big: Packet Too Big");
        let ptb = etherparse::SlicedPacket::from_ethernet(&out.frame).expect("parses");
        let Some(etherparse::NetSlice::Ipv6(ip)) = &ptb.net else {
            panic!("IPv6: {ptb:?}");
        };
        assert_eq!(
            ip.header().source_addr(),
            *addr6(DSR_VIP).ip(),
            "from the VIP"
        );
        assert_eq!(ip.header().destination_addr(), *addr6(FIB_CLIENT).ip());
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &ptb.transport else {
            panic!("ICMPv6: {ptb:?}");
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 },
            "the egress MTU"
        );
        assert!(out.frame.len() <= 14 + 1280, "at most 1,280 bytes");
        let d = deltas(&before, &counters(&f.dp));
        assert!(d.contains(&(Stat::DropFragNeeded, 1)), "{d:?}");
        assert!(d.contains(&(Stat::IcmpFragNeededSent, 1)), "{d:?}");
        // One that fits still goes.
        let small = udp6(FIB_CLIENT, NAT_VIP).build();
        assert_eq!(f.run(&small, f.b).action, XDP_REDIRECT);
    });
}
