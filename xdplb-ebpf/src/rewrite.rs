//! Header rewrites with incremental checksum updates (RFC 1624), for IPv4 and IPv6 (whose
//! header has no checksum: only the UDP checksum, over the pseudo-header, changes).

use xdplb_common::{
    Addr,
    checksum::{replace_u16, replace_u32, udp_replace_u16, udp_replace_u32},
};

use crate::parse::{Ipv4Udp, Ipv6Udp};

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
        replace_endpoint(
            &mut ip.check,
            &mut udp.check,
            (&mut ip.daddr, &mut udp.dest_be),
            daddr,
            dport_be,
        );
    }
}

/// Sets the source address and port, like [`set_destination`].
#[inline(always)]
pub fn set_source(pkt: &Ipv4Udp, saddr: u32, sport_be: u16) {
    // SAFETY: as in `set_destination`.
    unsafe {
        let ip = &mut *pkt.ip;
        let udp = &mut *pkt.udp;
        replace_endpoint(
            &mut ip.check,
            &mut udp.check,
            (&mut ip.saddr, &mut udp.source_be),
            saddr,
            sport_be,
        );
    }
}

/// Replaces one (address, port) endpoint. The address is in the IPv4 header and the UDP
/// pseudo-header; the port only in the UDP header.
#[inline(always)]
fn replace_endpoint(
    ip_check: &mut u16,
    udp_check: &mut u16,
    (addr, port): (&mut u32, &mut u16),
    new_addr: u32,
    new_port_be: u16,
) {
    if *addr != new_addr {
        *ip_check = replace_u32(*ip_check, *addr, new_addr);
        *udp_check = udp_replace_u32(*udp_check, *addr, new_addr);
        *addr = new_addr;
    }
    replace_port(udp_check, port, new_port_be);
}

/// Replaces a UDP port, updating the UDP checksum. Both families.
#[inline(always)]
fn replace_port(udp_check: &mut u16, port: &mut u16, new_port_be: u16) {
    if *port != new_port_be {
        *udp_check = udp_replace_u16(*udp_check, *port, new_port_be);
        *port = new_port_be;
    }
}

/// Sets the destination address and port of a validated IPv6/UDP packet, updating the UDP
/// checksum (the address is in its pseudo-header).
///
/// Expects `pkt` from [`crate::parse::ipv6_udp`] on the same, unmodified packet; `daddr` and
/// `dport_be` in network order.
#[inline(always)]
pub fn set_destination6(pkt: &Ipv6Udp, daddr: &Addr, dport_be: u16) {
    // SAFETY: the parser proved both headers lie inside the packet and nothing has moved the
    // packet since.
    unsafe {
        let ip6 = &mut *pkt.ip6;
        let udp = &mut *pkt.udp;
        replace_endpoint6(
            &mut udp.check,
            (&mut ip6.daddr, &mut udp.dest_be),
            daddr,
            dport_be,
        );
    }
}

/// Sets the source address and port, like [`set_destination6`].
#[inline(always)]
pub fn set_source6(pkt: &Ipv6Udp, saddr: &Addr, sport_be: u16) {
    // SAFETY: as in `set_destination6`.
    unsafe {
        let ip6 = &mut *pkt.ip6;
        let udp = &mut *pkt.udp;
        replace_endpoint6(
            &mut udp.check,
            (&mut ip6.saddr, &mut udp.source_be),
            saddr,
            sport_be,
        );
    }
}

/// Replaces one IPv6 (address, port) endpoint: the address word by word (each a 32-bit word
/// of the UDP pseudo-header), then the port.
#[inline(always)]
fn replace_endpoint6(
    udp_check: &mut u16,
    (addr, port): (&mut Addr, &mut u16),
    new_addr: &Addr,
    new_port_be: u16,
) {
    for i in 0..4 {
        if addr[i] != new_addr[i] {
            *udp_check = udp_replace_u32(*udp_check, addr[i], new_addr[i]);
            addr[i] = new_addr[i];
        }
    }
    replace_port(udp_check, port, new_port_be);
}

/// Decrements the hop limit of a validated IPv6 packet (no checksum covers it). Expects
/// `hop_limit > 1` (checked by the caller).
#[inline(always)]
pub fn decrement_hop_limit(pkt: &Ipv6Udp) {
    // SAFETY: as in `set_destination6`.
    unsafe {
        let ip6 = &mut *pkt.ip6;
        ip6.hop_limit = ip6.hop_limit.wrapping_sub(1);
    }
}

/// Sets the source and destination addresses of a later fragment (no UDP header), updating
/// only the IPv4 header checksum. Addresses in network order.
#[inline(always)]
pub fn set_addresses_l3(pkt: &Ipv4Udp, saddr: u32, daddr: u32) {
    // SAFETY: the parser proved the IPv4 header lies inside the packet.
    unsafe {
        let ip = &mut *pkt.ip;
        if ip.saddr != saddr {
            ip.check = replace_u32(ip.check, ip.saddr, saddr);
            ip.saddr = saddr;
        }
        if ip.daddr != daddr {
            ip.check = replace_u32(ip.check, ip.daddr, daddr);
            ip.daddr = daddr;
        }
    }
}

/// Decrements the TTL of a validated IPv4 packet, updating the header checksum. Expects
/// `ttl > 1` (checked by the caller).
#[inline(always)]
pub fn decrement_ttl(pkt: &Ipv4Udp) {
    // SAFETY: as in `set_destination`.
    unsafe {
        let ip = &mut *pkt.ip;
        // TTL and protocol form one 16-bit word of the header, in this byte order.
        let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        let new = u16::from_ne_bytes([ip.ttl, ip.protocol]);
        ip.check = replace_u16(ip.check, old, new);
    }
}
