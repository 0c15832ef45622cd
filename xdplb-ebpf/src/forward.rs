//! Sending a packet out of an interface: FIB lookup, TTL, MAC addresses, XDP_TX or
//! XDP_REDIRECT. `nat` routes rewritten requests and replies; `dsr-l2` only readdresses the
//! frame to the backend's MAC.
//!
//! A request to a backend whose next hop the daemon has resolved (`NEXTHOPS_V1`, keyed by the
//! backend index) is sent with the cached egress and MAC addresses, without `bpf_fib_lookup`;
//! without a usable entry it takes the FIB path, which also answers "fragmentation needed" and
//! hands packets without a neighbour to the kernel.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use xdplb_common::{Addr, IPPROTO_IPIP, IPPROTO_UDP, NextHop, Stat, addr_from_v4_wire};

use crate::{
    NEXTHOPS, csum,
    parse::{ETH_HDR_LEN, EthHdr, IPV6_HDR_LEN, Ipv4Hdr, Ipv4Udp, Ipv6Udp, ptr_at},
    rewrite,
    service::Verdict,
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What routing needs of a validated packet of either family (`Ipv4Udp`, `Ipv6Udp`). The
/// sending functions below are generic over it, so that each family's program gets its own
/// copy (neither program's verification walks the other family's paths) while the logic
/// (TTL, next-hop cache, FIB outcomes, checksum work, MAC addresses) is written once.
pub trait Routed {
    /// An address of the family, as the packet holds it (IPv4: one wire-order word).
    type Address;
    /// TTL or hop limit.
    fn hop_limit(&self) -> u8;
    /// Decrements the TTL (updating the IPv4 header checksum) or hop limit; expects > 1.
    fn decrement_hop_limit(&self);
    fn destination(&self) -> Self::Address;
    /// The L3 length (IPv4 total length, IPv6 payload length + 40), host order.
    fn l3_len(&self) -> u16;
    /// The parameters of a FIB lookup towards `daddr` for `len` bytes, as if received on the
    /// context's interface. (The packet's fields are read before the parameters are zeroed:
    /// the order the IPv4 program was verified with, and cheapest for the verifier.)
    fn fib_params(&self, ctx: &XdpContext, daddr: &Self::Address, len: u16) -> bpf_fib_lookup;
    /// Whether a next-hop cache entry was resolved for `daddr`.
    fn hop_is_for(hop: &NextHop, daddr: &Self::Address) -> bool;
    fn partial_csum(&self) -> bool;
    fn generic_xdp(&self) -> bool;
    /// `dsr-l2`, a packet bigger than the egress `mtu`: what a router would answer.
    fn too_big(&self, ctx: &XdpContext, mtu: u16) -> Verdict;
}

impl Routed for Ipv4Udp {
    type Address = u32;
    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        // SAFETY: the parser proved the IPv4 header lies inside the packet.
        unsafe { (*self.ip).ttl }
    }
    #[inline(always)]
    fn decrement_hop_limit(&self) {
        rewrite::decrement_ttl(self);
    }
    #[inline(always)]
    fn destination(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ip).daddr }
    }
    #[inline(always)]
    fn l3_len(&self) -> u16 {
        packet_len(self)
    }
    #[inline(always)]
    fn fib_params(&self, ctx: &XdpContext, daddr: &u32, len: u16) -> bpf_fib_lookup {
        // SAFETY: the parser proved the headers lie inside the packet; nothing moved it since.
        let (tos, saddr) = unsafe { ((*self.ip).tos, (*self.ip).saddr) };
        // Ports only for an unfragmented packet: every fragment of a datagram must take the
        // same route (as the kernel's own multipath hash does for fragments).
        let (sport_be, dport_be) = if self.fragment == crate::parse::NOT_FRAGMENT {
            // SAFETY: an unfragmented packet's UDP header was bounds-checked by the parser.
            unsafe { ((*self.udp).source_be, (*self.udp).dest_be) }
        } else {
            (0, 0)
        };
        // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions).
        let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = IPPROTO_UDP;
        params.sport = sport_be;
        params.dport = dport_be;
        params.__bindgen_anon_1.tot_len = len;
        params.ifindex = ingress_ifindex(ctx);
        params.__bindgen_anon_2.tos = tos;
        params.__bindgen_anon_3.ipv4_src = saddr;
        params.__bindgen_anon_4.ipv4_dst = *daddr;
        params
    }
    #[inline(always)]
    fn hop_is_for(hop: &NextHop, daddr: &u32) -> bool {
        let want = addr_from_v4_wire(*daddr);
        // Word by word: a comparison of whole arrays may become a call to memcmp, which BPF
        // lacks.
        hop.addr[3] == want[3]
            && hop.addr[2] == want[2]
            && hop.addr[1] == want[1]
            && hop.addr[0] == want[0]
    }
    #[inline(always)]
    fn partial_csum(&self) -> bool {
        self.partial_csum
    }
    #[inline(always)]
    fn generic_xdp(&self) -> bool {
        self.generic_xdp
    }
    #[inline(always)]
    fn too_big(&self, ctx: &XdpContext, mtu: u16) -> Verdict {
        frag_needed(ctx, self, mtu)
    }
}

