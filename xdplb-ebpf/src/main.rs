//! xdplb's data plane: entry points and maps. Logic lives in the modules; the panic handler and
//! the license in `runtime`.
#![no_std]
#![no_main]

mod capture;
mod csum;
mod encap6;
mod forward;
mod fragment;
mod fullnat;
mod icmp;
mod icmp6;
mod lb6;
mod parse;
mod reply;
mod rewrite;
mod runtime;
mod schedule;
mod service;
mod stats;

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use xdplb_common::{
    Backend, CAPTURE_RING_BYTES, CaptureLease, Counter, DEFAULT_MAX_BACKENDS_PER_SERVICE,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_LOOKUP_ENTRIES, DEFAULT_MAX_SERVICES, FRAGMENT_TABLE_ENTRIES,
    Flow, FlowKey, FragmentKey, FragmentRoute, FullnatPeer, FullnatSource, GLOBALS_LEN,
    InterfaceMac, NextHop, PORTS_LEN, Reply, ReplyKey, SEEN_SLOTS, Service, ServiceKey, Stat,
};

// The max_entries below are placeholders: user space sizes every map from the config at load
// time (EbpfLoader::map_max_entries).

// BPF_F_NO_PREALLOC: replacing a service (a table switch) frees the old element only after an
// RCU grace period, so a reader copying it never sees a recycled, half-written element.
#[map(name = "SERVICES_V2")]
static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "BACKENDS_V1")]
static BACKENDS: Array<Backend> =
    Array::with_max_entries(DEFAULT_MAX_SERVICES * DEFAULT_MAX_BACKENDS_PER_SERVICE, 0);

#[map(name = "LOOKUP_V1")]
static LOOKUP: Array<u32> = Array::with_max_entries(DEFAULT_MAX_LOOKUP_ENTRIES, 0);

#[map(name = "RR_CURSOR_V1")]
static RR_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "FLOWS_V1")]
static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map(name = "REPLIES_V1")]
static REPLIES: LruHashMap<ReplyKey, Reply> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_COMMON_LRU);

#[map(name = "FULLNAT_SOURCES_V2")]
static FULLNAT_SOURCES: Array<FullnatSource> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "FULLNAT_V1")]
static FULLNAT: HashMap<ReplyKey, FullnatPeer> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// See `xdplb_common::MAP_NEXTHOPS`: backend index -> how to reach it without a FIB lookup.
/// BPF_F_NO_PREALLOC: an update replaces the element whole, freed after an RCU grace period, so a
/// reader never sees a half-written MAC address.
#[map(name = "NEXTHOPS_V1")]
static NEXTHOPS: HashMap<u32, NextHop> = HashMap::with_max_entries(
    DEFAULT_MAX_SERVICES * DEFAULT_MAX_BACKENDS_PER_SERVICE,
    BPF_F_NO_PREALLOC,
);

/// See `xdplb_common::MAP_LOCAL_MACS`: ifindex -> the interface's Ethernet address.
#[map(name = "LOCAL_MACS")]
static LOCAL_MACS: HashMap<u32, InterfaceMac> = HashMap::with_max_entries(256, 0);

/// See `xdplb_common::MAP_FRAGMENTS`.
#[map(name = "FRAGMENTS_V1")]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentRoute> =
    LruHashMap::with_max_entries(FRAGMENT_TABLE_ENTRIES, 0);

#[map(name = "GLOBALS_V1")]
static GLOBALS: Array<u32> = Array::with_max_entries(GLOBALS_LEN, 0);

/// See `xdplb_common::MAP_PORTS`.
#[map(name = "PORTS_V1")]
static PORTS: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);

/// See `xdplb_common::MAP_REPLY_OWNERS`. Replaced whole by user space (no prealloc: a reader
/// copying an entry never sees one being rewritten).
#[map(name = "REPLY_OWNERS_V1")]
static REPLY_OWNERS: HashMap<ServiceKey, Reply> = HashMap::with_max_entries(
    DEFAULT_MAX_SERVICES * DEFAULT_MAX_BACKENDS_PER_SERVICE,
    BPF_F_NO_PREALLOC,
);

/// See `xdplb_common::MAP_SEEN`. Not pinned.
#[map(name = "SEEN")]
static SEEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(SEEN_SLOTS, 0);

