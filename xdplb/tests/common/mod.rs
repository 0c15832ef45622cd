//! Shared helpers for the privileged test tiers.
#![allow(dead_code)]

use std::net::SocketAddrV4;

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
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
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
    let fd = prog.fd().expect("program fd");
    testrun::run_xdp(fd, frame, 1).expect("BPF_PROG_TEST_RUN")
}

/// The ifindex of `name` in the calling thread's network namespace; fails the test if there is
/// none.
pub fn ifindex(name: &str) -> u32 {
    xdplb::daemon::interface_index(name)
        .unwrap_or_else(|| panic!("no interface {name} in this namespace"))
}

/// An owned descriptor of the loaded ingress program, for BPF_PROG_TEST_RUN on an interface.
pub fn ingress_fd(dp: &mut Dataplane) -> aya::programs::ProgramFd {
    dp.ingress()
        .expect("ingress program")
        .fd()
        .expect("program fd")
        .try_clone()
        .expect("clone the program fd")
}

/// Runs a frame shorter than an Ethernet header (behind metadata); returns the kernel's answer.
pub fn run_short(dp: &mut Dataplane, frame: &[u8]) -> std::io::Result<XdpRun> {
    let prog = dp.ingress().expect("ingress program");
    let fd = prog.fd().expect("program fd");
    testrun::run_xdp_short(fd, frame)
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
pub mod netns;
