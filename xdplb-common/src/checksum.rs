//! Internet checksum arithmetic (RFC 1071, RFC 1624), shared by the data plane and its tests.
//!
//! The incremental helpers take and return *raw* values: 16- and 32-bit words loaded from the
//! packet with a native load and stored back the same way. One's-complement sums commute with
//! byte swapping, so no byte-order conversion is needed on either endianness.
//!
//! The full computations work on byte slices in network order and return the checksum as a
//! host-order `u16` (the value to write big-endian). User space uses them to check the data
//! plane's incremental updates independently.

/// Folds a 64-bit accumulator of 16- or 32-bit words to a 16-bit one's-complement sum.
/// Four rounds are enough for any accumulator below 2^48, which every caller here stays under.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: the checksum after a 32-bit word covered by it changed from `old` to `new`.
/// Expects raw values; returns the raw new checksum.
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    !fold((!check) as u64 + (!old) as u64 + new as u64)
}

/// RFC 1624 eqn. 3 for a 16-bit word. Expects raw values; returns the raw new checksum.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u64 + (!old) as u64 + new as u64)
}

/// The UDP flavour of [`replace_u32`]: a checksum of 0 means "none" and stays 0, and a computed
/// 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_replace_u32(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// The UDP flavour of [`replace_u16`]; see [`udp_replace_u32`].
#[inline(always)]
pub const fn udp_replace_u16(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Sum of the big-endian 16-bit words of `data` (an odd tail byte is padded with zero).
pub fn sum_be_words(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// Full IPv4 header checksum of `header` (its checksum field is treated as zero).
/// Expects the whole header, options included; returns the host-order checksum.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum = sum_be_words(header);
    if header.len() >= 12 {
        sum -= u16::from_be_bytes([header[10], header[11]]) as u64;
    }
    !fold(sum)
}

/// Full UDP checksum over the IPv4 pseudo-header and `udp` (header and payload, its checksum
/// field treated as zero). Returns the host-order checksum, 0xffff where the sum gives 0.
pub fn udp_checksum_v4(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    udp_checksum_after(sum_be_words(&src) + sum_be_words(&dst), udp)
}

/// Full UDP checksum over the IPv6 pseudo-header (source, destination, upper-layer length,
/// next header 17) and `udp`, as [`udp_checksum_v4`] does for IPv4.
pub fn udp_checksum_v6(src: [u8; 16], dst: [u8; 16], udp: &[u8]) -> u16 {
    udp_checksum_after(sum_be_words(&src) + sum_be_words(&dst), udp)
}

/// The UDP checksum of `udp` after the pseudo-header's `addresses` (summed), both families:
/// the rest of the pseudo-header is the same words (protocol 17 and the UDP length).
fn udp_checksum_after(addresses: u64, udp: &[u8]) -> u16 {
    let mut sum = addresses + 17 + udp.len() as u64;
    sum += sum_be_words(udp);
    if udp.len() >= 8 {
        sum -= u16::from_be_bytes([udp[6], udp[7]]) as u64;
    }
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the tests need no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 16
        }
    }

    fn raw16(host: u16) -> u16 {
        u16::from_ne_bytes(host.to_be_bytes())
    }

    fn ipv4_header(rng: &mut Lcg, ihl: usize) -> [u8; 60] {
        let mut h = [0u8; 60];
        for b in h.iter_mut().take(ihl * 4) {
            *b = rng.next() as u8;
        }
        h[0] = 0x40 | ihl as u8;
        let c = ipv4_header_checksum(&h[..ihl * 4]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_be_words(&data)), 0xddf2);
    }

    #[test]
    fn a_valid_ipv4_header_sums_to_all_ones() {
        let mut rng = Lcg(7);
        for ihl in 5..=15 {
            let h = ipv4_header(&mut rng, ihl);
            assert_eq!(fold(sum_be_words(&h[..ihl * 4])), 0xffff, "ihl {ihl}");
        }
    }

    #[test]
    fn incremental_ipv4_address_update_matches_full_recomputation() {
        let mut rng = Lcg(42);
        for round in 0..20_000 {
            let ihl = 5 + (round % 11);
            let mut h = ipv4_header(&mut rng, ihl);
            let old = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            let new = rng.next() as u32;
            let check = u16::from_ne_bytes([h[10], h[11]]);
            let updated = replace_u32(check, old, new);
            h[16..20].copy_from_slice(&new.to_ne_bytes());
            let full = ipv4_header_checksum(&h[..ihl * 4]);
            assert_eq!(
                updated,
                raw16(full),
                "round {round}: header {:02x?}",
                &h[..ihl * 4]
            );
        }
    }

    #[test]
    fn incremental_udp_update_matches_full_recomputation() {
        let mut rng = Lcg(99);
        for round in 0..20_000 {
            let len = 8 + (rng.next() % 64) as usize;
            let mut udp = [0u8; 72];
            for b in udp.iter_mut().take(len) {
                *b = rng.next() as u8;
            }
            udp[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            let src = (rng.next() as u32).to_ne_bytes();
            let mut dst = (rng.next() as u32).to_ne_bytes();
            let c = udp_checksum_v4(src, dst, &udp[..len]);
            udp[6..8].copy_from_slice(&c.to_be_bytes());

            let new_dst = rng.next() as u32;
            let new_port = rng.next() as u16;
            let check = u16::from_ne_bytes([udp[6], udp[7]]);
            let check = udp_replace_u32(check, u32::from_ne_bytes(dst), new_dst);
            let old_port = u16::from_ne_bytes([udp[2], udp[3]]);
            let check = udp_replace_u16(check, old_port, new_port);
            dst = new_dst.to_ne_bytes();
            udp[2..4].copy_from_slice(&new_port.to_ne_bytes());

            let full = udp_checksum_v4(src, dst, &udp[..len]);
            assert_eq!(check, raw16(full), "round {round}");
            assert_ne!(check, 0, "a computed UDP checksum is never sent as 0");
        }
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        assert_eq!(udp_replace_u32(0, 0x0100_007f, 0x0200_007f), 0);
        assert_eq!(udp_replace_u16(0, 0x9326, 0x9426), 0);
    }

    #[test]
    fn a_result_of_zero_is_sent_as_all_ones() {
        // ~0x0001 + ~0x0000 + 0x0001 = 0xfffe + 0xffff + 0x0001 folds to 0xffff, whose
        // complement is 0: the plain update gives 0, the UDP one must send 0xffff.
        assert_eq!(replace_u16(0x0001, 0x0000, 0x0001), 0);
        assert_eq!(udp_replace_u16(0x0001, 0x0000, 0x0001), 0xffff);
    }
}
