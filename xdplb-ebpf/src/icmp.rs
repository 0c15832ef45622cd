//! ICMP errors about balanced flows go where they belong.
//!
//! - From the backends' side (`nat`, `fullnat`): a backend or a router between it and the
//!   balancer reports a problem with a packet the balancer sent there (destination
//!   unreachable, fragmentation needed, time exceeded). The quoted packet is translated back
//!   to what the client sent (VIP:port, and for `fullnat` the client's own address), the outer
//!   header readdressed to the client (a backend's own address becomes the VIP), and the
//!   message routed to the client.
//! - Towards the VIP: a router could not deliver a reply that left with source VIP:port (in
//!   DSR, straight from a backend). The flow table knows the backend; the message goes there,
//!   the way that flow's packets go (`dsr-l2`: readdressed frame; `dsr-ipip`: encapsulated;
//!   `nat`/`local`: outer destination and quoted source rewritten to the backend).
//!
//! Only a quoted IPv4 header without options around UDP is handled; anything else passes.

use aya_ebpf::programs::XdpContext;
use xdplb_common::{
    FORWARD_DSR_IPIP, FORWARD_DSR_L2, FORWARD_FULLNAT, FORWARD_NAT, FlowKey, IPPROTO_UDP,
    REPLY_FLAG_NAT, ReplyKey, SERVICE_FLAG_MAY_SKIP_STATE, Stat, addr_from_v4_wire,
    checksum::{fold, replace_u16, replace_u32, udp_replace_u16, udp_replace_u32},
};

