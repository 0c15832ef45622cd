//! Tier 2: what the data plane refuses or repairs before it balances a frame, through
//! BPF_PROG_TEST_RUN with exact frames: the Ethernet destination (LOCAL_MACS), the IPv4 header
//! checksum, partial UDP checksums (tx checksum offload), which flows own reply entries, known
//! replies before wildcard services, malformed ICMP errors, and packets too big for `dsr-l2` and
//! for a `dsr-ipip` ICMP error.
//!
//! Each test here fails on the data plane before 2ca9a03 (c766cb4), which balanced frames to any
//! Ethernet address, never checked the IPv4 header checksum, updated a partial UDP checksum
//! incrementally as if it were complete, let a `dsr-*` flow overwrite a `nat` reply entry,
//! looked up wildcard services before the reply tables, translated ICMP errors without checking
//! their checksum or length, counted a too-big `dsr-l2` packet as `drop_no_route`, and answered
//! a too-big ICMP error to a `dsr-ipip` VIP with a 36-byte "fragmentation needed" (the quoted
//! length wrapped). The doc comment of each test says how.
//!
//! Expected checksums are computed here from scratch (`ones_sum`) or by `xdplb::packet`, never
//! with the data plane's incremental arithmetic. Needs root; run with the README test command.

use std::net::{Ipv4Addr, SocketAddrV4};

use xdplb::{
    config::{self, Config},
    dataplane::{Dataplane, MapWriter, reconcile},
    packet::{ETH_HDR_LEN, FRAME_DST_MAC, UdpFrame},
    testrun::{self, XdpRun},
};
use xdplb_common::{
    MAP_REPLIES, Reply, ReplyKey, Stat,
    hash::{FlowTuple, HASH_FIVE_TUPLE, flow_hash},
};
use xdplb_test_support::*;

/// nat, dsr-l2 and dsr-ipip share the backend 10.60.1.2:7000 (allowed: only one of them is a
/// local/nat service); a nat wildcard service listens on 0.0.0.0:5601, a client port below.
const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "nat"
vip = "10.99.0.1:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.2:7000"

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
[[service.backend]]
address = "10.60.1.2:7002"

[[service]]
name = "wild"
vip = "0.0.0.0:5601"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.3:7000"
"#;
/// The index of "wild" in CONFIG.
const WILD: usize = 6;

/// `local` services on loopback, where BPF_PROG_TEST_RUN runs frames by default.
const LO_CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "local"
vip = "127.0.0.1:9875"
[[service.backend]]
address = "127.0.0.1:9876"

[[service]]
name = "any-address"
vip = "0.0.0.0:7000"
[[service.backend]]
address = "10.0.0.7:7001"
"#;

// ---------------------------------------------------------------------------------------------
// Frames and checksums, computed from scratch.

/// The one's-complement sum of the big-endian 16-bit words of `bytes` (odd tail padded).
fn ones_sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Offsets of the IPv4 header at `ip` and of its UDP header.
fn udp_at(frame: &[u8], ip: usize) -> usize {
    ip + usize::from(frame[ip] & 0x0f) * 4
}

/// The pseudo-header sum (source, destination, protocol 17, UDP length) of the IPv4/UDP packet
/// at `ip`, unfolded.
fn pseudo_sum(frame: &[u8], ip: usize) -> u64 {
    let udp = udp_at(frame, ip);
    ones_sum(&frame[ip + 12..ip + 20]) + 17 + u64::from(be16(frame, udp + 4))
}

/// Panics unless the UDP checksum of the IPv4/UDP packet at `ip` is a complete, non-zero one:
/// pseudo-header and datagram sum to all ones.
fn assert_full_udp_checksum(what: &str, frame: &[u8], ip: usize) {
    let udp = udp_at(frame, ip);
    let len = usize::from(be16(frame, udp + 4));
    let field = be16(frame, udp + 6);
    let total = fold(pseudo_sum(frame, ip) + ones_sum(&frame[udp..udp + len]));
    assert!(
        field != 0 && total == 0xffff,
        "{what}: expected a complete UDP checksum, got field {field:#06x} summing to {total:#06x}"
    );
}

/// `frame` as a sender with tx checksum offload hands it over: the UDP checksum field holds
/// the folded pseudo-header sum, not complemented.
fn partial(mut frame: Vec<u8>) -> Vec<u8> {
    let udp = udp_at(&frame, ETH_HDR_LEN);
    let field = fold(pseudo_sum(&frame, ETH_HDR_LEN));
    assert_ne!(field, 0, "test frame: a partial checksum is never 0");
    frame[udp + 6..udp + 8].copy_from_slice(&field.to_be_bytes());
    assert_ne!(
        fold(pseudo_sum(&frame, ETH_HDR_LEN) + ones_sum(&frame[udp..])),
        0xffff,
        "test frame: the partial field must not verify as complete by chance"
    );
    frame
}

/// `frame` with its IPv4 header checksum made wrong.
fn bad_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[ETH_HDR_LEN + 11] ^= 0x5a;
    frame
}

