//! `xdplb capture`: copies of balanced packets, before and after the rewrite, into a ring
//! buffer, only while a capture holds a lease (`CAPTURE_V1`).
//!
//! Cost when no capture runs: at the ingress point where a service packet is known, one array
//! read and one comparison with the time ingress reads anyway (the lease's deadline is 0, or
//! past); at the exit of every XDP program, one array read and one comparison with 0.
//!
//! A service packet ingress admits while a lease is live gets a "before" record, and its CPU
//! remembers it as pending (`CAPTURE_PENDING`). Whichever program returns the packet's final
//! action (ingress, or a program it tail-called: checksum completion, reply translation)
//! tail-calls `xdplb_capture` when a record is pending; that program copies the final frame as
//! the "after" record and returns the action. XDP runs a packet to its end on one CPU, so the
//! pending record is this packet's.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_get_smp_processor_id, helpers::bpf_ktime_get_ns,
    helpers::generated::bpf_xdp_load_bytes, programs::XdpContext,
};
use xdplb_common::{
    CAPTURE_AFTER, CAPTURE_ANY_SERVICE, CAPTURE_BEFORE, CAPTURE_SNAP_LEN, CaptureRecord,
};

use crate::{CAPTURE, CAPTURE_PENDING, CAPTURE_RING, PROG_CAPTURE, PROGS};

/// Slots of `CAPTURE_PENDING`.
const SEQ: usize = 0;
const PENDING: usize = 1;
const SERVICE: usize = 2;
const ACTION: usize = 3;

/// Records a service packet as it arrived, when a capture lease is live at `now` and its
/// filter takes `service_id`. Expects the packet not yet modified.
#[inline(always)]
pub fn before(ctx: &XdpContext, service_id: u32, now: u64) {
    let Some(lease) = CAPTURE.get(0) else {
        return;
    };
    // A deadline of 0 (no capture) or in the past (a capture that stopped renewing).
    if now >= lease.deadline_ns {
        return;
    }
    if lease.service_id != CAPTURE_ANY_SERVICE && lease.service_id != service_id {
        return;
    }
    record_before(ctx, service_id, now);
}

/// [`before`] for a path that has not read the time: reads it only while some lease is set.
#[inline(always)]
pub fn before_unclocked(ctx: &XdpContext, service_id: u32) {
    let Some(lease) = CAPTURE.get(0) else {
        return;
    };
    if lease.deadline_ns == 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    before(ctx, service_id, now);
}

/// Emits the "before" record and marks it pending on this CPU.
#[inline(always)]
fn record_before(ctx: &XdpContext, service_id: u32, now: u64) {
    let Some(p) = CAPTURE_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let p = unsafe { &mut *p };
    let seq = p[SEQ].wrapping_add(1).max(1);
    p[SEQ] = seq;
    p[PENDING] = 0;
    if emit(ctx, CAPTURE_BEFORE, service_id, seq, 0, now) {
        p[PENDING] = seq;
        p[SERVICE] = service_id;
    }
}

/// The last step of every XDP program: returns `action`, after handing the packet to
/// `xdplb_capture` (which returns the same action) when its "before" is pending on this CPU.
#[inline(always)]
pub fn after(ctx: &XdpContext, action: u32) -> u32 {
    let Some(lease) = CAPTURE.get(0) else {
        return action;
    };
    if lease.deadline_ns == 0 {
        return action;
    }
    let Some(p) = CAPTURE_PENDING.get_ptr_mut(0) else {
        return action;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let p = unsafe { &mut *p };
    if p[PENDING] == 0 {
        return action;
    }
    p[ACTION] = action;
    // SAFETY: a tail call into a program user space put in the array. Returns only if it
    // fails; the packet then goes on without its "after".
    unsafe { PROGS.tail_call(ctx, PROG_CAPTURE) };
    p[PENDING] = 0;
    action
}

/// `xdplb_capture`: emits the pending "after" record of this CPU's packet and returns the
/// action its last program chose (XDP_ABORTED if nothing is pending, which `after` never
/// lets happen).
#[inline(always)]
pub fn finish(ctx: &XdpContext) -> u32 {
    let Some(p) = CAPTURE_PENDING.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let p = unsafe { &mut *p };
    let action = p[ACTION];
    if p[PENDING] == 0 || action > xdp_action::XDP_REDIRECT {
        p[PENDING] = 0;
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(ctx, CAPTURE_AFTER, p[SERVICE], p[PENDING], action, now);
    p[PENDING] = 0;
    action
}

/// Copies the first `CAPTURE_SNAP_LEN` bytes of the frame into a new ring buffer record.
/// Returns whether the record was submitted (false: the ring is full or the copy failed).
#[inline(always)]
fn emit(
    ctx: &XdpContext,
    direction: u32,
    service_id: u32,
    seq: u32,
    action: u32,
    now: u64,
) -> bool {
    let len = ctx.data_end().saturating_sub(ctx.data());
    // SAFETY: a read of a local. Volatile so that the bound checks below stay in the program:
    // the verifier must see `cap` in 1..=CAPTURE_SNAP_LEN at the helper call.
    let cap = unsafe { core::ptr::read_volatile(&len) } & 0x1ff;
    let cap = if cap > CAPTURE_SNAP_LEN {
        CAPTURE_SNAP_LEN
    } else {
        cap
    };
    if cap == 0 {
        return false;
    }
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        return false;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at the reserved record, `size_of::<CaptureRecord>()` bytes of ring
    // memory; the helper writes at most `cap` (<= CAPTURE_SNAP_LEN) bytes into `data`.
    let copied = unsafe {
        (*rec).timestamp_ns = now;
        (*rec).orig_len = len as u32;
        (*rec).cap_len = cap as u32;
        (*rec).ifindex = (*ctx.ctx).ingress_ifindex;
        (*rec).service_id = service_id;
        (*rec).cpu = bpf_get_smp_processor_id();
        (*rec).seq = seq;
        (*rec).direction = direction;
        (*rec).action = action;
        bpf_xdp_load_bytes(ctx.ctx, 0, (*rec).data.as_mut_ptr().cast(), cap as u32)
    };
    if copied != 0 {
        entry.discard(0);
        return false;
    }
    entry.submit(0);
    true
}
