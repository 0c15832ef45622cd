//! The ingress path: find the service, find or create the flow, rewrite, count.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::debug;
use xdplb_common::{
    Addr, Backend, CAPTURE_REPLY, FLOW_REFRESH_NS, FORWARD_DSR_IPIP, FORWARD_DSR_L2,
    FORWARD_FULLNAT, FORWARD_LOCAL, FORWARD_NAT, FRAGMENT_SEND_DSR_IPIP, FRAGMENT_SEND_DSR_L2,
    FRAGMENT_SEND_ROUTE, FRAGMENT_SEND_ROUTE_LOCAL_SOURCE, Flow, FlowKey,
    GLOBAL_SLOT_FLOW_GUARD_RATE, INTERFACE_FLAG_GENERIC, IPPROTO_UDP, PORT_EXACT_SERVICE,
    PORT_FULLNAT_RANGE, PORT_NAT_BACKEND, PORT_WILDCARD_SERVICE, REPLY_FLAG_NAT, Reply, ReplyKey,
    SEEN_SLOTS, SERVICE_ENCAP_HOST_BITS_MASK, SERVICE_ENCAP_HOST_BITS_SHIFT,
    SERVICE_FLAG_MAY_SKIP_STATE, SERVICE_FLAG_PASS_WHEN_EMPTY, SERVICE_FLAG_STATE_ON_SECOND_PACKET,
    SERVICE_FLAG_WILDCARD, SERVICE_FORWARDING_MASK, SERVICE_FORWARDING_SHIFT, Service, ServiceKey,
    Stat, addr_from_v4_wire,
    hash::{FlowTuple, HASH_FIVE_TUPLE, flow_hash},
    service_stale_after_ns,
};

use crate::{
    BACKENDS, FLOW_GUARD, FLOWS, GLOBALS, LOCAL_MACS, PORTS, PROG_FRAGMENT, PROG_ICMP,
    PROG_INGRESS, PROG_INGRESS6, PROG_NAT_REPLY, PROGS, REPLIES, REPLY_CHECKED, SEEN, SERVICES,
    STALE_KEEP, XDP_DROP, XDP_PASS, capture, csum, debug_log_enabled, forward, fragment, fullnat,
    parse, reply, rewrite, schedule, stats,
};

/// What to do with a packet, and the counted reason.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub stat: Stat,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(stat: Stat) -> Self {
        Verdict {
            action: XDP_PASS,
            stat,
        }
    }
    #[inline(always)]
    pub const fn drop(stat: Stat) -> Self {
        Verdict {
            action: XDP_DROP,
            stat,
        }
    }
}

/// The backend a packet goes to.
pub struct Target {
    pub index: u32,
    /// Of the packet's family (IPv4-mapped for IPv4: the IPv4 path uses `addr[3]`).
    pub addr: Addr,
    pub port_be: u16,
    /// `fullnat`: the flow's source port (network order).
    pub snat_port_be: u16,
    /// See `Flow::tuple_hash`.
    pub tuple_hash: u32,
}

