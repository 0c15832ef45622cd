//! Map names, capacities and the `#[repr(C)]` key and value types stored in them.
//!
//! Every pinned or shared map name carries a schema version (`_V1`, `_V2`) so that a later
//! release can tell an old layout from a new one: a map whose layout changes gets the next
//! number, and the pinned layout version (`dataplane::pin::PIN_VERSION` in user space) with it. Each type has a compile-time size assertion next to it.

use core::mem::size_of;

/// Services, keyed by [`ServiceKey`], valued [`Service`].
pub const MAP_SERVICES: &str = "SERVICES_V2";
/// Backends, an array indexed by `Service::backend_base + i`, valued [`Backend`].
pub const MAP_BACKENDS: &str = "BACKENDS_V1";
/// Per-CPU round-robin cursor, an array indexed by `Service::id`, valued `u32`.
pub const MAP_RR_CURSOR: &str = "RR_CURSOR_V1";
/// Scheduling tables, one array of `u32` `BACKENDS_V1` indices. Service `n` owns a region of two
/// halves; `Service::table_base` points at the active one, so a new table is written into the
/// other half and switched to with one update of the service.
pub const MAP_LOOKUP: &str = "LOOKUP_V1";
/// Client flows, an LRU hash keyed by [`FlowKey`], valued [`Flow`].
pub const MAP_FLOWS: &str = "FLOWS_V1";
/// Reply translations, an LRU hash keyed by [`ReplyKey`], valued [`Reply`].
pub const MAP_REPLIES: &str = "REPLIES_V1";
/// Global per-CPU counters, an array indexed by [`crate::Stat`], valued `u64`.
pub const MAP_STATS: &str = "STATS_V1";
/// Per-CPU traffic counters per service, indexed by `Service::id`, valued [`Counter`].
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS_V1";
/// Per-CPU traffic counters per backend, indexed like [`MAP_BACKENDS`], valued [`Counter`].
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS_V1";

/// `fullnat` source address and port range per service, an array indexed by `Service::id`,
/// valued [`FullnatSource`].
pub const MAP_FULLNAT_SOURCES: &str = "FULLNAT_SOURCES_V2";
/// `fullnat` translations, a hash keyed by [`ReplyKey`] (backend, and the balancer's source
/// address and port in the client fields), valued [`FullnatPeer`]. Not an LRU: an entry is
/// removed only by the daemon's sweep once its flow has idled out, never evicted under a live
/// flow; a port is taken only by an insert that fails if the key exists.
pub const MAP_FULLNAT: &str = "FULLNAT_V1";

/// The next-hop cache: how to reach a remote backend without `bpf_fib_lookup`, a hash keyed by
/// the backend's `BACKENDS_V1` index (`u32`), valued [`NextHop`]. Written by the daemon, which
/// resolves each `nat`, `fullnat`, `dsr-l2` and `dsr-ipip` backend's route and neighbour and
/// watches them for changes; an entry that is missing, resolved for another address, or whose
/// MTU the packet exceeds, makes the data plane fall back to `bpf_fib_lookup`. A hash with
/// `BPF_F_NO_PREALLOC`, so that an update replaces the element whole (the old one is freed
/// after an RCU grace period) and a reader never sees a half-written MAC, as it could in an
/// array. Not pinned: it is derived from the kernel's tables at any time, a new daemon refills
/// it at start-up, and a cache left behind by a daemon that no longer watches it would be
/// worse than none.
pub const MAP_NEXTHOPS: &str = "NEXTHOPS_V1";

/// The Ethernet address of every interface the ingress program is attached to, a hash keyed
/// by ifindex (`u32`), valued [`InterfaceMac`]. Only frames addressed to the receiving
/// interface are balanced. Not pinned: it belongs to one program load, and the daemon fills it
/// before it attaches (or swaps in) the program.
pub const MAP_LOCAL_MACS: &str = "LOCAL_MACS";

