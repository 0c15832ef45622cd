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
/// Offsets inside the UDP header.
const UDP_CHECK_OFFSET: usize = 6;
/// Enough to hold Ethernet, the longest IPv4 header and UDP.
const MAX_HEADERS_LEN: u32 = 14 + 60 + 8;

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
    if reply.vip_port_be != sport_be {
        let l4_flags = BPF_F_MARK_MANGLED_0 as u64 | 2;
        if ctx
            .l4_csum_replace(
                l4 + UDP_CHECK_OFFSET,
                sport_be as u64,
                reply.vip_port_be as u64,
                l4_flags,
            )
            .is_err()
            || ctx.store(l4, &reply.vip_port_be, 0).is_err()
        {
            return Some(Stat::DropReplyRewriteFailed);
        }
    }
    Some(Stat::ReplyTranslated)
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
