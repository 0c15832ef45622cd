//! Tier 2: the IPv6 edges of the data plane through BPF_PROG_TEST_RUN, with exact output
//! frames built independently (etherparse, `xdplb_test_support::v6_edges`): `xdplb_icmp6`
//! (ICMPv6 errors about balanced flows go to the flow's owner; neighbour discovery, MLD, echo
//! and anything else pass untouched), IPv6-in-IPv6 encapsulation (`dsr-ipip` for an IPv6
//! service) and ICMPv6 packet too big, the TC reply path of `local` backends for IPv6
//! (`xdplb_reply`), and the backend-side decapsulator (`xdplb decap`).
//!
//! The IPv6-in-IPv6 cases load an IPv6 config as the daemon does (`IPIP6_CONFIG`). The other
//! cases need exact flow entries, reply owners and fullnat translations (given hashes, backend
//! indices), so their IPv6 state is written into the maps directly, as the daemon writes it.
//! Needs root; run with the README test command.

use std::net::{Ipv6Addr, SocketAddrV6};

use aya::maps::PerCpuArray;
use xdplb::{
    dataplane::DECAP_OBJECT,
    packet::{FRAME_DST_MAC, FRAME_SRC_MAC},
    testrun,
};
use xdplb_common::{
    FORWARD_DSR_IPIP, FORWARD_NAT, FullnatPeer, IPPROTO_UDP, PORT_LOCAL_BACKEND, REPLY_FLAG_NAT,
    REPLY_FLAG_WILDCARD, Reply, SERVICE_ENCAP_HOST_BITS_SHIFT, SERVICE_FORWARDING_SHIFT, Service,
    Stat,
    hash::{FlowTuple, HASH_FIVE_TUPLE, flow_hash},
};
use xdplb_test_support::{v6_edges::*, *};

/// Only for the data plane to load: the IPv6 state is written by the tests.
const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "v4"
vip = "10.99.0.1:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.2:7000"
"#;

const PAYLOAD: &[u8] = b"xdplb ipv6 edges payload";

/// ICMPv6 types (RFC 4443, 4861, 2710, 3810).
const DEST_UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;
const TIME_EXCEEDED: u8 = 3;

fn icmp6_program(dp: &mut xdplb::dataplane::Dataplane) -> aya::programs::Xdp {
    let prog: &mut aya::programs::Xdp = dp
        .ebpf_mut()
        .program_mut("xdplb_icmp6")
        .expect("xdplb_icmp6")
        .try_into()
        .expect("an XDP program");
    testrun::handle(prog).expect("a handle on xdplb_icmp6")
}

/// Whether every counter that moved is a "passed" one: nothing was balanced or routed.
fn only_passes(d: &[(Stat, u64)]) -> bool {
    d.iter().all(|(s, _)| s.name().starts_with("pass_"))
}