/// IPv4 fragments: how the later fragments of a datagram are rewritten and sent, keyed by
/// the datagram's identity as it arrived ([`FragmentKey`]: source, destination, IP ID and
/// protocol), valued [`FragmentRoute`]. Written when the first fragment (the one with the UDP
/// header, so the ports) is balanced or translated; read by the fragments that follow it.
/// An LRU shared by all CPUs (a datagram's fragments may arrive on different ones). Not
/// pinned: fragments in flight across a restart are lost, as they would be at any router.
pub const MAP_FRAGMENTS: &str = "FRAGMENTS_V1";
/// Entries of [`MAP_FRAGMENTS`].
pub const FRAGMENT_TABLE_ENTRIES: u32 = 65_536;
/// A first fragment's route is used by later fragments for this long (nanoseconds). Fragments
/// of one datagram follow each other within milliseconds; the bound keeps a reused IP ID from
/// picking up an old datagram's route.
pub const FRAGMENT_TIMEOUT_NS: u64 = 2_000_000_000;

/// Data-plane-wide settings, an array of [`GLOBALS_LEN`] `u32`s written by user space: slot
/// [`GLOBAL_SLOT_FLOW_GUARD_RATE`] holds the flood guard's rate. Slot 0 is unused (it held
/// flags that the port prefilter, `PORTS_V1`, replaced).
pub const MAP_GLOBALS: &str = "GLOBALS_V1";
/// Slots of [`MAP_GLOBALS`].
pub const GLOBALS_LEN: u32 = 2;
/// The flood guard: new flow entries each CPU may create per second (in one-second windows);
/// above it, a new flow gets no entry (see `Stat::GuardStateless`, `Stat::GuardDropped`).
/// Zero switches the guard off.
pub const GLOBAL_SLOT_FLOW_GUARD_RATE: u32 = 1;

/// The port prefilter: an array of 65,536 `u32`s indexed by a port in host order, holding
/// `PORT_*` bits. Before any hash lookup the ingress program reads the entries of the
/// packet's destination and source ports; a packet whose ports mark nothing is no service's
/// and no reply of ours, and passes after two array reads.
pub const MAP_PORTS: &str = "PORTS_V1";
pub const PORTS_LEN: u32 = 65_536;
/// Destination port: some service with a concrete VIP has this port.
pub const PORT_EXACT_SERVICE: u32 = 1;
/// Destination port: a wildcard service (`0.0.0.0:PORT`) has this port.
pub const PORT_WILDCARD_SERVICE: u32 = 2;
/// Source port: some `nat` backend listens on this port, so a packet from it may be a reply
/// to translate (XDP).
pub const PORT_NAT_BACKEND: u32 = 4;
/// Destination port: inside some `fullnat` service's source port range, so a packet to it may
/// be a `fullnat` reply.
pub const PORT_FULLNAT_RANGE: u32 = 8;
/// Source port: some `local` backend listens on this port, so a packet it sends may be a reply
/// to translate (TC egress).
pub const PORT_LOCAL_BACKEND: u32 = 16;

/// Who answers for a `local` or `nat` backend's replies: a hash keyed by the backend
/// ([`ServiceKey`]: its address, port and protocol), valued [`Reply`] (the service's VIP and
/// port, `REPLY_FLAG_*`). The config refuses two `local`/`nat` services sharing a backend
/// address and port, so a backend has one owner. A reply is translated when the owner's flow
/// table holds the client's flow on that backend (`FLOWS_V1`, looked up under the client and
/// the VIP): no per-flow reply entry is written, except for wildcard services
/// (`REPLY_FLAG_WILDCARD`), whose VIP is whatever address the client used and so is known only
/// per flow (`REPLIES_V1`).
pub const MAP_REPLY_OWNERS: &str = "REPLY_OWNERS_V1";

/// The per-CPU memory of deferred flow state (`SERVICE_FLAG_STATE_ON_SECOND_PACKET`): an
/// array of [`SEEN_SLOTS`] `u32`s per CPU; a new flow's 5-tuple hash marks its slot
/// (`hash | 1`), and a later packet of the flow that finds its mark creates the flow entry.
/// Not pinned: a restart forgets which flows sent one packet, which only delays their entry.
pub const MAP_SEEN: &str = "SEEN";
pub const SEEN_SLOTS: u32 = 65_536;

