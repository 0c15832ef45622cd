//! The reply path (TC egress): a backend's reply to a balanced flow leaves with
//! source = VIP:port, so a client with a connected socket accepts it.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use xdplb_common::{
    Addr, FRAGMENT_SEND_REPLY_TC, FlowKey, IPPROTO_UDP, PORT_LOCAL_BACKEND, REPLY_FLAG_WILDCARD,
    Reply, ReplyKey, ServiceKey, Stat, addr_from_v4_wire,
};

use crate::{FLOWS, PORTS, REPLIES, REPLY_OWNERS, fragment, parse};

/// Offsets inside the IPv4 header.
const IP_CHECK_OFFSET: usize = parse::ETH_HDR_LEN + 10;
const IP_SADDR_OFFSET: usize = parse::ETH_HDR_LEN + 12;
/// The source address inside the IPv6 header.
const IP6_SADDR_OFFSET: usize = parse::ETH_HDR_LEN + 8;
/// Offsets inside the UDP header.
const UDP_CHECK_OFFSET: usize = 6;
/// Enough to hold Ethernet, the longest IPv4 header and UDP.
const MAX_HEADERS_LEN: u32 = 14 + 60 + 8;
/// Enough to hold Ethernet, IPv6, the longest extension-header chain the parser walks (each
/// header at most 2,048 bytes) and UDP.
const MAX_HEADERS_LEN6: u32 = 14 + 40 + parse::IPV6_MAX_EXT_HEADERS as u32 * 2048 + 8;

/// Rewrites the source of a reply that belongs to a balanced flow.
///
/// Expects nothing of the packet. Returns the counter to bump, or `None` for a packet that is
/// not a reply of ours (the common case, left untouched and uncounted). A reply whose rewrite
/// failed half-way is reported as `DropReplyRewriteFailed`, and the caller drops it rather
/// than send a corrupted packet.
#[inline(always)]
pub fn translate(ctx: &TcContext) -> Option<Stat> {
    // Locally generated skbs keep their headers linear, but make sure before parsing.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < MAX_HEADERS_LEN && ctx.len() > linear {
        let want = if ctx.len() < MAX_HEADERS_LEN {
            ctx.len()
        } else {
            MAX_HEADERS_LEN
        };
        ctx.pull_data(want).ok()?;
    }
    let eth = parse::ptr_at::<_, parse::EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked just above.
    if unsafe { (*eth).ether_type_be } == parse::ETH_P_IPV6.to_be() {
        return translate6(ctx);
    }
    let pkt = parse::ipv4_udp(ctx).ok()?;
    if pkt.fragment == parse::LATER_FRAGMENT {
        return follow_fragment(ctx, &pkt);
    }
    let first_fragment = pkt.fragment == parse::FIRST_FRAGMENT;
    if first_fragment {
        // No earlier datagram's route may guide this one's later fragments.
        fragment::forget(&pkt);
    }
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    // The prefilter: only a `local` backend's port sends replies to translate here.
    let from_port = PORTS.get(u32::from(u16::from_be(sport_be))).copied()?;
    if from_port & PORT_LOCAL_BACKEND == 0 {
        return None;
    }
    let reply = owner(saddr, sport_be, daddr, dport_be)?;
    let vip_addr = reply.vip_addr[3];
    let l4 = pkt.l4_offset;
    // Recorded before the rewrite: the helpers below invalidate the packet pointers, and the
    // key is the datagram as the backend sent it.
    if first_fragment {
        fragment::record(
            &pkt,
            |route| {
                route.saddr_v4 = vip_addr;
                route.send = FRAGMENT_SEND_REPLY_TC;
            },
            ctx,
        );
    }

    // The helpers below update the checksums correctly whatever the skb's checksum state
    // (CHECKSUM_PARTIAL keeps only the pseudo-header sum in the field); a zero UDP checksum
    // stays zero (BPF_F_MARK_MANGLED_0). They also invalidate packet pointers, so from here on
    // only offsets are used.
    if vip_addr != saddr {
        let l4_flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64 | 4;
        if ctx
            .l4_csum_replace(
                l4 + UDP_CHECK_OFFSET,
                saddr as u64,
                vip_addr as u64,
                l4_flags,
            )
            .is_err()
            || ctx
                .l3_csum_replace(IP_CHECK_OFFSET, saddr as u64, vip_addr as u64, 4)
                .is_err()
            || ctx.store(IP_SADDR_OFFSET, &vip_addr, 0).is_err()
        {
            return Some(Stat::DropReplyRewriteFailed);
        }
    }
    if replace_port(ctx, l4, sport_be, reply.vip_port_be).is_err() {
        return Some(Stat::DropReplyRewriteFailed);
    }
    Some(Stat::ReplyTranslated)
}