/// NDP, MLD and echo never touched: through ingress and through `xdplb_icmp6` itself.
#[test]
fn neighbour_discovery_mld_and_echo_pass_untouched() {
    let (_, mut dp) = load_toml(CONFIG);
    let vip = sock6("[2001:db8:99::1]:7000");
    put(
        &mut dp,
        "SERVICES_V2",
        service_key(vip),
        Service {
            id: 0,
            flags: FORWARD_NAT << SERVICE_FORWARDING_SHIFT,
            ..Service::default()
        },
    );
    let icmp6_prog = icmp6_program(&mut dp);
    let ingress = ingress_program(&mut dp);
    let host = v6("2001:db8:60:2::2");
    let ll = v6("fe80::2");
    let nd_target = vip.ip().octets().to_vec();
    let all_nodes = v6("ff02::1");
    let all_routers = v6("ff02::2");
    let mld_group = v6("ff02::1:3");
    let mld_body = mld_group.octets().to_vec();
    // (what, frame)
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "router solicitation",
            icmp6(ll, all_routers, 255, 133, 0, [0; 4], &[]),
        ),
        (
            "router advertisement",
            icmp6(ll, all_nodes, 255, 134, 0, [64, 0, 0x07, 0x08], &[0; 8]),
        ),
        (
            "neighbour solicitation for the VIP",
            icmp6(host, *vip.ip(), 255, 135, 0, [0; 4], &nd_target),
        ),
        (
            "neighbour advertisement",
            icmp6(host, *vip.ip(), 255, 136, 0, [0x60, 0, 0, 0], &nd_target),
        ),
        (
            "redirect",
            icmp6(
                ll,
                *vip.ip(),
                255,
                137,
                0,
                [0; 4],
                &[nd_target.clone(), nd_target.clone()].concat(),
            ),
        ),
        (
            "MLD query",
            icmp6(ll, all_nodes, 1, 130, 0, [0x27, 0x10, 0, 0], &[0; 16]),
        ),
        (
            "MLDv1 report",
            icmp6(ll, mld_group, 1, 131, 0, [0; 4], &mld_body),
        ),
        (
            "MLD done",
            icmp6(ll, all_routers, 1, 132, 0, [0; 4], &mld_body),
        ),
        (
            "MLDv2 report",
            icmp6(
                ll,
                v6("ff02::16"),
                1,
                143,
                0,
                [0, 0, 0, 1],
                &[[4, 0, 0, 0].as_slice(), &mld_body].concat(),
            ),
        ),
        (
            "echo request to the VIP",
            icmp6(host, *vip.ip(), 64, 128, 0, [0, 1, 0, 1], PAYLOAD),
        ),
        (
            "echo reply to the VIP",
            icmp6(host, *vip.ip(), 64, 129, 0, [0, 1, 0, 1], PAYLOAD),
        ),
        (
            // An error about a flow the balancer does not know.
            "port unreachable about an unknown flow",
            icmp6(
                host,
                *vip.ip(),
                64,
                DEST_UNREACH,
                PORT_UNREACH,
                [0; 4],
                ip_packet(&udp6(
                    sock6("[2001:db8:99::1]:7000"),
                    sock6("[2001:db8:60:2::2]:9999"),
                    64,
                    PAYLOAD,
                )),
            ),
        ),
    ];
    for (what, frame) in &frames {
        assert!(icmp6_checksum_ok(frame), "{what}: the input is valid");
    }
    // Real MLD messages carry a hop-by-hop header with the Router Alert option (RFC 2711,
    // value 0: MLD) before the ICMPv6 message. The ICMPv6 checksum covers neither the
    // extension header nor the IPv6 payload length, so it stays valid.
    let with_router_alert = |frame: &[u8]| {
        let mut f = frame.to_vec();
        let next = f[20];
        f[20] = 0;
        let payload_len = u16::from_be_bytes([f[18], f[19]]) + 8;
        f[18..20].copy_from_slice(&payload_len.to_be_bytes());
        // Router Alert (type 5, length 2, value 0), then PadN (type 1, length 0).
        f.splice(54..54, [next, 0, 5, 2, 0, 0, 1, 0]);
        f
    };
    let alerted: Vec<(String, Vec<u8>)> = frames
        .iter()
        .filter(|(what, _)| what.starts_with("MLD"))
        .map(|(what, frame)| {
            (
                format!("{what} with Router Alert"),
                with_router_alert(frame),
            )
        })
        .collect();
    assert_eq!(alerted.len(), 4, "every MLD message (test data)");
    let frames = frames
        .iter()
        .map(|(what, frame)| (what.to_string(), frame.clone()))
        .chain(alerted);
    for (what, frame) in frames {
        let frame = &frame;
        for (program, prog) in [("xdplb_icmp6", &icmp6_prog), ("ingress", &ingress)] {
            let before = counters(&dp);
            let out = testrun::run_xdp(prog, frame, 1).expect("test run");
            assert_eq!(out.action, XDP_PASS, "{what} ({program}): passed");
            assert_eq!(&out.frame, frame, "{what} ({program}): byte for byte");
            let d = deltas(&before, &counters(&dp));
            assert!(only_passes(&d), "{what} ({program}): counted {d:?}");
        }
    }
}