/// The capture lease (`xdplb capture`): an array of one [`CaptureLease`], written by the
/// capture CLI. The data plane copies balanced packets into [`MAP_CAPTURE_RING`] only while
/// `bpf_ktime_get_ns() < deadline_ns`; the CLI renews the deadline every second, so a capture
/// that dies (even by SIGKILL) stops costing within [`CAPTURE_LEASE_NS`]. Not pinned: it
/// belongs to one program load (the CLI finds it by id in the instance state).
pub const MAP_CAPTURE: &str = "CAPTURE_V1";
/// The capture ring buffer (`BPF_MAP_TYPE_RINGBUF`): [`CaptureRecord`]s, a "before" for every
/// service packet seen at ingress while a lease is live, and its "after" (the final frame,
/// with the program's action) when the last program that handled it returns. Not pinned.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING_V1";
/// Per-CPU state of the capture (`[sequence, pending sequence, service id, 0]`): the
/// sequence number of the last "before" this CPU emitted, and the one whose "after" is still
/// due (0: none). Not pinned.
pub const MAP_CAPTURE_PENDING: &str = "CAPTURE_PENDING";
/// Size of [`MAP_CAPTURE_RING`] (a power of two multiple of the page size).
pub const CAPTURE_RING_BYTES: u32 = 1 << 21;
/// How long a lease lasts past its renewal (nanoseconds): the CLI renews it every second.
pub const CAPTURE_LEASE_NS: u64 = 2_000_000_000;
/// Bytes of each packet copied (the snap length).
pub const CAPTURE_SNAP_LEN: usize = 256;
/// `CaptureLease::service_id`: every service.
pub const CAPTURE_ANY_SERVICE: u32 = u32::MAX;
/// `CaptureRecord::direction`: the frame as it arrived.
pub const CAPTURE_BEFORE: u32 = 0;
/// `CaptureRecord::direction`: the frame as it left (after the rewrite and any checksum
/// completion), with the action that sent it.
pub const CAPTURE_AFTER: u32 = 1;
/// `CaptureRecord::service_id` of a `nat`/`fullnat` reply (translated back to a client).
pub const CAPTURE_REPLY: u32 = u32::MAX - 1;

/// What a capture asks of the data plane. 16 bytes, host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CaptureLease {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) until which packets are captured; 0: none.
    pub deadline_ns: u64,
    /// The `Service::id` to capture, or [`CAPTURE_ANY_SERVICE`].
    pub service_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CaptureLease>() == 16);

/// One captured frame. 40 bytes of header (host order) and [`CAPTURE_SNAP_LEN`] bytes of frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// `bpf_ktime_get_ns()` when the record was made.
    pub timestamp_ns: u64,
    /// The frame's length.
    pub orig_len: u32,
    /// Bytes of `data` that hold the frame (`min(orig_len, CAPTURE_SNAP_LEN)`).
    pub cap_len: u32,
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// `Service::id` of the packet's service (or [`CAPTURE_REPLY`]).
    pub service_id: u32,
    /// The CPU that handled the packet, and its sequence number there: a "before" and its
    /// "after" share both.
    pub cpu: u32,
    pub seq: u32,
    /// [`CAPTURE_BEFORE`] or [`CAPTURE_AFTER`].
    pub direction: u32,
    /// "after": the XDP action returned (`XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3,
    /// `XDP_REDIRECT` 4); "before": 0.
    pub action: u32,
    pub data: [u8; CAPTURE_SNAP_LEN],
}
const _: () = assert!(size_of::<CaptureRecord>() == 40 + CAPTURE_SNAP_LEN);

/// Load-time global: non-zero switches on per-packet debug logging (aya-log).
pub const GLOBAL_DEBUG_LOG: &str = "XDPLB_DEBUG_LOG";

/// Defaults for the capacities. The config may raise or lower each one; the maps are sized
/// from the config at load time, so these only need to be valid placeholders in the object.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
pub const DEFAULT_MAX_BACKENDS_PER_SERVICE: u32 = 1024;
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
pub const DEFAULT_MAX_LOOKUP_ENTRIES: u32 = 4_194_304;

