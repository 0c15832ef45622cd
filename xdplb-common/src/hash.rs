//! The seeded flow hash shared by the data plane and user space.
//!
//! Both sides must compute exactly the same value for the same packet, so everything here is
//! `#[inline(always)]`, straight-line code with no loops, no division and no indexing that can
//! fail: it compiles to the same arithmetic for BPF and for the host.
//!
//! The mixing is MurmurHash3 (x86, 32-bit): each 32-bit word goes through murmur's block step,
//! and the result through its `fmix32` finaliser together with the length in bytes. Words are
//! the *raw* values of the fields (the wire bytes read with a native load, see
//! [`crate::Addr`]), never byte-swapped. So on a little-endian host the hash equals
//! `MurmurHash3_x86_32` of the byte string listed for each mode below; on a big-endian host it
//! is a different but equally good hash. Either way the data plane and user space running on
//! the same host agree, which is all that matters.

use crate::Addr;

/// Which fields of a flow feed the hash. Stored in maps as a `u32` (`Service::hash_fields`).
///
/// Five tuple: src addr, dst addr, src port, dst port, protocol. Hashed bytes (40):
/// `src[16] sport[2] dport[2] dst[16] proto 0 0 0`.
pub const HASH_FIVE_TUPLE: u32 = 0;
/// Source address only. Hashed bytes (16): `src[16]`.
pub const HASH_SOURCE_IP: u32 = 1;
/// Source address and source port. Hashed bytes (20): `src[16] sport[2] 0 0`.
pub const HASH_SOURCE_IP_PORT: u32 = 2;

/// A flow as the data plane sees it (addresses and ports raw, i.e. network order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTuple {
    pub src: Addr,
    pub dst: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Murmur3's block step: mixes one 32-bit word into the state `h`.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// Mixes the four words of an address, in order.
#[inline(always)]
const fn mix_addr(h: u32, a: &Addr) -> u32 {
    let [a0, a1, a2, a3] = *a;
    mix(mix(mix(mix(h, a0), a1), a2), a3)
}

/// Murmur3's finaliser, after folding in the length in bytes.
#[inline(always)]
const fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Seeded hash of an address and a port (both raw): the [`HASH_SOURCE_IP_PORT`] hash of a flow
/// from `addr:port`. Maglev uses it, differently seeded, for a backend's permutation.
#[inline(always)]
pub(crate) const fn addr_port_hash(addr: &Addr, port_be: u16, seed: u32) -> u32 {
    finish(mix(mix_addr(seed, addr), port_be as u32), 20)
}

/// Seeded 32-bit hash of the fields of `t` selected by `fields` (one of the `HASH_*` values).
/// An unknown `fields` value behaves like [`HASH_FIVE_TUPLE`].
#[inline(always)]
pub fn flow_hash(t: &FlowTuple, fields: u32, seed: u32) -> u32 {
    match fields {
        HASH_SOURCE_IP => finish(mix_addr(seed, &t.src), 16),
        HASH_SOURCE_IP_PORT => addr_port_hash(&t.src, t.src_port_be, seed),
        _ => {
            // The two ports as the one raw word they form in the UDP/TCP header (on a little
            // endian host; the formula, not the load, is what both sides share).
            let ports = t.src_port_be as u32 | (t.dst_port_be as u32) << 16;
            let h = mix(mix_addr(seed, &t.src), ports);
            let h = mix(mix_addr(h, &t.dst), t.proto as u32);
            finish(h, 40)
        }
    }
}