impl Routed for Ipv6Udp {
    type Address = Addr;
    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        // SAFETY: the parser proved the IPv6 header lies inside the packet.
        unsafe { (*self.ip6).hop_limit }
    }
    #[inline(always)]
    fn decrement_hop_limit(&self) {
        rewrite::decrement_hop_limit(self);
    }
    #[inline(always)]
    fn destination(&self) -> Addr {
        // SAFETY: as above.
        unsafe { (*self.ip6).daddr }
    }
    #[inline(always)]
    fn l3_len(&self) -> u16 {
        // SAFETY: as above. The parser proved payload + 40 fits the frame (under 4 KiB).
        u16::from_be(unsafe { (*self.ip6).payload_len_be }).wrapping_add(IPV6_HDR_LEN as u16)
    }
    #[inline(always)]
    fn fib_params(&self, ctx: &XdpContext, daddr: &Addr, len: u16) -> bpf_fib_lookup {
        // SAFETY: the parser proved the headers lie inside the packet; nothing moved it since.
        let (vtc_flow_be, saddr, sport_be, dport_be) = unsafe {
            (
                (*self.ip6).vtc_flow_be,
                (*self.ip6).saddr,
                (*self.udp).source_be,
                (*self.udp).dest_be,
            )
        };
        // Traffic class and flow label, without the version (as the kernel's own lookup).
        params6(
            ctx,
            &saddr,
            daddr,
            (sport_be, dport_be),
            vtc_flow_be & crate::parse::IPV6_FLOWINFO_MASK_BE,
            len,
        )
    }
    #[inline(always)]
    fn hop_is_for(hop: &NextHop, daddr: &Addr) -> bool {
        hop_is_for_addr(hop, daddr)
    }
    #[inline(always)]
    fn partial_csum(&self) -> bool {
        self.partial_csum
    }
    #[inline(always)]
    fn generic_xdp(&self) -> bool {
        self.generic_xdp
    }
    #[inline(always)]
    fn too_big(&self, ctx: &XdpContext, mtu: u16) -> Verdict {
        // ICMPv6 Packet Too Big for the egress MTU itself (no encapsulation), never below the
        // IPv6 minimum.
        let mtu = usize::from(mtu).max(crate::encap6::IPV6_MIN_MTU);
        crate::encap6::packet_too_big(ctx, self, mtu as u32)
    }
}

/// The backend index of a packet that is not a request to a known backend (a reply, an ICMP
/// error, a later fragment): it never uses the next-hop cache.
pub const NO_BACKEND: u32 = u32::MAX;

/// Whether a next-hop cache entry was resolved for `want`. Word by word: a comparison of whole
/// arrays may become a call to memcmp, which BPF lacks.
#[inline(always)]
fn hop_is_for_addr(hop: &NextHop, want: &Addr) -> bool {
    hop.addr[3] == want[3]
        && hop.addr[2] == want[2]
        && hop.addr[1] == want[1]
        && hop.addr[0] == want[0]
}

