//! `dsr-ipip` for IPv6 services: IPv6-in-IPv6 (RFC 2473, outer next header 41), the parallel
//! of `forward::ipip_forward`, and ICMPv6 "packet too big" for a packet the encapsulation
//! makes too big, the parallel of `forward::frag_needed`. What the two families share (growing
//! the frame, the next-hop cache, sending, turning a frame around) lives in `forward`.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, xdp_action},
    programs::XdpContext,
};
use xdplb_common::{Addr, IPPROTO_IPV6, Service, Stat, checksum::fold};

use crate::{
    csum, forward,
    parse::{
        ETH_HDR_LEN, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPV6_HDR_LEN, Ipv6Hdr, Ipv6Udp, ptr_at,
    },
    service::{self, Verdict},
    stats,
};

/// The outer source of an IPv6 `dsr-ipip` packet: the service's prefix base
/// (`Service::encap_source`) with the flow's 5-tuple hash in its low host bits (at most 32:
/// `SERVICE_ENCAP_HOST_BITS_*`), as `service::encap_source` does for IPv4 (which it reuses: the
/// host bits all lie in the address's last word, for either family).
#[inline(always)]
pub fn outer_source(service: &Service, tuple_hash: u32) -> Addr {
    let mut source = service.encap_source;
    source[3] = service::encap_source(service, tuple_hash);
    source
}

/// The minimum IPv6 MTU (RFC 8200): no "packet too big" names less, and no ICMPv6 error is
/// longer.
pub(crate) const IPV6_MIN_MTU: usize = 1280;
/// ICMPv6 "packet too big" (RFC 4443).
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_HDR_LEN: usize = 8;
/// The new IPv6 and ICMPv6 headers in front of the quoted packet.
const PTB_PREFIX: usize = IPV6_HDR_LEN + ICMPV6_HDR_LEN;
/// As much of the packet as fits in an ICMPv6 error of the minimum MTU.
const PTB_MAX_QUOTE: usize = IPV6_MIN_MTU - PTB_PREFIX;

/// ICMPv6 header of a "packet too big" message.
#[repr(C)]
struct Icmpv6TooBig {
    kind: u8,
    code: u8,
    check: u16,
    mtu_be: u32,
}

/// The length of a validated IPv6 packet from its IPv6 header on, host order (at most
/// 65,575: a frame the program sees is far shorter).
#[inline(always)]
fn packet_len(pkt: &Ipv6Udp) -> usize {
    // SAFETY: the parser proved the IPv6 header lies inside the packet.
    IPV6_HDR_LEN + usize::from(u16::from_be(unsafe { (*pkt.ip6).payload_len_be }))
}

/// Encapsulates an IPv6/UDP packet in an outer IPv6 header from `source` to `backend` and
/// sends it towards the backend, as `forward::ipip_forward` does for IPv4.
///
/// The FIB lookup (AF_INET6) is made for the encapsulated length first: a packet that would
/// exceed the egress MTU is answered with ICMPv6 "packet too big" for the MTU less the outer
/// header, never below 1,280 (see [`packet_too_big`]), as XDP cannot fragment. Without a
/// neighbour entry the encapsulated packet goes to the kernel, which resolves the neighbour.
/// The outer header copies the inner traffic class and flow label and has hop limit 64; the
/// inner packet is unchanged (its hop limit too, as IPv4's TTL in `dsr-ipip`).
///
/// `answer_too_big` is false for an ICMPv6 error (no ICMPv6 error is sent about one): too big,
/// it is only dropped and counted. `backend_index`: as for `forward::fib_forward` (the cached
/// MTU must take the encapsulated length).
#[inline(always)]
pub fn ip6ip6_forward(
    ctx: &XdpContext,
    pkt: &Ipv6Udp,
    backend: Addr,
    backend_index: u32,
    source: Addr,
    answer_too_big: bool,
) -> Verdict {
    let inner_len = packet_len(pkt);
    let outer_len = inner_len + IPV6_HDR_LEN;
    if outer_len > usize::from(u16::MAX) {
        return Verdict::drop(Stat::DropFragNeeded);
    }
    let outer_len = outer_len as u16;
    // SAFETY: the parser proved the headers lie inside the packet.
    let (vtc_flow_be, client, sport_be, dport_be) = unsafe {
        (
            (*pkt.ip6).vtc_flow_be,
            (*pkt.ip6).saddr,
            (*pkt.udp).source_be,
            (*pkt.udp).dest_be,
        )
    };
    let hop = forward::cached_addr(backend_index, &backend, outer_len);
    let params = if hop.is_some() {
        None
    } else {
        let flowinfo_be = vtc_flow_be & crate::parse::IPV6_FLOWINFO_MASK_BE;
        match forward::lookup6(
            ctx,
            &client,
            &backend,
            (sport_be, dport_be),
            flowinfo_be,
            outer_len,
        ) {
            Ok(p) => Some(p),
            Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => None,
            Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, mtu)) if answer_too_big => {
                // The client learns the MTU that leaves room for the outer header.
                let mtu = usize::from(mtu).saturating_sub(IPV6_HDR_LEN);
                return packet_too_big(ctx, pkt, mtu.max(IPV6_MIN_MTU) as u32);
            }
            Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => {
                return Verdict::drop(Stat::DropFragNeeded);
            }
            Err(_) => return Verdict::drop(Stat::DropNoRoute),
        }
    };
    // As for IPv4: a partial inner checksum is completed on the way out; the inner addresses
    // do not change.
    let work = forward::checksum_work_for(pkt.partial_csum, pkt.generic_xdp, false);
    let outer = match forward::push_outer::<Ipv6Hdr>(ctx, ETH_P_IPV6) {
        Ok(o) => o,
        Err(v) => return v,
    };
    // SAFETY: `push_outer` bounds-checked the outer header after the head moved.
    unsafe {
        *outer = Ipv6Hdr {
            vtc_flow_be,
            payload_len_be: (inner_len as u16).to_be(),
            nexthdr: IPPROTO_IPV6,
            hop_limit: forward::OUTER_TTL,
            saddr: source,
            daddr: backend,
        };
    }
    forward::send_encapsulated(ctx, hop, &params, work)
}

