//! The IPv6 ingress path (`xdplb_ingress6`) and the translation of `nat`/`fullnat` backends'
//! IPv6 replies (`xdplb_nat_reply6`): the IPv6 counterparts of `service::try_ingress` and
//! `service::try_reply`, with the same shape. What is family-neutral is shared with IPv4: the
//! port prefilter, the service lookup, the flow table and the scheduler
//! (`service::flow_target`), the reply hand-back, the counters, and the sending
//! (`forward`, generic over the family).
//!
//! IPv6 differs in: the extension-header chain (`parse::ipv6_upper`), no header checksum
//! (nothing to check at admission, only the UDP checksum to update), the hop limit for the
//! TTL, no fragments balanced (the sender alone fragments in IPv6; a fragment header passes).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use xdplb_common::{
    Addr, CAPTURE_REPLY, FORWARD_DSR_IPIP, FORWARD_DSR_L2, FORWARD_FULLNAT, FORWARD_NAT, FlowKey,
    INTERFACE_FLAG_GENERIC, IPPROTO_UDP, PORT_EXACT_SERVICE, PORT_FULLNAT_RANGE, PORT_NAT_BACKEND,
    PORT_WILDCARD_SERVICE, REPLY_FLAG_NAT, SERVICE_FLAG_WILDCARD, Stat,
};

use crate::{
    PROG_ICMP6, PROG_INGRESS6, PROG_NAT_REPLY6, PROGS, capture, csum, encap6, forward, fullnat,
    parse::{self, Ipv6Udp},
    reply, rewrite,
    service::{self, IDENTITY_V6, Verdict},
    stats,
};

/// The IPv6 wildcard service's address, `[::]`.
const WILDCARD: Addr = [0; 4];