/// `Service::scheduler` values.
pub const SCHED_ROUND_ROBIN: u32 = 0;
pub const SCHED_WEIGHTED_ROUND_ROBIN: u32 = 1;
pub const SCHED_MAGLEV: u32 = 2;
pub const SCHED_RANDOM: u32 = 3;
pub const SCHED_SOURCE_HASH: u32 = 4;

/// IP protocol numbers used in keys.
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;

/// Default idle timeout of a flow, in nanoseconds (30 s).
pub const DEFAULT_FLOW_IDLE_TIMEOUT_NS: u64 = 30_000_000_000;

/// How often a live flow's `last_seen_ns` (and its reply entry) is refreshed, in nanoseconds.
/// Refreshing at most once a second keeps the per-packet path free of shared-cache-line writes.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// A 16-byte address in network byte order, as four wire-order 32-bit words.
pub type Addr = [u32; 4];

/// The IPv4-mapped IPv6 form `::ffff:a.b.c.d` of an IPv4 address given as a wire-order `u32`
/// (the four bytes exactly as they sit in the packet, read with a native load).
#[inline(always)]
pub const fn addr_from_v4_wire(v4: u32) -> Addr {
    // 0x0000ffff in network order is the bytes 00 00 ff ff, which read natively on a little
    // endian host is 0xffff0000; on big endian it is 0x0000ffff.
    [0, 0, u32::from_be(0x0000_ffff), v4]
}

/// Service lookup key. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ServiceKey {
    /// Destination address (network order). All-zero v4 (`::ffff:0.0.0.0`) is the wildcard.
    pub addr: Addr,
    /// Destination port, network order.
    pub port_be: u16,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// A service. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Service {
    /// Dense index of the service: indexes `RR_CURSOR_V1` and `SERVICE_STATS_V1`.
    pub id: u32,
    /// First index of this service's backend positions in `BACKENDS_V1`.
    pub backend_base: u32,
    /// Positions `[backend_base, backend_base + backend_count)` may hold backends; a live flow
    /// whose backend index falls outside, or whose slot now holds another backend, is
    /// rescheduled. Zero means "no backend".
    pub backend_count: u32,
    /// One of the `SCHED_*` values.
    pub scheduler: u32,
    /// Index in `LOOKUP_V1` of the active scheduling table.
    pub table_base: u32,
    /// Entries in the active table. Zero means "no backend takes new flows".
    pub table_len: u32,
    /// One of the `HASH_*` values (crate::hash), for the hashing schedulers.
    pub hash_fields: u32,
    /// Seed of the flow hash.
    pub hash_seed: u32,
    /// Idle timeout of a flow of this service, in nanoseconds.
    pub flow_idle_timeout_ns: u64,
    /// `SERVICE_FLAG_*` bits, the forwarding mode and, for `dsr-ipip`, the host bits of the
    /// outer source prefix.
    pub flags: u32,
    /// `dsr-ipip`: the first address of the outer source prefix, of the VIP's family
    /// (IPv4-mapped for IPv4, as every [`Addr`]).
    pub encap_source: Addr,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Service>() == 64);

/// `Service::flags`: when no backend takes new flows (`table_len == 0`), pass new flows to the
/// local stack instead of dropping them.
pub const SERVICE_FLAG_PASS_WHEN_EMPTY: u32 = 1;
/// `Service::flags`: the flow entry is created by a flow's second packet, not its first
/// (`flow_state = "second-packet"`; only `dsr-*` with a consistent scheduler). The first
/// packet goes where the scheduler sends it and leaves only a mark in `SEEN`.
pub const SERVICE_FLAG_STATE_ON_SECOND_PACKET: u32 = 2;
/// `Service::flags`: a flow may go without an entry: `dsr-*` (replies bypass the balancer)
/// with a consistent scheduler (Maglev, source hash: without a table change a flow's packets
/// map to one backend). The flood guard sends such a service's new flows on without an entry
/// instead of dropping them.
pub const SERVICE_FLAG_MAY_SKIP_STATE: u32 = 4;
/// `Service::flags`: the service's VIP is the wildcard (`0.0.0.0:PORT`): a `local`/`nat`
/// flow's replies need a per-flow entry in `REPLIES_V1` (the VIP is the address the client
/// used, which no per-backend owner can name).
pub const SERVICE_FLAG_WILDCARD: u32 = 8;