use crate::{
    FLOWS, XDP_PASS, csum, forward, fullnat,
    parse::{ETH_HDR_LEN, Ipv4Hdr, Ipv4Udp, UdpHdr, ptr_at},
    service::{self, Verdict},
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ETH_P_IP: u16 = 0x0800;
const IP_FRAGMENTED: u16 = 0x3fff;
/// `parse`: not an ICMP error about a UDP packet (the caller passes it as not UDP).
const NOT_OURS: Stat = Stat::PassNotUdp;
/// ICMP header, quoted IPv4 header without options, quoted UDP header.
const QUOTE_MIN_LEN: usize = 8 + 20 + 8;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// An ICMP error and the packet it quotes, bounds-checked.
struct Quoted {
    outer: *mut Ipv4Hdr,
    /// Offset of the ICMP header from the start of the frame.
    l4_offset: usize,
    /// The outer IPv4 total length, host order.
    tot_len: usize,
    icmp: *mut IcmpHdr,
    inner: *mut Ipv4Hdr,
    udp: *mut UdpHdr,
}

/// Handles an ICMP error about a balanced flow. `None`: not one (the caller passes it).
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Option<Verdict> {
    let q = match parse(ctx) {
        Ok(q) => q,
        Err(NOT_OURS) => return None,
        Err(stat) => return Some(Verdict::pass(stat)),
    };
    let pseudo = Ipv4Udp {
        ip: q.outer,
        udp: q.udp,
        l4_offset: q.l4_offset,
        frame_len: 0,
        partial_csum: false,
        fragment: crate::parse::NOT_FRAGMENT,
        generic_xdp: false,
    };
    // Before anything is read from the quote: ours, and intact.
    if !service::addressed_to_interface(ctx) {
        return Some(Verdict {
            action: XDP_PASS,
            stat: Stat::PassNotForUs,
        });
    }
    if !csum::ipv4_header_is_valid(ctx, &pseudo) || !message_is_valid(ctx, &q) {
        return Some(Verdict {
            action: XDP_PASS,
            stat: Stat::PassBadIcmp,
        });
    }
    // SAFETY: `parse` bounds-checked every header.
    let (outer_saddr, outer_daddr, inner_saddr, inner_daddr, sport, dport) = unsafe {
        (
            (*q.outer).saddr,
            (*q.outer).daddr,
            (*q.inner).saddr,
            (*q.inner).daddr,
            (*q.udp).source_be,
            (*q.udp).dest_be,
        )
    };
    // The quoted packet went from the balancer to a backend: inner source = client (nat) or
    // the balancer's fullnat source, inner destination = the backend.
    let key = ReplyKey {
        backend_addr: addr_from_v4_wire(inner_daddr),
        client_addr: addr_from_v4_wire(inner_saddr),
        backend_port_be: dport,
        client_port_be: sport,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    if let Some(r) = crate::reply::owner(inner_daddr, dport, inner_saddr, sport)
        && r.flags & REPLY_FLAG_NAT != 0
    {
        // nat: the client sent to VIP:port.
        quoted_destination(&q, r.vip_addr[3], r.vip_port_be);
        if outer_saddr == inner_daddr {
            outer_source(&q, r.vip_addr[3]);
        }
        crate::stats::count(Stat::IcmpErrorToClient);
        return Some(forward::fib_forward(
            ctx,
            &pseudo,
            false,
            forward::NO_BACKEND,
        ));
    }
    if let Some(peer) = fullnat::peer(&key) {
        // fullnat: the client sent from its own address to VIP:port.
        quoted_source(&q, peer.client_addr[3], peer.client_port_be);
        quoted_destination(&q, peer.vip_addr[3], peer.vip_port_be);
        outer_destination(&q, peer.client_addr[3]);
        if outer_saddr == inner_daddr {
            outer_source(&q, peer.vip_addr[3]);
        }
        crate::stats::count(Stat::IcmpErrorToClient);
        return Some(forward::fib_forward(
            ctx,
            &pseudo,
            false,
            forward::NO_BACKEND,
        ));
    }
    // Towards the VIP, about a reply VIP:port -> client.
    if outer_daddr != inner_saddr {
        return None;
    }
    let service = service::lookup_service(inner_saddr, sport)?;
    let flow_key = FlowKey {
        client_addr: addr_from_v4_wire(inner_daddr),
        vip_addr: addr_from_v4_wire(inner_saddr),
        client_port_be: dport,
        vip_port_be: sport,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    let mode = service::forwarding(service);
    // SAFETY: the value is copied out at once.
    let flow = match unsafe { FLOWS.get(flow_key) }.copied() {
        Some(f) => f,
        // No entry here: the flow may never have crossed this node (ECMP hashes a router's
        // error as a packet of its own, so in a fleet it mostly lands on another node than the
        // flow's), or it defers its entry to the second packet, or the flood guard sent it on
        // without one. A `dsr-*` service with a consistent scheduler puts a flow where its
        // table says, on every node alike, so the table names the owner. Other services have
        // no such answer: the error passes, as before.
        None if service.flags & SERVICE_FLAG_MAY_SKIP_STATE != 0 => {
            service::stateless_flow(service, &flow_key)?
        }
        None => return None,
    };
    let backend = flow.backend_addr[3];
    crate::stats::count(Stat::IcmpErrorToBackend);
    Some(match mode {
        FORWARD_DSR_L2 => forward::l2_forward(ctx, &pseudo, backend, forward::NO_BACKEND, false),
        FORWARD_DSR_IPIP => {
            let source = service::encap_source(service, flow.tuple_hash);
            forward::ipip_forward(ctx, &pseudo, backend, forward::NO_BACKEND, source, false)
        }
        // fullnat replies leave translated; an error about one would need the reverse of that.
        FORWARD_FULLNAT => return None,
        _ => {
            // The backend sent from its own address and port.
            quoted_source(&q, backend, flow.backend_port_be);
            outer_destination(&q, backend);
            if mode == FORWARD_NAT {
                forward::fib_forward(ctx, &pseudo, false, forward::NO_BACKEND)
            } else {
                Verdict {
                    action: XDP_PASS,
                    stat: Stat::Forwarded,
                }
            }
        }
    })
}

/// Parses Ethernet, an unfragmented outer IPv4 header, an ICMP destination-unreachable or
/// time-exceeded message, and the quoted IPv4 header (no options) and UDP header.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Quoted, Stat> {
    let eth: *mut crate::parse::EthHdr = ptr_at(ctx, 0).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    if unsafe { (*eth).ether_type_be } != ETH_P_IP.to_be() {
        return Err(NOT_OURS);
    }
    let outer: *mut Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let (version_ihl, protocol, frag, tot_len) = unsafe {
        (
            (*outer).version_ihl,
            (*outer).protocol,
            u16::from_be((*outer).frag_off_be),
            usize::from(u16::from_be((*outer).tot_len_be)),
        )
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || protocol != IPPROTO_ICMP || frag & IP_FRAGMENTED != 0 {
        return Err(NOT_OURS);
    }
    let l4 = ETH_HDR_LEN + ihl;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let kind = unsafe { (*icmp).kind };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return Err(NOT_OURS);
    }
    // An ICMP error. Its outer length must cover the ICMP header and the quoted IPv4 and UDP
    // headers. (That the frame holds all of it, `message_is_valid` proves: its sum reads every
    // byte. A comparison with the frame length would let the compiler drop the bounds checks
    // here, which the verifier needs.)
    if tot_len < ihl + QUOTE_MIN_LEN {
        return Err(Stat::PassBadIcmp);
    }
    let inner: *mut Ipv4Hdr = ptr_at(ctx, l4 + 8).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let (inner_vihl, inner_proto) = unsafe { ((*inner).version_ihl, (*inner).protocol) };
    if inner_vihl != 0x45 || inner_proto != IPPROTO_UDP {
        return Err(NOT_OURS);
    }
    let udp: *mut UdpHdr = ptr_at(ctx, l4 + 8 + 20).ok_or(NOT_OURS)?;
    Ok(Quoted {
        outer,
        l4_offset: l4,
        tot_len,
        icmp,
        inner,
        udp,
    })
}

/// Whether the ICMP checksum over the whole message (outer total length minus its header)
/// is correct.
#[inline(always)]
fn message_is_valid(ctx: &XdpContext, q: &Quoted) -> bool {
    let len = q.tot_len - (q.l4_offset - ETH_HDR_LEN);
    match csum::sum_bytes::<{ csum::ICMP_CHUNKS }>(ctx, q.l4_offset, len) {
        Some(sum) => fold(sum) == 0xffff,
        None => false,
    }
}

/// Replaces a 32-bit word of the quoted IPv4 header (an address), keeping the quoted header's
/// checksum, the quoted UDP checksum (its pseudo-header) and the ICMP checksum right.
#[inline(always)]
fn quoted_address(q: &Quoted, field: *mut u32, new: u32) {
    // SAFETY: `field` points into the bounds-checked quoted header; so do the others.
    unsafe {
        let old = *field;
        if old == new {
            return;
        }
        let inner = &mut *q.inner;
        let icmp = &mut *q.icmp;
        let udp = &mut *q.udp;
        let old_ip_check = inner.check;
        let old_udp_check = udp.check;
        *field = new;
        inner.check = replace_u32(inner.check, old, new);
        udp.check = udp_replace_u32(udp.check, old, new);
        icmp.check = replace_u32(icmp.check, old, new);
        icmp.check = replace_u16(icmp.check, old_ip_check, inner.check);
        icmp.check = replace_u16(icmp.check, old_udp_check, udp.check);
    }
}

/// Replaces a port of the quoted UDP header, keeping the UDP and ICMP checksums right.
#[inline(always)]
fn quoted_port(q: &Quoted, field: *mut u16, new: u16) {
    // SAFETY: `field` points into the bounds-checked quoted UDP header.
    unsafe {
        let old = *field;
        if old == new {
            return;
        }
        let icmp = &mut *q.icmp;
        let udp = &mut *q.udp;
        let old_udp_check = udp.check;
        *field = new;
        udp.check = udp_replace_u16(udp.check, old, new);
        icmp.check = replace_u16(icmp.check, old, new);
        icmp.check = replace_u16(icmp.check, old_udp_check, udp.check);
    }
}

#[inline(always)]
fn quoted_source(q: &Quoted, addr: u32, port_be: u16) {
    // SAFETY: pointers into bounds-checked headers.
    unsafe {
        quoted_address(q, &raw mut (*q.inner).saddr, addr);
        quoted_port(q, &raw mut (*q.udp).source_be, port_be);
    }
}

#[inline(always)]
fn quoted_destination(q: &Quoted, addr: u32, port_be: u16) {
    // SAFETY: pointers into bounds-checked headers.
    unsafe {
        quoted_address(q, &raw mut (*q.inner).daddr, addr);
        quoted_port(q, &raw mut (*q.udp).dest_be, port_be);
    }
}

/// Replaces the outer source or destination; only the outer header checksum covers it.
#[inline(always)]
fn outer_address(q: &Quoted, field: *mut u32, new: u32) {
    // SAFETY: `field` points into the bounds-checked outer header.
    unsafe {
        let old = *field;
        (*q.outer).check = replace_u32((*q.outer).check, old, new);
        *field = new;
    }
}

#[inline(always)]
fn outer_source(q: &Quoted, addr: u32) {
    // SAFETY: a pointer into the bounds-checked outer header.
    unsafe { outer_address(q, &raw mut (*q.outer).saddr, addr) }
}

#[inline(always)]
fn outer_destination(q: &Quoted, addr: u32) {
    // SAFETY: a pointer into the bounds-checked outer header.
    unsafe { outer_address(q, &raw mut (*q.outer).daddr, addr) }
}