/// Balances one received IPv6 frame (`xdplb_ingress` tail-calls this program for EtherType
/// 0x86DD). Returns `Ok` for a rewritten packet with its mode's verdict, `Err` with the pass
/// or drop reason for everything else; the packet is modified only on the `Ok` path.
#[inline(always)]
pub fn try_ingress6(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let upper = parse::ipv6_upper(ctx).map_err(Verdict::pass)?;
    if upper.next_header == parse::IPPROTO_ICMPV6 {
        // ICMPv6 errors about balanced flows: `xdplb_icmp6`. Returns only if the tail call
        // fails (no program in the slot), and then the packet passes.
        // SAFETY: a tail call into a program user space put in the array.
        unsafe { PROGS.tail_call(ctx, PROG_ICMP6) };
        return Err(Verdict::pass(Stat::PassNotUdp));
    }
    let upper = settled(ctx, &upper)?;
    let mut pkt = parse::ipv6_udp_at(ctx, &upper).map_err(Verdict::pass)?;
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    // An IPv4-mapped address is never an IPv6 packet's destination on the wire (RFC 4291
    // 2.5.5.2), and is how the maps hold IPv4: it must not reach an IPv4 service.
    if service::is_v4_mapped(&daddr) {
        return Err(Verdict::pass(Stat::PassNoService));
    }
    // The port prefilter, the exact service, the reply tables, the wildcard service: in the
    // order and for the reasons of `service::try_ingress`.
    let to_port = service::port_flags(dport_be);
    let from_port = service::port_flags(sport_be);
    let exact = if to_port & PORT_EXACT_SERVICE != 0 {
        service::lookup_service_key(daddr, dport_be)
    } else {
        None
    };
    let service = match exact {
        Some(s) => s,
        None => {
            if (from_port & PORT_NAT_BACKEND != 0 || to_port & PORT_FULLNAT_RANGE != 0)
                && !service::reply_checked(identity(&saddr, &daddr, sport_be, dport_be))
            {
                // Maybe a backend's reply: `xdplb_nat_reply6` decides. Returns only if the
                // tail call fails; the packet then goes on as a request.
                // SAFETY: a tail call into a program user space put in the array.
                unsafe { PROGS.tail_call(ctx, PROG_NAT_REPLY6) };
            }
            if to_port & PORT_WILDCARD_SERVICE == 0 {
                return Err(Verdict::pass(Stat::PassNoService));
            }
            service::lookup_service_key(WILDCARD, dport_be)
                .ok_or(Verdict::pass(Stat::PassNoService))?
        }
    };
    let wildcard = service.flags & SERVICE_FLAG_WILDCARD != 0;
    admit6(ctx, &mut pkt)?;

    let flow_key = FlowKey {
        client_addr: saddr,
        vip_addr: daddr,
        client_port_be: sport_be,
        vip_port_be: dport_be,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // The packet as it arrived, while a capture runs; nothing has modified it yet.
    capture::before(ctx, service.id, now);
    let mode = service::forwarding(service);
    let target = service::flow_target::<true>(ctx, service, mode, &flow_key, now, wildcard)?;

    stats::count_traffic(service.id, target.index, pkt.frame_len);
    match mode {
        // The backend holds the VIP: the packet stays as the client sent it.
        FORWARD_DSR_L2 => {
            return Ok(forward::l2_forward(
                ctx,
                &pkt,
                target.addr,
                target.index,
                true,
            ));
        }
        FORWARD_DSR_IPIP => {
            let source = encap6::outer_source(service, target.tuple_hash);
            return Ok(encap6::ip6ip6_forward(
                ctx,
                &pkt,
                target.addr,
                target.index,
                source,
                true,
            ));
        }
        FORWARD_FULLNAT => {
            let source = fullnat::source(service).ok_or(Verdict::drop(Stat::DropNoRoute))?;
            rewrite::set_source6(&pkt, &source, target.snat_port_be);
            rewrite::set_destination6(&pkt, &target.addr, target.port_be);
            return Ok(forward::fib_forward(ctx, &pkt, true, target.index));
        }
        _ => {}
    }
    rewrite::set_destination6(&pkt, &target.addr, target.port_be);
    if mode == FORWARD_NAT {
        return Ok(forward::fib_forward(ctx, &pkt, false, target.index));
    }
    // `local`: a partial checksum needs nothing more (the kernel trusts a partial skb it
    // delivers).
    Ok(Verdict::pass(Stat::Forwarded))
}

/// The parser's answer with the upper layer's offset passed through `FINISH_L4` (see
/// `csum::note_l4_offset`): the extension-header walk leaves the program in one state per
/// chain length, and everything after it would be verified once per state; read back from the
/// map, the offset is one unknown value, and the paths continue as one. Also notes the offset
/// for `xdplb_finish_checksum`. Keeps the next header (the caller has sent ICMPv6 on).
#[inline(always)]
fn settled(ctx: &XdpContext, upper: &parse::Ipv6Upper) -> Result<parse::Ipv6Upper, Verdict> {
    let bad = Verdict::pass(Stat::PassBadUdpHeader);
    let next_header = upper.next_header;
    csum::note_l4_offset(upper.l4_offset);
    let l4_offset = csum::noted_l4_offset().ok_or(bad)?;
    let ip6 = parse::ptr_at::<_, parse::Ipv6Hdr>(ctx, parse::ETH_HDR_LEN).ok_or(bad)?;
    // SAFETY: bounds-checked just above.
    let payload_len = usize::from(u16::from_be(unsafe { (*ip6).payload_len_be }));
    let end = parse::ETH_HDR_LEN + parse::IPV6_HDR_LEN + payload_len;
    if l4_offset > end {
        return Err(bad);
    }
    Ok(parse::Ipv6Upper {
        ip6,
        next_header,
        l4_offset,
        l4_len: end - l4_offset,
        frame_len: ctx.data_end() - ctx.data(),
    })
}

/// What every IPv6 packet must pass before the data plane creates state for it or rewrites
/// it: addressed to this interface (IPv6 has no header checksum to check). Then notes whether
/// its UDP checksum is a partial one (see `csum`).
#[inline(always)]
fn admit6(ctx: &XdpContext, pkt: &mut Ipv6Udp) -> Result<(), Verdict> {
    let Some(flags) = service::interface_flags(ctx) else {
        return Err(Verdict::pass(Stat::PassNotForUs));
    };
    // `settled` noted the UDP offset, where `xdplb_finish_checksum` finds it.
    pkt.partial_csum = csum::udp_checksum_is_partial6(pkt);
    pkt.generic_xdp = flags & INTERFACE_FLAG_GENERIC != 0;
    Ok(())
}

/// The `REPLY_CHECKED` identity of an IPv6 packet (see `service::reply_identity`).
#[inline(always)]
fn identity(saddr: &Addr, daddr: &Addr, sport_be: u16, dport_be: u16) -> [u64; 2] {
    service::reply_identity(
        service::fold_addr(saddr),
        service::fold_addr(daddr),
        sport_be,
        dport_be,
        IDENTITY_V6,
    )
}

/// `xdplb_nat_reply6`: translates a `nat` or `fullnat` backend's IPv6 reply; anything else
/// passes, or goes back to `xdplb_ingress6` as a wildcard service's request, as
/// `service::try_reply` does for IPv4.
#[inline(always)]
pub fn try_reply6(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let upper = parse::ipv6_upper(ctx).map_err(Verdict::pass)?;
    let upper = settled(ctx, &upper)?;
    let mut pkt = parse::ipv6_udp_at(ctx, &upper).map_err(Verdict::pass)?;
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    let to_port = service::port_flags(dport_be);
    let from_port = service::port_flags(sport_be);
    if let Some(reply) = known_reply6(&saddr, &daddr, sport_be, dport_be, from_port, to_port) {
        admit6(ctx, &mut pkt)?;
        capture::before_unclocked(ctx, CAPTURE_REPLY);
        return Ok(translate_reply6(ctx, &pkt, &reply));
    }
    if to_port & PORT_WILDCARD_SERVICE != 0 {
        service::hand_back(
            ctx,
            identity(&saddr, &daddr, sport_be, dport_be),
            PROG_INGRESS6,
        );
    }
    Err(Verdict::pass(Stat::PassNoService))
}

/// An IPv6 backend reply to translate: its new source (VIP and port) and, for `fullnat`, its
/// new destination (the client). Its own program's stack holds it: no need to keep it to
/// scalars as IPv4's `KnownReply` must.
struct KnownReply6 {
    vip: Addr,
    vip_port_be: u16,
    /// `fullnat`: the client's port and address.
    client_port_be: u16,
    client: Addr,
    fullnat: bool,
}

/// What the reply tables say of a packet to no exact service (see `service::known_reply`):
/// a `nat` backend's reply by its owner, a `fullnat` one by its translation (refreshed here).
#[inline(always)]
fn known_reply6(
    saddr: &Addr,
    daddr: &Addr,
    sport_be: u16,
    dport_be: u16,
    from_port: u32,
    to_port: u32,
) -> Option<KnownReply6> {
    if from_port & PORT_NAT_BACKEND != 0
        && let Some(owner) = reply::owner_addr(*saddr, sport_be, *daddr, dport_be)
        && owner.flags & REPLY_FLAG_NAT != 0
    {
        return Some(KnownReply6 {
            vip: owner.vip_addr,
            vip_port_be: owner.vip_port_be,
            client_port_be: 0,
            client: [0; 4],
            fullnat: false,
        });
    }
    if to_port & PORT_FULLNAT_RANGE == 0 {
        return None;
    }
    let key = fullnat::key(*saddr, sport_be, *daddr, dport_be);
    let peer = fullnat::peer(&key)?;
    // SAFETY: a helper without arguments.
    fullnat::refresh(&key, unsafe { bpf_ktime_get_ns() });
    Some(KnownReply6 {
        vip: peer.vip_addr,
        vip_port_be: peer.vip_port_be,
        client_port_be: peer.client_port_be,
        client: peer.client_addr,
        fullnat: true,
    })
}

/// Rewrites an admitted reply to come from VIP:port (and for `fullnat`, to go to the client)
/// and routes it to the client.
#[inline(always)]
fn translate_reply6(ctx: &XdpContext, pkt: &Ipv6Udp, reply: &KnownReply6) -> Verdict {
    rewrite::set_source6(pkt, &reply.vip, reply.vip_port_be);
    if reply.fullnat {
        rewrite::set_destination6(pkt, &reply.client, reply.client_port_be);
        stats::count(Stat::FullnatReplyTranslated);
    } else {
        stats::count(Stat::NatReplyTranslated);
    }
    forward::fib_forward(ctx, pkt, false, forward::NO_BACKEND)
}