/// The next-hop cache's answer for backend `backend_index` ([`NO_BACKEND`]: none), when its
/// entry was resolved for `daddr` (wire order) and its MTU takes a packet of `tot_len` L3
/// bytes (host order). `None` means: ask the FIB. The entry is returned in place (no copy on
/// the stack, which the ingress program has little of to spare).
#[inline(always)]
fn cached<P: Routed>(
    backend_index: u32,
    daddr: &P::Address,
    tot_len: u16,
) -> Option<&'static NextHop> {
    if backend_index == NO_BACKEND {
        return None;
    }
    // SAFETY: a hash lookup. The element stays valid while the program runs (RCU), and the map
    // has no preallocated elements, so an update replaces it whole instead of rewriting it.
    let hop = unsafe { NEXTHOPS.get(backend_index) }?;
    if !P::hop_is_for(hop, daddr) || tot_len > hop.mtu {
        return None;
    }
    Some(hop)
}

/// [`cached`] for an address of either family (`Addr`, IPv4-mapped for IPv4) and a packet of
/// `len` bytes from the network header on (host order).
#[inline(always)]
pub fn cached_addr(backend_index: u32, want: &Addr, len: u16) -> Option<&'static NextHop> {
    cached::<Ipv6Udp>(backend_index, want, len)
}

/// Routes a validated, already rewritten IPv4/UDP or IPv6/UDP packet by its (new) addresses.
///
/// Success: TTL (hop limit) decremented, MAC addresses set from the FIB, then XDP_TX when the egress is the
/// interface it came in on, or XDP_REDIRECT to the egress. Otherwise the packet goes to the
/// kernel, which does what a router does (resolves the neighbour, fragments or answers ICMP
/// "fragmentation needed", answers "time exceeded"), or is dropped when there is no route.
///
/// `local_source`: the packet's source is this host's own address (`fullnat` requests). The
/// kernel drops such a packet as a martian when it arrives from outside, so without a
/// neighbour entry it is dropped and counted instead of passed; the daemon resolves the
/// backends' neighbours when it applies a config.
///
/// `backend_index`: the backend a request goes to ([`NO_BACKEND`] for anything else): its
/// next-hop cache entry, when usable, replaces the FIB lookup.
#[inline(always)]
pub fn fib_forward<P: Routed>(
    ctx: &XdpContext,
    pkt: &P,
    local_source: bool,
    backend_index: u32,
) -> Verdict {
    let (ttl, daddr) = (pkt.hop_limit(), pkt.destination());
    if ttl <= 1 {
        return pass_rewritten(ctx, pkt, Stat::PassTtlExceeded);
    }
    let len = pkt.l3_len();
    if let Some(hop) = cached::<P>(backend_index, &daddr, len) {
        pkt.decrement_hop_limit();
        return send_cached(ctx, hop, checksum_work(pkt, true));
    }
    let params = match lookup(ctx, pkt, &daddr, len) {
        Ok(p) => p,
        Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) if local_source => {
            return Verdict::drop(Stat::DropNoNeighbour);
        }
        Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => {
            return pass_rewritten(ctx, pkt, Stat::PassNoNeighbour);
        }
        Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => {
            return pass_rewritten(ctx, pkt, Stat::PassFragNeeded);
        }
        Err(_) => return Verdict::drop(Stat::DropNoRoute),
    };
    pkt.decrement_hop_limit();
    send_fib(ctx, &params, checksum_work(pkt, true))
}

/// What a packet sent through XDP needs from `xdplb_finish_checksum` (see `csum`): nothing,
/// unless it arrived with a partial-looking checksum; then completing (native mode: it leaves
/// as an `xdp_frame`), or, when its addresses changed in generic mode (the skb stays
/// partial), keeping it fit for the skb.
#[inline(always)]
fn checksum_work<P: Routed>(pkt: &P, addresses_changed: bool) -> u32 {
    checksum_work_for(pkt.partial_csum(), pkt.generic_xdp(), addresses_changed)
}