/// `Service::flags` bits 8..=11: how packets reach the backends (`FORWARD_*`).
pub const SERVICE_FORWARDING_SHIFT: u32 = 8;
pub const SERVICE_FORWARDING_MASK: u32 = 0xf << SERVICE_FORWARDING_SHIFT;
/// Rewrite the destination and hand the packet to the local stack (the tutorial's mode).
pub const FORWARD_LOCAL: u32 = 0;
/// Rewrite the destination, then send the packet out of the interface the FIB names, with its
/// MAC addresses; replies are translated back on their way through.
pub const FORWARD_NAT: u32 = 1;
/// Direct server return on one L2 segment: only the destination MAC changes (to the backend's);
/// backends hold the VIP and answer clients directly.
pub const FORWARD_DSR_L2: u32 = 2;
/// Direct server return over IP-in-IP: an outer IPv4 header addressed to the backend, whose
/// source is taken from the flow hash inside a configured prefix; backends decapsulate
/// (`xdplb decap`) and answer clients directly.
pub const FORWARD_DSR_IPIP: u32 = 3;
/// Full NAT: source and destination rewritten (source: a balancer address and a port allocated
/// per flow), so replies come back to the balancer on any topology; backends need no setup.
pub const FORWARD_FULLNAT: u32 = 4;
/// Tries of the `fullnat` port allocator before it gives up on a new flow.
pub const FULLNAT_PORT_TRIES: u32 = 8;
/// `Service::flags` bits 16..=21: how many low bits of the outer source come from the flow
/// hash: 32 minus the prefix length for IPv4; for IPv6, 128 minus the prefix length but at
/// most 32 (the hash has 32 bits; the bits above it keep the prefix base's).
pub const SERVICE_ENCAP_HOST_BITS_SHIFT: u32 = 16;
pub const SERVICE_ENCAP_HOST_BITS_MASK: u32 = 0x3f << SERVICE_ENCAP_HOST_BITS_SHIFT;
/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number (IPv6 next header) of IPv6-in-IPv6, the `dsr-ipip` encapsulation of an
/// IPv6 service.
pub const IPPROTO_IPV6: u8 = 41;

/// `Service::flags` bits 22..=31: `flow_stale_after` in units of
/// [`SERVICE_STALE_AFTER_UNIT_NS`] (0: off). A flow entry idle longer than this whose backend
/// is not the one the service's table now chooses for the flow is stale: the flow follows the
/// table. Kept in free bits of `flags` so that `Service` (and the pinned `SERVICES_V1`) keeps
/// its 48-byte layout; 10 bits of 100 ms reach [`SERVICE_STALE_AFTER_MAX_UNITS`] x 100 ms =
/// 102.3 s, which the config enforces.
pub const SERVICE_STALE_AFTER_SHIFT: u32 = 22;
pub const SERVICE_STALE_AFTER_MASK: u32 = 0x3ff << SERVICE_STALE_AFTER_SHIFT;
/// The unit of the `flow_stale_after` bits (100 ms, in nanoseconds).
pub const SERVICE_STALE_AFTER_UNIT_NS: u64 = 100_000_000;
/// The largest value the `flow_stale_after` bits hold (1023 units: 102.3 s).
pub const SERVICE_STALE_AFTER_MAX_UNITS: u32 =
    SERVICE_STALE_AFTER_MASK >> SERVICE_STALE_AFTER_SHIFT;

/// The `flow_stale_after` of a service's `flags` in nanoseconds; 0 when off.
#[inline(always)]
pub const fn service_stale_after_ns(flags: u32) -> u64 {
    ((flags & SERVICE_STALE_AFTER_MASK) >> SERVICE_STALE_AFTER_SHIFT) as u64
        * SERVICE_STALE_AFTER_UNIT_NS
}

/// `Reply::flags`: the flow is forwarded in `nat` mode, so its replies pass through this host's
/// XDP and are translated and forwarded there.
pub const REPLY_FLAG_NAT: u16 = 1;
/// `Reply::flags` in `REPLY_OWNERS_V1`: the owner is a wildcard service; its replies are found
/// per flow in `REPLIES_V1`.
pub const REPLY_FLAG_WILDCARD: u16 = 2;

