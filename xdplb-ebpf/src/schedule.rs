//! Backend choice for a new flow. The one place a scheduler decides; later schedulers (Maglev,
//! weighted) plug in here.

use xdplb_common::Service;

use crate::RR_CURSOR;

/// Round robin over the service's backends with a per-CPU cursor: no CPU ever writes state that
/// another CPU reads, so there is no read-modify-write race and no shared cache line.
///
/// Expects `service.backend_count > 0`. Returns the chosen index into `BACKENDS_V1`, or `None`
/// if the cursor slot is missing (a service id beyond the map).
#[inline(always)]
pub fn choose_backend(service: &Service) -> Option<u32> {
    let cursor = RR_CURSOR.get_ptr_mut(service.id)?;
    // SAFETY: a per-CPU array slot, written only by this CPU while the program runs.
    let cursor = unsafe { &mut *cursor };
    // Compare and reset instead of `%`: no division by a runtime value.
    let mut next = *cursor;
    if next >= service.backend_count {
        next = 0;
    }
    *cursor = next + 1;
    Some(service.backend_base + next)
}