/// Recomputes the IPv4 header checksum of the header at `ip` from scratch.
fn fix_ip_checksum(frame: &mut [u8], ip: usize) {
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = !fold(ones_sum(&frame[ip..ip + ihl]));
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

fn input(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    let mut f: UdpFrame = udp(src, dst);
    f.ttl = ttl;
    f.build()
}

/// The frame `src` -> `dst` as the data plane must emit it: TTL `ttl`, the given MACs, and
/// checksums computed in full.
fn expected(src: &str, dst: &str, ttl: u8, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Vec<u8> {
    with_macs(input(src, dst, ttl), eth_dst, eth_src)
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// An ICMP error frame from `src` to `dst` (TTL `ttl`), of `kind`/`code`, quoting `quoted`;
/// every checksum computed in full.
fn icmp_error(src: &str, dst: &str, ttl: u8, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (src, dst): (Ipv4Addr, Ipv4Addr) =
        (src.parse().expect("literal"), dst.parse().expect("literal"));
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = !fold(ones_sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = FRAME_DST_MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0, 0, ttl, 1, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    fix_ip_checksum(&mut f, ETH_HDR_LEN);
    f.extend_from_slice(&icmp);
    f
}

/// The IPv4 header and the 8 bytes after it, as an ICMP error quotes them.
fn quote(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HDR_LEN..ETH_HDR_LEN + 28].to_vec()
}

/// `frame`'s IPv4 packet inside an outer IPv4 header from `outer_src` to the backend 10.60.1.2
/// (TTL 64, protocol 4, TOS 0, no DF, full checksum), in a frame from fa to the backend's MAC.
fn encapsulated_to_backend(outer_src: [u8; 4], frame: &[u8]) -> Vec<u8> {
    let inner = &frame[ETH_HDR_LEN..];
    let mut f = MAC_BACKEND.to_vec();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&(20 + inner.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
    f.extend_from_slice(&outer_src);
    f.extend_from_slice(&[10, 60, 1, 2]);
    fix_ip_checksum(&mut f, ETH_HDR_LEN);
    f.extend_from_slice(inner);
    f
}

/// The ICMP "fragmentation needed" for `mtu` that the data plane answers `big` with: from the
/// address the client sent to, quoting its IPv4 header and 8 bytes, MACs swapped, XDP_TX.
fn frag_needed_answer(big: &[u8], mtu: u16) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&big[ETH_HDR_LEN..ETH_HDR_LEN + 28]);
    let c = !fold(ones_sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = big[6..12].to_vec();
    f.extend_from_slice(&big[..6]);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&big[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20]); // the VIP
    f.extend_from_slice(&big[ETH_HDR_LEN + 12..ETH_HDR_LEN + 16]); // the client
    fix_ip_checksum(&mut f, ETH_HDR_LEN);
    f.extend_from_slice(&icmp);
    f
}

// ---------------------------------------------------------------------------------------------
// Running frames and checking what came out.

fn sorted(mut d: Vec<(Stat, u64)>) -> Vec<(Stat, u64)> {
    d.sort_by_key(|(s, _)| *s as u32);
    d
}

/// Panics unless the counters moved by exactly `want` since `before`.
fn assert_counted(what: &str, before: &[u64], dp: &Dataplane, want: &[(Stat, u64)]) {
    let got = sorted(deltas(before, &counters(dp)));
    let want = sorted(want.to_vec());
    assert_eq!(
        got, want,
        "{what}: counters moved by {got:?}, expected {want:?}"
    );
}

/// Panics unless the program returned `action` and left `input` byte for byte as it was.
fn assert_untouched(what: &str, out: &XdpRun, action: u32, input: &[u8]) {
    assert_eq!(
        out.action, action,
        "{what}: expected action {action}, got {}",
        out.action
    );
    assert!(
        out.frame == input,
        "{what}: expected the frame untouched\n  in:  {input:02x?}\n  out: {:02x?}",
        out.frame
    );
}

/// Panics unless the program returned `action` and emitted exactly `want`.
fn assert_frame(what: &str, out: &XdpRun, action: u32, want: &[u8]) {
    assert_eq!(
        out.action, action,
        "{what}: expected action {action}, got {} (frame {:02x?})",
        out.action, out.frame
    );
    assert!(
        out.frame == want,
        "{what}: frame differs\n  want: {want:02x?}\n  got:  {:02x?}",
        out.frame
    );
}

/// The two-veth namespace of `forwarding_testrun.rs` (fixed neighbours, forwarding on), and
/// `cases` run in a thread moved into it, where FIB lookups see it.
fn in_topology(tag: &str, cases: impl FnOnce() + Send) {
    require_root();
    netns::in_fib_topology(tag, &netns::fib_neighbours(), "the cases pass", cases);
}

/// The data plane loaded with CONFIG inside the topology, FRAME_DST_MAC registered as the
/// address of both fa and fb.
struct Fib {
    cfg: Config,
    dp: Dataplane,
    prog: aya::programs::Xdp,
    /// ifindex of fa (backends) and fb (clients).
    a: u32,
    b: u32,
}

impl Fib {
    fn new() -> Self {
        let (cfg, mut dp) = load_toml(CONFIG);
        let (a, b) = (ifindex("fa"), ifindex("fb"));
        dp.set_interface_mac(a, FRAME_DST_MAC, false)
            .expect("fa's address");
        dp.set_interface_mac(b, FRAME_DST_MAC, false)
            .expect("fb's address");
        let prog = ingress_program(&mut dp);
        Fib {
            cfg,
            dp,
            prog,
            a,
            b,
        }
    }

    fn run(&self, frame: &[u8], on: u32) -> XdpRun {
        testrun::run_xdp_on(&self.prog, frame, on).expect("test run")
    }

    fn counters(&self) -> Vec<u64> {
        counters(&self.dp)
    }

    fn flows(&self) -> u64 {
        self.dp.flow_table_entries().expect("FLOWS_V1 entries")
    }

    /// Every entry of REPLIES_V1.
    fn replies(&mut self) -> Vec<(ReplyKey, Reply)> {
        let map = self.dp.ebpf_mut().map(MAP_REPLIES).expect("REPLIES_V1");
        let table: aya::maps::HashMap<_, ReplyKey, Reply> =
            aya::maps::HashMap::try_from(map).expect("a hash map");
        let mut all: Vec<(ReplyKey, Reply)> = table.iter().map(|r| r.expect("entry")).collect();
        all.sort_by_key(|(k, _)| (k.client_port_be, k.backend_port_be));
        all
    }

    /// The outer source dsr-ipip gives the flow of `client` to 10.99.0.6:7000.
    fn ipip_source(&self, client: &str) -> [u8; 4] {
        let c: SocketAddrV4 = addr(client);
        let tuple = FlowTuple {
            src: reconcile::addr_v4(*c.ip()),
            dst: reconcile::addr_v4("10.99.0.6".parse().expect("literal")),
            src_port_be: c.port().to_be(),
            dst_port_be: 7000u16.to_be(),
            proto: 17,
        };
        let host = flow_hash(&tuple, HASH_FIVE_TUPLE, self.cfg.hash_seed) & 0xff;
        [10, 200, 0, host as u8]
    }
}

/// Loads LO_CONFIG without registering any interface's address.
fn load_lo_unregistered() -> Dataplane {
    require_root();
    pin_to_cpu0();
    let cfg = config::parse(LO_CONFIG, "test").expect("valid");
    let mut dp = Dataplane::load(cfg.limits, false).expect("load the data plane");
    dp.apply_config(&cfg).expect("fill maps");
    dp
}

const CLIENT: &str = "10.1.2.3:4444";
const LO_VIP: &str = "127.0.0.1:9875";

// ---------------------------------------------------------------------------------------------
// 1. Ethernet destination.

/// Only frames addressed to the receiving interface's MAC are balanced. Before 2ca9a03 there was
/// no LOCAL_MACS and every frame below was balanced (a flow created, destination rewritten).
#[test]
fn frames_not_addressed_to_the_receiving_interface_pass_untouched_without_a_flow() {
    let (_, mut dp) = load_toml(LO_CONFIG);
    let frame = udp(CLIENT, LO_VIP).build();
    let wildcard = udp(CLIENT, "192.0.2.55:7000").build();
    let other_unicast = [0x02, 0, 0, 0, 0, 0x99];
    let broadcast = [0xff; 6];
    let multicast = [0x01, 0x00, 0x5e, 0, 0, 1];
    for (what, f) in [
        (
            "to another unicast MAC",
            with_macs(frame.clone(), other_unicast, [2, 0, 0, 0, 0, 1]),
        ),
        (
            "to broadcast",
            with_macs(frame.clone(), broadcast, [2, 0, 0, 0, 0, 1]),
        ),
        (
            "to multicast",
            with_macs(frame.clone(), multicast, [2, 0, 0, 0, 0, 1]),
        ),
        (
            "wildcard service, another MAC",
            with_macs(wildcard.clone(), other_unicast, [2, 0, 0, 0, 0, 1]),
        ),
        (
            "wildcard service, broadcast",
            with_macs(wildcard.clone(), broadcast, [2, 0, 0, 0, 0, 1]),
        ),
    ] {
        let (flows, before) = (dp.flow_table_entries().expect("flows"), counters(&dp));
        let out = run(&mut dp, &f);
        assert_untouched(what, &out, XDP_PASS, &f);
        assert_counted(what, &before, &dp, &[(Stat::PassNotForUs, 1)]);
        assert_eq!(
            dp.flow_table_entries().expect("flows"),
            flows,
            "{what}: expected no flow created"
        );
    }
    // Addressed to lo's registered address, the same flow is new: nothing above created it.
    let before = counters(&dp);
    let out = run(&mut dp, &frame);
    assert_eq!(out.action, XDP_PASS, "addressed to us: balanced (local)");
    assert_eq!(
        decode(&out.frame).expect("decodes").dst,
        addr("127.0.0.1:9876"),
        "addressed to us: rewritten to the backend"
    );
    assert_counted(
        "addressed to us",
        &before,
        &dp,
        &[
            (Stat::Forwarded, 1),
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
        ],
    );

    // An interface with no registered address balances nothing, even frames to the address
    // the other data plane registered.
    let mut bare = load_lo_unregistered();
    for (what, f) in [
        ("no address registered", &frame),
        ("no address registered, wildcard", &wildcard),
    ] {
        let before = counters(&bare);
        let out = run(&mut bare, f);
        assert_untouched(what, &out, XDP_PASS, f);
        assert_counted(what, &before, &bare, &[(Stat::PassNotForUs, 1)]);
        assert_eq!(
            bare.flow_table_entries().expect("flows"),
            0,
            "{what}: no flow"
        );
    }
}

/// In the namespace: a frame to the address registered for fa and fb arriving on an
/// interface with none registered (a veth `fc`), and a nat reply and an ICMP error addressed
/// to another host, all pass untouched. Before 2ca9a03 the request was balanced, the reply and
/// the ICMP error translated.
#[test]
fn replies_and_icmp_errors_not_addressed_to_the_interface_pass_untouched() {
    in_topology("notforus", || {
        let f = Fib::new();
        netns::sh(&[
            "ip", "link", "add", "fc", "type", "veth", "peer", "name", "fd",
        ]);
        netns::sh(&["ip", "link", "set", "fc", "up"]);
        let fc = ifindex("fc");
        let req = input("10.60.2.2:5510", "10.99.0.1:7000", 64);
        let (flows, before) = (f.flows(), f.counters());
        let out = f.run(&req, fc);
        assert_untouched("request on an unregistered interface", &out, XDP_PASS, &req);
        assert_counted("request on fc", &before, &f.dp, &[(Stat::PassNotForUs, 1)]);
        assert_eq!(f.flows(), flows, "request on fc: expected no flow created");

        // A real flow, then its reply and an ICMP error about it, each to another MAC.
        let out = f.run(&req, f.b);
        assert_eq!(out.action, XDP_REDIRECT, "request on fb: balanced");
        let other = [0x02, 0, 0, 0, 0, 0x77];
        let reply = with_macs(
            input("10.60.1.2:7000", "10.60.2.2:5510", 64),
            other,
            MAC_BACKEND,
        );
        let before = f.counters();
        let out = f.run(&reply, f.a);
        assert_untouched("nat reply to another MAC", &out, XDP_PASS, &reply);
        assert_counted(
            "nat reply to another MAC",
            &before,
            &f.dp,
            &[(Stat::PassNotForUs, 1)],
        );
        let at_backend = expected("10.60.2.2:5510", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A);
        let err = with_macs(
            icmp_error("10.60.1.2", "10.60.2.2", 64, 3, 3, &quote(&at_backend)),
            other,
            MAC_BACKEND,
        );
        let before = f.counters();
        let out = f.run(&err, f.a);
        assert_untouched("ICMP error to another MAC", &out, XDP_PASS, &err);
        assert_counted(
            "ICMP error to another MAC",
            &before,
            &f.dp,
            &[(Stat::PassNotForUs, 1)],
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2. IPv4 header checksum.

/// A service frame with a wrong IPv4 header checksum is dropped unmodified in every mode,
/// creating no flow (fullnat: taking no port), and so is a nat or fullnat reply; IPv4 options
/// with a correct checksum are still balanced. Before 2ca9a03 nothing checked the header
/// checksum: every bad frame below was balanced.
#[test]
fn a_wrong_ipv4_header_checksum_is_dropped_before_any_state() {
    in_topology("ipcsum", || {
        let f = Fib::new();
        for (what, vip) in [
            ("nat", "10.99.0.1:7000"),
            ("dsr-l2", "10.99.0.4:7000"),
            ("dsr-ipip", "10.99.0.6:7000"),
            ("fullnat (one port)", "10.99.0.8:7000"),
            ("wildcard nat", "10.60.1.1:5601"),
        ] {
            let bad = bad_ip_checksum(input("10.60.2.2:5520", vip, 64));
            let (flows, before) = (f.flows(), f.counters());
            let out = f.run(&bad, f.b);
            assert_untouched(what, &out, XDP_DROP, &bad);
            assert_counted(what, &before, &f.dp, &[(Stat::DropBadIpv4Checksum, 1)]);
            assert_eq!(f.flows(), flows, "{what}: expected no flow created");
        }
        // The fullnat service's only port is still free: the same client's good packet is a
        // new flow and gets it.
        let before = f.counters();
        let out = f.run(&input("10.60.2.2:5520", "10.99.0.8:7000", 64), f.b);
        assert_frame(
            "fullnat after the bad packet",
            &out,
            XDP_REDIRECT,
            &expected("10.60.1.1:41000", "10.60.1.2:7002", 63, MAC_BACKEND, MAC_A),
        );
        assert_counted(
            "fullnat after the bad packet",
            &before,
            &f.dp,
            &[
                (Stat::FlowCreated, 1),
                (Stat::FlowTableInsert, 1),
                (Stat::ForwardedFib, 1),
            ],
        );

        // Replies: a nat flow's and the fullnat flow's, with a bad header checksum.
        let out = f.run(&input("10.60.2.2:5521", "10.99.0.1:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "nat request");
        for (what, reply) in [
            ("nat reply", input("10.60.1.2:7000", "10.60.2.2:5521", 64)),
            (
                "fullnat reply",
                input("10.60.1.2:7002", "10.60.1.1:41000", 64),
            ),
        ] {
            let bad = bad_ip_checksum(reply.clone());
            let before = f.counters();
            let out = f.run(&bad, f.a);
            assert_untouched(what, &out, XDP_DROP, &bad);
            assert_counted(what, &before, &f.dp, &[(Stat::DropBadIpv4Checksum, 1)]);
            // The intact reply is still translated.
            let out = f.run(&reply, f.a);
            assert_eq!(out.action, XDP_REDIRECT, "{what}, intact: translated");
        }

        // IPv4 options (router alert) with a correct checksum: balanced, options kept.
        let mut req = udp("10.60.2.2:5522", "10.99.0.1:7000");
        req.ip_options = vec![0x94, 0x04, 0, 0];
        let mut want = udp("10.60.2.2:5522", "10.60.1.2:7000");
        want.ip_options = req.ip_options.clone();
        want.ttl = 63;
        let out = f.run(&req.build(), f.b);
        assert_frame(
            "nat with IPv4 options",
            &out,
            XDP_REDIRECT,
            &with_macs(want.build(), MAC_BACKEND, MAC_A),
        );
    });
}

/// `local`: a wrong header checksum is dropped too, with options it is balanced.
#[test]
fn a_wrong_ipv4_header_checksum_is_dropped_for_local_services() {
    let (_, mut dp) = load_toml(LO_CONFIG);
    for (what, frame) in [
        ("local", udp(CLIENT, LO_VIP).build()),
        ("local, wildcard", udp(CLIENT, "192.0.2.55:7000").build()),
    ] {
        let bad = bad_ip_checksum(frame);
        let before = counters(&dp);
        let out = run(&mut dp, &bad);
        assert_untouched(what, &out, XDP_DROP, &bad);
        assert_counted(what, &before, &dp, &[(Stat::DropBadIpv4Checksum, 1)]);
        assert_eq!(
            dp.flow_table_entries().expect("flows"),
            0,
            "{what}: no flow"
        );
    }
    let mut f = udp(CLIENT, LO_VIP);
    f.ip_options = vec![1; 40];
    let out = run(&mut dp, &f.build());
    let d = decode(&out.frame).expect("decodes");
    assert!(
        out.action == XDP_PASS && d.dst == addr("127.0.0.1:9876") && d.ip_checksum_ok,
        "local with 40 bytes of options: expected balanced to 127.0.0.1:9876 with a good header, got action {} to {} (header ok: {})",
        out.action,
        d.dst,
        d.ip_checksum_ok
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Partial UDP checksums.

/// A partial UDP checksum (tx offload: the folded pseudo-header sum) leaves through XDP as a
/// complete one: nat requests (XDP_REDIRECT and XDP_TX), a nat reply, fullnat, dsr-l2 and the
/// inner packet of dsr-ipip; a nat packet handed to the kernel (no neighbour) carries the
/// pseudo-header sum of its new addresses. Before 2ca9a03 the partial field was updated
/// incrementally (nat) or left as it was (dsr): the receiver would drop every one of these.
/// In generic (skb) mode a sent packet keeps its skb, still CHECKSUM_PARTIAL: whoever
/// transmits it last completes the checksum from the field, so the field must stay the
/// pseudo-header sum, of the new addresses (a complete checksum there would be summed again
/// into garbage by a NIC or `skb_checksum_help`).
#[test]
fn partial_udp_checksums_stay_partial_in_generic_mode() {
    in_topology("generic", || {
        let mut f = Fib::new();
        f.dp.set_interface_mac(f.b, FRAME_DST_MAC, true)
            .expect("fb in generic mode");
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5540", "10.99.0.1:7000", 64)), f.b);
        assert_frame(
            "nat, generic, redirected",
            &out,
            XDP_REDIRECT,
            &partial(expected(
                "10.60.2.2:5540",
                "10.60.1.2:7000",
                63,
                MAC_BACKEND,
                MAC_A,
            )),
        );
        assert_counted(
            "nat, generic, redirected",
            &before,
            &f.dp,
            &[
                (Stat::FlowCreated, 1),
                (Stat::FlowTableInsert, 1),
                (Stat::ForwardedFib, 1),
                (Stat::PartialChecksumFixed, 1),
            ],
        );
    });
}

#[test]
fn partial_udp_checksums_are_completed_on_the_way_out() {
    in_topology("partial", || {
        let f = Fib::new();
        let fixed = |fib: &Fib, what: &str, before: &[u64]| {
            assert_counted(
                what,
                before,
                &fib.dp,
                &[
                    (Stat::FlowCreated, 1),
                    (Stat::FlowTableInsert, 1),
                    (Stat::ForwardedFib, 1),
                    (Stat::PartialChecksumFixed, 1),
                ],
            );
        };

        // nat, redirected to fa.
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5530", "10.99.0.1:7000", 64)), f.b);
        assert_frame(
            "nat, redirected",
            &out,
            XDP_REDIRECT,
            &expected("10.60.2.2:5530", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A),
        );
        assert_full_udp_checksum("nat, redirected", &out.frame, ETH_HDR_LEN);
        fixed(&f, "nat, redirected", &before);

        // nat, back out of fa (a client on the backends' segment).
        let before = f.counters();
        let out = f.run(&partial(input("10.60.1.3:5531", "10.99.0.1:7000", 64)), f.a);
        assert_frame(
            "nat, XDP_TX",
            &out,
            XDP_TX,
            &expected("10.60.1.3:5531", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A),
        );
        assert_full_udp_checksum("nat, XDP_TX", &out.frame, ETH_HDR_LEN);
        fixed(&f, "nat, XDP_TX", &before);

        // The nat backend's reply, itself partial (the backend offloads too).
        let before = f.counters();
        let out = f.run(&partial(input("10.60.1.2:7000", "10.60.2.2:5530", 64)), f.a);
        assert_frame(
            "nat reply",
            &out,
            XDP_REDIRECT,
            &expected("10.99.0.1:7000", "10.60.2.2:5530", 63, MAC_CLIENT, MAC_B),
        );
        assert_full_udp_checksum("nat reply", &out.frame, ETH_HDR_LEN);
        assert_counted(
            "nat reply",
            &before,
            &f.dp,
            &[
                (Stat::ForwardedFib, 1),
                (Stat::NatReplyTranslated, 1),
                (Stat::PartialChecksumFixed, 1),
            ],
        );

        // fullnat (the one-port service): source and destination rewritten.
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5532", "10.99.0.8:7000", 64)), f.b);
        assert_frame(
            "fullnat",
            &out,
            XDP_REDIRECT,
            &expected("10.60.1.1:41000", "10.60.1.2:7002", 63, MAC_BACKEND, MAC_A),
        );
        assert_full_udp_checksum("fullnat", &out.frame, ETH_HDR_LEN);
        fixed(&f, "fullnat", &before);

        // dsr-l2: addresses kept, only the MACs and the (now complete) checksum change.
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5533", "10.99.0.4:7000", 64)), f.b);
        assert_frame(
            "dsr-l2",
            &out,
            XDP_REDIRECT,
            &expected("10.60.2.2:5533", "10.99.0.4:7000", 64, MAC_BACKEND, MAC_A),
        );
        assert_full_udp_checksum("dsr-l2", &out.frame, ETH_HDR_LEN);
        fixed(&f, "dsr-l2", &before);

        // dsr-ipip: the inner checksum complete.
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5534", "10.99.0.6:7000", 64)), f.b);
        let inner = input("10.60.2.2:5534", "10.99.0.6:7000", 64);
        assert_frame(
            "dsr-ipip",
            &out,
            XDP_REDIRECT,
            &encapsulated_to_backend(f.ipip_source("10.60.2.2:5534"), &inner),
        );
        assert_full_udp_checksum("dsr-ipip, inner", &out.frame, ETH_HDR_LEN + 20);
        fixed(&f, "dsr-ipip", &before);

        // nat without a neighbour: passed to the kernel rewritten (TTL kept), the field the
        // pseudo-header sum of the new addresses, for the kernel to complete.
        let before = f.counters();
        let out = f.run(&partial(input("10.60.2.2:5535", "10.99.0.3:7000", 64)), f.b);
        let mut want = input("10.60.2.2:5535", "10.60.1.9:7000", 64);
        let field = fold(pseudo_sum(&want, ETH_HDR_LEN));
        let udp = udp_at(&want, ETH_HDR_LEN);
        want[udp + 6..udp + 8].copy_from_slice(&field.to_be_bytes());
        assert_frame("nat passed (no neighbour)", &out, XDP_PASS, &want);
        assert_counted(
            "nat passed (no neighbour)",
            &before,
            &f.dp,
            &[
                (Stat::FlowCreated, 1),
                (Stat::FlowTableInsert, 1),
                (Stat::PassNoNeighbour, 1),
                (Stat::PartialChecksumFixed, 1),
            ],
        );

        // A complete checksum is not counted as fixed, whatever the path.
        let before = f.counters();
        let out = f.run(&input("10.60.2.2:5536", "10.99.0.1:7000", 64), f.b);
        assert_frame(
            "nat, complete checksum",
            &out,
            XDP_REDIRECT,
            &expected("10.60.2.2:5536", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A),
        );
        assert_counted(
            "nat, complete checksum",
            &before,
            &f.dp,
            &[
                (Stat::FlowCreated, 1),
                (Stat::FlowTableInsert, 1),
                (Stat::ForwardedFib, 1),
            ],
        );
    });
}

/// `local` (XDP_PASS to this host's stack, which trusts a partial skb it delivers): the
/// ordinary incremental update of the field, nothing more, and nothing counted as fixed. The
/// same before 2ca9a03; kept here so that the completion never leaks into the local path.
#[test]
fn a_partial_checksum_delivered_locally_gets_the_ordinary_incremental_update() {
    let (_, mut dp) = load_toml(LO_CONFIG);
    let frame = partial(udp(CLIENT, LO_VIP).build());
    let before = counters(&dp);
    let out = run(&mut dp, &frame);
    // RFC 1624 eqn. 3 for the destination port 9875 -> 9876 (the address stays 127.0.0.1),
    // computed here.
    let udp = udp_at(&frame, ETH_HDR_LEN);
    let old_field = be16(&frame, udp + 6);
    let sum = u64::from(!old_field) + u64::from(!9875u16) + u64::from(9876u16);
    let field = match !fold(sum) {
        0 => 0xffff,
        c => c,
    };
    let mut want = frame.clone();
    want[udp + 2..udp + 4].copy_from_slice(&9876u16.to_be_bytes());
    want[udp + 6..udp + 8].copy_from_slice(&field.to_be_bytes());
    assert_frame("local, partial", &out, XDP_PASS, &want);
    assert_counted(
        "local, partial",
        &before,
        &dp,
        &[
            (Stat::Forwarded, 1),
            (Stat::FlowCreated, 1),
            (Stat::FlowTableInsert, 1),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Reply ownership, known replies before wildcard services.

/// A nat backend's reply is translated when its owner (REPLY_OWNERS_V1: the one local/nat
/// service the backend serves) holds the client's flow on that backend. Flows of other modes
/// of the same client and port to the same backend change nothing of that, so the nat
/// backend's reply is still translated from the nat VIP. (Before 2ca9a03 a dsr-l2 flow
/// overwrote the per-flow reply entry and the reply passed untranslated; services with a
/// concrete VIP now write no per-flow reply entry at all.) A packet from the backend to a
/// client with no flow is no reply of ours.
#[test]
fn only_nat_flows_own_reply_entries() {
    in_topology("owner", || {
        let mut f = Fib::new();
        let client = "10.60.2.2:5540";
        // Before any flow: the backend's packet to this client is not translated.
        let before = f.counters();
        let out = f.run(&input("10.60.1.2:7000", client, 64), f.a);
        assert_eq!(out.action, XDP_PASS, "a backend packet to no flow's client");
        assert_counted(
            "a backend packet to no flow's client",
            &before,
            &f.dp,
            &[(Stat::PassNoService, 1)],
        );
        let out = f.run(&input(client, "10.99.0.1:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "nat request");
        assert_eq!(
            f.replies(),
            vec![],
            "a service with a concrete VIP writes no per-flow reply entry"
        );
        for (what, vip) in [
            ("dsr-l2", "10.99.0.4:7000"),
            ("dsr-ipip", "10.99.0.6:7000"),
            ("fullnat", "10.99.0.7:7000"),
        ] {
            let before = f.counters();
            let out = f.run(&input(client, vip, 64), f.b);
            assert_eq!(
                out.action, XDP_REDIRECT,
                "{what} request of the same client"
            );
            let d = deltas(&before, &f.counters());
            assert!(
                d.contains(&(Stat::FlowCreated, 1)),
                "{what}: a new flow, got {d:?}"
            );
            assert_eq!(f.replies(), vec![], "after the {what} flow");
        }
        let before = f.counters();
        let out = f.run(&input("10.60.1.2:7000", client, 64), f.a);
        assert_frame(
            "nat reply after dsr flows",
            &out,
            XDP_REDIRECT,
            &expected("10.99.0.1:7000", client, 63, MAC_CLIENT, MAC_B),
        );
        assert_counted(
            "nat reply after dsr flows",
            &before,
            &f.dp,
            &[(Stat::ForwardedFib, 1), (Stat::NatReplyTranslated, 1)],
        );
    });
}

/// A known reply is translated even when a wildcard service listens on its destination port.
/// nat: the client's port is 5601, where "wild" (0.0.0.0:5601) listens. fullnat: the config
/// refuses a wildcard port inside fullnat_ports, so the test writes one into SERVICES itself
/// (a copy of "wild" keyed 0.0.0.0:<the flow's fullnat port>), as a stale or hand-made map
/// could hold. Before 2ca9a03 the wildcard service was looked up first: both replies were
/// balanced to 10.60.1.3 as new requests.
#[test]
fn known_replies_win_over_wildcard_services() {
    in_topology("wildreply", || {
        let mut f = Fib::new();
        let client = "10.60.2.2:5601";
        let out = f.run(&input(client, "10.99.0.1:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "nat request from port 5601");
        let (flows, before) = (f.flows(), f.counters());
        let out = f.run(&input("10.60.1.2:7000", client, 64), f.a);
        assert_frame(
            "nat reply to a wildcard port",
            &out,
            XDP_REDIRECT,
            &expected("10.99.0.1:7000", client, 63, MAC_CLIENT, MAC_B),
        );
        assert_counted(
            "nat reply to a wildcard port",
            &before,
            &f.dp,
            &[(Stat::ForwardedFib, 1), (Stat::NatReplyTranslated, 1)],
        );
        assert_eq!(f.flows(), flows, "nat reply: expected no flow created");

        // The wildcard service does balance a request from elsewhere to that port.
        let out = f.run(&input("10.60.2.2:5541", "10.60.2.1:5601", 64), f.b);
        assert_frame(
            "request to the wildcard service",
            &out,
            XDP_REDIRECT,
            &with_macs(
                input("10.60.2.2:5541", "10.60.1.3:7000", 63),
                [0x02, 0, 0, 0, 0x01, 0x03],
                MAC_A,
            ),
        );

        // fullnat.
        let client = "10.60.2.2:5542";
        let out = f.run(&input(client, "10.99.0.7:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "fullnat request");
        let port = be16(&out.frame, ETH_HDR_LEN + 20);
        assert!((40000..=40009).contains(&port), "fullnat port {port}");
        let state = reconcile::desired_state(&f.cfg, None).expect("plan");
        let plan = &state.services[WILD];
        assert_eq!(
            plan.key,
            reconcile::service_key(addr("0.0.0.0:5601"), 17),
            "the wild plan"
        );
        let key = reconcile::service_key(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), 17);
        f.dp.writer()
            .expect("maps")
            .put_service(&key, &plan.service)
            .expect("write");
        let (flows, before) = (f.flows(), f.counters());
        let out = f.run(
            &input("10.60.1.2:7001", &format!("10.60.1.1:{port}"), 64),
            f.a,
        );
        assert_frame(
            "fullnat reply to a wildcard port",
            &out,
            XDP_REDIRECT,
            &expected("10.99.0.7:7000", client, 63, MAC_CLIENT, MAC_B),
        );
        assert_counted(
            "fullnat reply to a wildcard port",
            &before,
            &f.dp,
            &[(Stat::ForwardedFib, 1), (Stat::FullnatReplyTranslated, 1)],
        );
        assert_eq!(f.flows(), flows, "fullnat reply: expected no flow created");
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed ICMP errors.

/// An ICMP error about a balanced nat or fullnat flow with a wrong ICMP checksum, or whose
/// outer total length does not cover the quoted headers or the message, passes untouched; the
/// intact one is still translated. Before 2ca9a03 neither the ICMP checksum nor the outer
/// length was checked: all were translated (`icmp_error_to_client`).
#[test]
fn malformed_icmp_errors_about_balanced_flows_pass_untouched() {
    in_topology("badicmp", || {
        let f = Fib::new();
        let out = f.run(&input("10.60.2.2:5550", "10.99.0.1:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "nat request");
        let out = f.run(&input("10.60.2.2:5551", "10.99.0.7:7000", 64), f.b);
        assert_eq!(out.action, XDP_REDIRECT, "fullnat request");
        let snat = format!("10.60.1.1:{}", be16(&out.frame, ETH_HDR_LEN + 20));

        for (what, at_backend, to) in [
            (
                "nat",
                expected("10.60.2.2:5550", "10.60.1.2:7000", 63, MAC_BACKEND, MAC_A),
                "10.60.2.2",
            ),
            (
                "fullnat",
                expected(&snat, "10.60.1.2:7001", 63, MAC_BACKEND, MAC_A),
                "10.60.1.1",
            ),
        ] {
            // The quote carries 16 bytes of payload beyond the UDP header.
            let q = at_backend[ETH_HDR_LEN..ETH_HDR_LEN + 44].to_vec();
            let good = icmp_error("10.60.1.2", to, 64, 3, 3, &q);
            let icmp = ETH_HDR_LEN + 20;

            let mut bad_sum = good.clone();
            bad_sum[icmp + 2] ^= 0x40;
            // 36 bytes of ICMP message: the quoted headers only, not the payload the checksum
            // covers.
            let mut short_msg = good.clone();
            short_msg[ETH_HDR_LEN + 2..ETH_HDR_LEN + 4]
                .copy_from_slice(&(20u16 + 36).to_be_bytes());
            fix_ip_checksum(&mut short_msg, ETH_HDR_LEN);
            // 32 bytes: not even the quoted UDP header.
            let mut short_quote = good.clone();
            short_quote[ETH_HDR_LEN + 2..ETH_HDR_LEN + 4]
                .copy_from_slice(&(20u16 + 32).to_be_bytes());
            fix_ip_checksum(&mut short_quote, ETH_HDR_LEN);

            for (case, frame, stat) in [
                ("wrong ICMP checksum", bad_sum, Stat::PassBadIcmp),
                (
                    "total length short of the message",
                    short_msg,
                    Stat::PassBadIcmp,
                ),
                (
                    "total length short of the quoted UDP header",
                    short_quote,
                    Stat::PassBadIcmp,
                ),
            ] {
                let what = format!("{what}: {case}");
                let before = f.counters();
                let out = f.run(&frame, f.a);
                assert_untouched(&what, &out, XDP_PASS, &frame);
                assert_counted(&what, &before, &f.dp, &[(stat, 1)]);
            }
            let before = f.counters();
            let out = f.run(&good, f.a);
            assert_eq!(
                out.action, XDP_REDIRECT,
                "{what}: the intact error is translated"
            );
            let d = deltas(&before, &f.counters());
            assert!(
                d.contains(&(Stat::IcmpErrorToClient, 1)),
                "{what}: intact error counted {d:?}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 6. and 7. Too big.

/// With fa's MTU lowered to 600:
/// - a dsr-l2 packet bigger than that is answered with ICMP "fragmentation needed" for 600 from
///   the VIP (XDP_TX, exact frame); before 2ca9a03 it was dropped as `drop_no_route`;
/// - an ICMP error to the dsr-ipip VIP about a flow's reply, too big once encapsulated, is
///   dropped unmodified with no ICMP about it; before 2ca9a03 it was cut to a 36-byte
///   "fragmentation needed" (the quoted length wrapped) and sent back with XDP_TX;
/// - the same ICMP error to a dsr-l2 VIP, too big for fa, is dropped unmodified as well.
#[test]
fn too_big_for_the_backends_link() {
    in_topology("toobig", || {
        let f = Fib::new();
        // Flows whose replies the ICMP errors below are about.
        for vip in ["10.99.0.4:7000", "10.99.0.6:7000"] {
            let out = f.run(&input("10.60.2.2:5560", vip, 64), f.b);
            assert_eq!(out.action, XDP_REDIRECT, "request to {vip}");
        }
        netns::sh(&["ip", "link", "set", "fa", "mtu", "600"]);

        let big =
            UdpFrame::new(addr("10.60.2.2:5561"), addr("10.99.0.4:7000"), &[0x5a; 600]).build();
        let before = f.counters();
        let out = f.run(&big, f.b);
        assert_frame(
            "dsr-l2 too big",
            &out,
            XDP_TX,
            &frag_needed_answer(&big, 600),
        );
        assert_counted(
            "dsr-l2 too big",
            &before,
            &f.dp,
            &[
                (Stat::FlowCreated, 1),
                (Stat::FlowTableInsert, 1),
                (Stat::DropFragNeeded, 1),
                (Stat::IcmpFragNeededSent, 1),
            ],
        );

        // A router's error quoting 600 bytes of a reply: 628 bytes of IPv4, over fa's 600 as it
        // is (dsr-l2) and once encapsulated (dsr-ipip, 648).
        for (what, vip) in [("dsr-ipip", "10.99.0.6"), ("dsr-l2", "10.99.0.4")] {
            let reply = UdpFrame::new(
                addr(&format!("{vip}:7000")),
                addr("10.60.2.2:5560"),
                &[0xa5; 600],
            )
            .build();
            let q = &reply[ETH_HDR_LEN..ETH_HDR_LEN + 600];
            let err = icmp_error("10.60.2.9", vip, 64, 3, 1, q);
            let what = format!("ICMP error to the {what} VIP, too big");
            let before = f.counters();
            let out = f.run(&err, f.b);
            assert_untouched(&what, &out, XDP_DROP, &err);
            assert_counted(
                &what,
                &before,
                &f.dp,
                &[(Stat::IcmpErrorToBackend, 1), (Stat::DropFragNeeded, 1)],
            );
        }
    });
}
