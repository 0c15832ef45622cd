//! Per-CPU counters. Every write here touches only this CPU's copy.

use xdplb_common::{Counter, Stat};

use crate::{BACKEND_STATS, SERVICE_STATS, STATS};

/// Adds one to the global counter `stat`.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` to service `service_id` and backend `backend_index`.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_index: u32, bytes: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: as above.
        unsafe { add(&mut *c, bytes) };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_index) {
        // SAFETY: as above.
        unsafe { add(&mut *c, bytes) };
    }
}

/// Adds one new flow to service `service_id` and backend `backend_index`.
#[inline(always)]
pub fn count_flow(service_id: u32, backend_index: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
        unsafe { (*c).flows += 1 };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_index) {
        // SAFETY: as above.
        unsafe { (*c).flows += 1 };
    }
}

#[inline(always)]
fn add(c: &mut Counter, bytes: u32) {
    c.packets += 1;
    c.bytes += bytes as u64;
}
