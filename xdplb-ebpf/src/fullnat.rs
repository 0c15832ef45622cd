//! `fullnat`: a source port per flow, and the translation of the backends' replies.
//!
//! A port is taken only by inserting its translation with `BPF_NOEXIST`, which the kernel
//! performs atomically: two flows can never get the same (source, port, backend), whatever
//! CPUs they arrive on. Translations are removed by the daemon's sweep once their flow has
//! idled out, which frees the port.

use aya_ebpf::bindings::BPF_NOEXIST;
use xdplb_common::{
    Addr, Backend, FLOW_REFRESH_NS, FULLNAT_PORT_TRIES, FlowKey, FullnatPeer, IPPROTO_UDP,
    ReplyKey, Service, hash::fast_range,
};

use crate::{FULLNAT, FULLNAT_SOURCES};

/// The translation key of a backend and the balancer's source address and port (either
/// family: the source as `FULLNAT_SOURCES_V2` holds it).
#[inline(always)]
pub fn key(backend_addr: Addr, backend_port_be: u16, source: Addr, port_be: u16) -> ReplyKey {
    ReplyKey {
        backend_addr,
        client_addr: source,
        backend_port_be,
        client_port_be: port_be,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// The service's source address, of its family, if it is configured.
#[inline(always)]
pub fn source(service: &Service) -> Option<Addr> {
    FULLNAT_SOURCES.get(service.id).map(|s| s.addr)
}

/// The service's IPv4 source address (network order), if it is configured.
#[inline(always)]
pub fn source_addr(service: &Service) -> Option<u32> {
    source(service).map(|a| a[3])
}

/// Allocates a source port (network order) for a new flow of `service` from `flow`'s client
/// to `backend`, trying `FULLNAT_PORT_TRIES` ports of the range picked by `hash`. Returns
/// `None` when every port tried is taken (or the service has no source).
#[inline(always)]
pub fn allocate(
    service: &Service,
    flow: &FlowKey,
    backend: &Backend,
    hash: u32,
    now: u64,
) -> Option<u16> {
    let source = FULLNAT_SOURCES.get(service.id)?;
    if source.port_count == 0 {
        return None;
    }
    let peer = FullnatPeer {
        client_addr: flow.client_addr,
        vip_addr: flow.vip_addr,
        client_port_be: flow.client_port_be,
        vip_port_be: flow.vip_port_be,
        service_id: service.id,
        last_seen_ns: now,
        idle_timeout_ns: service.flow_idle_timeout_ns,
    };
    for i in 0..FULLNAT_PORT_TRIES {
        let offset = fast_range(
            hash.wrapping_add(i.wrapping_mul(0x9e37_79b9)),
            source.port_count,
        );
        let port_be = (source.port_first.wrapping_add(offset) as u16).to_be();
        let k = key(backend.addr, backend.port_be, source.addr, port_be);
        if FULLNAT.insert(k, peer, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(port_be);
        }
    }
    None
}

/// Refreshes a live flow's translation, at most once per `FLOW_REFRESH_NS`.
#[inline(always)]
pub fn refresh(k: &ReplyKey, now: u64) {
    if let Some(e) = FULLNAT.get_ptr_mut(k) {
        // SAFETY: a map value; another CPU may race on the timestamp only, which is benign.
        let e = unsafe { &mut *e };
        if now.saturating_sub(e.last_seen_ns) > FLOW_REFRESH_NS {
            e.last_seen_ns = now;
        }
    }
}

/// The client side of a backend's reply to the balancer's source address and port, if it
/// belongs to a `fullnat` flow.
#[inline(always)]
pub fn peer(k: &ReplyKey) -> Option<FullnatPeer> {
    // SAFETY: the value is copied out at once.
    unsafe { FULLNAT.get(k) }.copied()
}

/// The same, in place: the caller reads the fields it needs (fewer bytes on its stack).
#[inline(always)]
pub fn peer_ptr(k: &ReplyKey) -> Option<*const FullnatPeer> {
    FULLNAT.get_ptr(k)
}