/// The topology's IPv6 side: fa 2001:db8:60:1::1/64 (backends), fb 2001:db8:60:2::1/64
/// (clients), permanent neighbours, IPv6 forwarding on. Runs inside the topology's thread,
/// whose namespace the commands inherit.
fn add_ipv6_to_topology() {
    for args in [
        [
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:60:1::1/64",
            "dev",
            "fa",
            "nodad",
        ]
        .as_slice(),
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:60:2::1/64",
            "dev",
            "fb",
            "nodad",
        ],
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            "2001:db8:60:1::2",
            "lladdr",
            "02:00:00:00:01:02",
            "dev",
            "fa",
            "nud",
            "permanent",
        ],
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            "2001:db8:60:2::2",
            "lladdr",
            "02:00:00:00:02:02",
            "dev",
            "fb",
            "nud",
            "permanent",
        ],
    ] {
        netns::sh(args);
    }
}

#[test]
fn icmp6_errors_about_balanced_flows_go_to_their_owner() {
    require_root();
    netns::in_fib_topology(
        "icmp6",
        &netns::fib_neighbours(),
        "the ICMPv6 cases pass",
        icmp6_cases,
    );
}

/// An ICMPv6 error `(type, code)` from `src` to `dst` (hop limit `hop`) quoting `quoted`, in a
/// frame to `macs.0` from `macs.1`.
fn icmp6_error(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    (kind, code): (u8, u8),
    quoted: &[u8],
    (to, from): ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    with_macs(icmp6(src, dst, hop, kind, code, [0; 4], quoted), to, from)
}

/// Runs `input` on ifindex `on` through `prog`: it must be redirected as `want`, with a right
/// ICMPv6 checksum, and count `stat` once.
fn expect_translated(
    dp: &xdplb::dataplane::Dataplane,
    prog: &aya::programs::Xdp,
    what: &str,
    (input, on): (&[u8], u32),
    want: &[u8],
    stat: Stat,
) {
    let before = counters(dp);
    let out = testrun::run_xdp_on(prog, input, on).expect("test run");
    assert_eq!(out.action, XDP_REDIRECT, "{what}: redirected");
    assert_eq!(out.frame, want, "{what}: translated");
    assert!(icmp6_checksum_ok(&out.frame), "{what}: ICMPv6 checksum");
    let d = deltas(&before, &counters(dp));
    assert!(d.contains(&(stat, 1)), "{what}: {d:?}");
}

