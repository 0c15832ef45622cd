//! Helpers for xdplb's privileged test tiers (BPF_PROG_TEST_RUN and network namespaces): a
//! loaded data plane from a config, counters, the frame oracle ([`decode`], which parses with
//! etherparse, not with the code under test), the MACs of the forwarding topology, and (in
//! [`netns`]) namespaces, bpffs mounts and child processes that clean up after themselves.
//!
//! A crate of its own so that the product does not ship it; only xdplb's tests depend on it.

#![forbid(unsafe_code)]
#![allow(
    clippy::missing_panics_doc,
    reason = "the helpers panic to fail the test that called them, with a message saying why"
)]

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, UdpHeaderSlice};

use xdplb::{
    config::{self, Config},
    dataplane::{self, Dataplane},
    packet::UdpFrame,
    testrun::{self, XdpRun},
};
use xdplb_common::Stat;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The tutorial's three backends on loopback (round robin) plus a wildcard service on port
/// 7000: the IPv4 config of xdp_testrun, which ipv6_testrun also loads beside its IPv6 one.
pub const TUTORIAL_CONFIG: &str = include_str!("../configs/tutorial.toml");

/// The MACs of the forwarding tests' topology ([`netns::in_fib_topology`]): the backend side
/// (`fa`, 10.60.1.1/24), the client side (`fb`, 10.60.2.1/24), the first backend (10.60.1.2)
/// and the client (10.60.2.2).
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const MAC_BACKEND: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

/// Fails loudly (never skips) when the tests cannot use BPF: CI runs them as root.
pub fn require_root() {
    assert!(
        dataplane::has_bpf_privileges(),
        "this test loads BPF programs and needs root; run the README test command (sudo)"
    );
}

/// Pins the calling thread to CPU 0, so per-CPU state (the round-robin cursor) is one sequence.
pub fn pin_to_cpu0() {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity to CPU 0");
}

/// A loaded (unattached) data plane with `cfg`'s state written, and its RR cursors at 0.
pub fn load_config(cfg: &Config) -> Dataplane {
    require_root();
    pin_to_cpu0();
    let mut dp = Dataplane::load(cfg.limits, false).expect("load the data plane");
    dp.apply_config(cfg).expect("fill maps");
    accept_frames_on_lo(&mut dp);
    for id in 0..cfg.services.len() as u32 {
        dp.set_rr_cursor(id, 0).expect("reset cursor");
    }
    dp
}

/// Registers the Ethernet address of the test frames as `lo`'s, where BPF_PROG_TEST_RUN runs
/// frames by default: only frames addressed to the interface are balanced.
pub fn accept_frames_on_lo(dp: &mut Dataplane) {
    let (lo, _) = dataplane::interface_address("lo").expect("lo's ifindex");
    dp.set_interface_mac(lo, xdplb::packet::FRAME_DST_MAC, false)
        .expect("register lo's address");
}

pub fn load_toml(text: &str) -> (Config, Dataplane) {
    let cfg = config::parse(text, "test").expect("test config is valid");
    let dp = load_config(&cfg);
    (cfg, dp)
}

pub fn run(dp: &mut Dataplane, frame: &[u8]) -> XdpRun {
    let prog = dp.ingress().expect("ingress program");
    testrun::run_xdp(prog, frame, 1).expect("BPF_PROG_TEST_RUN")
}

/// The ifindex of `name` in the calling thread's network namespace; fails the test if there is
/// none.
pub fn ifindex(name: &str) -> u32 {
    xdplb::daemon::interface_index(name)
        .unwrap_or_else(|| panic!("no interface {name} in this namespace"))
}

/// An owned handle to the loaded ingress program, for BPF_PROG_TEST_RUN on an interface while
/// the test keeps changing the data plane's maps.
pub fn ingress_program(dp: &mut Dataplane) -> aya::programs::Xdp {
    testrun::handle(dp.ingress().expect("ingress program")).expect("a handle on the program")
}

/// Runs a frame shorter than an Ethernet header (behind metadata); returns the kernel's answer.
pub fn run_short(dp: &mut Dataplane, frame: &[u8]) -> std::io::Result<XdpRun> {
    let prog = dp.ingress().expect("ingress program");
    testrun::run_xdp_short(prog, frame)
}

/// Global counters, summed over CPUs.
pub fn counters(dp: &Dataplane) -> Vec<u64> {
    dp.stats().expect("read STATS_V1")
}

/// Counter deltas between two snapshots, as (stat, delta) for every non-zero delta.
pub fn deltas(before: &[u64], after: &[u64]) -> Vec<(Stat, u64)> {
    Stat::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(s, (b, a))| (*s, a - b))
        .collect()
}