/// `Backend::flags`: the backend keeps its live flows but is left out of the scheduling table.
pub const BACKEND_FLAG_DRAINING: u32 = 1;

/// A backend. 24 bytes. An all-zero value marks an empty position.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Backend {
    /// Backend address, network order.
    pub addr: Addr,
    /// Backend port, network order.
    pub port_be: u16,
    /// Scheduler weight (1..=65535), host order. Unused by round robin.
    pub weight: u16,
    pub flags: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// A client flow to a service, as the client sent it. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub client_addr: Addr,
    /// The destination address the client used (the VIP, or the concrete address that matched a
    /// wildcard service).
    pub vip_addr: Addr,
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Where a flow goes. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// The backend chosen, copied so that a hit needs no second lookup to rewrite; it is also
    /// compared with `BACKENDS_V1[backend_index]` to notice a backend that changed.
    pub backend_addr: Addr,
    pub backend_port_be: u16,
    /// `fullnat`: the source port allocated to the flow (network order); 0 otherwise.
    pub snat_port_be: u16,
    /// Index into `BACKENDS_V1`.
    pub backend_index: u32,
    /// `Service::id` of the service the flow belongs to.
    pub service_id: u32,
    /// The flow's 5-tuple hash (service seed), computed once when a `dsr-ipip` or `fullnat`
    /// flow is created: its outer source, or its port choice. 0 for flows of other modes.
    pub tuple_hash: u32,
    /// `bpf_ktime_get_ns()` when the flow was last refreshed (at most every [`FLOW_REFRESH_NS`]).
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<Flow>() == 40);

/// A backend's reply to a client, as the backend sends it. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReplyKey {
    pub backend_addr: Addr,
    pub client_addr: Addr,
    pub backend_port_be: u16,
    pub client_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ReplyKey>() == 40);

/// How to make a reply look as if the VIP sent it. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reply {
    pub vip_addr: Addr,
    pub vip_port_be: u16,
    /// `REPLY_FLAG_*` bits.
    pub flags: u16,
    pub service_id: u32,
}
const _: () = assert!(size_of::<Reply>() == 24);

/// A `fullnat` service's source: the balancer address packets to backends come from, and the
/// port range allocated from. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FullnatSource {
    /// Of the service's family (IPv4-mapped for IPv4); all zero: no source configured.
    pub addr: Addr,
    /// Host order.
    pub port_first: u32,
    pub port_count: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(size_of::<FullnatSource>() == 32);

/// The client side of a `fullnat` translation. 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FullnatPeer {
    pub client_addr: Addr,
    /// The destination the client used.
    pub vip_addr: Addr,
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub service_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was last refreshed (at most every [`FLOW_REFRESH_NS`]).
    pub last_seen_ns: u64,
    /// The owning service's idle timeout: idle this long, the port is free again.
    pub idle_timeout_ns: u64,
}
const _: () = assert!(size_of::<FullnatPeer>() == 56);

/// A fragmented datagram as it arrived. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    /// The IP ID (network order; IPv4's 16 bits in the low half of the wire bytes).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);

/// What the later fragments of a datagram get. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentRoute {
    /// The new IPv4 source and destination (network order).
    pub saddr_v4: u32,
    pub daddr_v4: u32,
    /// `dsr-l2`, `dsr-ipip`: the backend (network order); `dsr-ipip`: the outer source.
    pub backend_v4: u32,
    pub encap_source_v4: u32,
    /// One of the `FRAGMENT_SEND_*` values.
    pub send: u32,
    /// `Service::id` and backend index for the traffic counters; `u32::MAX` for a reply.
    pub service_id: u32,
    pub backend_index: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the first fragment was seen.
    pub created_ns: u64,
}
const _: () = assert!(size_of::<FragmentRoute>() == 40);