fn icmp6_cases() {
    add_ipv6_to_topology();
    let (_, mut dp) = load_toml(CONFIG);
    let (a, b) = (ifindex("fa"), ifindex("fb"));
    dp.set_interface_mac(a, FRAME_DST_MAC, false)
        .expect("fa's address");
    dp.set_interface_mac(b, FRAME_DST_MAC, false)
        .expect("fb's address");
    let vip = sock6("[2001:db8:99::1]:7000");
    let backend = sock6("[2001:db8:60:1::2]:7000");
    let client = sock6("[2001:db8:60:2::2]:5555");
    let router = v6("2001:db8:60:2::9");
    put(
        &mut dp,
        "SERVICES_V2",
        service_key(vip),
        Service {
            id: 0,
            flags: FORWARD_NAT << SERVICE_FORWARDING_SHIFT,
            ..Service::default()
        },
    );
    put(
        &mut dp,
        "FLOWS_V1",
        flow_key(client, vip),
        flow_to(backend, 0, 0x1234),
    );
    put(
        &mut dp,
        "REPLY_OWNERS_V1",
        service_key(backend),
        Reply {
            vip_addr: addr6(*vip.ip()),
            vip_port_be: vip.port().to_be(),
            flags: REPLY_FLAG_NAT,
            service_id: 0,
        },
    );
    let prog = icmp6_program(&mut dp);
    let run = |frame: &[u8], on: u32| testrun::run_xdp_on(&prog, frame, on).expect("test run");

    // 1. nat: the backend reports port unreachable about a packet the balancer sent it (the
    //    client's, readdressed to the backend). To the client: from the VIP, about the packet
    //    as the client sent it, hop limit decremented, routed out of fb.
    let sent = udp6(client, backend, 63, PAYLOAD);
    let input = icmp6_error(
        *backend.ip(),
        *client.ip(),
        64,
        (DEST_UNREACH, PORT_UNREACH),
        ip_packet(&sent),
        (FRAME_DST_MAC, MAC_BACKEND),
    );
    let want = icmp6_error(
        *vip.ip(),
        *client.ip(),
        63,
        (DEST_UNREACH, PORT_UNREACH),
        ip_packet(&udp6(client, vip, 63, PAYLOAD)),
        (MAC_CLIENT, MAC_B),
    );
    expect_translated(
        &dp,
        &prog,
        "nat error",
        (&input, a),
        &want,
        Stat::IcmpErrorToClient,
    );

    // 2. fullnat: the backend reports about a packet from the balancer's source address and
    //    port. To the client: from the VIP, about client -> VIP.
    let source = sock6("[2001:db8:60:1::1]:40000");
    let backend2 = sock6("[2001:db8:60:1::2]:7001");
    let client2 = sock6("[2001:db8:60:2::2]:5556");
    put(
        &mut dp,
        "FULLNAT_V1",
        reply_key(backend2, source),
        FullnatPeer {
            client_addr: addr6(*client2.ip()),
            vip_addr: addr6(*vip.ip()),
            client_port_be: client2.port().to_be(),
            vip_port_be: vip.port().to_be(),
            ..FullnatPeer::default()
        },
    );
    let input = icmp6_error(
        *backend2.ip(),
        *source.ip(),
        64,
        (TIME_EXCEEDED, 0),
        ip_packet(&udp6(source, backend2, 1, PAYLOAD)),
        (FRAME_DST_MAC, MAC_BACKEND),
    );
    let want = icmp6_error(
        *vip.ip(),
        *client2.ip(),
        63,
        (TIME_EXCEEDED, 0),
        ip_packet(&udp6(client2, vip, 1, PAYLOAD)),
        (MAC_CLIENT, MAC_B),
    );
    expect_translated(
        &dp,
        &prog,
        "fullnat error",
        (&input, a),
        &want,
        Stat::IcmpErrorToClient,
    );

    // 3. A router cannot deliver a reply VIP:port -> client: the error goes to the backend
    //    that owns the flow, about the packet as the backend sent it (nat).
    let reply = udp6(vip, client, 60, PAYLOAD);
    let input = icmp6_error(
        router,
        *vip.ip(),
        64,
        (DEST_UNREACH, 0),
        ip_packet(&reply),
        (FRAME_DST_MAC, MAC_CLIENT),
    );
    let want = icmp6_error(
        router,
        *backend.ip(),
        63,
        (DEST_UNREACH, 0),
        ip_packet(&udp6(backend, client, 60, PAYLOAD)),
        (MAC_BACKEND, MAC_A),
    );
    expect_translated(
        &dp,
        &prog,
        "error to the VIP",
        (&input, b),
        &want,
        Stat::IcmpErrorToBackend,
    );

    // 4. dsr-ipip: the error to the VIP goes to the backend IPv6-in-IPv6, unchanged inside,
    //    from the encapsulation prefix (a /96: 32 host bits) with the flow's hash in the host
    //    bits.
    let vip2 = sock6("[2001:db8:99::2]:7000");
    let client3 = sock6("[2001:db8:60:2::2]:5557");
    let tuple_hash = 0xdead_beef;
    put(
        &mut dp,
        "SERVICES_V2",
        service_key(vip2),
        Service {
            id: 1,
            flags: (FORWARD_DSR_IPIP << SERVICE_FORWARDING_SHIFT)
                | (32 << SERVICE_ENCAP_HOST_BITS_SHIFT),
            encap_source: addr6(v6("2001:db8:200::")),
            ..Service::default()
        },
    );
    put(
        &mut dp,
        "FLOWS_V1",
        flow_key(client3, vip2),
        flow_to(backend, 1, tuple_hash),
    );
    let input = icmp6_error(
        router,
        *vip2.ip(),
        64,
        (DEST_UNREACH, 0),
        ip_packet(&udp6(vip2, client3, 60, PAYLOAD)),
        (FRAME_DST_MAC, MAC_CLIENT),
    );
    let outer_source: Ipv6Addr = v6("2001:db8:200::dead:beef");
    let want = ip6ip6(
        outer_source,
        *backend.ip(),
        ip_packet(&input),
        MAC_BACKEND,
        MAC_A,
    );
    let before = counters(&dp);
    let out = run(&input, b);
    assert_eq!(out.action, XDP_REDIRECT, "dsr-ipip error: routed to fa");
    assert_eq!(
        out.frame, want,
        "dsr-ipip error: IPv6-in-IPv6 to the backend"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpErrorToBackend, 1)), "{d:?}");
    // The same flow's next error gets the same outer source.
    let out = run(&input, b);
    assert_eq!(
        out.frame, want,
        "dsr-ipip error: the same outer source again"
    );

    // 5. A non-error ICMPv6 to the VIP (echo) is untouched.
    let echo = icmp6(*client.ip(), *vip.ip(), 64, 128, 0, [0, 7, 0, 1], PAYLOAD);
    let out = run(&echo, b);
    assert_eq!((out.action, out.frame), (XDP_PASS, echo));

    // 6. IPv4 state lives in the same maps under IPv4-mapped addresses (`::ffff:a.b.c.d`): an
    //    ICMPv6 error quoting such addresses is never about an IPv6 flow and must not match
    //    the IPv4 backend's entry. Untouched, whichever of the two quoted addresses is mapped.
    let backend4 = sock6("[::ffff:10.60.1.2]:7000");
    let client4 = sock6("[::ffff:10.60.2.2]:5558");
    put(
        &mut dp,
        "REPLY_OWNERS_V1",
        service_key(backend4),
        Reply {
            vip_addr: addr6(v6("::ffff:10.99.0.1")),
            vip_port_be: vip.port().to_be(),
            flags: REPLY_FLAG_NAT,
            service_id: 0,
        },
    );
    for (from, to) in [(client4, backend4), (client, backend4), (client4, backend)] {
        let input = with_macs(
            icmp6(
                *backend.ip(),
                *client.ip(),
                64,
                DEST_UNREACH,
                PORT_UNREACH,
                [0; 4],
                ip_packet(&udp6(from, to, 63, PAYLOAD)),
            ),
            FRAME_DST_MAC,
            MAC_BACKEND,
        );
        let before = counters(&dp);
        let out = run(&input, a);
        assert_eq!(
            (out.action, &out.frame),
            (XDP_PASS, &input),
            "a quote {from} -> {to}: untouched"
        );
        let d = deltas(&before, &counters(&dp));
        assert!(
            !d.iter().any(|(s, _)| *s == Stat::IcmpErrorToClient),
            "{d:?}"
        );
    }
}

