//! Tier 2: the `nat`, `fullnat`, `dsr-l2` and `dsr-ipip` forwarding modes (and `xdplb
//! decap`) through BPF_PROG_TEST_RUN, with exact output frames.
//!
//! FIB lookups see the network namespace of the thread that runs the program, so the cases run
//! in a thread moved into a namespace of the test's own, with two veths, routes and permanent
//! neighbour entries: every MAC address and next hop is known, and the expected frames are built
//! independently (full checksums) and compared byte for byte.
//! Needs root; run with the README test command.

use std::net::SocketAddrV4;

use xdplb::{
    dataplane::{DECAP_OBJECT, reconcile},
    packet::{ETH_HDR_LEN, UdpFrame},
    testrun,
};
use xdplb_common::{
    Stat, checksum,
    hash::{FlowTuple, HASH_FIVE_TUPLE, flow_hash},
};
use xdplb_test_support::*;

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "nat"
vip = "10.99.0.1:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.2:7000"

[[service]]
name = "unroutable"
vip = "10.99.0.2:7000"
forwarding = "nat"
[[service.backend]]
address = "10.77.0.2:7000"

[[service]]
name = "unresolved"
vip = "10.99.0.3:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.9:7000"

[[service]]
name = "dsr"
vip = "10.99.0.4:7000"
forwarding = "dsr-l2"
[[service.backend]]
address = "10.60.1.2:7000"

[[service]]
name = "ipip"
vip = "10.99.0.6:7000"
forwarding = "dsr-ipip"
encap_source = "10.200.0.0/24"
[[service.backend]]
address = "10.60.1.2:7000"

[[service]]
name = "fullnat"
vip = "10.99.0.7:7000"
forwarding = "fullnat"
fullnat_source = "10.60.1.1"
fullnat_ports = "40000-40009"
[[service.backend]]
address = "10.60.1.2:7001"

[[service]]
name = "fullnat-tiny"
vip = "10.99.0.8:7000"
forwarding = "fullnat"
fullnat_source = "10.60.1.1"
fullnat_ports = "41000-41000"
flow_idle_timeout = "1s"
[[service.backend]]
address = "10.60.1.2:7002"

[[service]]
name = "dsr-unresolved"
vip = "10.99.0.5:7000"
forwarding = "dsr-l2"
[[service.backend]]
address = "10.60.1.9:7000"
"#;