pub fn addr(s: &str) -> SocketAddrV4 {
    s.parse().expect("test address literal")
}

pub fn udp(src: &str, dst: &str) -> UdpFrame {
    UdpFrame::new(addr(src), addr(dst), b"xdplb test payload")
}
/// A decoded UDP/IPv4 frame, with its checksums checked from scratch by etherparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The IPv4 header length in 32-bit words.
    pub ihl: usize,
    pub payload: Vec<u8>,
    /// The IPv4 header checksum equals etherparse's recomputation.
    pub ip_checksum_ok: bool,
    /// The UDP checksum field as sent (host order); 0 means none.
    pub udp_checksum: u16,
    /// The UDP checksum equals etherparse's full recomputation (true when it is 0).
    pub udp_checksum_ok: bool,
}

/// Decodes an Ethernet/IPv4/UDP frame (the UDP datagram is what the IPv4 total length says).
/// Returns `None` if it is not one. The oracle of the tests: independent of `xdplb::packet`,
/// which builds their input frames.
pub fn decode(frame: &[u8]) -> Option<Decoded> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    if eth.ether_type() != EtherType::IPV4 {
        return None;
    }
    let ip_bytes = frame.get(eth.slice().len()..)?;
    let ip = Ipv4HeaderSlice::from_slice(ip_bytes).ok()?;
    if ip.protocol() != IpNumber::UDP {
        return None;
    }
    let ip_checksum_ok = ip.header_checksum() == ip.to_header().calc_header_checksum();
    let udp_bytes = ip_bytes.get(ip.slice().len()..usize::from(ip.total_len()))?;
    let udp = UdpHeaderSlice::from_slice(udp_bytes).ok()?;
    let payload = udp_bytes.get(8..)?;
    let (src_ip, dst_ip): (Ipv4Addr, Ipv4Addr) = (ip.source_addr(), ip.destination_addr());
    let udp_checksum = udp.checksum();
    let udp_checksum_ok = udp_checksum == 0
        || udp
            .to_header()
            .calc_checksum_ipv4_raw(src_ip.octets(), dst_ip.octets(), payload)
            .is_ok_and(|c| c == udp_checksum);
    Some(Decoded {
        src: SocketAddrV4::new(src_ip, udp.source_port()),
        dst: SocketAddrV4::new(dst_ip, udp.destination_port()),
        ihl: usize::from(ip.ihl()),
        payload: payload.to_vec(),
        ip_checksum_ok,
        udp_checksum,
        udp_checksum_ok,
    })
}

pub mod netns;
pub mod prometheus;
pub mod v6_edges;

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb::packet::{ETH_HDR_LEN, UdpFrame};

    #[test]
    fn the_builder_s_frames_decode_with_valid_checksums() {
        let src: SocketAddrV4 = "10.1.2.3:4444".parse().expect("literal");
        let dst: SocketAddrV4 = "127.0.0.1:9875".parse().expect("literal");
        let mut f = UdpFrame::new(src, dst, b"hello");
        f.ip_options = vec![1, 1, 1];
        let d = decode(&f.build()).expect("decodes");
        assert_eq!((d.src, d.dst, d.ihl), (src, dst, 6));
        assert_eq!(d.payload, b"hello");
        assert!(d.ip_checksum_ok && d.udp_checksum_ok && d.udp_checksum != 0);
        f.zero_udp_checksum = true;
        let d = decode(&f.build()).expect("decodes");
        assert!(d.udp_checksum == 0 && d.udp_checksum_ok);
    }

    #[test]
    fn decode_notices_a_corrupted_checksum() {
        let src: SocketAddrV4 = "10.1.2.3:4444".parse().expect("literal");
        let dst: SocketAddrV4 = "127.0.0.1:9875".parse().expect("literal");
        let mut bytes = UdpFrame::new(src, dst, b"hello").build();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bytes[ETH_HDR_LEN + 8] ^= 1; // TTL
        let d = decode(&bytes).expect("decodes");
        assert!(!d.ip_checksum_ok && !d.udp_checksum_ok);
    }

    #[test]
    fn decode_refuses_what_is_not_udp_over_ipv4() {
        let src: SocketAddrV4 = "10.1.2.3:4444".parse().expect("literal");
        let dst: SocketAddrV4 = "127.0.0.1:9875".parse().expect("literal");
        let mut f = UdpFrame::new(src, dst, b"hello");
        f.protocol = 6;
        assert_eq!(decode(&f.build()), None);
        let mut bytes = UdpFrame::new(src, dst, b"hello").build();
        bytes[12] = 0x86; // EtherType 0x86dd
        bytes[13] = 0xdd;
        assert_eq!(decode(&bytes), None);
        assert_eq!(decode(&bytes[..20]), None);
    }
}
pub mod v6;