/// `xdplb decap` strips IPv6-in-IPv6 (and still IPv4-in-IPv4) and leaves other frames alone.
#[test]
fn decap_strips_ipv6_in_ipv6_and_leaves_other_frames_alone() {
    require_root();
    let mut decap = aya::EbpfLoader::new()
        .load(DECAP_OBJECT)
        .expect("load the decap object");
    let prog: &mut aya::programs::Xdp = decap
        .program_mut("xdplb_decap")
        .expect("decap program")
        .try_into()
        .expect("an XDP program");
    prog.load().expect("verify decap");
    let prog = testrun::handle(prog).expect("a handle on decap");
    let stats = |decap: &aya::Ebpf| -> [u64; 3] {
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(decap.map("DECAP_STATS_V1").expect("stats map"))
                .expect("a per-CPU array");
        [0, 1, 2].map(|i| arr.get(&i, 0).expect("read").iter().sum())
    };
    let client = sock6("[2001:db8:60:2::2]:5555");
    let vip = sock6("[2001:db8:99::1]:7000");
    let inner = udp6(client, vip, 64, PAYLOAD);
    let encapsulated = ip6ip6(
        v6("2001:db8:200::1:2"),
        v6("2001:db8:60:1::2"),
        ip_packet(&inner),
        FRAME_DST_MAC,
        MAC_A,
    );
    let before = stats(&decap);
    let out = testrun::run_xdp(&prog, &encapsulated, 1).expect("test run");
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        out.frame,
        with_macs(inner.clone(), FRAME_DST_MAC, MAC_A),
        "the client's packet, as sent"
    );
    // Not tunnelled: untouched, uncounted.
    for frame in [
        inner.clone(),
        udp("10.60.2.2:5555", "10.99.0.1:7000").build(),
    ] {
        let out = testrun::run_xdp(&prog, &frame, 1).expect("test run");
        assert_eq!((out.action, out.frame), (XDP_PASS, frame));
    }
    // Next header 41 around something that is not IPv6 (an IPv4 packet): left alone, counted.
    let v4 = udp("10.60.2.2:5555", "10.99.0.1:7000").build();
    let odd = ip6ip6(
        v6("2001:db8:200::1:2"),
        v6("2001:db8:60:1::2"),
        &v4[14..],
        FRAME_DST_MAC,
        MAC_A,
    );
    let out = testrun::run_xdp(&prog, &odd, 1).expect("test run");
    assert_eq!((out.action, out.frame), (XDP_PASS, odd));
    let after = stats(&decap);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 1, 0],
        "decapsulated, left alone, failed"
    );
}

