//! Addresses as the maps hold them ([`Addr`]: 16 bytes as four wire-order words) and back.
//!
//! IPv4 is held IPv4-mapped (`::ffff:a.b.c.d`, the IPv4 wildcard `0.0.0.0` is
//! `::ffff:0.0.0.0`), IPv6 as itself (the IPv6 wildcard `::` is all zeros), so the two families
//! never share a key. Every conversion between a map address and an [`IpAddr`] goes through
//! here, so the family is decided in one place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use xdplb_common::{Addr, addr_from_v4_wire};

/// The map form of an IPv4 address.
pub fn addr_v4(ip: Ipv4Addr) -> Addr {
    addr_from_v4_wire(u32::from_ne_bytes(ip.octets()))
}

/// The map form of an IPv6 address: its 16 octets as 4 wire-order words.
pub fn addr_v6(ip: Ipv6Addr) -> Addr {
    let o = ip.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The map form of an address: IPv4-mapped for IPv4, the address itself for IPv6. The flow
/// hash and the Maglev permutation take the same form.
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => addr_v4(v4),
        IpAddr::V6(v6) => addr_v6(v6),
    }
}

/// The address a map entry holds: an IPv4-mapped address is IPv4, anything else IPv6.
pub fn ip_of(addr: Addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (chunk, word) in o.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A map address and a network-order port as a socket address (`1.2.3.4:53`, `[2001:db8::1]:53`).
pub fn socket_of(addr: Addr, port_be: u16) -> SocketAddr {
    SocketAddr::new(ip_of(addr), u16::from_be(port_be))
}

/// How many low bits of a `dsr-ipip` outer source (from the prefix `base/prefix_len`) the data
/// plane fills from the flow hash: all host bits for IPv4, at most the low 32 for IPv6 (the
/// flow hash has 32 bits).
pub fn encap_host_bits(base: IpAddr, prefix_len: u8) -> u32 {
    let total: u32 = if base.is_ipv4() { 32 } else { 128 };
    total.saturating_sub(u32::from(prefix_len)).min(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_held_mapped_and_comes_back_as_ipv4() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let addr = addr_of(ip);
        // ::ffff:192.0.2.7 in wire order: the same bytes as the IPv6 form.
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(addr, addr_v6(mapped));
        assert_eq!(addr[3].to_ne_bytes(), [192, 0, 2, 7]);
        assert_eq!(ip_of(addr), ip);
        assert_eq!(
            socket_of(addr, 53u16.to_be()),
            "192.0.2.7:53".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_is_held_as_its_octets_and_round_trips() {
        for text in ["2001:db8::1", "::1", "fe80::1:2:3:4", "ff02::1"] {
            let ip: IpAddr = text.parse().unwrap();
            let addr = addr_of(ip);
            let IpAddr::V6(v6) = ip else { unreachable!() };
            let bytes: Vec<u8> = addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
            assert_eq!(bytes, v6.octets(), "{text}: wire order");
            assert_eq!(ip_of(addr), ip, "{text}");
        }
        let s: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        assert_eq!(socket_of(addr_of(s.ip()), 53u16.to_be()), s);
        assert_eq!(
            socket_of(addr_of(s.ip()), 53u16.to_be()).to_string(),
            "[2001:db8::1]:53"
        );
    }

    #[test]
    fn the_two_wildcards_are_distinct_keys() {
        let v4 = addr_of(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let v6 = addr_of(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(v6, [0; 4]);
        assert_ne!(v4, v6);
        assert_eq!(ip_of(v4), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(ip_of(v6), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn encap_host_bits_are_capped_at_the_hash_width() {
        let v4: IpAddr = "10.200.0.0".parse().unwrap();
        let v6: IpAddr = "2001:db8:ff::".parse().unwrap();
        assert_eq!(encap_host_bits(v4, 24), 8);
        assert_eq!(encap_host_bits(v4, 32), 0);
        assert_eq!(encap_host_bits(v6, 64), 32);
        assert_eq!(encap_host_bits(v6, 112), 16);
        assert_eq!(encap_host_bits(v6, 128), 0);
    }
}
