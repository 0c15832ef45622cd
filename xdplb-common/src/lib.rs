//! The contract between xdplb's data plane (kernel) and its control plane (user space).
//!
//! Everything here is `no_std` and dependency-free so that both sides compile the same
//! definitions: map names, map key and value layouts, capacities, counter indices, and the
//! checksum arithmetic that user space must reproduce exactly in its tests.
//!
//! Byte order: fields named `*_be` (and every address) hold network byte order, stored exactly
//! as they appear on the wire; all other integers are in host byte order.
//! Addresses are always 16 bytes wide. An IPv4 address is stored as the IPv4-mapped IPv6
//! address `::ffff:a.b.c.d`, so the same maps will serve IPv6 without a layout change.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod checksum;
pub mod hash;
#[cfg(feature = "std")]
pub mod maglev;
pub mod maps;
#[cfg(feature = "std")]
pub mod schedule;
pub mod stats;
#[cfg(test)]
mod test_rng;

pub use maps::*;
pub use stats::Stat;