#[test]
fn dsr_ipip_over_ipv6_encapsulates_and_answers_packet_too_big() {
    require_root();
    netns::in_fib_topology(
        "ip6ip6",
        &netns::fib_neighbours(),
        "the IPv6-in-IPv6 cases pass",
        ip6ip6_cases,
    );
}

/// The data plane of the IPv6-in-IPv6 cases, loaded from this config as the daemon loads it:
/// a `dsr-ipip` IPv6 service with one backend, the outer source prefix 2001:db8:200::/96 (32
/// host bits), the hash seed `HASH_SEED`.
const IPIP6_CONFIG: &str = r#"
interfaces = ["lo"]
hash_seed = 24301

[[service]]
name = "ipip6"
vip = "[2001:db8:99::6]:7000"
forwarding = "dsr-ipip"
encap_source = "2001:db8:200::/96"
[[service.backend]]
address = "[2001:db8:60:1::2]:7000"
"#;
const HASH_SEED: u32 = 0x5eed;

/// The outer source for `client` -> `vip`: the prefix with the 5-tuple hash in its last 32
/// bits.
fn expected_outer_source(client: SocketAddrV6, vip: SocketAddrV6) -> Ipv6Addr {
    let tuple = FlowTuple {
        src: addr6(*client.ip()),
        dst: addr6(*vip.ip()),
        src_port_be: client.port().to_be(),
        dst_port_be: vip.port().to_be(),
        proto: IPPROTO_UDP,
    };
    let hash = flow_hash(&tuple, HASH_FIVE_TUPLE, HASH_SEED);
    let mut o = v6("2001:db8:200::").octets();
    o[12..].copy_from_slice(&hash.to_be_bytes());
    Ipv6Addr::from(o)
}