/// [`checksum_work`] for a packet of either family, from its `partial_csum` and `generic_xdp`.
#[inline(always)]
pub fn checksum_work_for(partial_csum: bool, generic_xdp: bool, addresses_changed: bool) -> u32 {
    if !partial_csum {
        NO_CHECKSUM_WORK
    } else if !generic_xdp {
        COMPLETE_CHECKSUM
    } else if addresses_changed {
        KEEP_CHECKSUM_PARTIAL
    } else {
        NO_CHECKSUM_WORK
    }
}

const NO_CHECKSUM_WORK: u32 = 0;
const COMPLETE_CHECKSUM: u32 = 1;
const KEEP_CHECKSUM_PARTIAL: u32 = 2;

/// Hands a rewritten packet to the kernel, which routes it on; one that arrived with a
/// partial-looking checksum goes through `xdplb_finish_checksum` first (see `csum`).
#[inline(always)]
fn pass_rewritten<P: Routed>(ctx: &XdpContext, pkt: &P, stat: Stat) -> Verdict {
    if !pkt.partial_csum() {
        return Verdict::pass(stat);
    }
    csum::tail_call_finish(
        ctx,
        csum::FinishArgs {
            action: xdp_action::XDP_PASS,
            ifindex: 0,
            stat,
            keep_partial: 1,
        },
    )
}

/// Sends an unmodified IPv4/UDP or IPv6/UDP packet to `backend` (wire order) on its L2
/// segment: the MAC addresses are the only change. A backend whose neighbour entry is missing, or that is
/// not on a directly reachable segment, means a drop: the kernel would deliver the VIP locally.
/// A packet bigger than the egress MTU is dropped and, when `answer_too_big` (never for an
/// ICMP error), answered with ICMP "fragmentation needed" for that MTU, as a router would
/// (IPv6: ICMPv6 Packet Too Big). `backend_index`: as for [`fib_forward`].
#[inline(always)]
pub fn l2_forward<P: Routed>(
    ctx: &XdpContext,
    pkt: &P,
    backend: P::Address,
    backend_index: u32,
    answer_too_big: bool,
) -> Verdict {
    let len = pkt.l3_len();
    if let Some(hop) = cached::<P>(backend_index, &backend, len) {
        return send_cached(ctx, hop, checksum_work(pkt, false));
    }
    match lookup(ctx, pkt, &backend, len) {
        Ok(params) => send_fib(ctx, &params, checksum_work(pkt, false)),
        Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => Verdict::drop(Stat::DropNoNeighbour),
        Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, mtu)) if answer_too_big => pkt.too_big(ctx, mtu),
        Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => Verdict::drop(Stat::DropFragNeeded),
        Err(_) => Verdict::drop(Stat::DropNoRoute),
    }
}

