//! Backend choice for a new flow: the one place a scheduler decides.
//!
//! Every scheduler picks a slot of the service's active table in `LOOKUP_V1`, whose entries are
//! `BACKENDS_V1` indices built by user space (xdplb-common's maglev and schedule modules):
//! - Maglev and source hash: the seeded flow hash mapped onto the table (no division);
//! - round robin and weighted round robin: a per-CPU cursor walks the table, so no CPU writes
//!   state another reads (the weights are in the table's contents);
//! - random: a random slot.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use xdplb_common::{
    SCHED_MAGLEV, SCHED_RANDOM, SCHED_SOURCE_HASH, Service,
    hash::{FlowTuple, HASH_FIVE_TUPLE, fast_range, flow_hash},
};

use crate::{LOOKUP, RR_CURSOR};

/// Expects `service.table_len > 0`. `five_tuple_hash`: the flow's 5-tuple hash (service
/// seed) when the caller already computed it; a scheduler that hashes the 5-tuple reuses it
/// (one hash per packet). Returns the chosen index into `BACKENDS_V1`, or `None` if a map
/// slot is missing (a table or service id beyond the maps).
#[inline(always)]
pub fn choose_backend(
    service: &Service,
    flow: &FlowTuple,
    five_tuple_hash: Option<u32>,
) -> Option<u32> {
    let slot = match service.scheduler {
        SCHED_MAGLEV | SCHED_SOURCE_HASH => {
            // A volatile read: the compiler may not tie this test to the branches inside
            // `flow_hash` and copy the code that follows once per hash kind, which the
            // verifier would then walk once per copy.
            // SAFETY: a plain read of a field of a valid reference.
            let fields = unsafe { core::ptr::read_volatile(&service.hash_fields) };
            let hash = match five_tuple_hash {
                Some(h) if fields == HASH_FIVE_TUPLE => h,
                _ => flow_hash(flow, fields, service.hash_seed),
            };
            fast_range(hash, service.table_len)
        }
        // SAFETY: a helper without arguments.
        SCHED_RANDOM => fast_range(unsafe { bpf_get_prandom_u32() }, service.table_len),
        _ => next_in_rotation(service)?,
    };
    LOOKUP.get(service.table_base.wrapping_add(slot)).copied()
}

/// The per-CPU round-robin cursor of the service, advanced by one.
#[inline(always)]
fn next_in_rotation(service: &Service) -> Option<u32> {
    let cursor = RR_CURSOR.get_ptr_mut(service.id)?;
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let cursor = unsafe { &mut *cursor };
    // Compare and reset instead of `%`: no division by a runtime value. A cursor left beyond a
    // table that shrank starts over.
    let mut next = *cursor;
    if next >= service.table_len {
        next = 0;
    }
    *cursor = next + 1;
    Some(next)
}
