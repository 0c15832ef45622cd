//! Header rewrites with incremental checksum updates (RFC 1624).

use xdplb_common::checksum::{replace_u32, udp_replace_u16, udp_replace_u32};

use crate::parse::Ipv4Udp;

/// Sets the destination address and port of a validated IPv4/UDP packet, updating the IPv4
/// header checksum and the UDP checksum (a UDP checksum of 0 stays 0).
///
/// Expects `pkt` from [`crate::parse::ipv4_udp`] on the same, unmodified packet; `daddr` and
/// `dport_be` in network order.
#[inline(always)]
pub fn set_destination(pkt: &Ipv4Udp, daddr: u32, dport_be: u16) {
    // SAFETY: the parser proved both headers lie inside the packet and nothing has moved the
    // packet since.
    unsafe {
        let ip = &mut *pkt.ip;
        let udp = &mut *pkt.udp;
        let old_daddr = ip.daddr;
        if old_daddr != daddr {
            ip.check = replace_u32(ip.check, old_daddr, daddr);
            // The destination address is part of the UDP pseudo-header.
            udp.check = udp_replace_u32(udp.check, old_daddr, daddr);
            ip.daddr = daddr;
        }
        let old_dport = udp.dest_be;
        if old_dport != dport_be {
            udp.check = udp_replace_u16(udp.check, old_dport, dport_be);
            udp.dest_be = dport_be;
        }
    }
}