/// Encapsulates an IPv4/UDP packet in an outer IPv4 header from `outer_src` to `backend_v4`
/// (both network order) and sends it towards the backend.
///
/// The FIB lookup is made for the encapsulated length first: a packet that would exceed the
/// egress MTU is answered with ICMP "fragmentation needed" for the inner MTU (see
/// [`frag_needed`]), as XDP cannot fragment.
/// Without a neighbour entry the encapsulated packet goes to the kernel, which routes it and
/// resolves the neighbour. The outer header copies the inner TOS and DF bit, has TTL 64 and a
/// full checksum.
///
/// `answer_too_big` is false for an ICMP error (no ICMP error is sent about one): too big, it
/// is only dropped and counted. `backend_index`: as for [`fib_forward`] (the cached MTU must
/// take the encapsulated length).
#[inline(always)]
pub fn ipip_forward(
    ctx: &XdpContext,
    pkt: &Ipv4Udp,
    backend_v4: u32,
    backend_index: u32,
    outer_src: u32,
    answer_too_big: bool,
) -> Verdict {
    // SAFETY: the parser proved the IPv4 header lies inside the packet.
    let (tos, frag_off_be) = unsafe { ((*pkt.ip).tos, (*pkt.ip).frag_off_be) };
    let inner_len = packet_len(pkt);
    if inner_len > u16::MAX - OUTER_LEN as u16 {
        return Verdict::drop(Stat::DropFragNeeded);
    }
    let outer_len = inner_len + OUTER_LEN as u16;
    let hop = cached::<Ipv4Udp>(backend_index, &backend_v4, outer_len);
    let params = if hop.is_some() {
        None
    } else {
        match lookup(ctx, pkt, &backend_v4, outer_len) {
            Ok(p) => Some(p),
            Err((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => None,
            Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, mtu)) if answer_too_big => {
                // The client learns the MTU that leaves room for the outer header.
                return frag_needed(ctx, pkt, mtu.saturating_sub(OUTER_LEN as u16));
            }
            Err((BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => {
                return Verdict::drop(Stat::DropFragNeeded);
            }
            Err(_) => return Verdict::drop(Stat::DropNoRoute),
        }
    };
    // A partial inner checksum: completed on the way out (`send`). Passed to the kernel, the
    // skb keeps its partial state (the inner addresses did not change, so the field is right).
    let work = checksum_work(pkt, false);
    let outer = match push_outer::<Ipv4Hdr>(ctx, ETH_P_IP) {
        Ok(o) => o,
        Err(v) => return v,
    };
    let mut header = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        tot_len_be: outer_len.to_be(),
        id_be: 0,
        frag_off_be: frag_off_be & IP_DF.to_be(),
        ttl: OUTER_TTL,
        protocol: IPPROTO_IPIP,
        check: 0,
        saddr: outer_src,
        daddr: backend_v4,
    };
    header.check = ipv4_checksum(&header);
    // SAFETY: `push_outer` bounds-checked the outer header after the head moved.
    unsafe { *outer = header };
    send_encapsulated(ctx, hop, &params, work)
}

/// Grows the frame at the front by the size of an outer header `T` (IPv4 or IPv6) and
/// returns where it goes (right after the Ethernet header), for the caller to fill. The
/// Ethernet header keeps its MAC addresses (the kernel must still see a frame addressed to us
/// if the packet goes to it) and gets the outer EtherType `ether_type` (host order).
/// Family-neutral: `dsr-ipip` of either family.
#[inline(always)]
pub fn push_outer<T>(ctx: &XdpContext, ether_type: u16) -> Result<*mut T, Verdict> {
    let Some(old_eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return Err(Verdict::pass(Stat::PassTruncated));
    };
    // SAFETY: bounds-checked just above.
    let (old_dst, old_src) = unsafe { ((*old_eth).dst, (*old_eth).src) };
    // SAFETY: grows the packet at the front; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(core::mem::size_of::<T>() as i32)) } != 0 {
        return Err(Verdict::drop(Stat::DropEncapFailed));
    }
    let (Some(eth), Some(outer)) = (
        ptr_at::<_, EthHdr>(ctx, 0),
        ptr_at::<_, T>(ctx, ETH_HDR_LEN),
    ) else {
        return Err(Verdict::drop(Stat::DropEncapFailed));
    };
    // SAFETY: bounds-checked after the head moved.
    unsafe {
        (*eth).dst = old_dst;
        (*eth).src = old_src;
        (*eth).ether_type_be = ether_type.to_be();
    }
    Ok(outer)
}

/// Sends an encapsulated packet by the next-hop cache entry `hop` or else the FIB's answer
/// `params`; with neither (no neighbour entry), hands it to the kernel, which resolves the
/// neighbour. Family-neutral. One send for both answers: a second inlined copy would cost the
/// ingress program stack.
#[inline(always)]
pub fn send_encapsulated(
    ctx: &XdpContext,
    hop: Option<&NextHop>,
    params: &Option<bpf_fib_lookup>,
    work: u32,
) -> Verdict {
    let (ifindex, dmac, smac, stat) = match (hop, params) {
        (Some(h), _) => (h.ifindex, &h.dmac, &h.smac, Stat::ForwardedCached),
        (None, Some(p)) => (p.ifindex, &p.dmac, &p.smac, Stat::ForwardedFib),
        (None, None) => return Verdict::pass(Stat::PassNoNeighbour),
    };
    send(ctx, ifindex, dmac, smac, stat, work)
}