/// Balances one received frame. Expects nothing of the frame.
///
/// Returns `Ok` for a rewritten packet (a service packet, or a `nat` reply), with the verdict
/// of its forwarding mode, and `Err` with the pass or drop reason for everything else; the
/// packet is modified only on the `Ok` path.
#[inline(always)]
pub fn try_ingress(ctx: &aya_ebpf::programs::XdpContext) -> Result<Verdict, Verdict> {
    let mut pkt = match parse::ipv4_udp(ctx) {
        Ok(p) => p,
        Err(Stat::PassNotUdp) => {
            // ICMP errors about balanced flows: `xdplb_icmp`. Returns only if the tail call
            // fails (no program in the slot), and then the packet passes.
            // SAFETY: a tail call into a program user space put in the array.
            unsafe { PROGS.tail_call(ctx, PROG_ICMP) };
            return Err(Verdict::pass(Stat::PassNotUdp));
        }
        Err(Stat::PassNotIpv4) => {
            // IPv6: `xdplb_ingress6`, a program of its own. Returns only if the tail call
            // fails (no program in the slot), and then the packet passes, counted as neither
            // family's.
            if parse::is_ipv6_frame(ctx) {
                // SAFETY: a tail call into a program user space put in the array.
                unsafe { PROGS.tail_call(ctx, PROG_INGRESS6) };
            }
            return Err(Verdict::pass(Stat::PassNotIpv4));
        }
        Err(stat) => return Err(Verdict::pass(stat)),
    };
    if pkt.fragment == parse::FIRST_FRAGMENT {
        // Whatever becomes of this first fragment, no route of an earlier datagram with the
        // same identity may guide its later fragments; a balanced one records its own.
        fragment::forget(&pkt);
    }
    if pkt.fragment == parse::LATER_FRAGMENT {
        // A program of its own (stack and verifier budget). Returns only if the tail call
        // failed; the fragment then passes, counted as unmatched.
        // SAFETY: a tail call into a program user space put in the array.
        unsafe { PROGS.tail_call(ctx, PROG_FRAGMENT) };
        return Err(Verdict::pass(Stat::PassLaterFragment));
    }
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    // The port prefilter: two array reads say which lookups can match at all, so a packet
    // that is no service's and no reply of ours passes without a hash lookup.
    let to_port = port_flags(dport_be);
    let from_port = port_flags(sport_be);
    // The exact service first. A packet to no exact service may be a backend's reply, and a
    // known reply is never balanced as a new request: the reply tables are consulted before
    // a wildcard service (0.0.0.0:PORT) that would match any client's port.
    let exact = if to_port & PORT_EXACT_SERVICE != 0 {
        lookup_exact_service(daddr, dport_be)
    } else {
        None
    };
    let service = match exact {
        Some(s) => s,
        None => {
            if (from_port & PORT_NAT_BACKEND != 0 || to_port & PORT_FULLNAT_RANGE != 0)
                && !reply_checked(reply_identity(
                    saddr,
                    daddr,
                    sport_be,
                    dport_be,
                    IDENTITY_V4,
                ))
            {
                // Maybe a backend's reply: `xdplb_nat_reply` decides. Returns only if the tail
                // call fails; the packet then goes on as a request.
                // SAFETY: a tail call into a program user space put in the array.
                unsafe { PROGS.tail_call(ctx, PROG_NAT_REPLY) };
            }
            if to_port & PORT_WILDCARD_SERVICE == 0 {
                return Err(Verdict::pass(Stat::PassNoService));
            }
            lookup_wildcard_service(dport_be).ok_or(Verdict::pass(Stat::PassNoService))?
        }
    };
    // Read from the entry, not from which lookup matched: an unknown value to the verifier,
    // so both of its branches are walked once rather than once per way to get here.
    let wildcard = service.flags & SERVICE_FLAG_WILDCARD != 0;
    admit(ctx, &mut pkt)?;

    let flow_key = FlowKey {
        client_addr: addr_from_v4_wire(saddr),
        vip_addr: addr_from_v4_wire(daddr),
        client_port_be: sport_be,
        vip_port_be: dport_be,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // The packet as it arrived, while a capture runs; nothing has modified it yet.
    capture::before(ctx, service.id, now);
    let mode = forwarding(service);
    let target = flow_target::<false>(ctx, service, mode, &flow_key, now, wildcard)?;

    stats::count_traffic(service.id, target.index, pkt.frame_len);
    if pkt.fragment == parse::FIRST_FRAGMENT {
        record_fragment_route(ctx, &pkt, service, mode, &target);
    }
    if mode == FORWARD_DSR_L2 {
        // The backend holds the VIP: the packet stays as the client sent it.
        return Ok(forward::l2_forward(
            ctx,
            &pkt,
            target.addr[3],
            target.index,
            true,
        ));
    }
    if mode == FORWARD_DSR_IPIP {
        let source = encap_source(service, target.tuple_hash);
        return Ok(forward::ipip_forward(
            ctx,
            &pkt,
            target.addr[3],
            target.index,
            source,
            true,
        ));
    }
    if mode == FORWARD_FULLNAT {
        let source = fullnat::source_addr(service).ok_or(Verdict::drop(Stat::DropNoRoute))?;
        rewrite::set_source(&pkt, source, target.snat_port_be);
        rewrite::set_destination(&pkt, target.addr[3], target.port_be);
        return Ok(forward::fib_forward(ctx, &pkt, true, target.index));
    }
    rewrite::set_destination(&pkt, target.addr[3], target.port_be);
    if mode == FORWARD_NAT {
        return Ok(forward::fib_forward(ctx, &pkt, false, target.index));
    }
    // A partial checksum needs nothing more: the kernel trusts a partial skb it delivers.
    Ok(Verdict::pass(Stat::Forwarded))
}

/// The backend of a service packet's flow (`V6`: the packet's family): its live flow's, or a
/// new flow's. Err: the service's policy when no backend takes new flows, or the drop reason
/// of [`new_flow`].
#[inline(always)]
pub fn flow_target<const V6: bool>(
    ctx: &aya_ebpf::programs::XdpContext,
    service: &Service,
    mode: u32,
    flow_key: &FlowKey,
    now: u64,
    wildcard: bool,
) -> Result<Target, Verdict> {
    let lookup = match existing_flow(service, mode, flow_key, now, wildcard) {
        Lookup::Live(t) => return Ok(t),
        lookup => lookup,
    };
    if service.table_len == 0 {
        // The daemon emptied the table after `existing_flow` read it: what that noted
        // in `STALE_KEEP` must not reach the next packet's `new_flow`.
        let _ = take_idle_entry();
        // No backend takes new flows (all drained or unhealthy): the service's policy.
        return Err(if service.flags & SERVICE_FLAG_PASS_WHEN_EMPTY != 0 {
            Verdict::pass(Stat::PassNoBackend)
        } else {
            Verdict::drop(Stat::DropNoBackend)
        });
    }
    let tuple = FlowTuple {
        src: flow_key.client_addr,
        dst: flow_key.vip_addr,
        src_port_be: flow_key.client_port_be,
        dst_port_be: flow_key.vip_port_be,
        proto: IPPROTO_UDP,
    };
    let replacing = matches!(lookup, Lookup::Stale);
    let t = new_flow::<V6>(service, mode, flow_key, &tuple, now, replacing, wildcard)
        .map_err(Verdict::drop)?;
    // IPv4 only: the log's address format is IPv4's.
    if !V6 && debug_log_enabled() {
        debug!(
            ctx,
            "xdplb: new flow {:i}:{} -> backend #{}",
            u32::from_be(flow_key.client_addr[3]),
            u16::from_be(flow_key.client_port_be),
            t.index
        );
    }
    Ok(t)
}

/// The outer source of a `dsr-ipip` packet (network order): the service's prefix, with the
/// flow's 5-tuple hash (`Flow::tuple_hash`) in its host bits, so that a backend's receive-side
/// scaling spreads flows over its queues while every packet of a flow gets the same source.
#[inline(always)]
pub fn encap_source(service: &Service, hash: u32) -> u32 {
    let host_bits = (service.flags & SERVICE_ENCAP_HOST_BITS_MASK) >> SERVICE_ENCAP_HOST_BITS_SHIFT;
    let mask = if host_bits == 0 {
        0
    } else {
        u32::MAX >> (32 - host_bits.min(32))
    };
    ((u32::from_be(service.encap_source[3]) & !mask) | (hash & mask)).to_be()
}

/// The service's `FORWARD_*` mode.
#[inline(always)]
pub fn forwarding(service: &Service) -> u32 {
    (service.flags & SERVICE_FORWARDING_MASK) >> SERVICE_FORWARDING_SHIFT
}

/// Checks what every packet must pass before the data plane creates state for it or rewrites
/// it: addressed to this interface, a correct IPv4 header checksum. Then notes whether its
/// UDP checksum is a partial one (see `csum`). Returns the pass or drop verdict otherwise.
#[inline(always)]
pub fn admit(
    ctx: &aya_ebpf::programs::XdpContext,
    pkt: &mut parse::Ipv4Udp,
) -> Result<(), Verdict> {
    let Some(flags) = interface_flags(ctx) else {
        return Err(Verdict::pass(Stat::PassNotForUs));
    };
    if !csum::ipv4_header_is_valid(ctx, pkt) {
        return Err(Verdict::drop(Stat::DropBadIpv4Checksum));
    }
    // A fragmented datagram's checksum is always complete (the sender finishes it first).
    pkt.partial_csum = pkt.fragment == parse::NOT_FRAGMENT && csum::udp_checksum_is_partial(pkt);
    pkt.generic_xdp = flags & INTERFACE_FLAG_GENERIC != 0;
    Ok(())
}

/// Whether the frame's Ethernet destination is the receiving interface's address (as the
/// daemon recorded it in `LOCAL_MACS`). Behind a bridge, a promiscuous NIC or a switch that
/// floods unknown unicast, frames for other hosts arrive too: they are not ours to balance.
#[inline(always)]
pub fn addressed_to_interface(ctx: &aya_ebpf::programs::XdpContext) -> bool {
    interface_flags(ctx).is_some()
}

/// The receiving interface's `INTERFACE_FLAG_*` bits when the frame is addressed to it (see
/// [`addressed_to_interface`]), `None` otherwise.
#[inline(always)]
pub fn interface_flags(ctx: &aya_ebpf::programs::XdpContext) -> Option<u8> {
    // SAFETY: reading the context's ingress interface; the verifier checks the context access.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the value is copied out at once.
    let ours = (unsafe { LOCAL_MACS.get(ifindex) }).copied()?;
    let eth = parse::ptr_at::<_, parse::EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked just above.
    (unsafe { (*eth).dst } == ours.mac).then_some(ours.flags)
}

/// `xdplb_nat_reply`: translates a `nat` or `fullnat` backend's reply. A packet that is no
/// known reply passes, or, when a wildcard service has its destination port, goes back to
/// ingress (marked as checked, see [`reply_checked`]) to be balanced as a request: a known
/// reply is never balanced as a new request, and anything else to a wildcard port is one.
#[inline(always)]
pub fn try_reply(ctx: &aya_ebpf::programs::XdpContext) -> Result<Verdict, Verdict> {
    let mut pkt = parse::ipv4_udp(ctx).map_err(Verdict::pass)?;
    if pkt.fragment == parse::LATER_FRAGMENT {
        // Ingress never sends one here.
        return Err(Verdict::pass(Stat::PassLaterFragment));
    }
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    let to_port = port_flags(dport_be);
    let from_port = port_flags(sport_be);
    if let Some(reply) = known_reply(saddr, daddr, sport_be, dport_be, from_port, to_port) {
        admit(ctx, &mut pkt)?;
        capture::before_unclocked(ctx, CAPTURE_REPLY);
        return Ok(translate_reply(ctx, &pkt, reply));
    }
    if to_port & PORT_WILDCARD_SERVICE != 0 {
        hand_back(
            ctx,
            reply_identity(saddr, daddr, sport_be, dport_be, IDENTITY_V4),
            PROG_INGRESS,
        );
    }
    Err(Verdict::pass(Stat::PassNoService))
}

/// Hands a packet found to be no reply back to its family's ingress program (`prog`), marked
/// in `REPLY_CHECKED` with its `identity`. Returns only if the tail call failed (the mark is
/// then cleared, so that it cannot apply to another packet).
#[inline(always)]
pub fn hand_back(ctx: &aya_ebpf::programs::XdpContext, identity: [u64; 2], prog: u32) {
    let Some(mark) = REPLY_CHECKED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    unsafe { *mark = identity };
    // SAFETY: a tail call into a program user space put in the array.
    unsafe { PROGS.tail_call(ctx, prog) };
    // SAFETY: as above.
    unsafe { *mark = [0; 2] };
}

/// The family tags of [`reply_identity`].
pub const IDENTITY_V4: u64 = 1;
pub const IDENTITY_V6: u64 = 2;

/// What `REPLY_CHECKED` holds for a packet: its addresses and ports, and a non-zero tag, the
/// packet's family. Addresses as 32 bits: an IPv4 address itself, an IPv6 one folded by
/// [`fold_addr`] (the mark lives from one program's tail call to the next program's first
/// look, on one CPU: it only has to tell the handed-back packet from a stale mark).
#[inline(always)]
pub fn reply_identity(
    saddr: u32,
    daddr: u32,
    sport_be: u16,
    dport_be: u16,
    family: u64,
) -> [u64; 2] {
    [
        (u64::from(saddr) << 32) | u64::from(daddr),
        (family << 32) | (u64::from(sport_be) << 16) | u64::from(dport_be),
    ]
}

/// An IPv6 address folded to 32 bits for [`reply_identity`].
#[inline(always)]
pub fn fold_addr(a: &Addr) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

/// Whether `xdplb_nat_reply` (or `xdplb_nat_reply6`) handed this packet, of this `identity`
/// (see [`reply_identity`]), back as no reply; clears the mark.
#[inline(always)]
pub fn reply_checked(identity: [u64; 2]) -> bool {
    let Some(mark) = REPLY_CHECKED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let mark = unsafe { &mut *mark };
    if mark[1] == 0 {
        return false;
    }
    let ours = *mark == identity;
    *mark = [0; 2];
    ours
}

/// A backend's reply that the data plane translates back to the client: its new source (the
/// VIP and port) and, for `fullnat`, its new destination (the client). Scalars only, so the
/// ingress frame stays within BPF's 512-byte stack.
#[derive(Clone, Copy)]
struct KnownReply {
    vip_v4: u32,
    vip_port_be: u16,
    /// `fullnat`: the client's port; 0 for `nat`.
    client_port_be: u16,
    /// `fullnat`: the client's address; 0 for `nat` (the destination stays).
    client_v4: u32,
}

/// A packet to no exact service may be a `nat` or `fullnat` backend's reply to a client.
/// Returns what the reply tables say of it, `None` when it is no known reply. `from_port`
/// and `to_port`: the prefilter's bits of the source and destination port. A `fullnat`
/// translation found is refreshed here.
#[inline(always)]
fn known_reply(
    saddr: u32,
    daddr: u32,
    sport_be: u16,
    dport_be: u16,
    from_port: u32,
    to_port: u32,
) -> Option<KnownReply> {
    if from_port & PORT_NAT_BACKEND != 0
        && let Some(owner) = reply::owner(saddr, sport_be, daddr, dport_be)
        && owner.flags & REPLY_FLAG_NAT != 0
    {
        return Some(KnownReply {
            vip_v4: owner.vip_addr[3],
            vip_port_be: owner.vip_port_be,
            client_port_be: 0,
            client_v4: 0,
        });
    }
    if to_port & PORT_FULLNAT_RANGE == 0 {
        return None;
    }
    let key = ReplyKey {
        backend_addr: addr_from_v4_wire(saddr),
        client_addr: addr_from_v4_wire(daddr),
        backend_port_be: sport_be,
        client_port_be: dport_be,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    let peer = fullnat::peer_ptr(&key)?;
    // SAFETY: a map value, read field by field as `.copied()` would; an entry is removed
    // only by the daemon's sweep once its flow idled out.
    let (vip_v4, vip_port_be, client_v4, client_port_be) = unsafe {
        (
            (*peer).vip_addr[3],
            (*peer).vip_port_be,
            (*peer).client_addr[3],
            (*peer).client_port_be,
        )
    };
    // SAFETY: a helper without arguments.
    fullnat::refresh(&key, unsafe { bpf_ktime_get_ns() });
    Some(KnownReply {
        vip_v4,
        vip_port_be,
        client_port_be,
        client_v4,
    })
}

/// The prefilter's `PORT_*` bits of a port (network order).
#[inline(always)]
pub fn port_flags(port_be: u16) -> u32 {
    PORTS
        .get(u32::from(u16::from_be(port_be)))
        .copied()
        .unwrap_or(0)
}

/// Records how the later fragments of a balanced first fragment's datagram are rewritten and
/// sent: as its mode sends the first one, to the same backend.
#[inline(always)]
fn record_fragment_route(
    ctx: &aya_ebpf::programs::XdpContext,
    pkt: &parse::Ipv4Udp,
    service: &Service,
    mode: u32,
    target: &Target,
) {
    let source = if mode == FORWARD_FULLNAT {
        match fullnat::source_addr(service) {
            Some(s) => s,
            None => return,
        }
    } else {
        0
    };
    let encap = if mode == FORWARD_DSR_IPIP {
        encap_source(service, target.tuple_hash)
    } else {
        0
    };
    fragment::record(
        pkt,
        |route| {
            route.service_id = service.id;
            route.backend_index = target.index;
            route.backend_v4 = target.addr[3];
            if mode == FORWARD_DSR_L2 {
                route.send = FRAGMENT_SEND_DSR_L2;
            } else if mode == FORWARD_DSR_IPIP {
                route.encap_source_v4 = encap;
                route.send = FRAGMENT_SEND_DSR_IPIP;
            } else {
                route.daddr_v4 = target.addr[3];
                if mode == FORWARD_FULLNAT {
                    route.saddr_v4 = source;
                    route.send = FRAGMENT_SEND_ROUTE_LOCAL_SOURCE;
                } else if mode == FORWARD_NAT {
                    route.send = FRAGMENT_SEND_ROUTE;
                }
            }
        },
        ctx,
    );
}

/// Rewrites an admitted reply to come from VIP:port (and for `fullnat`, to go to the client)
/// and routes it to the client.
#[inline(always)]
fn translate_reply(
    ctx: &aya_ebpf::programs::XdpContext,
    pkt: &parse::Ipv4Udp,
    reply: KnownReply,
) -> Verdict {
    let fullnat = reply.client_v4 != 0;
    if pkt.fragment == parse::FIRST_FRAGMENT {
        fragment::record(
            pkt,
            |route| {
                route.saddr_v4 = reply.vip_v4;
                if fullnat {
                    route.daddr_v4 = reply.client_v4;
                }
                route.send = FRAGMENT_SEND_ROUTE;
            },
            ctx,
        );
    }
    rewrite::set_source(pkt, reply.vip_v4, reply.vip_port_be);
    if fullnat {
        rewrite::set_destination(pkt, reply.client_v4, reply.client_port_be);
        stats::count(Stat::FullnatReplyTranslated);
    } else {
        stats::count(Stat::NatReplyTranslated);
    }
    forward::fib_forward(ctx, pkt, false, forward::NO_BACKEND)
}

/// Finds the service for a destination: the exact (address, port, UDP) first, then the
/// wildcard address `0.0.0.0` with the same port.
#[inline(always)]
pub fn lookup_service(daddr: u32, dport_be: u16) -> Option<&'static Service> {
    lookup_exact_service(daddr, dport_be).or_else(|| lookup_wildcard_service(dport_be))
}

/// The service of exactly (address, port, UDP), read in place: user space only ever replaces
/// an entry whole (`SERVICES_V1` has no preallocated elements, so an update links a new
/// element and frees the old one after an RCU grace period): what this program reads is one
/// version of the service, never a mix. Not copied, which keeps 48 bytes off the stack.
#[inline(always)]
fn lookup_exact_service(daddr: u32, dport_be: u16) -> Option<&'static Service> {
    lookup_service_key(addr_from_v4_wire(daddr), dport_be)
}

