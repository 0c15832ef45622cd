//! ICMPv6 errors about balanced flows go where they belong: the IPv6 parallel of `icmp`, with
//! the same routing (read `icmp` first).
//!
//! Only errors are ever touched: destination unreachable (1), packet too big (2), time
//! exceeded (3) and parameter problem (4), about a UDP packet of a balanced flow. Everything
//! else passes untouched: neighbour discovery (133-137: router solicitation and
//! advertisement, neighbour solicitation and advertisement, redirect), multicast listener
//! discovery (130-132, 143), echo (128, 129), and any error about something else.
//!
//! Differences from IPv4: the ICMPv6 checksum covers a pseudo-header (RFC 8200 8.1), so a
//! change of the outer source or destination is folded into it as well as the quoted
//! packet's changes; no IPv6 header has a checksum of its own. Only a quoted IPv6 header
//! followed directly by UDP is handled (no extension headers in the quote), as IPv4 handles
//! only a quoted header without options.

use aya_ebpf::{bindings::BPF_FIB_LKUP_RET_NO_NEIGH, programs::XdpContext};
use xdplb_common::{
    Addr, FORWARD_DSR_IPIP, FORWARD_DSR_L2, FORWARD_FULLNAT, FORWARD_NAT, FlowKey, IPPROTO_UDP,
    REPLY_FLAG_NAT, ReplyKey, SERVICE_FLAG_MAY_SKIP_STATE, Service, ServiceKey, Stat,
    checksum::{fold, replace_u16, udp_replace_u16},
};

use crate::{
    FLOWS, SERVICES, XDP_PASS, csum, encap6, forward, fullnat,
    parse::{IPPROTO_ICMPV6, IPV6_HDR_LEN, Ipv6Hdr, Ipv6Udp, UdpHdr, ptr_at},
    service::{self, Verdict},
};

/// The ICMPv6 error types (RFC 4443): 1 destination unreachable, 2 packet too big, 3 time
/// exceeded, 4 parameter problem. Every other type (informational, 128 and up) is not ours.
const ICMPV6_ERROR_FIRST: u8 = 1;
const ICMPV6_ERROR_LAST: u8 = 4;
/// Not an ICMPv6 error about a UDP packet (the caller passes it as not UDP).
const NOT_OURS: Stat = Stat::PassNotUdp;
/// ICMPv6 header, quoted IPv6 header, quoted UDP header.
const QUOTE_MIN_LEN: usize = 8 + IPV6_HDR_LEN + 8;

#[repr(C)]
struct Icmpv6Hdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// An ICMPv6 error and the packet it quotes, bounds-checked.
struct Quoted {
    outer: *mut Ipv6Hdr,
    /// Offset of the ICMPv6 header from the start of the frame.
    l4_offset: usize,
    /// The ICMPv6 message's length (the upper-layer length of the pseudo-header).
    len: usize,
    icmp: *mut Icmpv6Hdr,
    inner: *mut Ipv6Hdr,
    udp: *mut UdpHdr,
}

