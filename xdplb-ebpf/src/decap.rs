//! `xdplb decap`: the backend side of `dsr-ipip`. Strips the outer IPv4 header of IP-in-IP
//! packets so that the inner packet (client to VIP) reaches the backend's stack as if it had
//! arrived directly; the backend answers the client itself. Needs no ipip kernel module.
#![no_std]
#![no_main]

#[allow(dead_code)]
mod parse;
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use parse::{ETH_HDR_LEN, EthHdr, Ipv4Hdr, ptr_at};
use xdplb_common::IPPROTO_IPIP;

/// Per-CPU counters: 0 decapsulated, 1 IP-in-IP left alone (fragmented, options, or an inner
/// packet that is not IPv4), 2 decapsulation failed (dropped).
#[map(name = "DECAP_STATS_V1")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

const ETH_P_IP: u16 = 0x0800;
const OUTER_LEN: usize = 20;
/// More-fragments flag and fragment offset.
const IP_FRAGMENTED: u16 = 0x3fff;

#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = decap(&ctx);
    if let Some(c) = counter.and_then(|i| DECAP_STATS.get_ptr_mut(i)) {
        // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
    action
}

/// Returns the action and the counter to bump (none for packets that are not IP-in-IP).
#[inline(always)]
fn decap(ctx: &XdpContext) -> (u32, Option<u32>) {
    let pass = xdp_action::XDP_PASS;
    let (Some(eth), Some(outer)) = (
        ptr_at::<_, EthHdr>(ctx, 0),
        ptr_at::<_, Ipv4Hdr>(ctx, ETH_HDR_LEN),
    ) else {
        return (pass, None);
    };
    // SAFETY: both headers were bounds-checked above.
    let (ether_type, version_ihl, protocol, frag_off) = unsafe {
        (
            (*eth).ether_type_be,
            (*outer).version_ihl,
            (*outer).protocol,
            u16::from_be((*outer).frag_off_be),
        )
    };
    if ether_type != ETH_P_IP.to_be() || protocol != IPPROTO_IPIP {
        return (pass, None);
    }
    // Only a plain 20-byte outer header, unfragmented, around an IPv4 packet: anything else
    // goes to the kernel untouched (which, without the ipip module, drops it).
    let Some(inner) = ptr_at::<_, Ipv4Hdr>(ctx, ETH_HDR_LEN + OUTER_LEN) else {
        return (pass, Some(1));
    };
    // SAFETY: bounds-checked above.
    let inner_version = unsafe { (*inner).version_ihl } >> 4;
    if version_ihl != 0x45 || frag_off & IP_FRAGMENTED != 0 || inner_version != 4 {
        return (pass, Some(1));
    }
    // Move the Ethernet header forward over the outer IPv4 header, then drop the front.
    // SAFETY: `eth` is in bounds; the copy is read completely before anything is written.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    let Some(moved) = ptr_at::<_, EthHdr>(ctx, OUTER_LEN) else {
        return (pass, Some(1));
    };
    // SAFETY: bounds-checked above; it overlaps only the outer header, which is discarded.
    unsafe {
        (*moved).dst = dst;
        (*moved).src = src;
        (*moved).ether_type_be = ETH_P_IP.to_be();
    }
    // SAFETY: shrinks the packet at the front; no packet pointer is used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER_LEN as i32) } != 0 {
        return (xdp_action::XDP_DROP, Some(2));
    }
    (pass, Some(0))
}