/// The service of exactly (address of either family, port, UDP), read in place as
/// [`lookup_exact_service`] explains. The IPv6 wildcard `[::]:PORT` is the all-zero address.
#[inline(always)]
pub fn lookup_service_key(addr: Addr, dport_be: u16) -> Option<&'static Service> {
    let key = ServiceKey {
        addr,
        port_be: dport_be,
        proto: IPPROTO_UDP,
        _pad: 0,
    };
    // SAFETY: see `lookup_exact_service`; the element outlives this program run (RCU).
    unsafe { SERVICES.get(key) }
}

/// The wildcard service (`0.0.0.0:PORT`, UDP), read in place.
#[inline(always)]
fn lookup_wildcard_service(dport_be: u16) -> Option<&'static Service> {
    lookup_exact_service(0, dport_be)
}

/// What the flow table says about a packet's flow.
enum Lookup {
    /// A live flow and its backend.
    Live(Target),
    /// An entry that idled out or whose backend left, or that was idle past `flow_stale_after`
    /// (then noted in `STALE_KEEP`): to be replaced in place (see [`existing_flow`]).
    Stale,
    /// No entry.
    Missing,
}

/// Returns the backend of a live flow, refreshing its timestamp at most once per
/// `FLOW_REFRESH_NS`. Returns `Stale` (and counts why) when the flow idled out or its backend is
/// no longer the service's backend at that index, `Missing` when there is no entry.
///
/// `flow_stale_after` (`SERVICE_STALE_AFTER_*` bits of the service; 0: never): an entry that is
/// otherwise live but was idle longer than that, of a service with backends in its table, gets
/// its timestamp refreshed, is noted in `STALE_KEEP` and is returned as `Stale`. The caller
/// then runs the scheduler, once, as for any stale entry, and [`new_flow`] keeps the entry as
/// it is when the table still chooses its backend (a `fullnat` flow keeps its source port), or
/// replaces it with the table's choice (counted `FlowStaleFollowedTable`). If that choice
/// cannot take the flow (an empty slot, no free `fullnat` port), the packet is dropped as a new
/// flow's would be, and the entry, refreshed, keeps the flow on its backend.
///
/// Why: behind ECMP, a flow that moved to another node of the fleet and back is, seen from
/// this node, silent for as long as it was away, while the other node put it where the shared
/// table says. An old entry here must not pull it back to the backend it had before the table
/// changed: that would change its backend a second time. A flow that kept arriving here is
/// never idle that long (`last_seen_ns` lags by at most `FLOW_REFRESH_NS` plus the flow's
/// packet interval, and the config refuses a `flow_stale_after` under 2 s), so it keeps its
/// backend across table changes; and an entry the table agrees with changes nothing. A flow
/// that merely paused that long on a single node follows the table too, which is why the
/// setting is off unless a fleet asks for it. Kept, the entry is live again ([`new_flow`]
/// refreshes its `fullnat` translation; a wildcard `local`/`nat` reply entry is refreshed with
/// the flow's next refresh); replaced, its old `fullnat` translation (not refreshed) answers
/// the old backend's late replies until the daemon's sweep frees it. The check comes before
/// the refresh of a live entry, so that the verifier reaches `new_flow` from one place.
#[inline(always)]
fn existing_flow(service: &Service, mode: u32, key: &FlowKey, now: u64, wildcard: bool) -> Lookup {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return Lookup::Missing;
    };
    // SAFETY: an LRU map value; another CPU may race on the timestamp only, which is benign.
    let flow = unsafe { &mut *flow };
    let idle = now.saturating_sub(flow.last_seen_ns);
    if idle > service.flow_idle_timeout_ns {
        stats::count(Stat::FlowExpired);
        return Lookup::Stale;
    }
    if !backend_is_current(service, flow) {
        stats::count(Stat::FlowRescheduled);
        return Lookup::Stale;
    }
    // A flow created before its service turned to fullnat has no source port yet.
    if mode == FORWARD_FULLNAT && flow.snat_port_be == 0 {
        return Lookup::Stale;
    }
    let stale_after = service_stale_after_ns(service.flags);
    // Only where the table chooses a backend: with none (`table_len == 0`) the entry's
    // backend, still current, keeps the flow, and the caller would not reach `new_flow`.
    if stale_after != 0 && idle > stale_after && service.table_len != 0 && note_idle_entry(flow) {
        flow.last_seen_ns = now;
        return Lookup::Stale;
    }
    if idle > FLOW_REFRESH_NS {
        flow.last_seen_ns = now;
        if wildcard {
            // Keep the reply entry alive too: the two LRU maps evict independently.
            remember_reply(service, key, flow);
        }
        if mode == FORWARD_FULLNAT
            && let Some(source) = fullnat::source(service)
        {
            let k = fullnat::key(
                flow.backend_addr,
                flow.backend_port_be,
                source,
                flow.snat_port_be,
            );
            fullnat::refresh(&k, now);
        }
    }
    Lookup::Live(Target {
        index: flow.backend_index,
        addr: flow.backend_addr,
        port_be: flow.backend_port_be,
        snat_port_be: flow.snat_port_be,
        tuple_hash: flow.tuple_hash,
    })
}