/// Handles an ICMPv6 error about a balanced flow. `None`: not one (the caller passes it
/// untouched).
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Option<Verdict> {
    let q = match parse(ctx) {
        Ok(q) => q,
        Err(NOT_OURS) => return None,
        Err(stat) => return Some(Verdict::pass(stat)),
    };
    // The outer packet with the quoted UDP header: what the forwarding functions read (the
    // outer addresses and length, the quoted ports for the FIB's hash).
    let pseudo = Ipv6Udp {
        ip6: q.outer,
        udp: q.udp,
        l4_offset: q.l4_offset,
        frame_len: 0,
        partial_csum: false,
        generic_xdp: false,
    };
    // Before anything is read from the quote: ours, and intact.
    if !service::addressed_to_interface(ctx) {
        return Some(Verdict::pass(Stat::PassNotForUs));
    }
    if !message_is_valid(ctx, &q) {
        return Some(Verdict::pass(Stat::PassBadIcmp));
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
        backend_addr: inner_daddr,
        client_addr: inner_saddr,
        backend_port_be: dport,
        client_port_be: sport,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    // Every message that is routed by its (new) outer destination leaves through the one
    // `route` call at the end: one copy of the FIB path for the verifier to walk.
    if let Some(r) = crate::reply::owner_addr(inner_daddr, dport, inner_saddr, sport)
        && r.flags & REPLY_FLAG_NAT != 0
    {
        // nat: the client sent to VIP:port.
        quoted_destination(&q, &r.vip_addr, r.vip_port_be);
        if same(&outer_saddr, &inner_daddr) {
            outer_source(&q, &r.vip_addr);
        }
        crate::stats::count(Stat::IcmpErrorToClient);
    } else if let Some(peer) = fullnat::peer(&key) {
        // fullnat: the client sent from its own address to VIP:port.
        quoted_source(&q, &peer.client_addr, peer.client_port_be);
        quoted_destination(&q, &peer.vip_addr, peer.vip_port_be);
        outer_destination(&q, &peer.client_addr);
        if same(&outer_saddr, &inner_daddr) {
            outer_source(&q, &peer.vip_addr);
        }
        crate::stats::count(Stat::IcmpErrorToClient);
    } else {
        // Towards the VIP, about a reply VIP:port -> client.
        if !same(&outer_daddr, &inner_saddr) {
            return None;
        }
        let service = lookup_service(&inner_saddr, sport)?;
        let flow_key = FlowKey {
            client_addr: inner_daddr,
            vip_addr: inner_saddr,
            client_port_be: dport,
            vip_port_be: sport,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let mode = service::forwarding(service);
        // SAFETY: the value is copied out at once.
        let flow = match unsafe { FLOWS.get(flow_key) }.copied() {
            Some(f) => f,
            // As in `icmp`: a `dsr-*` service with a consistent scheduler names the owner by
            // its table on a flow miss; other services have no such answer and the error
            // passes.
            None if service.flags & SERVICE_FLAG_MAY_SKIP_STATE != 0 => {
                service::stateless_flow_of::<true>(service, &flow_key)?
            }
            None => return None,
        };
        let backend = flow.backend_addr;
        match mode {
            FORWARD_DSR_L2 => {
                crate::stats::count(Stat::IcmpErrorToBackend);
                return Some(l2_forward(ctx, &pseudo, &backend));
            }
            FORWARD_DSR_IPIP => {
                crate::stats::count(Stat::IcmpErrorToBackend);
                let source = encap6::outer_source(service, flow.tuple_hash);
                return Some(encap6::ip6ip6_forward(
                    ctx,
                    &pseudo,
                    backend,
                    forward::NO_BACKEND,
                    source,
                    false,
                ));
            }
            // fullnat replies leave translated; an error about one would need the reverse.
            FORWARD_FULLNAT => return None,
            _ => {}
        }
        crate::stats::count(Stat::IcmpErrorToBackend);
        // The backend sent from its own address and port.
        quoted_source(&q, &backend, flow.backend_port_be);
        outer_destination(&q, &backend);
        if mode != FORWARD_NAT {
            // local: the kernel delivers it to the backend's socket here.
            return Some(Verdict {
                action: XDP_PASS,
                stat: Stat::Forwarded,
            });
        }
    }
    Some(route(ctx, &pseudo))
}

/// Word by word: a comparison of whole arrays may become a call to memcmp, which BPF lacks.
#[inline(always)]
fn same(a: &Addr, b: &Addr) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// The service of (address, port, UDP), or the IPv6 wildcard service `[::]:PORT` (key all
/// zero), read in place as `service::lookup_service` reads an IPv4 one.
#[inline(always)]
fn lookup_service(addr: &Addr, port_be: u16) -> Option<&'static Service> {
    let key = |addr: Addr| ServiceKey {
        addr,
        port_be,
        proto: IPPROTO_UDP,
        _pad: 0,
    };
    // SAFETY: user space replaces entries whole; the element outlives this program run (RCU).
    unsafe {
        SERVICES
            .get(key(*addr))
            .or_else(|| SERVICES.get(key([0; 4])))
    }
}

/// Parses Ethernet, an IPv6 header (extension headers as `parse::ipv6_upper` walks them)
/// carrying an ICMPv6 error, and the quoted IPv6 header, directly followed by UDP.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Quoted, Stat> {
    let upper = crate::parse::ipv6_upper(ctx).map_err(|_| NOT_OURS)?;
    if upper.next_header != IPPROTO_ICMPV6 {
        return Err(NOT_OURS);
    }
    let l4 = upper.l4_offset;
    let icmp: *mut Icmpv6Hdr = ptr_at(ctx, l4).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let kind = unsafe { (*icmp).kind };
    if !(ICMPV6_ERROR_FIRST..=ICMPV6_ERROR_LAST).contains(&kind) {
        return Err(NOT_OURS);
    }
    let inner: *mut Ipv6Hdr = ptr_at(ctx, l4 + 8).ok_or(NOT_OURS)?;
    // SAFETY: bounds-checked just above.
    let (inner_version, inner_next) = unsafe { (*(inner as *const u8) >> 4, (*inner).nexthdr) };
    if inner_version != 6 || inner_next != IPPROTO_UDP {
        return Err(NOT_OURS);
    }
    // IPv4 state in the shared maps is keyed by IPv4-mapped addresses (`::ffff:a.b.c.d`): a
    // quote naming one is never about an IPv6 flow, and must not match an IPv4 one.
    // SAFETY: bounds-checked above.
    let (inner_saddr, inner_daddr) = unsafe { ((*inner).saddr, (*inner).daddr) };
    if service::is_v4_mapped(&inner_saddr) || service::is_v4_mapped(&inner_daddr) {
        return Err(NOT_OURS);
    }
    let udp: *mut UdpHdr = ptr_at(ctx, l4 + 8 + IPV6_HDR_LEN).ok_or(NOT_OURS)?;
    // An error about UDP. Its payload length must cover the ICMPv6 header and the quoted
    // headers (checked after the bounds checks, which the verifier needs; that the frame
    // holds the whole message, `message_is_valid` proves by reading every byte).
    if upper.l4_len < QUOTE_MIN_LEN {
        return Err(Stat::PassBadIcmp);
    }
    Ok(Quoted {
        outer: upper.ip6,
        l4_offset: l4,
        len: upper.l4_len,
        icmp,
        inner,
        udp,
    })
}

