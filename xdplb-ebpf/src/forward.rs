//! Sending a packet out of an interface: FIB lookup, TTL, MAC addresses, XDP_TX or
//! XDP_REDIRECT. `nat` routes rewritten requests and replies; `dsr-l2` only readdresses the
//! frame to the backend's MAC.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use xdplb_common::{IPPROTO_UDP, Stat};

use crate::{
    parse::{EthHdr, Ipv4Udp, ptr_at},
    rewrite,
    service::Verdict,
};

const AF_INET: u8 = 2;

/// Routes a validated, already rewritten IPv4/UDP packet by its (new) addresses.
///
/// Success: TTL decremented, MAC addresses set from the FIB, then XDP_TX when the egress is the
/// interface it came in on, or XDP_REDIRECT to the egress. Otherwise the packet goes to the
/// kernel, which does what a router does (resolves the neighbour, fragments or answers ICMP
/// "fragmentation needed", answers "time exceeded"), or is dropped when there is no route.
#[inline(always)]
pub fn fib_forward(ctx: &XdpContext, pkt: &Ipv4Udp) -> Verdict {
    // SAFETY: the parser proved the IPv4 header lies inside the packet; nothing moved it since.
    let (ttl, daddr) = unsafe { ((*pkt.ip).ttl, (*pkt.ip).daddr) };
    if ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    let params = match lookup(ctx, pkt, daddr) {
        Ok(p) => p,
        Err(BPF_FIB_LKUP_RET_NO_NEIGH) => return Verdict::pass(Stat::PassNoNeighbour),
        Err(BPF_FIB_LKUP_RET_FRAG_NEEDED) => return Verdict::pass(Stat::PassFragNeeded),
        Err(_) => return Verdict::drop(Stat::DropNoRoute),
    };
    rewrite::decrement_ttl(pkt);
    send(ctx, &params)
}

/// Sends an unmodified IPv4/UDP packet to `backend_v4` (wire order) on its L2 segment: the
/// MAC addresses are the only change. A backend whose neighbour entry is missing, or that is
/// not on a directly reachable segment, means a drop: the kernel would deliver the VIP locally.
#[inline(always)]
pub fn l2_forward(ctx: &XdpContext, pkt: &Ipv4Udp, backend_v4: u32) -> Verdict {
    match lookup(ctx, pkt, backend_v4) {
        Ok(params) => send(ctx, &params),
        Err(BPF_FIB_LKUP_RET_NO_NEIGH) => Verdict::drop(Stat::DropNoNeighbour),
        Err(_) => Verdict::drop(Stat::DropNoRoute),
    }
}

/// FIB lookup for the packet's source and ports towards `daddr`, as if received on the
/// context's interface. Returns the filled parameters, or the helper's return code.
///
/// The kernel answers such a lookup only when IPv4 forwarding is on for the receiving
/// interface (`BPF_FIB_LKUP_RET_FWD_DISABLED` otherwise, even for an egress-side lookup); the
/// daemon refuses to run `nat` and `dsr-l2` services on interfaces without it.
#[inline(always)]
fn lookup(ctx: &XdpContext, pkt: &Ipv4Udp, daddr: u32) -> Result<bpf_fib_lookup, u32> {
    // SAFETY: the parser proved the headers lie inside the packet; nothing moved it since.
    let (tos, tot_len_be, saddr, sport_be, dport_be) = unsafe {
        let ip = &*pkt.ip;
        let udp = &*pkt.udp;
        (ip.tos, ip.tot_len_be, ip.saddr, udp.source_be, udp.dest_be)
    };
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.sport = sport_be;
    params.dport = dport_be;
    params.__bindgen_anon_1.tot_len = u16::from_be(tot_len_be);
    params.ifindex = ingress_ifindex(ctx);
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
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
        Err(rc as u32)
    }
}

#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: reading the context's ingress interface; the verifier checks the context access.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// Sets the MAC addresses the FIB gave and sends the frame: XDP_TX back out of the interface it
/// came in on, XDP_REDIRECT to any other.
#[inline(always)]
fn send(ctx: &XdpContext, params: &bpf_fib_lookup) -> Verdict {
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        // Unreachable after a successful parse; pass rather than guess.
        return Verdict::pass(Stat::PassTruncated);
    };
    // SAFETY: `ptr_at` bounds-checked the Ethernet header.
    unsafe {
        (*eth).dst = params.dmac;
        (*eth).src = params.smac;
    }
    if params.ifindex == ingress_ifindex(ctx) {
        return Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::ForwardedFib,
        };
    }
    // SAFETY: a helper taking plain integers; it returns XDP_REDIRECT, or XDP_ABORTED on bad
    // flags (we pass none).
    let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
    Verdict {
        action,
        stat: Stat::ForwardedFib,
    }
}