/// Notes in `STALE_KEEP` an entry idle past `flow_stale_after`, for the [`new_flow`] that
/// follows in the same program run: its backend index plus one, and its `fullnat` source port.
/// Passed through memory rather than as an argument so that the verifier, which cannot tell
/// the value, walks the scheduler and everything after it once for this entry and for any
/// other stale one, instead of once per kind. Returns whether it was noted (else the entry is
/// simply used: no scratch slot).
#[inline(always)]
fn note_idle_entry(flow: &Flow) -> bool {
    let Some(slot) = STALE_KEEP.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    unsafe {
        *slot = [
            flow.backend_index.wrapping_add(1),
            u32::from(flow.snat_port_be),
        ]
    };
    true
}

/// Takes what [`note_idle_entry`] noted in this program run (and clears it, so that it never
/// applies to another packet): the idle entry's backend index plus one (0: none) and its
/// `fullnat` source port.
#[inline(always)]
fn take_idle_entry() -> [u32; 2] {
    let Some(slot) = STALE_KEEP.get_ptr_mut(0) else {
        return [0; 2];
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let slot = unsafe { &mut *slot };
    let noted = *slot;
    *slot = [0; 2];
    noted
}

/// Whether the flow's backend is still the service's backend at that index.
#[inline(always)]
fn backend_is_current(service: &Service, flow: &Flow) -> bool {
    let slot = flow.backend_index.wrapping_sub(service.backend_base);
    if slot >= service.backend_count {
        return false;
    }
    match BACKENDS.get(flow.backend_index) {
        Some(b) => b.addr == flow.backend_addr && b.port_be == flow.backend_port_be,
        None => false,
    }
}

/// Schedules a new flow and, unless it may go without one, records its entry (and, for a
/// wildcard `local`/`nat` service, its reply translation); `replacing` says the key is already
/// in the table. Expects `service.table_len > 0`. Returns the backend, or the drop reason:
/// no usable backend in the chosen slot, no free `fullnat` port, or the flood guard.
///
/// When a flow gets no entry (each case counted):
/// - `flow_state = "second-packet"`: its first packet only marks its 5-tuple hash in `SEEN`; a
///   later packet that finds the mark creates the entry (`FlowStateDeferred`);
/// - above the flood guard's rate: a service that may skip state sends it on without one
///   (`GuardStateless`), any other drops it (`GuardDropped`), so no live flow is evicted.
///
/// Replacing a stale entry evicts nothing and is never deferred or guarded. An entry idle past
/// `flow_stale_after` (noted by [`existing_flow`] in `STALE_KEEP`) whose backend the table
/// chooses again is kept as it is: nothing is written or counted.
///
/// `V6`: the packet's family; a backend of the other family cannot take the flow.
#[inline(always)]
fn new_flow<const V6: bool>(
    service: &Service,
    mode: u32,
    key: &FlowKey,
    tuple: &FlowTuple,
    now: u64,
    replacing: bool,
    wildcard: bool,
) -> Result<Target, Stat> {
    let no_backend = Stat::DropNoBackend;
    // First, before any way out: what `existing_flow` noted must not outlive this packet.
    let [idle_index_plus_one, idle_snat_port] = take_idle_entry();
    let deferred = service.flags & SERVICE_FLAG_STATE_ON_SECOND_PACKET != 0;
    // One hash per packet: the 5-tuple hash where the mode needs it (the outer source of
    // dsr-ipip, the port choice of fullnat, the deferred-state mark), which the scheduler
    // reuses when it hashes the 5-tuple (the default).
    let needs_tuple_hash = mode == FORWARD_DSR_IPIP || mode == FORWARD_FULLNAT || deferred;
    let tuple_hash = if needs_tuple_hash {
        flow_hash(tuple, HASH_FIVE_TUPLE, service.hash_seed)
    } else {
        0
    };
    let index = schedule::choose_backend(service, tuple, needs_tuple_hash.then_some(tuple_hash))
        .ok_or(no_backend)?;
    let backend: &Backend = BACKENDS.get(index).ok_or(no_backend)?;
    // An empty position (all zero) or a backend of the other family cannot take this flow.
    if !has_family::<V6>(&backend.addr) || backend.port_be == 0 {
        return Err(no_backend);
    }
    let mut target = Target {
        index,
        addr: backend.addr,
        port_be: backend.port_be,
        snat_port_be: 0,
        tuple_hash,
    };
    if idle_index_plus_one == index.wrapping_add(1) {
        // The table agrees with the idle entry: it stays as it is, and what a live flow's
        // refresh keeps alive is refreshed (`existing_flow` refreshed only its timestamp): the
        // `fullnat` translation, which the daemon's sweep would otherwise free while in use.
        target.snat_port_be = idle_snat_port as u16;
        if mode == FORWARD_FULLNAT
            && let Some(source) = fullnat::source(service)
        {
            let k = fullnat::key(backend.addr, backend.port_be, source, target.snat_port_be);
            fullnat::refresh(&k, now);
        }
        return Ok(target);
    }
    // Whether this flow gets an entry now. Decided after the backend is chosen, so that the
    // verifier walks the scheduler once for every way out; one exit, so that it walks what
    // follows once too.
    let mut create = true;
    if !replacing {
        if deferred && !seen_before(tuple_hash) {
            stats::count(Stat::FlowStateDeferred);
            create = false;
        } else if !guard_admits(now) {
            if service.flags & SERVICE_FLAG_MAY_SKIP_STATE == 0 {
                return Err(Stat::GuardDropped);
            }
            stats::count(Stat::GuardStateless);
            create = false;
        }
    }
    // A deferred flow's entry comes with a later packet: the flow was counted with its first.
    if replacing || !deferred || !create {
        stats::count_flow(service.id, index);
    }
    if create {
        record_flow(
            service,
            mode,
            key,
            backend,
            &mut target,
            now,
            replacing,
            wildcard,
        )?;
    }
    if idle_index_plus_one != 0 {
        stats::count(Stat::FlowStaleFollowedTable);
    }
    Ok(target)
}

/// Creates the flow entry of a new flow (and its `fullnat` port and wildcard reply entry).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn record_flow(
    service: &Service,
    mode: u32,
    key: &FlowKey,
    backend: &Backend,
    target: &mut Target,
    now: u64,
    replacing: bool,
    wildcard: bool,
) -> Result<(), Stat> {
    if mode == FORWARD_FULLNAT {
        target.snat_port_be = fullnat::allocate(service, key, backend, target.tuple_hash, now)
            .ok_or(Stat::DropPortsExhausted)?;
    }
    let flow = Flow {
        backend_addr: backend.addr,
        backend_port_be: backend.port_be,
        snat_port_be: target.snat_port_be,
        backend_index: target.index,
        service_id: service.id,
        tuple_hash: target.tuple_hash,
        last_seen_ns: now,
    };
    if FLOWS.insert(key, flow, 0).is_err() {
        stats::count(Stat::FlowInsertFailed);
    } else if !replacing {
        stats::count(Stat::FlowTableInsert);
    }
    if wildcard {
        remember_reply(service, key, &flow);
    }
    stats::count(Stat::FlowCreated);
    Ok(())
}

