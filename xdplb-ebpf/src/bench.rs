//! Benchmark harness for BPF_PROG_TEST_RUN with `repeat > 1`.
//!
//! The kernel runs every iteration on the buffer the previous iteration rewrote, so timing the
//! load balancer directly would measure "a packet already sent to a backend" (a non-service
//! packet) after the first iteration. These wrappers put the original frame back, optionally
//! make it a new flow (or a new flow every second iteration), and tail-call the program under
//! test. Their own cost is measured by tail-calling `bench_empty` and subtracted by user space.
#![no_std]
#![no_main]

mod runtime;

use xdplb_common::checksum::{replace_u32, udp_replace_u32};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

/// Length of every benchmark frame; the frame given to BPF_PROG_TEST_RUN must be this long.
const FRAME_LEN: usize = 64;
const WORDS: usize = FRAME_LEN / 8;
/// Offset of the IPv4 source address in a frame with a 20-byte IPv4 header.
const SADDR_OFFSET: usize = 14 + 12;
const IP_CHECK_OFFSET: usize = 14 + 10;
const UDP_CHECK_OFFSET: usize = 14 + 20 + 6;
/// IPv6 frames (EtherType 0x86dd): the low 32 bits of the source address, and the UDP
/// checksum after the 40-byte header. A 64-byte frame holds 2 bytes of payload.
const SADDR6_LOW_OFFSET: usize = 14 + 8 + 12;
const UDP6_CHECK_OFFSET: usize = 14 + 40 + 6;

/// Slot 0: the original frame.
#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<[u64; WORDS]> = Array::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map(name = "BENCH_TARGET")]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU sequence numbers: slot 0 makes every iteration of `bench_new_flow` a new flow, slot 1
/// every second iteration of `bench_new_flow_twice`.
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);

/// Restores the frame and tail-calls the target: every iteration is the same packet.
#[xdp]
pub fn bench_same_flow(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    tail_call(&ctx)
}

/// Restores the frame, writes a fresh source address, and tail-calls the target: every
/// iteration is a new flow (the checksums are updated to match).
#[xdp]
pub fn bench_new_flow(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot of this program's own map.
    let source = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    if !set_source(&ctx, source) {
        return xdp_action::XDP_ABORTED;
    }
    tail_call(&ctx)
}

/// Like `bench_new_flow`, but every new flow gets two packets in a row: iteration `n` (counted
/// per CPU from slot 1) is flow `n / 2`. The average of a run is (first packet + second
/// packet) / 2, from which user space derives the second packet's cost. User space keeps the
/// counter even at the start of every run (it runs this wrapper an even number of times), so
/// that pairs never straddle two runs; the caller's frame has a source port of its own, so
/// these flows never meet `bench_new_flow`'s.
#[xdp]
pub fn bench_new_flow_twice(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = BENCH_SEQ.get_ptr_mut(1) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot of this program's own map.
    let flow = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n >> 1
    };
    // +1: never the source address 0.0.0.0.
    if !set_source(&ctx, flow.wrapping_add(1)) {
        return xdp_action::XDP_ABORTED;
    }
    tail_call(&ctx)
}

/// The floor: an XDP program that does nothing.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let Some(frame) = BENCH_FRAME.get(0) else {
        return false;
    };
    // A program that grew the frame at the front (dsr-ipip's outer header) left it longer:
    // move the start back, so every iteration sees the original frame where it was.
    let len = ctx.data_end() - ctx.data();
    if len > FRAME_LEN && len <= FRAME_LEN + 64 {
        // SAFETY: shrinks the packet at the front by at most 64 bytes it has.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, (len - FRAME_LEN) as i32) } != 0 {
            return false;
        }
    }
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return false;
    }
    let dst = start as *mut u64;
    for (i, w) in frame.iter().enumerate() {
        // SAFETY: the packet holds FRAME_LEN bytes (checked above) and i < WORDS.
        unsafe { core::ptr::write_unaligned(dst.add(i), *w) };
    }
    true
}

/// Writes `source` (as its bytes in host order) as the restored frame's IPv4 source address
/// and updates both checksums, so the program sees a valid packet (it drops one with a wrong
/// IPv4 header checksum); in an IPv6 frame, as the low 32 bits of its source address, with
/// the UDP checksum. Expects the frame restored; returns false if it is too short.
#[inline(always)]
fn set_source(ctx: &XdpContext, source: u32) -> bool {
    let start = ctx.data();
    if start + UDP6_CHECK_OFFSET + 2 > ctx.data_end() {
        return false;
    }
    // SAFETY: the range was checked just above; the EtherType is at 12.
    if unsafe { core::ptr::read_unaligned((start + 12) as *const u16) } == 0x86ddu16.to_be() {
        // SAFETY: as above (IPv6 without extension headers, then UDP).
        unsafe {
            let saddr = (start + SADDR6_LOW_OFFSET) as *mut u32;
            let udp_check = (start + UDP6_CHECK_OFFSET) as *mut u16;
            let old = core::ptr::read_unaligned(saddr);
            core::ptr::write_unaligned(saddr, source);
            core::ptr::write_unaligned(
                udp_check,
                udp_replace_u32(core::ptr::read_unaligned(udp_check), old, source),
            );
        }
        return true;
    }
    // SAFETY: a packet range checked just above (the frame is IPv4 without options, then UDP).
    unsafe {
        let saddr = (start + SADDR_OFFSET) as *mut u32;
        let ip_check = (start + IP_CHECK_OFFSET) as *mut u16;
        let udp_check = (start + UDP_CHECK_OFFSET) as *mut u16;
        let old = core::ptr::read_unaligned(saddr);
        core::ptr::write_unaligned(saddr, source);
        core::ptr::write_unaligned(
            ip_check,
            replace_u32(core::ptr::read_unaligned(ip_check), old, source),
        );
        core::ptr::write_unaligned(
            udp_check,
            udp_replace_u32(core::ptr::read_unaligned(udp_check), old, source),
        );
    }
    true
}

#[inline(always)]
fn tail_call(ctx: &XdpContext) -> u32 {
    // SAFETY: slot 0 holds an XDP program; on success control never returns.
    unsafe { BENCH_TARGET.tail_call(ctx, 0) };
    xdp_action::XDP_ABORTED
}
