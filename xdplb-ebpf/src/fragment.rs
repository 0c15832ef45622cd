//! IPv4 fragments of balanced datagrams: the first fragment (it holds the UDP header, so the
//! ports) is balanced or translated like any packet, and its route is recorded under the
//! datagram's identity (source, destination, IP ID, protocol), as loxilb and cilium do. The
//! later fragments carry no ports: they look the route up, get the same address rewrite and
//! go the same way. A later fragment that matches nothing (not ours, ahead of its first
//! fragment, or older than `FRAGMENT_TIMEOUT_NS`) passes untouched and is counted.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns, programs::XdpContext};
use xdplb_common::{
    FRAGMENT_SEND_DSR_IPIP, FRAGMENT_SEND_DSR_L2, FRAGMENT_SEND_LOCAL, FRAGMENT_SEND_ROUTE,
    FRAGMENT_SEND_ROUTE_LOCAL_SOURCE, FRAGMENT_TIMEOUT_NS, FragmentKey, FragmentRoute, IPPROTO_UDP,
    Stat, addr_from_v4_wire,
};
// (`record` takes the context only to tie it to a program type; either works.)

use crate::{
    FRAGMENT_SCRATCH, FRAGMENTS, csum, forward,
    parse::{Ipv4Udp, Packet},
    rewrite,
    service::{self, Verdict},
    stats,
};

/// The identity of the datagram `pkt` belongs to, as it arrived (before any rewrite).
#[inline(always)]
pub fn key(pkt: &Ipv4Udp) -> FragmentKey {
    // SAFETY: the parser proved the IPv4 header lies inside the packet.
    let (saddr, daddr, id_be) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr, (*pkt.ip).id_be) };
    FragmentKey {
        src: addr_from_v4_wire(saddr),
        dst: addr_from_v4_wire(daddr),
        id: u32::from(id_be),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// A key and a route, built in a per-CPU scratch slot rather than on the stack (the ingress
/// program's 512 bytes are spent).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    key: FragmentKey,
    route: FragmentRoute,
}

/// Records the route of a first fragment's datagram (`pkt`, not yet rewritten) for the
/// fragments that follow: `fill` sets the route's fields, which start as "the same addresses,
/// handed to the local stack, no counters".
#[inline(always)]
pub fn record<C: Packet>(pkt: &Ipv4Udp, fill: impl FnOnce(&mut FragmentRoute), _ctx: &C) {
    let Some(slot) = FRAGMENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let slot = unsafe { &mut *slot };
    slot.key = key(pkt);
    // SAFETY: the parser proved the IPv4 header lies inside the packet.
    let (saddr, daddr) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr) };
    slot.route = FragmentRoute {
        saddr_v4: saddr,
        daddr_v4: daddr,
        backend_v4: 0,
        encap_source_v4: 0,
        send: FRAGMENT_SEND_LOCAL,
        service_id: u32::MAX,
        backend_index: 0,
        _pad: 0,
        // SAFETY: a helper without arguments.
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    fill(&mut slot.route);
    // References into the scratch slot, not copies: the key and route stay off the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = FRAGMENTS
        .insert(&slot.key, &slot.route, u64::from(BPF_ANY))
        .is_ok();
    if inserted {
        stats::count(Stat::FragmentRouteRecorded);
    } else {
        stats::count(Stat::FlowInsertFailed);
    }
}

/// Removes any route recorded for the datagram `pkt` (a first fragment) belongs to.
#[inline(always)]
pub fn forget(pkt: &Ipv4Udp) {
    let Some(slot) = FRAGMENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let slot = unsafe { &mut *slot };
    slot.key = key(pkt);
    // A reference into the scratch slot keeps the key off the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = FRAGMENTS.remove(&slot.key);
}

/// The recorded, still valid route of the datagram `key` names.
#[inline(always)]
pub fn route(key: &FragmentKey) -> Option<FragmentRoute> {
    // SAFETY: the value is copied out at once.
    let route = unsafe { FRAGMENTS.get(key) }.copied()?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(route.created_ns) > FRAGMENT_TIMEOUT_NS {
        return None;
    }
    Some(route)
}

/// The program ingress tail-calls for a later fragment: follows its first fragment's route.
#[inline(always)]
pub fn handle_later(ctx: &XdpContext) -> Verdict {
    match crate::parse::ipv4_udp(ctx) {
        Ok(pkt) if pkt.fragment == crate::parse::LATER_FRAGMENT => follow(ctx, &pkt),
        Ok(_) => Verdict::pass(Stat::PassLaterFragment),
        Err(stat) => Verdict::pass(stat),
    }
}

/// A later fragment arriving on an XDP interface. Expects `pkt.fragment == LATER_FRAGMENT`.
/// Returns the verdict of the route it follows, or passes it untouched (counted) when it
/// matches no first fragment.
#[inline(always)]
fn follow(ctx: &XdpContext, pkt: &Ipv4Udp) -> Verdict {
    let Some(route) = route(&key(pkt)) else {
        return Verdict::pass(Stat::PassLaterFragment);
    };
    // Only the routes XDP sends by; a TC reply route is the egress path's.
    if route.send > FRAGMENT_SEND_DSR_IPIP {
        return Verdict::pass(Stat::PassLaterFragment);
    }
    if !service::addressed_to_interface(ctx) {
        return Verdict::pass(Stat::PassNotForUs);
    }
    if !csum::ipv4_header_is_valid(ctx, pkt) {
        return Verdict::drop(Stat::DropBadIpv4Checksum);
    }
    rewrite::set_addresses_l3(pkt, route.saddr_v4, route.daddr_v4);
    stats::count(Stat::FragmentFollowed);
    if route.service_id != u32::MAX {
        stats::count_traffic(route.service_id, route.backend_index, pkt.frame_len);
    }
    match route.send {
        FRAGMENT_SEND_LOCAL => Verdict::pass(Stat::Forwarded),
        FRAGMENT_SEND_ROUTE => forward::fib_forward(ctx, pkt, false, forward::NO_BACKEND),
        FRAGMENT_SEND_ROUTE_LOCAL_SOURCE => {
            forward::fib_forward(ctx, pkt, true, forward::NO_BACKEND)
        }
        // No ICMP error about a non-initial fragment (RFC 1122 3.2.2): too big, it is dropped.
        FRAGMENT_SEND_DSR_L2 => {
            forward::l2_forward(ctx, pkt, route.backend_v4, forward::NO_BACKEND, false)
        }
        FRAGMENT_SEND_DSR_IPIP => forward::ipip_forward(
            ctx,
            pkt,
            route.backend_v4,
            forward::NO_BACKEND,
            route.encap_source_v4,
            false,
        ),
        _ => Verdict::pass(Stat::PassLaterFragment),
    }
}