/// What a flow of a service that may skip state would hold if it had an entry: its backend as
/// the scheduler chooses it now, and its 5-tuple hash. `None` when the service has no backend
/// for it.
#[inline(always)]
pub fn stateless_flow(service: &Service, key: &FlowKey) -> Option<Flow> {
    stateless_flow_of::<false>(service, key)
}

/// [`stateless_flow`] for a flow of either family (`V6`).
#[inline(always)]
pub fn stateless_flow_of<const V6: bool>(service: &Service, key: &FlowKey) -> Option<Flow> {
    if service.table_len == 0 {
        return None;
    }
    let tuple = FlowTuple {
        src: key.client_addr,
        dst: key.vip_addr,
        src_port_be: key.client_port_be,
        dst_port_be: key.vip_port_be,
        proto: key.proto,
    };
    let tuple_hash = flow_hash(&tuple, HASH_FIVE_TUPLE, service.hash_seed);
    let index = schedule::choose_backend(service, &tuple, Some(tuple_hash))?;
    let backend = BACKENDS.get(index)?;
    if !has_family::<V6>(&backend.addr) || backend.port_be == 0 {
        return None;
    }
    Some(Flow {
        backend_addr: backend.addr,
        backend_port_be: backend.port_be,
        snat_port_be: 0,
        backend_index: index,
        service_id: service.id,
        tuple_hash,
        last_seen_ns: 0,
    })
}