/// The flood guard's window on this CPU: `[start of the window (ns), entries created in it]`.
/// Not pinned.
#[map(name = "FLOW_GUARD")]
static FLOW_GUARD: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "STATS_V1")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::CAPACITY, 0);

#[map(name = "SERVICE_STATS_V1")]
static SERVICE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS_V1")]
static BACKEND_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES * DEFAULT_MAX_BACKENDS_PER_SERVICE, 0);

/// See `xdplb_common::MAP_CAPTURE`. Not pinned.
#[map(name = "CAPTURE_V1")]
static CAPTURE: Array<CaptureLease> = Array::with_max_entries(1, 0);

/// See `xdplb_common::MAP_CAPTURE_RING`. Not pinned.
#[map(name = "CAPTURE_RING_V1")]
static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// See `xdplb_common::MAP_CAPTURE_PENDING`. Not pinned.
#[map(name = "CAPTURE_PENDING")]
static CAPTURE_PENDING: PerCpuArray<[u32; 4]> = PerCpuArray::with_max_entries(1, 0);

/// Load-time switch for per-packet debug logging. The loader freezes it in .rodata, so the
/// verifier prunes every logging branch when it is 0.
#[unsafe(no_mangle)]
static XDPLB_DEBUG_LOG: u8 = 0;

#[inline(always)]
fn debug_log_enabled() -> bool {
    // SAFETY: a plain read of a load-time constant; volatile so the compiler keeps the load and
    // lets the loader's value (not the one compiled in) decide.
    unsafe { core::ptr::read_volatile(&XDPLB_DEBUG_LOG) != 0 }
}

/// Slot 0: `xdplb_icmp`, tail-called for packets that are not UDP. A program of its own, so
/// that the ICMP path gets a stack frame of its own (one function holding every path would
/// exceed BPF's 512-byte stack). Filled by user space at load time; not pinned (it belongs to
/// one program load).
#[map(name = "XDPLB_PROGS")]
static PROGS: ProgramArray = ProgramArray::with_max_entries(9, 0);
pub const PROG_ICMP: u32 = 0;
/// Slot 1: `xdplb_finish_checksum` (see `csum::finish_and_send`).
pub const PROG_FINISH: u32 = 1;

/// Slot 2: `xdplb_fragment` (see `fragment::handle_later`).
pub const PROG_FRAGMENT: u32 = 2;
/// Slot 3: `xdplb_nat_reply` (see `service::try_reply`).
pub const PROG_NAT_REPLY: u32 = 3;
/// Slot 4: `xdplb_ingress` itself, for `xdplb_nat_reply` to hand back a packet that is no
/// reply but may be a wildcard service's request.
pub const PROG_INGRESS: u32 = 4;
/// Slot 5: `xdplb_capture`, tail-called by any program's exit while a captured packet's
/// "after" is due (see `capture`).
pub const PROG_CAPTURE: u32 = 5;
/// Slot 6: `xdplb_ingress6`, tail-called by ingress for IPv6 frames: a program of its own, so
/// that neither family's verification walks the other's paths.
pub const PROG_INGRESS6: u32 = 6;
/// Slot 7: `xdplb_icmp6`, tail-called by `xdplb_ingress6` for ICMPv6.
pub const PROG_ICMP6: u32 = 7;
/// Slot 8: `xdplb_nat_reply6`, tail-called by `xdplb_ingress6` for what may be a `nat` or
/// `fullnat` backend's IPv6 reply.
pub const PROG_NAT_REPLY6: u32 = 8;

/// Emits the pending "after" record of a captured packet and returns its action.
#[xdp]
pub fn xdplb_capture(ctx: XdpContext) -> u32 {
    capture::finish(&ctx)
}