fn ip6ip6_cases() {
    add_ipv6_to_topology();
    let (cfg, mut dp) = load_toml(IPIP6_CONFIG);
    assert_eq!(cfg.hash_seed, HASH_SEED, "test data");
    let (a, b) = (ifindex("fa"), ifindex("fb"));
    dp.set_interface_mac(a, FRAME_DST_MAC, false)
        .expect("fa's address");
    dp.set_interface_mac(b, FRAME_DST_MAC, false)
        .expect("fb's address");
    let vip = sock6("[2001:db8:99::6]:7000");
    let backend = sock6("[2001:db8:60:1::2]:7000");
    let prog = ingress_program(&mut dp);
    let run = |frame: &[u8], on: u32| testrun::run_xdp_on(&prog, frame, on).expect("test run");

    // 1. The client's packet inside an outer IPv6 header (next header 41, hop limit 64) from
    //    the prefix with the flow's hash, to the backend; the inner packet unchanged.
    let client = sock6("[2001:db8:60:2::2]:5562");
    let input = udp6(client, vip, 64, PAYLOAD);
    let source = expected_outer_source(client, vip);
    let want = ip6ip6(source, *backend.ip(), ip_packet(&input), MAC_BACKEND, MAC_A);
    let before = counters(&dp);
    let out = run(&input, b);
    assert_eq!(out.action, XDP_REDIRECT, "ip6ip6: redirected to fa");
    assert_eq!(out.frame, want, "ip6ip6: exact frame");
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::ForwardedFib, 1)), "{d:?}");
    // Every packet of the flow: the same outer source.
    let out = run(&input, b);
    assert_eq!(out.frame, want, "ip6ip6: the flow's second packet");
    // Another flow: its own hash in the host bits, inside the prefix.
    let other = sock6("[2001:db8:60:2::2]:5563");
    let input2 = udp6(other, vip, 64, PAYLOAD);
    let source2 = expected_outer_source(other, vip);
    assert_ne!(source, source2, "two flows, two hashes (test data)");
    let out = run(&input2, b);
    assert_eq!(
        out.frame,
        ip6ip6(
            source2,
            *backend.ip(),
            ip_packet(&input2),
            MAC_BACKEND,
            MAC_A
        ),
        "ip6ip6: another flow"
    );

    // 2. Too big for the backends' link once encapsulated: ICMPv6 packet too big back to the
    //    client, from the VIP, for the link MTU less the outer header, quoting as much of the
    //    packet as fits in 1,280 bytes.
    netns::sh(&["ip", "link", "set", "fa", "mtu", "1400"]);
    let big = udp6(client, vip, 64, &vec![0xab; 1380 - 48]);
    assert_eq!(ip_packet(&big).len(), 1380);
    let quoted = &ip_packet(&big)[..1280 - 48];
    let want = with_macs(
        icmp6(
            *vip.ip(),
            *client.ip(),
            64,
            2,
            0,
            1360u32.to_be_bytes(),
            quoted,
        ),
        FRAME_SRC_MAC,
        FRAME_DST_MAC,
    );
    let before = counters(&dp);
    let out = run(&big, b);
    assert_eq!(out.action, XDP_TX, "packet too big: back out of fb");
    assert_eq!(out.frame.len(), 14 + 1280, "packet too big: 1,280 bytes");
    assert_eq!(out.frame, want, "packet too big: exact frame");
    assert!(
        icmp6_checksum_ok(&out.frame),
        "packet too big: ICMPv6 checksum"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpFragNeededSent, 1)), "{d:?}");
    assert!(d.contains(&(Stat::DropFragNeeded, 1)), "{d:?}");

    // 3. A link MTU under 1,320: the MTU named is never below 1,280.
    netns::sh(&["ip", "link", "set", "fa", "mtu", "1300"]);
    let mid = udp6(client, vip, 64, &vec![0xcd; 1300 - 48]);
    let want = with_macs(
        icmp6(
            *vip.ip(),
            *client.ip(),
            64,
            2,
            0,
            1280u32.to_be_bytes(),
            &ip_packet(&mid)[..1280 - 48],
        ),
        FRAME_SRC_MAC,
        FRAME_DST_MAC,
    );
    let out = run(&mid, b);
    assert_eq!(
        out.action, XDP_TX,
        "packet too big (small MTU): back out of fb"
    );
    assert_eq!(out.frame, want, "packet too big (small MTU): MTU 1,280");
    assert!(icmp6_checksum_ok(&out.frame));
    // 4. A packet of 1,280 bytes or less that only the outer header makes too big: a Packet
    //    Too Big could only say 1,280, which the client ignores (its packet already fits)
    //    and resends at the same size. Dropped and counted, nothing sent.
    let small = udp6(client, vip, 64, &vec![0xcd; 1270 - 48]);
    let before = counters(&dp);
    let out = run(&small, b);
    assert_eq!(
        out.action, XDP_DROP,
        "too big only once encapsulated: dropped"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::DropFragNeeded, 1)), "{d:?}");
    assert!(
        !d.iter().any(|(s, _)| *s == Stat::IcmpFragNeededSent),
        "no Packet Too Big: {d:?}"
    );
    netns::sh(&["ip", "link", "set", "fa", "mtu", "1500"]);
}