/// Deferred flow state: whether this CPU saw a packet of the flow with 5-tuple hash `hash`
/// since its slot was last taken. Marks the slot when not (and clears it when so, freeing the
/// slot). A slot taken by another flow in between only delays the entry to a later packet;
/// a false match (two flows, one hash) only creates an entry one packet early.
#[inline(always)]
fn seen_before(hash: u32) -> bool {
    let mark = hash | 1;
    let Some(slot) = SEEN.get_ptr_mut(hash & (SEEN_SLOTS - 1)) else {
        // No memory to defer with: create the entry.
        return true;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let slot = unsafe { &mut *slot };
    if *slot == mark {
        *slot = 0;
        true
    } else {
        *slot = mark;
        false
    }
}

/// The flood guard: whether this CPU may create one more flow entry in the current
/// one-second window (`GLOBAL_SLOT_FLOW_GUARD_RATE` per window; 0 means no guard).
#[inline(always)]
fn guard_admits(now: u64) -> bool {
    let rate = GLOBALS
        .get(GLOBAL_SLOT_FLOW_GUARD_RATE)
        .copied()
        .unwrap_or(0);
    if rate == 0 {
        return true;
    }
    let Some(window) = FLOW_GUARD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window[0]) >= GUARD_WINDOW_NS {
        window[0] = now;
        window[1] = 0;
    }
    if window[1] >= u64::from(rate) {
        return false;
    }
    window[1] += 1;
    true
}

