//! `xdplb decap`: the backend side of `dsr-ipip`. Strips the outer header of IPv4-in-IPv4 and
//! IPv6-in-IPv6 packets so that the inner packet (client to VIP) reaches the backend's stack as
//! if it had arrived directly; the backend answers the client itself. Needs neither the ipip
//! nor the ip6_tunnel kernel module.
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
use xdplb_common::{IPPROTO_IPIP, IPPROTO_IPV6};

/// Per-CPU counters, both families alike: 0 decapsulated, 1 tunnelled packet left alone
/// (fragmented, options or extension headers, or an inner packet of another family), 2
/// decapsulation failed (dropped).
#[map(name = "DECAP_STATS_V1")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const OUTER_LEN: usize = 20;
const OUTER6_LEN: usize = 40;
/// More-fragments flag and fragment offset.
const IP_FRAGMENTED: u16 = 0x3fff;

const DECAPSULATED: u32 = 0;
const LEFT_ALONE: u32 = 1;
const FAILED: u32 = 2;

#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = decap(&ctx);
    if let Some(c) = counter.and_then(|i| DECAP_STATS.get_ptr_mut(i)) {
        // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
    action
}

/// Returns the action and the counter to bump (none for packets that are not tunnelled).
#[inline(always)]
fn decap(ctx: &XdpContext) -> (u32, Option<u32>) {
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return (xdp_action::XDP_PASS, None);
    };
    // SAFETY: bounds-checked just above.
    let ether_type = unsafe { (*eth).ether_type_be };
    if ether_type == ETH_P_IP.to_be() {
        decap4(ctx)
    } else if ether_type == ETH_P_IPV6.to_be() {
        decap6(ctx)
    } else {
        (xdp_action::XDP_PASS, None)
    }
}

/// IPv4-in-IPv4 (protocol 4).
#[inline(always)]
fn decap4(ctx: &XdpContext) -> (u32, Option<u32>) {
    let pass = xdp_action::XDP_PASS;
    let Some(outer) = ptr_at::<_, Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return (pass, None);
    };
    // SAFETY: bounds-checked just above.
    let (version_ihl, protocol, frag_off) = unsafe {
        (
            (*outer).version_ihl,
            (*outer).protocol,
            u16::from_be((*outer).frag_off_be),
        )
    };
    if protocol != IPPROTO_IPIP {
        return (pass, None);
    }
    // Only a plain 20-byte outer header, unfragmented, around an IPv4 packet: anything else
    // goes to the kernel untouched (which, without the ipip module, drops it).
    let Some(inner) = ptr_at::<_, u8>(ctx, ETH_HDR_LEN + OUTER_LEN) else {
        return (pass, Some(LEFT_ALONE));
    };
    // SAFETY: bounds-checked above.
    let inner_version = unsafe { *inner } >> 4;
    if version_ihl != 0x45 || frag_off & IP_FRAGMENTED != 0 || inner_version != 4 {
        return (pass, Some(LEFT_ALONE));
    }
    strip(ctx, OUTER_LEN, ETH_P_IP)
}

/// IPv6-in-IPv6 (next header 41) with no extension header on the outer packet. The outer
/// fixed header's fields read here: version (byte 0, high nibble), next header (byte 6).
#[inline(always)]
fn decap6(ctx: &XdpContext) -> (u32, Option<u32>) {
    let pass = xdp_action::XDP_PASS;
    let Some(outer) = ptr_at::<_, [u8; 8]>(ctx, ETH_HDR_LEN) else {
        return (pass, None);
    };
    // SAFETY: bounds-checked just above.
    let (version, next_header) = unsafe { ((*outer)[0] >> 4, (*outer)[6]) };
    if next_header != IPPROTO_IPV6 {
        return (pass, None);
    }
    // Only a plain outer header (a fragment header or any other extension header would be
    // the next header, not 41) around an IPv6 packet; anything else goes to the kernel
    // untouched (which, without the ip6_tunnel module, drops it).
    let Some(inner) = ptr_at::<_, u8>(ctx, ETH_HDR_LEN + OUTER6_LEN) else {
        return (pass, Some(LEFT_ALONE));
    };
    // SAFETY: bounds-checked above.
    let inner_version = unsafe { *inner } >> 4;
    if version != 6 || inner_version != 6 {
        return (pass, Some(LEFT_ALONE));
    }
    strip(ctx, OUTER6_LEN, ETH_P_IPV6)
}

/// Drops the `outer_len` bytes of outer header after the Ethernet header: moves the Ethernet
/// header forward over them (EtherType `ether_type`, the inner packet's), then shrinks the
/// packet at the front. Family-neutral.
#[inline(always)]
fn strip(ctx: &XdpContext, outer_len: usize, ether_type: u16) -> (u32, Option<u32>) {
    let pass = xdp_action::XDP_PASS;
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return (pass, Some(LEFT_ALONE));
    };
    // SAFETY: `eth` is in bounds; the copy is read completely before anything is written.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    let Some(moved) = ptr_at::<_, EthHdr>(ctx, outer_len) else {
        return (pass, Some(LEFT_ALONE));
    };
    // SAFETY: bounds-checked above; it overlaps only the outer header, which is discarded.
    unsafe {
        (*moved).dst = dst;
        (*moved).src = src;
        (*moved).ether_type_be = ether_type.to_be();
    }
    // SAFETY: shrinks the packet at the front; no packet pointer is used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return (xdp_action::XDP_DROP, Some(FAILED));
    }
    (pass, Some(DECAPSULATED))
}