/// Maps a 32-bit hash uniformly onto `0..n` without division (Lemire's multiply-shift:
/// `(hash * n) >> 32`). Every result is `< n`, except that `n = 0` gives 0.
#[inline(always)]
pub const fn fast_range(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_from_v4_wire;

    use crate::test_rng::Rng;

    /// Helpers on the shared test generator.
    impl Rng {
        fn u32(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }
        fn tuple(&mut self) -> FlowTuple {
            FlowTuple {
                src: [self.u32(), self.u32(), self.u32(), self.u32()],
                dst: [self.u32(), self.u32(), self.u32(), self.u32()],
                src_port_be: self.u32() as u16,
                dst_port_be: self.u32() as u16,
                proto: self.u32() as u8,
            }
        }
        fn v4_tuple(&mut self) -> FlowTuple {
            FlowTuple {
                src: addr_from_v4_wire(self.u32()),
                dst: addr_from_v4_wire(self.u32()),
                src_port_be: self.u32() as u16,
                dst_port_be: self.u32() as u16,
                proto: crate::IPPROTO_UDP,
            }
        }
    }

    /// Murmur3's `fmix32` with a length, over whole words: the reference for one-word inputs.
    fn murmur3_words(words: &[u32], seed: u32) -> u32 {
        let mut h = seed;
        for w in words {
            h = mix(h, *w);
        }
        finish(h, 4 * words.len() as u32)
    }

    #[test]
    fn mixing_is_murmur3_x86_32() {
        // Published MurmurHash3_x86_32 verification values (4-byte inputs, no tail).
        let le = u32::from_le_bytes;
        assert_eq!(murmur3_words(&[], 0), 0);
        assert_eq!(murmur3_words(&[], 1), 0x514e_28b7);
        assert_eq!(murmur3_words(&[], 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_words(&[le([0, 0, 0, 0])], 0), 0x2362_f9de);
        assert_eq!(murmur3_words(&[le([0xff; 4])], 0), 0x7629_3b50);
        assert_eq!(
            murmur3_words(&[le([0x21, 0x43, 0x65, 0x87])], 0),
            0xf55b_516b
        );
        assert_eq!(
            murmur3_words(&[le([0x21, 0x43, 0x65, 0x87])], 0x5082_edee),
            0x2362_f9de
        );
        assert_eq!(murmur3_words(&[le(*b"test")], 0), 0xba6b_d213);
    }

    #[test]
    fn modes_hash_the_documented_words() {
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let t = rng.tuple();
            let seed = rng.u32();
            let ports = t.src_port_be as u32 | (t.dst_port_be as u32) << 16;
            let s = t.src;
            let d = t.dst;
            let five = [
                s[0],
                s[1],
                s[2],
                s[3],
                ports,
                d[0],
                d[1],
                d[2],
                d[3],
                t.proto as u32,
            ];
            assert_eq!(
                flow_hash(&t, HASH_FIVE_TUPLE, seed),
                murmur3_words(&five, seed)
            );
            assert_eq!(flow_hash(&t, HASH_SOURCE_IP, seed), murmur3_words(&s, seed));
            let sp = [s[0], s[1], s[2], s[3], t.src_port_be as u32];
            assert_eq!(
                flow_hash(&t, HASH_SOURCE_IP_PORT, seed),
                murmur3_words(&sp, seed)
            );
            assert_eq!(
                addr_port_hash(&s, t.src_port_be, seed),
                murmur3_words(&sp, seed)
            );
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn five_tuple_hash_is_murmur3_of_the_wire_bytes() {
        // On a little-endian host the hash is MurmurHash3_x86_32 of the documented byte string.
        let src = addr_from_v4_wire(u32::from_ne_bytes([192, 0, 2, 1]));
        let dst = addr_from_v4_wire(u32::from_ne_bytes([198, 51, 100, 7]));
        let t = FlowTuple {
            src,
            dst,
            src_port_be: 40000u16.to_be(),
            dst_port_be: 53u16.to_be(),
            proto: 17,
        };
        let mut bytes = [0u8; 40];
        for (i, w) in src.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        bytes[16..18].copy_from_slice(&40000u16.to_be_bytes());
        bytes[18..20].copy_from_slice(&53u16.to_be_bytes());
        for (i, w) in dst.iter().enumerate() {
            bytes[20 + i * 4..24 + i * 4].copy_from_slice(&w.to_ne_bytes());
        }
        bytes[36] = 17;
        let words: [u32; 10] = core::array::from_fn(|i| {
            u32::from_le_bytes([
                bytes[i * 4],
                bytes[i * 4 + 1],
                bytes[i * 4 + 2],
                bytes[i * 4 + 3],
            ])
        });
        assert_eq!(flow_hash(&t, HASH_FIVE_TUPLE, 7), murmur3_words(&words, 7));
    }

    #[test]
    fn deterministic() {
        let mut rng = Rng(2);
        for _ in 0..1000 {
            let t = rng.tuple();
            let copy = t;
            for fields in [HASH_FIVE_TUPLE, HASH_SOURCE_IP, HASH_SOURCE_IP_PORT] {
                assert_eq!(flow_hash(&t, fields, 99), flow_hash(&copy, fields, 99));
            }
        }
        // A fixed value pins the function: a change would break a running data plane's
        // agreement with an older user space, so it must be deliberate.
        let t = FlowTuple {
            src: addr_from_v4_wire(u32::from_ne_bytes([10, 0, 0, 1])),
            dst: addr_from_v4_wire(u32::from_ne_bytes([10, 0, 0, 2])),
            src_port_be: 1234u16.to_be(),
            dst_port_be: 53u16.to_be(),
            proto: 17,
        };
        // (Checked against an independent MurmurHash3_x86_32 of the documented byte strings.)
        if cfg!(target_endian = "little") {
            assert_eq!(flow_hash(&t, HASH_FIVE_TUPLE, 0), 0x0ed6_39cc);
            assert_eq!(flow_hash(&t, HASH_SOURCE_IP, 0), 0x98fe_1236);
            assert_eq!(flow_hash(&t, HASH_SOURCE_IP_PORT, 0), 0xae3d_e866);
        }
    }

    #[test]
    fn unknown_fields_value_is_five_tuple() {
        let mut rng = Rng(3);
        for _ in 0..1000 {
            let t = rng.tuple();
            let seed = rng.u32();
            let five = flow_hash(&t, HASH_FIVE_TUPLE, seed);
            for fields in [3, 4, 17, u32::MAX] {
                assert_eq!(flow_hash(&t, fields, seed), five);
            }
        }
    }

    #[test]
    fn each_mode_ignores_the_fields_it_should() {
        let mut rng = Rng(4);
        let mut five_changed = [0u32; 5];
        for _ in 0..1000 {
            let t = rng.tuple();
            let seed = rng.u32();
            let mut other_dst = t;
            other_dst.dst = [rng.u32(), rng.u32(), rng.u32(), rng.u32()];
            let mut other_sport = t;
            other_sport.src_port_be ^= 1 + rng.u32() as u16 % 0xffff;
            let mut other_dport = t;
            other_dport.dst_port_be ^= 1 + rng.u32() as u16 % 0xffff;
            let mut other_proto = t;
            other_proto.proto ^= 1 + rng.u32() as u8 % 0xff;
            let mut other_src = t;
            other_src.src[3] ^= 1 + rng.u32() % 0xffff_ffff;

            let h = |t: &FlowTuple, f| flow_hash(t, f, seed);
            // Source IP: only the source address counts.
            for o in [&other_dst, &other_sport, &other_dport, &other_proto] {
                assert_eq!(h(o, HASH_SOURCE_IP), h(&t, HASH_SOURCE_IP));
            }
            assert_ne!(h(&other_src, HASH_SOURCE_IP), h(&t, HASH_SOURCE_IP));
            // Source IP and port: the destination and protocol do not count.
            for o in [&other_dst, &other_dport, &other_proto] {
                assert_eq!(h(o, HASH_SOURCE_IP_PORT), h(&t, HASH_SOURCE_IP_PORT));
            }
            assert_ne!(
                h(&other_src, HASH_SOURCE_IP_PORT),
                h(&t, HASH_SOURCE_IP_PORT)
            );
            assert_ne!(
                h(&other_sport, HASH_SOURCE_IP_PORT),
                h(&t, HASH_SOURCE_IP_PORT)
            );
            // Five tuple: every field counts.
            for (i, o) in [
                &other_src,
                &other_dst,
                &other_sport,
                &other_dport,
                &other_proto,
            ]
            .into_iter()
            .enumerate()
            {
                if h(o, HASH_FIVE_TUPLE) != h(&t, HASH_FIVE_TUPLE) {
                    five_changed[i] += 1;
                }
            }
        }
        // A 32-bit hash may collide by chance, but essentially never.
        assert!(five_changed.iter().all(|&c| c >= 999), "{five_changed:?}");
    }

    #[test]
    fn the_seed_changes_the_output() {
        let mut rng = Rng(5);
        for fields in [HASH_FIVE_TUPLE, HASH_SOURCE_IP, HASH_SOURCE_IP_PORT] {
            let mut same = 0;
            for _ in 0..1000 {
                let t = rng.tuple();
                let seed = rng.u32();
                if flow_hash(&t, fields, seed) == flow_hash(&t, fields, seed ^ 1) {
                    same += 1;
                }
                if flow_hash(&t, fields, seed) == flow_hash(&t, fields, seed.wrapping_add(1 << 31))
                {
                    same += 1;
                }
            }
            assert!(same <= 1, "fields {fields}: {same} seeds collided");
        }
    }

    #[test]
    fn avalanche() {
        // Flipping any single input bit flips about half of the 32 output bits.
        let mut rng = Rng(6);
        const SAMPLES: u32 = 200;
        let mut worst = (16.0f64, 16.0f64);
        let mut total = 0u64;
        let mut flips = 0u64;
        // (field, bit) pairs: 0..128 src, 128..256 dst, 256..272 sport, 272..288 dport,
        // 288..296 proto.
        for bit in 0..296u32 {
            let mut changed = 0u64;
            for _ in 0..SAMPLES {
                let t = rng.tuple();
                let seed = rng.u32();
                let mut u = t;
                match bit {
                    0..128 => u.src[(bit / 32) as usize] ^= 1 << (bit % 32),
                    128..256 => u.dst[((bit - 128) / 32) as usize] ^= 1 << (bit % 32),
                    256..272 => u.src_port_be ^= 1 << (bit - 256),
                    272..288 => u.dst_port_be ^= 1 << (bit - 272),
                    _ => u.proto ^= 1 << (bit - 288),
                }
                let d = flow_hash(&t, HASH_FIVE_TUPLE, seed) ^ flow_hash(&u, HASH_FIVE_TUPLE, seed);
                changed += u64::from(d.count_ones());
            }
            let mean = changed as f64 / f64::from(SAMPLES);
            worst = (worst.0.min(mean), worst.1.max(mean));
            assert!((12.0..=20.0).contains(&mean), "bit {bit}: mean {mean}");
            total += changed;
            flips += u64::from(SAMPLES);
        }
        let mean = total as f64 / flips as f64;
        std::println!(
            "avalanche: {mean:.3} output bits flip per input bit flip (per-bit means {:.2}..{:.2})",
            worst.0,
            worst.1
        );
        assert!((15.5..=16.5).contains(&mean), "overall mean {mean}");

        // The seed avalanches too.
        let mut changed = 0u64;
        for i in 0..10_000u32 {
            let t = rng.tuple();
            let seed = rng.u32();
            let d = flow_hash(&t, HASH_SOURCE_IP, seed)
                ^ flow_hash(&t, HASH_SOURCE_IP, seed ^ (1 << (i % 32)));
            changed += u64::from(d.count_ones());
        }
        let mean = changed as f64 / 10_000.0;
        assert!((15.5..=16.5).contains(&mean), "seed mean {mean}");
    }

    #[test]
    fn fast_range_stays_in_range() {
        let mut rng = Rng(7);
        assert_eq!(fast_range(0, 0), 0);
        assert_eq!(fast_range(u32::MAX, 0), 0);
        for n in [1u32, 2, 3, 10, 65537, u32::MAX] {
            assert_eq!(fast_range(0, n), 0);
            assert_eq!(fast_range(u32::MAX, n), n - 1);
            for _ in 0..10_000 {
                assert!(fast_range(rng.u32(), n) < n);
            }
        }
    }

    #[test]
    fn fast_range_splits_the_hash_space_evenly() {
        // Over the whole 32-bit space every bucket gets floor or ceil of 2^32 / n hashes: bucket
        // k holds the hashes in [ceil(k * 2^32 / n), ceil((k + 1) * 2^32 / n)).
        for n in [1u32, 3, 7, 10, 1000, 65537] {
            let first = |k: u64| (k << 32).div_ceil(u64::from(n));
            for k in [0, 1, u64::from(n) / 2, u64::from(n) - 1]
                .into_iter()
                .filter(|&k| k < u64::from(n))
            {
                let lo = first(k);
                let hi = first(k + 1);
                assert!(
                    hi - lo == (1 << 32) / u64::from(n) || hi - lo == (1 << 32) / u64::from(n) + 1
                );
                assert_eq!(fast_range(lo as u32, n), k as u32);
                assert_eq!(fast_range((hi - 1) as u32, n), k as u32);
                if lo > 0 {
                    assert_eq!(fast_range((lo - 1) as u32, n), k as u32 - 1);
                }
            }
        }
    }

    /// Spreads `samples` random IPv4 flows over 10 buckets; returns the counts, the chi-square
    /// statistic and the worst relative deviation of a bucket from its fair share.
    fn spread(rng: &mut Rng, fields: u32, samples: u32) -> ([u32; 10], f64, f64) {
        let mut counts = [0u32; 10];
        for _ in 0..samples {
            let t = rng.v4_tuple();
            counts[fast_range(flow_hash(&t, fields, 0x5eed), 10) as usize] += 1;
        }
        let expected = f64::from(samples) / 10.0;
        let chi2 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        let worst = counts
            .iter()
            .map(|&c| (f64::from(c) / expected - 1.0).abs())
            .fold(0.0, f64::max);
        (counts, chi2, worst)
    }

    #[test]
    fn flow_hashes_spread_evenly_over_buckets() {
        let mut rng = Rng(8);
        for fields in [HASH_FIVE_TUPLE, HASH_SOURCE_IP, HASH_SOURCE_IP_PORT] {
            // 100k samples: a bucket's count has a standard deviation of about 0.95% of its
            // share, so "every bucket within 2%" would fail by chance about a third of the time;
            // the chi-square statistic is the sound test at this size. 27.88 is the 99.9th
            // percentile of chi-square with 9 degrees of freedom.
            let (counts, chi2, worst) = spread(&mut rng, fields, 100_000);
            std::println!(
                "fields {fields}: 100k flows into 10 buckets {counts:?}, chi2 {chi2:.2} (9 dof), \
                 worst deviation {:.2}%",
                worst * 100.0
            );
            assert!(chi2 < 27.88, "fields {fields}: chi2 {chi2}");
            // 1M samples: the standard deviation is 0.3%, so 2% is a safe bound per bucket.
            let (counts, chi2, worst) = spread(&mut rng, fields, 1_000_000);
            std::println!(
                "fields {fields}: 1M flows into 10 buckets {counts:?}, chi2 {chi2:.2}, worst \
                 deviation {:.2}%",
                worst * 100.0
            );
            assert!(chi2 < 27.88, "fields {fields}: chi2 {chi2}");
            assert!(worst <= 0.02, "fields {fields}: worst deviation {worst}");
        }
    }
}