/// The flood guard's window.
const GUARD_WINDOW_NS: u64 = 1_000_000_000;

/// Whether `addr` is IPv4-mapped (`::ffff:a.b.c.d`, how the maps hold IPv4).
#[inline(always)]
pub fn is_v4_mapped(addr: &Addr) -> bool {
    let mapped = addr_from_v4_wire(0);
    addr[0] == mapped[0] && addr[1] == mapped[1] && addr[2] == mapped[2]
}

/// Whether a backend address has the packet's family (`V6`), known at compile time so that
/// each family's program checks only its own. NAT64/46 is out of scope: the config never
/// mixes families in a service, and this keeps a stray entry from being used across them.
#[inline(always)]
fn has_family<const V6: bool>(backend: &Addr) -> bool {
    is_v4_mapped(backend) != V6
}

/// Records how the backend's replies to this client are made to come from the address the
/// client used, for a wildcard service (`0.0.0.0:PORT`) of the modes whose replies pass
/// through this host: `local` (TC egress) and `nat` (XDP). A service with a concrete VIP needs
/// no such entry (its backends' owner in `REPLY_OWNERS_V1` names the VIP, and the flow entry
/// confirms the client: see `reply::owner`). `dsr-*` replies bypass the balancer and
/// `fullnat` replies are found by their port (`FULLNAT_V1`), so those modes write nothing.
/// The config refuses two `local`/`nat` services that share a backend address and port, so
/// every entry has one owner.
#[inline(always)]
fn remember_reply(service: &Service, key: &FlowKey, flow: &Flow) {
    let mode = forwarding(service);
    if mode != FORWARD_LOCAL && mode != FORWARD_NAT {
        return;
    }
    let reply_key = ReplyKey {
        backend_addr: flow.backend_addr,
        client_addr: key.client_addr,
        backend_port_be: flow.backend_port_be,
        client_port_be: key.client_port_be,
        proto: key.proto,
        _pad: [0; 3],
    };
    let reply = Reply {
        vip_addr: key.vip_addr,
        vip_port_be: key.vip_port_be,
        flags: if mode == FORWARD_NAT {
            REPLY_FLAG_NAT
        } else {
            0
        },
        service_id: flow.service_id,
    };
    if REPLIES.insert(reply_key, reply, 0).is_err() {
        stats::count(Stat::FlowInsertFailed);
    }
}