/// Per-CPU: the packet `xdplb_nat_reply` found to be no reply and handed back to ingress
/// (`service::reply_checked`). Not pinned.
#[map(name = "REPLY_CHECKED")]
static REPLY_CHECKED: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: a flow entry idle past its service's `flow_stale_after`, as `service::existing_flow`
/// hands it to `service::new_flow` in the same program run: `[backend index + 1 (0: none),
/// fullnat source port]`. Not pinned.
#[map(name = "STALE_KEEP")]
static STALE_KEEP: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A packet from a `nat` backend's port, or to a `fullnat` source port, that matched no exact
/// service: a backend's reply to translate, or (handed back to ingress) a request. A program
/// of its own, tail-called by ingress, so that neither program's verification walks the other's
/// paths.
#[xdp]
pub fn xdplb_nat_reply(ctx: XdpContext) -> u32 {
    let verdict = match service::try_reply(&ctx) {
        Ok(v) | Err(v) => v,
    };
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// The IPv6 counterpart of `xdplb_nat_reply`, tail-called by `xdplb_ingress6`.
#[xdp]
pub fn xdplb_nat_reply6(ctx: XdpContext) -> u32 {
    let verdict = match lb6::try_reply6(&ctx) {
        Ok(v) | Err(v) => v,
    };
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// Ingress for IPv6 frames, tail-called by `xdplb_ingress` (slot `PROG_INGRESS6`): balances
/// IPv6 service packets to backends and passes everything else untouched.
#[xdp]
pub fn xdplb_ingress6(ctx: XdpContext) -> u32 {
    let verdict = match lb6::try_ingress6(&ctx) {
        Ok(v) | Err(v) => v,
    };
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// Follows a later fragment's first fragment; tail-called by ingress only.
#[xdp]
pub fn xdplb_fragment(ctx: XdpContext) -> u32 {
    let verdict = fragment::handle_later(&ctx);
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// Per-CPU room to build a fragment route in (see `fragment::record`). Not pinned.
#[map(name = "FRAGMENT_SCRATCH")]
static FRAGMENT_SCRATCH: PerCpuArray<fragment::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU hand-over from ingress to `xdplb_finish_checksum`. Not pinned.
#[map(name = "FINISH_ARGS")]
static FINISH_ARGS: PerCpuArray<csum::FinishArgs> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU hand-over from `xdplb_ingress6` to `xdplb_finish_checksum`: the UDP header's
/// offset of an IPv6 packet with a partial checksum (see `csum::note_l4_offset`). Not pinned.
#[map(name = "FINISH_L4")]
static FINISH_L4: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Completes a partial UDP checksum and sends the packet; tail-called by ingress only.
#[xdp]
pub fn xdplb_finish_checksum(ctx: XdpContext) -> u32 {
    let verdict = csum::finish_and_send(&ctx);
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// ICMP errors about balanced flows (see `icmp`); anything else passes untouched.
#[xdp]
pub fn xdplb_icmp(ctx: XdpContext) -> u32 {
    let verdict = icmp::handle(&ctx).unwrap_or(service::Verdict {
        action: XDP_PASS,
        stat: Stat::PassNotUdp,
    });
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// ICMPv6 errors about balanced flows (see `icmp6`), tail-called by `xdplb_ingress6`;
/// anything else (neighbour discovery, MLD, echo...) passes untouched.
#[xdp]
pub fn xdplb_icmp6(ctx: XdpContext) -> u32 {
    let verdict = icmp6::handle(&ctx).unwrap_or(service::Verdict {
        action: XDP_PASS,
        stat: Stat::PassNotUdp,
    });
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// Ingress: balances service packets to backends and passes everything else untouched.
#[xdp]
pub fn xdplb_ingress(ctx: XdpContext) -> u32 {
    let verdict = match service::try_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    };
    stats::count(verdict.stat);
    capture::after(&ctx, verdict.action)
}

/// Egress (TC): makes a backend's reply to a balanced flow leave with source = VIP:port.
///
/// Why TC egress and not XDP: the reply is sent by a local backend socket, and XDP only sees
/// packets that a device *receives*. On `lo` a reply would loop back through XDP, but on a veth
/// (or any real NIC) it leaves the box without passing this host's XDP hook at all. TC egress
/// sees every locally sent packet on every device, so one mechanism serves `lo` and veth alike,
/// and its checksum helpers handle CHECKSUM_PARTIAL skbs (the norm for locally sent UDP) correctly.
#[classifier]
pub fn xdplb_reply(ctx: TcContext) -> i32 {
    match reply::translate(&ctx) {
        None => TC_ACT_OK,
        Some(Stat::DropReplyRewriteFailed) => {
            stats::count(Stat::DropReplyRewriteFailed);
            TC_ACT_SHOT
        }
        Some(stat) => {
            stats::count(stat);
            TC_ACT_OK
        }
    }
}

// Keep the XDP action constants referenced from one place.
const XDP_PASS: u32 = xdp_action::XDP_PASS;
const XDP_DROP: u32 = xdp_action::XDP_DROP;