/// Whether the ICMPv6 checksum over the pseudo-header and the whole message is correct.
#[inline(always)]
fn message_is_valid(ctx: &XdpContext, q: &Quoted) -> bool {
    // SAFETY: `parse` bounds-checked the outer header.
    let (saddr, daddr) = unsafe { ((*q.outer).saddr, (*q.outer).daddr) };
    let pseudo = encap6::pseudo_header_sum(&saddr, &daddr, q.len as u32, IPPROTO_ICMPV6);
    match csum::sum_bytes::<{ csum::ICMP_CHUNKS }>(ctx, q.l4_offset, q.len) {
        Some(sum) => fold(sum + pseudo) == 0xffff,
        None => false,
    }
}

/// Routes the (rewritten) ICMPv6 error by its outer destination, as `forward::fib_forward`
/// routes an IPv4 one: hop limit 1 or 0, no neighbour entry or too big for the egress MTU:
/// passed to the kernel, which does what a router does; no route: dropped. Otherwise the hop
/// limit is decremented (no IPv6 header checksum to update) and the frame sent.
#[inline(always)]
fn route(ctx: &XdpContext, pkt: &Ipv6Udp) -> Verdict {
    // SAFETY: `parse` bounds-checked the outer header; nothing moved the packet since.
    let (hop_limit, vtc_flow_be, saddr, daddr, payload_len_be) = unsafe {
        (
            (*pkt.ip6).hop_limit,
            (*pkt.ip6).vtc_flow_be,
            (*pkt.ip6).saddr,
            (*pkt.ip6).daddr,
            (*pkt.ip6).payload_len_be,
        )
    };
    if hop_limit <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    let len = u16::from_be(payload_len_be).saturating_add(IPV6_HDR_LEN as u16);
    let flowinfo_be = vtc_flow_be & crate::parse::IPV6_FLOWINFO_MASK_BE;
    match forward::lookup6(ctx, &saddr, &daddr, (0, 0), flowinfo_be, len) {
        Ok(params) => {
            // SAFETY: as above.
            unsafe { (*pkt.ip6).hop_limit = hop_limit - 1 };
            forward::send_encapsulated(ctx, None, &Some(params), 0)
        }
        Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => Verdict::pass(Stat::PassNoNeighbour),
        Err((aya_ebpf::bindings::BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => {
            Verdict::pass(Stat::PassFragNeeded)
        }
        Err(_) => Verdict::drop(Stat::DropNoRoute),
    }
}

/// Sends the unmodified ICMPv6 error to `backend` on its L2 segment (`dsr-l2`): the MAC
/// addresses are the only change. Without a neighbour entry, or too big, it is dropped and
/// counted (no ICMPv6 error is sent about an ICMPv6 error).
#[inline(always)]
fn l2_forward(ctx: &XdpContext, pkt: &Ipv6Udp, backend: &Addr) -> Verdict {
    // SAFETY: `parse` bounds-checked the outer header; nothing moved the packet since.
    let (vtc_flow_be, saddr, payload_len_be) = unsafe {
        (
            (*pkt.ip6).vtc_flow_be,
            (*pkt.ip6).saddr,
            (*pkt.ip6).payload_len_be,
        )
    };
    let len = u16::from_be(payload_len_be).saturating_add(IPV6_HDR_LEN as u16);
    let flowinfo_be = vtc_flow_be & crate::parse::IPV6_FLOWINFO_MASK_BE;
    match forward::lookup6(ctx, &saddr, backend, (0, 0), flowinfo_be, len) {
        Ok(params) => forward::send_encapsulated(ctx, None, &Some(params), 0),
        Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => Verdict::drop(Stat::DropNoNeighbour),
        Err((aya_ebpf::bindings::BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => {
            Verdict::drop(Stat::DropFragNeeded)
        }
        Err(_) => Verdict::drop(Stat::DropNoRoute),
    }
}

/// RFC 1624 eqn. 3 for a whole 16-byte address: the checksum after the address covered by it
/// changed from `old` to `new`, in one step (a step per word would give the verifier a branch
/// per word to walk). Raw values.
#[inline(always)]
fn replace_addr(check: u16, old: &Addr, new: &Addr) -> u16 {
    let mut sum = u64::from(!check);
    for i in 0..4 {
        sum += u64::from(!old[i]) + u64::from(new[i]);
    }
    !fold(sum)
}

/// Replaces an address of the quoted IPv6 header, keeping the quoted UDP checksum (its
/// pseudo-header) and the ICMPv6 checksum (which covers the quote) right.
#[inline(always)]
fn quoted_address(q: &Quoted, field: *mut Addr, new: &Addr) {
    // SAFETY: `field` points into the bounds-checked quoted header; so do the others.
    unsafe {
        let old = *field;
        let icmp = &mut *q.icmp;
        let udp = &mut *q.udp;
        let old_udp_check = udp.check;
        *field = *new;
        // UDP over IPv6 always has a checksum (the parser passes a zero one untouched); a
        // computed 0 is sent as 0xffff.
        udp.check = match replace_addr(udp.check, &old, new) {
            0 => 0xffff,
            c => c,
        };
        icmp.check = replace_addr(icmp.check, &old, new);
        icmp.check = replace_u16(icmp.check, old_udp_check, udp.check);
    }
}

/// Replaces a port of the quoted UDP header, keeping the UDP and ICMPv6 checksums right.
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
fn quoted_source(q: &Quoted, addr: &Addr, port_be: u16) {
    // SAFETY: pointers into bounds-checked headers.
    unsafe {
        quoted_address(q, &raw mut (*q.inner).saddr, addr);
        quoted_port(q, &raw mut (*q.udp).source_be, port_be);
    }
}

#[inline(always)]
fn quoted_destination(q: &Quoted, addr: &Addr, port_be: u16) {
    // SAFETY: pointers into bounds-checked headers.
    unsafe {
        quoted_address(q, &raw mut (*q.inner).daddr, addr);
        quoted_port(q, &raw mut (*q.udp).dest_be, port_be);
    }
}

/// Replaces the outer source or destination; the ICMPv6 checksum covers it through the
/// pseudo-header.
#[inline(always)]
fn outer_address(q: &Quoted, field: *mut Addr, new: &Addr) {
    // SAFETY: `field` points into the bounds-checked outer header.
    unsafe {
        let old = *field;
        (*q.icmp).check = replace_addr((*q.icmp).check, &old, new);
        *field = *new;
    }
}

#[inline(always)]
fn outer_source(q: &Quoted, addr: &Addr) {
    // SAFETY: a pointer into the bounds-checked outer header.
    unsafe { outer_address(q, &raw mut (*q.outer).saddr, addr) }
}

#[inline(always)]
fn outer_destination(q: &Quoted, addr: &Addr) {
    // SAFETY: a pointer into the bounds-checked outer header.
    unsafe { outer_address(q, &raw mut (*q.outer).daddr, addr) }
}