/// The TC egress program (`xdplb_reply`) run on `frame`: its return code and the frame after.
fn run_reply(dp: &mut xdplb::dataplane::Dataplane, frame: &[u8]) -> (i32, Vec<u8>) {
    use aya::programs::{TestRun as _, TestRunOptions};
    let prog = dp.reply().expect("the reply program");
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN on the TC program");
    out.truncate(result.data_size_out as usize);
    (result.return_value as i32, out)
}

/// A `local` backend's reply to an IPv6 flow leaves with source = VIP:port (TC egress), for an
/// exact service and for the wildcard `[::]:PORT`; anything else leaves untouched.
#[test]
fn tc_reply_path_translates_ipv6_replies_of_local_backends() {
    const TC_ACT_OK: i32 = 0;
    let (_, mut dp) = load_toml(CONFIG);
    let vip = sock6("[2001:db8:99::1]:7000");
    let backend = sock6("[2001:db8:60:1::1]:7100");
    let client = sock6("[2001:db8:60:2::2]:5555");
    {
        let mut ports: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(dp.ebpf_mut().map_mut("PORTS_V1").expect("ports"))
                .expect("an array");
        for port in [7100, 7200] {
            ports
                .set(port, PORT_LOCAL_BACKEND, 0)
                .expect("mark the backend port");
        }
    }
    put(
        &mut dp,
        "REPLY_OWNERS_V1",
        service_key(backend),
        Reply {
            vip_addr: addr6(*vip.ip()),
            vip_port_be: vip.port().to_be(),
            flags: 0,
            service_id: 0,
        },
    );
    put(
        &mut dp,
        "FLOWS_V1",
        flow_key(client, vip),
        flow_to(backend, 0, 1),
    );

    // 1. The backend's reply to the client's flow: from VIP:port, hop limit and payload kept,
    //    UDP checksum right.
    let reply = udp6(backend, client, 64, PAYLOAD);
    let before = counters(&dp);
    let (rc, out) = run_reply(&mut dp, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, udp6(vip, client, 64, PAYLOAD), "translated reply");
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [(Stat::ReplyTranslated, 1)]
    );

    // 2. Not a reply of a flow (another client port): untouched, uncounted.
    let stray = udp6(backend, sock6("[2001:db8:60:2::2]:9999"), 64, PAYLOAD);
    let before = counters(&dp);
    let (rc, out) = run_reply(&mut dp, &stray);
    assert_eq!((rc, out), (TC_ACT_OK, stray));
    assert_eq!(deltas(&before, &counters(&dp)), []);

    // 3. The wildcard `[::]:7000`: the VIP is the address the client used, found per flow.
    let backend2 = sock6("[2001:db8:60:1::1]:7200");
    let used = sock6("[2001:db8:99::77]:7000");
    put(
        &mut dp,
        "REPLY_OWNERS_V1",
        service_key(backend2),
        Reply {
            vip_addr: [0; 4],
            vip_port_be: used.port().to_be(),
            flags: REPLY_FLAG_WILDCARD,
            service_id: 1,
        },
    );
    put(
        &mut dp,
        "REPLIES_V1",
        reply_key(backend2, client),
        Reply {
            vip_addr: addr6(*used.ip()),
            vip_port_be: used.port().to_be(),
            flags: REPLY_FLAG_WILDCARD,
            service_id: 1,
        },
    );
    let (rc, out) = run_reply(&mut dp, &udp6(backend2, client, 64, PAYLOAD));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, udp6(used, client, 64, PAYLOAD), "wildcard reply");

    // 4. IPv4 replies are still the IPv4 path's: an IPv4 frame from the same port, no flow:
    //    untouched.
    let v4 = udp("10.60.1.1:7100", "10.60.2.2:5555").build();
    let (rc, out) = run_reply(&mut dp, &v4);
    assert_eq!((rc, out), (TC_ACT_OK, v4));
}