/// Rewrites the packet in place into an ICMP "fragmentation needed" (type 3, code 4) for
/// `mtu`, from the address the client sent to (the VIP) back to the client, and sends it back
/// out of the interface it came in on (MAC addresses swapped), as Katran does. The ICMP body
/// holds the original IPv4 header and the first 8 bytes after it (the UDP header), so the
/// client's stack finds the socket and lowers its path MTU. Sent whether or not the client set
/// DF: the packet cannot go on either way.
#[inline(always)]
fn frag_needed(ctx: &XdpContext, pkt: &Ipv4Udp, mtu: u16) -> Verdict {
    let drop = Verdict::drop(Stat::DropFragNeeded);
    // SAFETY: the parser proved the headers lie inside the packet.
    let (client, vip) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr) };
    // The quoted header's own length (20 to 60 bytes). Callers that answer with this ICMP
    // pass a packet parsed by `parse::ipv4_udp`, whose `l4_offset` is past the IPv4 header;
    // saturating, so no caller can make it wrap.
    let ip_len = pkt.l4_offset.saturating_sub(ETH_HDR_LEN);
    if ip_len < 20 {
        return drop;
    }
    let Some(old_eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return drop;
    };
    // SAFETY: bounds-checked just above.
    let (mac_us, mac_client) = unsafe { ((*old_eth).dst, (*old_eth).src) };
    // Room for the new IPv4 and ICMP headers in front of the original IPv4 header.
    // SAFETY: grows the packet at the front; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ICMP_PREFIX as i32)) } != 0 {
        return drop;
    }
    // Keep the original IPv4 header and 8 bytes of what follows it.
    let quoted = ip_len + 8;
    let keep = ETH_HDR_LEN + OUTER_LEN + ICMP_HDR_LEN + quoted;
    let len = ctx.data_end() - ctx.data();
    if len < keep {
        return drop;
    }
    // SAFETY: shrinks the packet at the end to `keep` bytes, which it has.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - keep) as i32)) } != 0 {
        return drop;
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<_, EthHdr>(ctx, 0),
        ptr_at::<_, Ipv4Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<_, IcmpHdr>(ctx, ETH_HDR_LEN + OUTER_LEN),
    ) else {
        return drop;
    };
    let mut header = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len_be: ((OUTER_LEN + ICMP_HDR_LEN + quoted) as u16).to_be(),
        id_be: 0,
        frag_off_be: 0,
        ttl: OUTER_TTL,
        protocol: IPPROTO_ICMP,
        check: 0,
        saddr: vip,
        daddr: client,
    };
    header.check = ipv4_checksum(&header);
    // SAFETY: all three pointers were bounds-checked after the packet was resized.
    unsafe {
        (*eth).dst = mac_client;
        (*eth).src = mac_us;
        (*eth).ether_type_be = ETH_P_IP.to_be();
        *ip = header;
        *icmp = IcmpHdr {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            check: 0,
            unused: 0,
            mtu_be: mtu.to_be(),
        };
    }
    // The ICMP checksum covers the ICMP header and the quoted bytes: at most 8 + 60 + 8 bytes,
    // read as 16-bit words (the one's complement sum does not depend on byte order).
    let mut sum = 0u32;
    for i in 0..MAX_ICMP_WORDS {
        if i * 2 >= ICMP_HDR_LEN + quoted {
            break;
        }
        let Some(w) = ptr_at::<_, u16>(ctx, ETH_HDR_LEN + OUTER_LEN + i * 2) else {
            return drop;
        };
        // SAFETY: bounds-checked just above.
        sum += u32::from(unsafe { *w });
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    // SAFETY: `icmp` was bounds-checked after the resize; nothing moved the packet since.
    unsafe { (*icmp).check = !(sum as u16) };
    stats::count(Stat::IcmpFragNeededSent);
    Verdict {
        action: xdp_action::XDP_TX,
        stat: Stat::DropFragNeeded,
    }
}

