//! Sending a rewritten packet out of an interface: FIB lookup, TTL, MAC addresses, XDP_TX or
//! XDP_REDIRECT. Used by the `nat` forwarding mode for requests and replies.

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
    // SAFETY: the parser proved the headers lie inside the packet; nothing moved it since.
    let (ttl, tos, tot_len_be, saddr, daddr, sport_be, dport_be) = unsafe {
        let ip = &*pkt.ip;
        let udp = &*pkt.udp;
        (
            ip.ttl,
            ip.tos,
            ip.tot_len_be,
            ip.saddr,
            ip.daddr,
            udp.source_be,
            udp.dest_be,
        )
    };
    if ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    // SAFETY: reading the context's ingress interface; the verifier checks the context access.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.sport = sport_be;
    params.dport = dport_be;
    params.__bindgen_anon_1.tot_len = u16::from_be(tot_len_be);
    params.ifindex = ingress;
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
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Verdict::pass(Stat::PassNoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Verdict::pass(Stat::PassFragNeeded),
        _ => return Verdict::drop(Stat::DropNoRoute),
    }
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        // Unreachable after a successful parse; pass rather than guess.
        return Verdict::pass(Stat::PassTruncated);
    };
    rewrite::decrement_ttl(pkt);
    // SAFETY: `ptr_at` bounds-checked the Ethernet header.
    unsafe {
        (*eth).dst = params.dmac;
        (*eth).src = params.smac;
    }
    if params.ifindex == ingress {
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