/// Rewrites the packet in place into an ICMPv6 "packet too big" (type 2, code 0) for `mtu`,
/// from the address the client sent to (the VIP) back to the client, and sends it back out of
/// the interface it came in on (MAC addresses swapped), as `forward::frag_needed` does for
/// IPv4. The body quotes as much of the original packet as fits in a 1,280-byte message (RFC
/// 4443), so the client's stack finds the socket and lowers its path MTU. The checksum covers
/// the pseudo-header (RFC 8200), as every ICMPv6 checksum.
///
/// A packet that already fits `mtu` (one of 1,280 bytes or less, told 1,280: the IPv6
/// minimum, which a client ignores and resends at) is only dropped and counted: the message
/// would not make the client send smaller packets.
#[inline(always)]
pub(crate) fn packet_too_big(ctx: &XdpContext, pkt: &Ipv6Udp, mtu: u32) -> Verdict {
    let drop = Verdict::drop(Stat::DropFragNeeded);
    let len = packet_len(pkt);
    if len <= mtu as usize {
        return drop;
    }
    // SAFETY: the parser proved the headers lie inside the packet.
    let (client, vip) = unsafe { ((*pkt.ip6).saddr, (*pkt.ip6).daddr) };
    let quoted = if len > PTB_MAX_QUOTE {
        PTB_MAX_QUOTE
    } else {
        len
    };
    let Some((mac_us, mac_client)) = forward::turn_around(ctx, PTB_PREFIX, PTB_PREFIX + quoted)
    else {
        return drop;
    };
    let (Some(eth), Some(ip6), Some(icmp)) = (
        ptr_at::<_, EthHdr>(ctx, 0),
        ptr_at::<_, Ipv6Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<_, Icmpv6TooBig>(ctx, ETH_HDR_LEN + IPV6_HDR_LEN),
    ) else {
        return drop;
    };
    let icmp_len = ICMPV6_HDR_LEN + quoted;
    // SAFETY: all three pointers were bounds-checked after the packet was resized.
    unsafe {
        (*eth).dst = mac_client;
        (*eth).src = mac_us;
        (*eth).ether_type_be = ETH_P_IPV6.to_be();
        *ip6 = Ipv6Hdr {
            vtc_flow_be: 0x6000_0000u32.to_be(),
            payload_len_be: (icmp_len as u16).to_be(),
            nexthdr: IPPROTO_ICMPV6,
            hop_limit: forward::OUTER_TTL,
            saddr: vip,
            daddr: client,
        };
        *icmp = Icmpv6TooBig {
            kind: ICMPV6_PACKET_TOO_BIG,
            code: 0,
            check: 0,
            mtu_be: mtu.to_be(),
        };
    }
    let Some(body) =
        csum::sum_bytes::<{ csum::ICMP_CHUNKS }>(ctx, ETH_HDR_LEN + IPV6_HDR_LEN, icmp_len)
    else {
        return drop;
    };
    let sum = body + pseudo_header_sum(&vip, &client, icmp_len as u32, IPPROTO_ICMPV6);
    // SAFETY: `icmp` was bounds-checked after the resize; nothing moved the packet since.
    unsafe { (*icmp).check = !fold(sum) };
    stats::count(Stat::IcmpFragNeededSent);
    Verdict {
        action: xdp_action::XDP_TX,
        stat: Stat::DropFragNeeded,
    }
}

/// The IPv6 pseudo-header sum (RFC 8200 8.1; raw, unfolded, in the packet's word order, as
/// `csum::sum_bytes` sums): both addresses, the upper-layer length and the next header.
#[inline(always)]
pub fn pseudo_header_sum(saddr: &Addr, daddr: &Addr, len: u32, next_header: u8) -> u64 {
    let mut sum = u64::from(len.to_be()) + u64::from(u32::from(next_header).to_be());
    for i in 0..4 {
        sum += u64::from(saddr[i]) + u64::from(daddr[i]);
    }
    sum
}