/// Turns the frame around into an ICMP error to its sender, family-neutral: grows it at the
/// front by `prefix` bytes (the new IP and ICMP headers, in front of the original IP header)
/// and cuts it to `keep` bytes after the Ethernet header (the new headers and the quote).
/// Returns the frame's (destination, source) MAC addresses as it arrived, for the caller to
/// address the Ethernet header back; `None`: the frame could not be resized (the caller drops
/// it). Every packet pointer is to be re-derived.
///
/// Used by IPv6's "packet too big" (`encap6`). IPv4's [`frag_needed`] keeps these steps
/// inline: through this function (same steps, same order), the IPv4 ingress program's
/// verification grew from 149,409 to 175,511 instructions (measured with
/// `verifier_instruction_budget`), too close to its budget.
#[inline(always)]
pub fn turn_around(ctx: &XdpContext, prefix: usize, keep: usize) -> Option<([u8; 6], [u8; 6])> {
    let old_eth = ptr_at::<_, EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked just above.
    let macs = unsafe { ((*old_eth).dst, (*old_eth).src) };
    // SAFETY: grows the packet at the front; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(prefix as i32)) } != 0 {
        return None;
    }
    let keep = ETH_HDR_LEN + keep;
    let len = ctx.data_end() - ctx.data();
    if len < keep {
        return None;
    }
    // SAFETY: shrinks the packet at the end to `keep` bytes, which it has.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - keep) as i32)) } != 0 {
        return None;
    }
    Some(macs)
}

/// ICMP header of a "fragmentation needed" message (RFC 1191).
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    unused: u16,
    mtu_be: u16,
}

const ICMP_HDR_LEN: usize = 8;
const ICMP_PREFIX: usize = OUTER_LEN + ICMP_HDR_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const IPPROTO_ICMP: u8 = 1;
/// ICMP header, the longest IPv4 header and 8 bytes, in 16-bit words.
const MAX_ICMP_WORDS: usize = (ICMP_HDR_LEN + 60 + 8) / 2;

const OUTER_LEN: usize = 20;
/// TTL (IPv6: hop limit) of the headers the balancer builds: outer headers and ICMP errors.
pub const OUTER_TTL: u8 = 64;
const IP_DF: u16 = 0x4000;
const ETH_P_IP: u16 = 0x0800;

/// The IPv4 header checksum of a header without options (its `check` field taken as 0), ready
/// to store.
#[inline(always)]
fn ipv4_checksum(h: &Ipv4Hdr) -> u16 {
    let words = [
        u16::from_be_bytes([h.version_ihl, h.tos]),
        u16::from_be(h.tot_len_be),
        u16::from_be(h.id_be),
        u16::from_be(h.frag_off_be),
        u16::from_be_bytes([h.ttl, h.protocol]),
        (u32::from_be(h.saddr) >> 16) as u16,
        u32::from_be(h.saddr) as u16,
        (u32::from_be(h.daddr) >> 16) as u16,
        u32::from_be(h.daddr) as u16,
    ];
    let mut sum = 0u32;
    for w in words {
        sum += u32::from(w);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}

/// The IPv4 total length of a validated packet, host order.
#[inline(always)]
fn packet_len(pkt: &Ipv4Udp) -> u16 {
    // SAFETY: the parser proved the IPv4 header lies inside the packet.
    u16::from_be(unsafe { (*pkt.ip).tot_len_be })
}

/// FIB lookup for the packet's source and ports towards `daddr`, for a packet of `tot_len`
/// L3 bytes (host order; IPv6: payload + 40), as if received on the context's interface.
/// Returns the filled parameters, or the helper's return code and the MTU it reported
/// (meaningful for `BPF_FIB_LKUP_RET_FRAG_NEEDED`).
///
/// The kernel answers such a lookup only when forwarding of the family is on for the
/// receiving interface (`BPF_FIB_LKUP_RET_FWD_DISABLED` otherwise, even for an egress-side
/// lookup); the daemon refuses to run `nat` and `dsr-l2` services on interfaces without it.
#[inline(always)]
fn lookup<P: Routed>(
    ctx: &XdpContext,
    pkt: &P,
    daddr: &P::Address,
    tot_len: u16,
) -> Result<bpf_fib_lookup, (u32, u16)> {
    fib_call(ctx, pkt.fib_params(ctx, daddr, tot_len))
}

/// Calls `bpf_fib_lookup` with `params`: the answer as [`lookup`] returns it.
#[inline(always)]
fn fib_call(ctx: &XdpContext, mut params: bpf_fib_lookup) -> Result<bpf_fib_lookup, (u32, u16)> {
    // SAFETY: the helper reads and writes `params`, whose size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc as u32 == BPF_FIB_LKUP_RET_SUCCESS {
        Ok(params)
    } else {
        // SAFETY: a plain integer in a union of plain integers.
        Err((rc as u32, unsafe { params.__bindgen_anon_1.mtu_result }))
    }
}