/// The frame `src` -> `dst` as the data plane must emit it: TTL `ttl`, the given MACs, and
/// checksums computed from scratch.
fn expected(src: &str, dst: &str, ttl: u8, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Vec<u8> {
    let mut f = udp(src, dst);
    f.ttl = ttl;
    let mut bytes = f.build();
    bytes[..6].copy_from_slice(&eth_dst);
    bytes[6..12].copy_from_slice(&eth_src);
    bytes
}

fn input(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    let mut f: UdpFrame = udp(src, dst);
    f.ttl = ttl;
    f.build()
}

/// An ICMP error frame from `src` to `dst` (TTL `ttl`), of `kind`/`code`, quoting `quoted`;
/// every checksum computed from scratch.
fn icmp_error(src: &str, dst: &str, ttl: u8, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (src.parse().expect("literal"), dst.parse().expect("literal"));
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = !checksum::fold(checksum::sum_be_words(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0, 0, ttl, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum::ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// `frame`'s IPv4 packet inside an outer IPv4 header from `outer_src` to the backend 10.60.1.2
/// (TTL 64, protocol 4, TOS 0, no DF, full checksum), in a frame from fa to the backend's MAC.
fn encapsulated_to_backend(outer_src: [u8; 4], frame: &[u8]) -> Vec<u8> {
    let inner = &frame[ETH_HDR_LEN..];
    let mut outer = vec![0x45, 0];
    outer.extend_from_slice(&(20 + inner.len() as u16).to_be_bytes());
    outer.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
    outer.extend_from_slice(&outer_src);
    outer.extend_from_slice(&[10, 60, 1, 2]);
    let check = checksum::ipv4_header_checksum(&outer);
    outer[10..12].copy_from_slice(&check.to_be_bytes());
    let mut f = MAC_BACKEND.to_vec();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&outer);
    f.extend_from_slice(inner);
    f
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// The IPv4 header and the 8 bytes after it, as an ICMP error quotes them.
fn quote(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HDR_LEN..ETH_HDR_LEN + 28].to_vec()
}

#[test]
fn nat_and_dsr_frames_come_out_exactly_as_routed() {
    require_root();
    netns::in_fib_topology("fib", &netns::fib_neighbours(), "the cases pass", run_cases);
}

fn run_cases() {
    let (cfg, mut dp) = load_toml(CONFIG);
    let (a, b) = (ifindex("fa"), ifindex("fb"));
    let prog = ingress_program(&mut dp);
    // The input frames are addressed to FRAME_DST_MAC: register it for both interfaces (only
    // frames addressed to the receiving interface are balanced).
    dp.set_interface_mac(a, xdplb::packet::FRAME_DST_MAC, false)
        .expect("fa's address");
    dp.set_interface_mac(b, xdplb::packet::FRAME_DST_MAC, false)
        .expect("fb's address");
    let run = |frame: &[u8], on: u32| testrun::run_xdp_on(&prog, frame, on).expect("test run");
    let backend: SocketAddrV4 = addr("10.60.1.2:7000");

    // 1. A client's request arrives on fb: rewritten to the backend, TTL 63, MACs of fa and the
    //    backend, redirected to fa.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5555", "10.99.0.1:7000", 64), b);
    assert_eq!(out.action, XDP_REDIRECT, "request: redirected to fa");
    assert_eq!(
        out.frame,
        expected(
            "10.60.2.2:5555",
            &backend.to_string(),
            63,
            MAC_BACKEND,
            MAC_A
        ),
        "request: exact frame"
    );
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
            (Stat::ForwardedFib, 1)
        ]
    );

    // 2. The backend's reply arrives on fa: source = VIP:port, routed back out of fb.
    let before = counters(&dp);
    let out = run(&input(&backend.to_string(), "10.60.2.2:5555", 64), a);
    assert_eq!(out.action, XDP_REDIRECT, "reply: redirected to fb");
    assert_eq!(
        out.frame,
        expected("10.99.0.1:7000", "10.60.2.2:5555", 63, MAC_CLIENT, MAC_B),
        "reply: exact frame"
    );
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [(Stat::ForwardedFib, 1), (Stat::NatReplyTranslated, 1)]
    );

    // 3. A client on the backends' own segment: out of the interface it came in on (XDP_TX).
    let out = run(&input("10.60.1.3:6000", "10.99.0.1:7000", 64), a);
    assert_eq!(out.action, XDP_TX, "same interface: XDP_TX");
    assert_eq!(
        out.frame,
        expected(
            "10.60.1.3:6000",
            &backend.to_string(),
            63,
            MAC_BACKEND,
            MAC_A
        )
    );

    // 4. TTL 1: rewritten, but the kernel must answer "time exceeded": passed, TTL untouched.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5556", "10.99.0.1:7000", 1), b);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        out.frame[ETH_HDR_LEN..],
        expected("10.60.2.2:5556", &backend.to_string(), 1, [0; 6], [0; 6])[ETH_HDR_LEN..],
        "TTL 1: rewritten, TTL kept for the kernel"
    );
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::PassTtlExceeded, 1)));

    // 5. A backend with a route but no neighbour entry: passed rewritten, for the kernel to
    //    resolve the neighbour and forward.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5557", "10.99.0.3:7000", 64), b);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        out.frame[ETH_HDR_LEN..],
        expected("10.60.2.2:5557", "10.60.1.9:7000", 64, [0; 6], [0; 6])[ETH_HDR_LEN..]
    );
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::PassNoNeighbour, 1)));

    // 6. No route to the backend at all: dropped and counted.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5558", "10.99.0.2:7000", 64), b);
    assert_eq!(out.action, XDP_DROP);
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::DropNoRoute, 1)));

    // 7. A packet from a backend that is no reply to a nat flow passes untouched.
    let stray = input(&backend.to_string(), "10.60.2.2:9999", 64);
    let out = run(&stray, a);
    assert_eq!((out.action, out.frame), (XDP_PASS, stray));

    // 8. dsr-l2: the frame keeps its addresses, ports, TTL and checksums; only the MACs change
    //    (to the backend's, from fa's), and it is redirected to the backends' segment.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5560", "10.99.0.4:7000", 64), b);
    assert_eq!(out.action, XDP_REDIRECT, "dsr-l2: redirected to fa");
    assert_eq!(
        out.frame,
        expected("10.60.2.2:5560", "10.99.0.4:7000", 64, MAC_BACKEND, MAC_A),
        "dsr-l2: exact frame"
    );
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
            (Stat::ForwardedFib, 1)
        ]
    );

    // 9. dsr-l2 to a backend without a neighbour entry: dropped (the kernel would deliver the
    //    VIP locally), counted.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5561", "10.99.0.5:7000", 64), b);
    assert_eq!(out.action, XDP_DROP);
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::DropNoNeighbour, 1)));

    // 10. dsr-ipip: an outer IPv4 header (TTL 64, protocol 4, full checksum) from the prefix,
    //     host part from the flow hash, to the backend; the client's packet inside unchanged.
    let client_frame = input("10.60.2.2:5562", "10.99.0.6:7000", 64);
    let before = counters(&dp);
    let out = run(&client_frame, b);
    assert_eq!(out.action, XDP_REDIRECT, "dsr-ipip: redirected to fa");
    let tuple = FlowTuple {
        src: reconcile::addr_v4("10.60.2.2".parse().expect("literal")),
        dst: reconcile::addr_v4("10.99.0.6".parse().expect("literal")),
        src_port_be: 5562u16.to_be(),
        dst_port_be: 7000u16.to_be(),
        proto: 17,
    };
    let host = flow_hash(&tuple, HASH_FIVE_TUPLE, cfg.hash_seed) & 0xff;
    let outer_src = [10, 200, 0, host as u8];
    let encapsulated = encapsulated_to_backend(outer_src, &client_frame);
    assert_eq!(out.frame, encapsulated, "dsr-ipip: exact frame");
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
            (Stat::ForwardedFib, 1)
        ]
    );

    // 11. `xdplb decap` on the backend gives back the client's packet exactly.
    let mut decap = aya::EbpfLoader::new()
        .load(DECAP_OBJECT)
        .expect("load the decap object");
    let prog: &mut aya::programs::Xdp = decap
        .program_mut("xdplb_decap")
        .expect("decap program")
        .try_into()
        .expect("an XDP program");
    prog.load().expect("verify decap");
    let out = testrun::run_xdp(prog, &encapsulated, 1).expect("test run");
    assert_eq!(out.action, XDP_PASS);
    let mut expected_inner = client_frame.clone();
    expected_inner[..6].copy_from_slice(&MAC_BACKEND);
    expected_inner[6..12].copy_from_slice(&MAC_A);
    assert_eq!(
        out.frame, expected_inner,
        "decap: the client's packet, as sent"
    );
    // Anything that is not IP-in-IP passes untouched.
    let out = testrun::run_xdp(prog, &client_frame, 1).expect("test run");
    assert_eq!((out.action, out.frame), (XDP_PASS, client_frame));

    // 13. fullnat: source = the balancer's address and a port of the range, destination = the
    //     backend; routed like nat.
    let before = counters(&dp);
    let out = run(&input("10.60.2.2:5570", "10.99.0.7:7000", 64), b);
    assert_eq!(out.action, XDP_REDIRECT, "fullnat: redirected to fa");
    let sport = u16::from_be_bytes([out.frame[34], out.frame[35]]);
    assert!(
        (40000..=40009).contains(&sport),
        "port {sport} from fullnat_ports"
    );
    let snat = format!("10.60.1.1:{sport}");
    assert_eq!(
        out.frame,
        expected(&snat, "10.60.1.2:7001", 63, MAC_BACKEND, MAC_A),
        "fullnat request: exact frame"
    );
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::ForwardedFib, 1)));
    // The next packet of the flow keeps its port.
    let again = run(&input("10.60.2.2:5570", "10.99.0.7:7000", 64), b);
    assert_eq!(again.frame, out.frame, "a live flow keeps its source port");

    // 14. The backend's reply to that port goes back to the client, from the VIP.
    let before = counters(&dp);
    let out = run(&input("10.60.1.2:7001", &snat, 64), a);
    assert_eq!(out.action, XDP_REDIRECT, "fullnat reply: redirected to fb");
    assert_eq!(
        out.frame,
        expected("10.99.0.7:7000", "10.60.2.2:5570", 63, MAC_CLIENT, MAC_B),
        "fullnat reply: exact frame"
    );
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [(Stat::ForwardedFib, 1), (Stat::FullnatReplyTranslated, 1)]
    );

    // 15. One port in the range: a second live flow gets none (dropped, counted) and the first
    //     keeps it; once the first has idled out (1 s) and the sweep freed it, a new flow gets
    //     it.
    let first = run(&input("10.60.2.2:5571", "10.99.0.8:7000", 64), b);
    assert_eq!(first.action, XDP_REDIRECT);
    assert_eq!(
        u16::from_be_bytes([first.frame[34], first.frame[35]]),
        41000
    );
    let before = counters(&dp);
    let second = run(&input("10.60.2.2:5572", "10.99.0.8:7000", 64), b);
    assert_eq!(second.action, XDP_DROP, "no free port: dropped");
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::DropPortsExhausted, 1)));
    let still = run(&input("10.60.2.2:5571", "10.99.0.8:7000", 64), b);
    assert_eq!(still.frame, first.frame, "the live flow keeps its port");
    assert_eq!(dp.sweep_fullnat().expect("sweep"), 0, "nothing idle yet");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(
        dp.sweep_fullnat().expect("sweep"),
        1,
        "the idle flow's port freed"
    );
    let third = run(&input("10.60.2.2:5572", "10.99.0.8:7000", 64), b);
    assert_eq!(
        third.action, XDP_REDIRECT,
        "the freed port goes to a new flow"
    );
    assert_eq!(
        u16::from_be_bytes([third.frame[34], third.frame[35]]),
        41000
    );

    // 17. nat: the backend reports port unreachable to the client about the request of case 1;
    //     the client gets it from the VIP, quoting what it sent (to VIP:port).
    let at_backend = expected(
        "10.60.2.2:5555",
        &backend.to_string(),
        63,
        MAC_BACKEND,
        MAC_A,
    );
    let err = icmp_error("10.60.1.2", "10.60.2.2", 64, 3, 3, &quote(&at_backend));
    let before = counters(&dp);
    let out = run(&err, a);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "nat ICMP error: routed to the client"
    );
    let as_sent = input("10.60.2.2:5555", "10.99.0.1:7000", 63);
    assert_eq!(
        out.frame,
        with_macs(
            icmp_error("10.99.0.1", "10.60.2.2", 63, 3, 3, &quote(&as_sent)),
            MAC_CLIENT,
            MAC_B
        ),
        "nat ICMP error: exact frame"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpErrorToClient, 1)), "{d:?}");

    // 18. fullnat: the same from the backend to the balancer's source port of case 13.
    let at_backend = expected(&snat, "10.60.1.2:7001", 63, MAC_BACKEND, MAC_A);
    let err = icmp_error("10.60.1.2", "10.60.1.1", 64, 3, 3, &quote(&at_backend));
    let out = run(&err, a);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "fullnat ICMP error: routed to the client"
    );
    let as_sent = input("10.60.2.2:5570", "10.99.0.7:7000", 63);
    assert_eq!(
        out.frame,
        with_macs(
            icmp_error("10.99.0.7", "10.60.2.2", 63, 3, 3, &quote(&as_sent)),
            MAC_CLIENT,
            MAC_B
        ),
        "fullnat ICMP error: exact frame"
    );

    // 19. A router cannot deliver a dsr-l2 reply (VIP -> client of case 8) and tells the VIP:
    //     the message goes on to the backend that owns the flow, readdressed to its MAC.
    let reply = input("10.99.0.4:7000", "10.60.2.2:5560", 60);
    let err = icmp_error("10.60.2.9", "10.99.0.4", 64, 3, 1, &quote(&reply));
    let before = counters(&dp);
    let out = run(&err, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "ICMP to the VIP: on to the backend"
    );
    assert_eq!(out.frame, with_macs(err.clone(), MAC_BACKEND, MAC_A));
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpErrorToBackend, 1)), "{d:?}");

    // 20. An ICMP error about nothing balanced (no service on 10.99.0.4:7001) passes untouched.
    let stray = icmp_error(
        "10.60.2.9",
        "10.99.0.4",
        64,
        3,
        1,
        &quote(&input("10.99.0.4:7001", "10.60.2.2:1", 60)),
    );
    let out = run(&stray, b);
    assert_eq!((out.action, out.frame), (XDP_PASS, stray));

    // 20b. An error about the reply of a dsr-l2 flow that never crossed this balancer (in a
    //      fleet behind ECMP, the router hashes its error as a packet of its own): no entry, but
    //      the service's Maglev table, which every node shares, names the owner. It goes there,
    //      and it creates no entry.
    let reply = input("10.99.0.4:7000", "10.60.2.2:1", 60);
    let err = icmp_error("10.60.2.9", "10.99.0.4", 64, 3, 1, &quote(&reply));
    let before = counters(&dp);
    let out = run(&err, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "ICMP to the VIP without an entry: on to the table's backend"
    );
    assert_eq!(out.frame, with_macs(err.clone(), MAC_BACKEND, MAC_A));
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpErrorToBackend, 1)), "{d:?}");
    assert!(
        !d.iter()
            .any(|(s, _)| matches!(s, Stat::FlowCreated | Stat::FlowTableInsert)),
        "routed by the table, no flow created: {d:?}"
    );

    // 21. A router's error to a nat VIP about the reply of case 1: on to that flow's backend,
    //     readdressed to it, quoting the reply as the backend sent it (from its own address).
    let reply = input("10.99.0.1:7000", "10.60.2.2:5555", 60);
    let err = icmp_error("10.60.2.9", "10.99.0.1", 64, 3, 1, &quote(&reply));
    let out = run(&err, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "nat ICMP to the VIP: on to the backend"
    );
    let as_backend_sent = input("10.60.1.2:7000", "10.60.2.2:5555", 60);
    assert_eq!(
        out.frame,
        with_macs(
            icmp_error("10.60.2.9", "10.60.1.2", 63, 3, 1, &quote(&as_backend_sent)),
            MAC_BACKEND,
            MAC_A
        ),
        "nat ICMP to the VIP: exact frame"
    );

    // 22. The same for the dsr-ipip flow of case 10: the message goes inside an outer header to
    //     the backend, with the flow's outer source.
    let reply = input("10.99.0.6:7000", "10.60.2.2:5562", 60);
    let err = icmp_error("10.60.2.9", "10.99.0.6", 64, 3, 1, &quote(&reply));
    let out = run(&err, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "dsr-ipip ICMP to the VIP: on to the backend"
    );
    assert_eq!(
        out.frame,
        encapsulated_to_backend(outer_src, &err),
        "dsr-ipip ICMP to the VIP: exact frame"
    );

    // 22b. The same about a dsr-ipip flow that has no entry here: the Maglev table names the
    //      backend, and the outer source carries the hash of the flow the error quotes.
    let reply = input("10.99.0.6:7000", "10.60.2.2:2", 60);
    let err = icmp_error("10.60.2.9", "10.99.0.6", 64, 3, 1, &quote(&reply));
    let before = counters(&dp);
    let out = run(&err, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "dsr-ipip ICMP to the VIP without an entry: on to the table's backend"
    );
    let tuple = FlowTuple {
        src: reconcile::addr_v4("10.60.2.2".parse().expect("literal")),
        dst: reconcile::addr_v4("10.99.0.6".parse().expect("literal")),
        src_port_be: 2u16.to_be(),
        dst_port_be: 7000u16.to_be(),
        proto: 17,
    };
    let host = flow_hash(&tuple, HASH_FIVE_TUPLE, cfg.hash_seed) & 0xff;
    assert_eq!(
        out.frame,
        encapsulated_to_backend([10, 200, 0, host as u8], &err),
        "dsr-ipip ICMP to the VIP without an entry: exact frame"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::IcmpErrorToBackend, 1)), "{d:?}");
    assert!(
        !d.iter()
            .any(|(s, _)| matches!(s, Stat::FlowCreated | Stat::FlowTableInsert)),
        "no flow created: {d:?}"
    );

    // 16. (last: it lowers the MTU of fa) dsr-ipip with a packet that no longer fits the backends' link once encapsulated: an
    //     ICMP "fragmentation needed" for the inner MTU goes back to the client (XDP_TX).
    netns::sh(&["ip", "link", "set", "fa", "mtu", "600"]);
    let big = UdpFrame::new(addr("10.60.2.2:5563"), addr("10.99.0.6:7000"), &[0x5a; 600]).build();
    let before = counters(&dp);
    let out = run(&big, b);
    assert_eq!(
        out.action, XDP_TX,
        "the ICMP answer leaves where the packet came in"
    );
    let quoted = &big[ETH_HDR_LEN..ETH_HDR_LEN + 28];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&580u16.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let icmp_check = !checksum::fold(checksum::sum_be_words(&icmp));
    icmp[2..4].copy_from_slice(&icmp_check.to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 10, 99, 0, 6, 10, 60, 2, 2,
    ];
    let ip_check = checksum::ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
    let mut expected_icmp = big[6..12].to_vec();
    expected_icmp.extend_from_slice(&big[..6]);
    expected_icmp.extend_from_slice(&[0x08, 0x00]);
    expected_icmp.extend_from_slice(&ip);
    expected_icmp.extend_from_slice(&icmp);
    assert_eq!(
        out.frame, expected_icmp,
        "ICMP fragmentation needed: exact frame"
    );
    let d = deltas(&before, &counters(&dp));
    assert!(d.contains(&(Stat::DropFragNeeded, 1)), "{d:?}");
    assert!(d.contains(&(Stat::IcmpFragNeededSent, 1)), "{d:?}");
}