/// `FragmentRoute::send`: hand to the local stack (`local`).
pub const FRAGMENT_SEND_LOCAL: u32 = 0;
/// Route by the new destination (`nat` requests and replies, `fullnat` replies).
pub const FRAGMENT_SEND_ROUTE: u32 = 1;
/// Route by the new destination; the new source is this host's (`fullnat` requests).
pub const FRAGMENT_SEND_ROUTE_LOCAL_SOURCE: u32 = 2;
/// `dsr-l2` to `backend_v4`.
pub const FRAGMENT_SEND_DSR_L2: u32 = 3;
/// `dsr-ipip` to `backend_v4` from `encap_source_v4`.
pub const FRAGMENT_SEND_DSR_IPIP: u32 = 4;
/// The TC egress reply path: only the source changes.
pub const FRAGMENT_SEND_REPLY_TC: u32 = 5;

/// An interface's Ethernet address. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InterfaceMac {
    pub mac: [u8; 6],
    /// `INTERFACE_FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// `InterfaceMac::flags`: the program runs in generic (skb) mode on this interface, so a packet
/// it sends keeps its skb and any partial checksum state (see `csum` in the data plane).
pub const INTERFACE_FLAG_GENERIC: u8 = 1;
const _: () = assert!(size_of::<InterfaceMac>() == 8);

/// How to send to a backend without a FIB lookup. 36 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// The backend address this was resolved for (network order): a packet to another address
    /// (the index was reused for another backend) falls back to the FIB.
    pub addr: Addr,
    /// The egress interface.
    pub ifindex: u32,
    /// The route's MTU, host order: the egress device's MTU, or the route's `mtu` metric when
    /// that is lower. A bigger IPv4 packet (with its outer header for `dsr-ipip`) falls back to
    /// the FIB, which reports "fragmentation needed".
    pub mtu: u16,
    /// `NEXTHOP_FLAG_*` bits; none are defined yet (0).
    pub flags: u16,
    /// The next hop's Ethernet address (the gateway's, or the backend's on a directly
    /// connected segment).
    pub dmac: [u8; 6],
    /// The egress interface's Ethernet address.
    pub smac: [u8; 6],
}
const _: () = assert!(size_of::<NextHop>() == 36);

/// Packets, bytes (Ethernet frame length) and new flows scheduled. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}
const _: () = assert!(size_of::<Counter>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, has explicit padding fields and no invalid bit
    // patterns, which is what aya::Pod requires.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::ReplyKey {}
    unsafe impl aya::Pod for super::Reply {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FullnatSource {}
    unsafe impl aya::Pod for super::FullnatPeer {}
    unsafe impl aya::Pod for super::InterfaceMac {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentRoute {}
    unsafe impl aya::Pod for super::CaptureLease {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn key_layouts_have_no_implicit_padding() {
        assert_eq!(offset_of!(ServiceKey, port_be), 16);
        assert_eq!(offset_of!(ServiceKey, proto), 18);
        assert_eq!(offset_of!(Service, table_base), 16);
        assert_eq!(offset_of!(Service, hash_seed), 28);
        assert_eq!(offset_of!(Service, flow_idle_timeout_ns), 32);
        assert_eq!(offset_of!(Service, flags), 40);
        assert_eq!(offset_of!(Service, encap_source), 44);
        assert_eq!(offset_of!(FullnatSource, port_first), 16);
        assert_eq!(offset_of!(Backend, port_be), 16);
        assert_eq!(offset_of!(Backend, flags), 20);
        assert_eq!(offset_of!(FlowKey, client_port_be), 32);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(Flow, backend_index), 20);
        assert_eq!(offset_of!(Flow, last_seen_ns), 32);
        assert_eq!(offset_of!(ReplyKey, backend_port_be), 32);
        assert_eq!(offset_of!(Reply, service_id), 20);
        assert_eq!(offset_of!(NextHop, ifindex), 16);
        assert_eq!(offset_of!(NextHop, mtu), 20);
        assert_eq!(offset_of!(NextHop, dmac), 24);
        assert_eq!(offset_of!(NextHop, smac), 30);
    }

    #[test]
    fn v4_mapped_address_matches_the_wire_bytes() {
        let wire = u32::from_ne_bytes([127, 0, 0, 1]);
        let addr = addr_from_v4_wire(wire);
        let mut bytes = [0u8; 16];
        for (i, w) in addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
    }
}