/// [`translate`] for IPv6: a `local` backend's reply to an IPv6 flow leaves with source =
/// VIP:port. No IPv6 header checksum; the UDP checksum covers the source address through the
/// pseudo-header. IPv6 fragments are not balanced (see `parse::ipv6_upper`), so there is no
/// fragment to follow.
#[inline(always)]
fn translate6(ctx: &TcContext) -> Option<Stat> {
    let pkt = match parse::ipv6_udp(ctx) {
        Ok(pkt) => pkt,
        // The first pull is sized for IPv4: extension headers before UDP may leave the
        // headers (or the datagram the parser measures) past the linear area. Pull enough
        // for the longest chain the parser walks, and parse once more.
        Err(_) if ctx.len() > (ctx.data_end() - ctx.data()) as u32 => {
            let want = if ctx.len() < MAX_HEADERS_LEN6 {
                ctx.len()
            } else {
                MAX_HEADERS_LEN6
            };
            ctx.pull_data(want).ok()?;
            parse::ipv6_udp(ctx).ok()?
        }
        Err(_) => return None,
    };
    let (saddr, daddr, sport_be, dport_be) = pkt.addresses();
    // The prefilter: only a `local` backend's port sends replies to translate here.
    let from_port = PORTS.get(u32::from(u16::from_be(sport_be))).copied()?;
    if from_port & PORT_LOCAL_BACKEND == 0 {
        return None;
    }
    let reply = owner_addr(saddr, sport_be, daddr, dport_be)?;
    let l4 = pkt.l4_offset;
    // As for IPv4: the helpers update the checksum whatever the skb's checksum state, and
    // invalidate packet pointers, so from here on only offsets are used.
    let l4_flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64 | 4;
    for (&old, &new) in saddr.iter().zip(&reply.vip_addr) {
        if old != new
            && ctx
                .l4_csum_replace(l4 + UDP_CHECK_OFFSET, old as u64, new as u64, l4_flags)
                .is_err()
        {
            return Some(Stat::DropReplyRewriteFailed);
        }
    }
    if ctx.store(IP6_SADDR_OFFSET, &reply.vip_addr, 0).is_err()
        || replace_port(ctx, l4, sport_be, reply.vip_port_be).is_err()
    {
        return Some(Stat::DropReplyRewriteFailed);
    }
    Some(Stat::ReplyTranslated)
}

/// Replaces the UDP source port at `l4` (the offset of the UDP header) and updates the UDP
/// checksum; family-neutral. A zero UDP checksum stays zero (BPF_F_MARK_MANGLED_0).
#[inline(always)]
fn replace_port(ctx: &TcContext, l4: usize, old_be: u16, new_be: u16) -> Result<(), ()> {
    if old_be == new_be {
        return Ok(());
    }
    let l4_flags = BPF_F_MARK_MANGLED_0 as u64 | 2;
    ctx.l4_csum_replace(
        l4 + UDP_CHECK_OFFSET,
        old_be as u64,
        new_be as u64,
        l4_flags,
    )
    .map_err(|_| ())?;
    ctx.store(l4, &new_be, 0).map_err(|_| ())
}

/// The service a packet from a `local` or `nat` backend (address and port, network order) to a
/// client belongs to, when it is a reply to one of that service's flows: `REPLY_OWNERS_V1`
/// names the backend's service, and the flow table holds the client's flow to that service's
/// VIP on this backend. A wildcard service's VIP is the address each client used, so its
/// replies are found per flow (`REPLIES_V1`). `None` for anything else: a backend's own
/// traffic, a health check's answer, a reply to a flow that moved to another backend.
#[inline(always)]
pub fn owner(
    backend_v4: u32,
    backend_port_be: u16,
    client_v4: u32,
    client_port_be: u16,
) -> Option<Reply> {
    owner_addr(
        addr_from_v4_wire(backend_v4),
        backend_port_be,
        addr_from_v4_wire(client_v4),
        client_port_be,
    )
}

/// [`owner`] for addresses of either family (`Addr`, IPv4-mapped for IPv4).
#[inline(always)]
pub fn owner_addr(
    backend_addr: Addr,
    backend_port_be: u16,
    client_addr: Addr,
    client_port_be: u16,
) -> Option<Reply> {
    let backend = ServiceKey {
        addr: backend_addr,
        port_be: backend_port_be,
        proto: IPPROTO_UDP,
        _pad: 0,
    };
    // SAFETY: copied out at once; entries are only replaced whole by user space.
    let owner = unsafe { REPLY_OWNERS.get(backend) }.copied()?;
    if owner.flags & REPLY_FLAG_WILDCARD != 0 {
        let key = ReplyKey {
            backend_addr,
            client_addr,
            backend_port_be,
            client_port_be,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        // SAFETY: copied out at once.
        return unsafe { REPLIES.get(key) }.copied();
    }
    let flow_key = FlowKey {
        client_addr,
        vip_addr: owner.vip_addr,
        client_port_be,
        vip_port_be: owner.vip_port_be,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    let flow = FLOWS.get_ptr(flow_key)?;
    // SAFETY: an LRU map value, read field by field; only its timestamp is ever rewritten.
    let (addr, port) = unsafe { ((*flow).backend_addr, (*flow).backend_port_be) };
    (addr == backend_addr && port == backend_port_be).then_some(owner)
}

/// A later fragment of a reply whose first fragment was translated: the same source. Other
/// fragments are none of ours (`None`, untouched and uncounted).
#[inline(always)]
fn follow_fragment(ctx: &TcContext, pkt: &parse::Ipv4Udp) -> Option<Stat> {
    let route = fragment::route(&fragment::key(pkt))?;
    if route.send != FRAGMENT_SEND_REPLY_TC {
        return None;
    }
    // SAFETY: the parser validated the IPv4 header.
    let saddr = unsafe { (*pkt.ip).saddr };
    if route.saddr_v4 != saddr
        && (ctx
            .l3_csum_replace(IP_CHECK_OFFSET, saddr as u64, route.saddr_v4 as u64, 4)
            .is_err()
            || ctx.store(IP_SADDR_OFFSET, &route.saddr_v4, 0).is_err())
    {
        return Some(Stat::DropReplyRewriteFailed);
    }
    Some(Stat::FragmentFollowed)
}