/// [`lookup`] for IPv6: from `saddr` to `daddr` (wire order) with the given ports, flow
/// information (traffic class and flow label, network order) and a packet of `len` bytes from
/// the IPv6 header on (host order), as if received on the context's interface. Needs IPv6
/// forwarding on the receiving interface, as [`lookup`] needs IPv4 forwarding.
#[inline(always)]
pub fn lookup6(
    ctx: &XdpContext,
    saddr: &Addr,
    daddr: &Addr,
    ports_be: (u16, u16),
    flowinfo_be: u32,
    len: u16,
) -> Result<bpf_fib_lookup, (u32, u16)> {
    fib_call(ctx, params6(ctx, saddr, daddr, ports_be, flowinfo_be, len))
}

/// The parameters of an IPv6 FIB lookup (see [`lookup6`]).
#[inline(always)]
fn params6(
    ctx: &XdpContext,
    saddr: &Addr,
    daddr: &Addr,
    ports_be: (u16, u16),
    flowinfo_be: u32,
    len: u16,
) -> bpf_fib_lookup {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = IPPROTO_UDP;
    params.sport = ports_be.0;
    params.dport = ports_be.1;
    params.__bindgen_anon_1.tot_len = len;
    params.ifindex = ingress_ifindex(ctx);
    params.__bindgen_anon_2.flowinfo = flowinfo_be;
    params.__bindgen_anon_3.ipv6_src = *saddr;
    params.__bindgen_anon_4.ipv6_dst = *daddr;
    params
}

#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: reading the context's ingress interface; the verifier checks the context access.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// [`send`] with what the FIB answered.
#[inline(always)]
fn send_fib(ctx: &XdpContext, params: &bpf_fib_lookup, checksum: u32) -> Verdict {
    send(
        ctx,
        params.ifindex,
        &params.dmac,
        &params.smac,
        Stat::ForwardedFib,
        checksum,
    )
}

/// [`send`] with a next-hop cache entry.
#[inline(always)]
fn send_cached(ctx: &XdpContext, hop: &NextHop, checksum: u32) -> Verdict {
    send(
        ctx,
        hop.ifindex,
        &hop.dmac,
        &hop.smac,
        Stat::ForwardedCached,
        checksum,
    )
}

/// Sets the MAC addresses `dmac` and `smac` and sends the frame out of `ifindex`: XDP_TX back
/// out of the interface it came in on, XDP_REDIRECT to any other; the verdict counts `stat`.
/// A packet with `checksum` work to do (see [`checksum_work`]) goes through
/// `xdplb_finish_checksum`, which does it and sends the packet the same way (see `csum`).
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    ifindex: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    stat: Stat,
    checksum: u32,
) -> Verdict {
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        // Unreachable after a successful parse; pass rather than guess.
        return Verdict::pass(Stat::PassTruncated);
    };
    // SAFETY: `ptr_at` bounds-checked the Ethernet header.
    unsafe {
        (*eth).dst = *dmac;
        (*eth).src = *smac;
    }
    let tx = ifindex == ingress_ifindex(ctx);
    if checksum != NO_CHECKSUM_WORK {
        return csum::tail_call_finish(
            ctx,
            csum::FinishArgs {
                action: if tx {
                    xdp_action::XDP_TX
                } else {
                    xdp_action::XDP_REDIRECT
                },
                ifindex,
                stat,
                keep_partial: u32::from(checksum == KEEP_CHECKSUM_PARTIAL),
            },
        );
    }
    if tx {
        return Verdict {
            action: xdp_action::XDP_TX,
            stat,
        };
    }
    // SAFETY: a helper taking plain integers; it returns XDP_REDIRECT, or XDP_ABORTED on bad
    // flags (we pass none).
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    Verdict { action, stat }
}