/// A nat, a dsr-l2 and a dsr-ipip service with one backend each, 10.60.1.2 on `fa`.
const CACHE_CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "nat"
vip = "10.99.0.1:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.2:7000"

[[service]]
name = "dsr"
vip = "10.99.0.4:7000"
forwarding = "dsr-l2"
[[service.backend]]
address = "10.60.1.2:7000"

[[service]]
name = "ipip"
vip = "10.99.0.6:7000"
forwarding = "dsr-ipip"
encap_source = "10.200.0.0/24"
[[service.backend]]
address = "10.60.1.2:7000"
"#;

/// MAC addresses that neither the FIB nor the topology knows: a frame that carries them was
/// sent with the next-hop cache.
const MAC_CACHED_DST: [u8; 6] = [0x02, 0, 0, 0, 0xca, 0xfe];
const MAC_CACHED_SRC: [u8; 6] = [0x02, 0, 0, 0, 0xca, 0xfd];

#[test]
fn the_next_hop_cache_replaces_the_fib_and_a_stale_or_small_entry_falls_back() {
    require_root();
    netns::in_fib_topology(
        "nhc",
        &netns::fib_neighbours(),
        "the next-hop cache cases pass",
        next_hop_cases,
    );
}

fn next_hop_cases() {
    use xdplb_common::{NextHop, addr_from_v4_wire};

    let (_, mut dp) = load_toml(CACHE_CONFIG);
    let (a, b) = (ifindex("fa"), ifindex("fb"));
    let prog = ingress_program(&mut dp);
    dp.set_interface_mac(b, xdplb::packet::FRAME_DST_MAC, false)
        .expect("fb's address");
    let run = |frame: &[u8], on: u32| testrun::run_xdp_on(&prog, frame, on).expect("test run");
    let index = |name: &str| {
        let plan = dp
            .current()
            .expect("applied")
            .services
            .iter()
            .find(|s| s.name == name)
            .expect("the service")
            .clone();
        plan.backends[0].0
    };
    let (nat, dsr, ipip) = (index("nat"), index("dsr"), index("ipip"));
    let backend_wire = u32::from_ne_bytes([10, 60, 1, 2]);
    // Sent back out of fb (the ingress) by the cache: XDP_TX. The FIB would redirect to fa.
    let entry = |addr_wire: u32, mtu: u16| NextHop {
        addr: addr_from_v4_wire(addr_wire),
        ifindex: b,
        mtu,
        flags: 0,
        dmac: MAC_CACHED_DST,
        smac: MAC_CACHED_SRC,
    };
    let request = |port: u16, vip: &str| input(&format!("10.60.2.2:{port}"), vip, 64);
    let ip_len = |frame: &[u8]| (frame.len() - ETH_HDR_LEN) as u16;

    // 1. nat, with an entry for the backend: the cached MACs, XDP_TX (its ifindex is the
    //    ingress), TTL decremented, counted as sent by the cache and not by the FIB.
    let frame = request(6000, "10.99.0.1:7000");
    dp.set_next_hop(nat, &entry(backend_wire, 1500))
        .expect("cache entry");
    let before = counters(&dp);
    let out = run(&frame, b);
    assert_eq!(out.action, XDP_TX, "nat: sent by the cache, back out of fb");
    assert_eq!(
        out.frame,
        expected(
            "10.60.2.2:6000",
            "10.60.1.2:7000",
            63,
            MAC_CACHED_DST,
            MAC_CACHED_SRC
        ),
        "nat: the cached MACs"
    );
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
            (Stat::ForwardedCached, 1)
        ]
    );

    // 2. The entry is for another address (the index now holds another backend): the FIB.
    dp.set_next_hop(nat, &entry(u32::from_ne_bytes([10, 60, 1, 3]), 1500))
        .expect("cache entry");
    let before = counters(&dp);
    let out = run(&frame, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "nat, stale entry: the FIB's answer"
    );
    assert_eq!(
        out.frame,
        expected("10.60.2.2:6000", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A)
    );
    assert_eq!(deltas(&before, &counters(&dp)), [(Stat::ForwardedFib, 1)]);

    // 3. The packet is one byte bigger than the cached MTU: the FIB (whose MTU is 1500).
    dp.set_next_hop(nat, &entry(backend_wire, ip_len(&frame) - 1))
        .expect("cache entry");
    let before = counters(&dp);
    let out = run(&frame, b);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "nat, too big for the entry: the FIB"
    );
    assert_eq!(deltas(&before, &counters(&dp)), [(Stat::ForwardedFib, 1)]);
    // Exactly the MTU: the cache.
    dp.set_next_hop(nat, &entry(backend_wire, ip_len(&frame)))
        .expect("cache entry");
    assert_eq!(
        run(&frame, b).action,
        XDP_TX,
        "nat, packet of the MTU: cached"
    );

    // 4. No entry: the FIB.
    dp.remove_next_hop(nat).expect("remove");
    dp.remove_next_hop(nat)
        .expect("removing a missing entry is no error");
    let before = counters(&dp);
    assert_eq!(run(&frame, b).action, XDP_REDIRECT);
    assert_eq!(deltas(&before, &counters(&dp)), [(Stat::ForwardedFib, 1)]);

    // 5. dsr-l2: only the MACs change, to the cached ones.
    let frame = request(6001, "10.99.0.4:7000");
    dp.set_next_hop(dsr, &entry(backend_wire, 1500))
        .expect("cache entry");
    let out = run(&frame, b);
    assert_eq!(out.action, XDP_TX, "dsr-l2: sent by the cache");
    assert_eq!(
        out.frame,
        with_macs(frame.clone(), MAC_CACHED_DST, MAC_CACHED_SRC)
    );

    // 6. dsr-ipip: the cached MTU must take the outer header too.
    let frame = request(6002, "10.99.0.6:7000");
    dp.set_next_hop(ipip, &entry(backend_wire, ip_len(&frame) + 19))
        .expect("cache entry");
    let before = counters(&dp);
    let out = run(&frame, b);
    assert_eq!(out.action, XDP_REDIRECT, "dsr-ipip, 1 byte short: the FIB");
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::ForwardedFib, 1)));
    dp.set_next_hop(ipip, &entry(backend_wire, ip_len(&frame) + 20))
        .expect("cache entry");
    let before = counters(&dp);
    let out = run(&frame, b);
    assert_eq!(out.action, XDP_TX, "dsr-ipip: sent by the cache");
    assert_eq!(out.frame[..12], [MAC_CACHED_DST, MAC_CACHED_SRC].concat());
    assert_eq!(out.frame.len(), frame.len() + 20, "encapsulated");
    assert_eq!(
        deltas(&before, &counters(&dp)),
        [(Stat::ForwardedCached, 1)]
    );

    // 7. The daemon's resolver, in this namespace, finds what the FIB finds: backend
    //    10.60.1.2 via fa, its permanent neighbour entry, fa's MTU.
    for i in [nat, dsr, ipip] {
        dp.remove_next_hop(i).expect("remove");
    }
    let written = xdplb::nexthop::fill_cache(&mut dp).expect("resolve");
    assert_eq!(written, 3, "one entry per remote backend");
    let mut hops = dp.next_hops().expect("read the cache");
    hops.sort_by_key(|(i, _)| *i);
    let resolved = NextHop {
        addr: addr_from_v4_wire(backend_wire),
        ifindex: a,
        mtu: 1500,
        flags: 0,
        dmac: MAC_BACKEND,
        smac: MAC_A,
    };
    let mut want = vec![(nat, resolved), (dsr, resolved), (ipip, resolved)];
    want.sort_by_key(|(i, _)| *i);
    assert_eq!(hops, want);
    let before = counters(&dp);
    let out = run(&request(6003, "10.99.0.1:7000"), b);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(
        out.frame,
        expected("10.60.2.2:6003", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A),
        "sent by the resolved cache as the FIB would have"
    );
    assert!(deltas(&before, &counters(&dp)).contains(&(Stat::ForwardedCached, 1)));
}
