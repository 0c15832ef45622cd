//! Weighted Maglev-style consistent hashing (user space only).
//!
//! The table uses the permutations of Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer" (NSDI 2016), section 3.4, and Envoy-style weights, but fills it in a
//! way that moves fewer slots when the set of backends changes.
//!
//! **Permutations.** Each backend has a preference order over the slots,
//! `(offset + j * skip) % size`, with `offset = h1 % size` and `skip = h2 % (size - 1) + 1`,
//! where `h1`, `h2` are two differently seeded hashes of the backend's identity (address and
//! port), made with the same murmur3 mixing as the flow hash ([`crate::hash`]). As `size` is
//! prime, every order visits every slot once. An order depends only on the identity and the
//! seed, never on the backend's position or on the other backends.
//!
//! **Fill.** The fill goes in rounds `t = 1, 2, ...`. A backend of weight `w` examines its
//! `k`-th preference (`k = 0, 1, ...`) in round `ceil(max_w * (k + 1) / w)`: one preference per
//! round at the highest weight, proportionally fewer below. If the slot is free, the backend
//! claims it; if not, it simply moves on. Classic Maglev instead lets a backend whose
//! preference is taken keep walking until it claims a slot in that same round. That keeps every
//! backend at exactly its share, but a new backend then makes every other one walk ahead into
//! slots that used to belong to a third one, a knock-on effect that moves about 55% more slots
//! than necessary with 100 backends in 65537 slots. Without the walk-ahead, a slot goes to the
//! backend that prefers it earliest (rendezvous hashing over the preference ranks), so adding
//! or removing a backend moves almost only the slots it gains or loses.
//!
//! **Bounds.** Left alone, that race gives each backend its share only up to chance (a
//! standard deviation of about `sqrt(q / 2)` slots for a share of `q` slots). So each backend
//! gets an exact quota `q` (the table size apportioned by weight, largest remainder first) and a
//! tolerance `floor(0.75 * sqrt(q))` ([`tolerance`]), and its count is kept within
//! `q ± tolerance`: a backend stops claiming at the upper bound, and once the free slots are
//! only just enough for the backends still below their lower bound, only those may claim. For
//! 10 equal backends in 65537 slots that is within ±0.92% of the fair share; for 100, ±2.9%.
//! A tighter bound makes more backends hit it, and every one that does passes the chance
//! difference between what a newcomer took from it and what it must give up on to others,
//! which is what the tolerance avoids.
//!
//! Within a round, backends go in the order of their identity (address, port, then weight), not
//! in input order, and quota ties are broken in that order too. So the input order changes only
//! the indices in the table, never which backend owns a slot.
//!
//! The rounds are not scanned one by one: each backend waits in a priority queue keyed by
//! (its next round, its rank in identity order), which visits the backends in the same order as
//! a scan but skips the empty rounds that skewed weights would cause.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::vec;
use std::vec::Vec;

use crate::Addr;
use crate::hash::addr_port_hash;

/// One backend as Maglev sees it: its identity (address and port, raw, i.e. network order) and
/// its weight (0 = not in the table, e.g. drained).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    pub addr: Addr,
    pub port_be: u16,
    pub weight: u32,
}

/// The table size used unless configured otherwise (a prime; the paper suggests at least 100
/// times the number of backends).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Seed tweaks of the two identity hashes, so that they differ from each other and from the
/// flow hash made with the same seed.
const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_736b; // "evsk"

/// True if `n` is prime. Deterministic trial division by 2, 3 and `6k ± 1` up to `sqrt(n)`
/// (at most about 22,000 divisions for `n < 2^32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// How far (in slots) the count of a backend with an exact quota of `quota` slots may end up
/// from it: `floor(0.75 * sqrt(quota))`.
pub const fn tolerance(quota: u32) -> u32 {
    // floor(sqrt(floor(x))) = floor(sqrt(x)), so this is exact in integers.
    (quota as u64 * 9 / 16).isqrt() as u32
}

/// The exact quotas: `size` apportioned by `weights` (not all zero) by largest remainder, ties
/// to the lower index.
fn quotas(weights: &[u64], size: u32) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let size128 = u128::from(size);
    let mut q: Vec<u32> = weights
        .iter()
        .map(|&w| (size128 * u128::from(w) / sum) as u32)
        .collect();
    let given: u32 = q.iter().sum();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    // Stable: lower index first on a tie.
    by_remainder.sort_by_key(|&i| Reverse(size128 * u128::from(weights[i]) % sum));
    for &i in by_remainder.iter().take((size - given) as usize) {
        q[i] += 1;
    }
    q
}

/// The `(offset, skip)` of a backend's permutation in a table of `size` (prime, `>= 2`) slots.
fn permutation(b: &MaglevBackend, size: u32, seed: u32) -> (u32, u32) {
    let h1 = addr_port_hash(&b.addr, b.port_be, seed ^ OFFSET_SEED);
    let h2 = addr_port_hash(&b.addr, b.port_be, seed ^ SKIP_SEED);
    (h1 % size, h2 % (size - 1) + 1)
}

/// Builds a weighted Maglev lookup table of `size` entries, each an index into `backends`.
///
/// Backends with weight 0 get no entry. Returns `None` if `size` is not prime (which includes
/// `size < 2`) or no backend has a weight above 0.
///
/// A backend whose exact share of the table is `q = size * w / sum(w)` slots (rounded by
/// largest remainder) owns between `q - tolerance(q)` and `q + tolerance(q)` slots; see the
/// module documentation for the algorithm.
///
/// The result depends only on the (address, port, weight) of each backend, their order (which
/// only decides the indices written), `size` and `seed`. A backend's permutation depends only
/// on its identity and the seed, so adding or removing other backends moves few slots.
pub fn build_table(backends: &[MaglevBackend], size: u32, seed: u32) -> Option<Vec<u32>> {
    if !is_prime(size) {
        return None;
    }
    let mut order: Vec<u32> = (0..backends.len() as u32)
        .filter(|&i| backends[i as usize].weight > 0)
        .collect();
    if order.is_empty() {
        return None;
    }
    order.sort_by_key(|&i| {
        let b = &backends[i as usize];
        (b.addr, b.port_be, b.weight)
    });
    let weights: Vec<u64> = order
        .iter()
        .map(|&i| u64::from(backends[i as usize].weight))
        .collect();
    let max_w = *weights.iter().max()?;

    struct Walk {
        offset: u64,
        skip: u64,
        weight: u64,
        /// How many of its preferences the backend has examined.
        next: u64,
        /// Slots it owns.
        count: u32,
        low: u32,
        high: u32,
    }
    let mut walks: Vec<Walk> = order
        .iter()
        .zip(quotas(&weights, size))
        .map(|(&i, q)| {
            let b = &backends[i as usize];
            let (offset, skip) = permutation(b, size, seed);
            let tol = tolerance(q);
            Walk {
                offset: u64::from(offset),
                skip: u64::from(skip),
                weight: u64::from(b.weight),
                next: 0,
                count: 0,
                low: q - tol,
                high: q + tol,
            }
        })
        .collect();
    // The round in which a backend examines its k-th preference. Strictly increasing in k, as
    // max_w >= w; below 2^64 as k < size and max_w < 2^32.
    let round = |w: &Walk| (max_w * (w.next + 1)).div_ceil(w.weight);

    const EMPTY: u32 = u32::MAX;
    let size64 = u64::from(size);
    let mut table = vec![EMPTY; size as usize];
    let mut free = size;
    // Slots still owed to backends below their lower bound. Invariant: free >= owed, because a
    // backend at or above its lower bound claims only while free > owed.
    let mut owed: u32 = walks.iter().map(|w| w.low).sum();
    let mut queue: BinaryHeap<Reverse<(u64, u32)>> = walks
        .iter()
        .enumerate()
        .map(|(rank, w)| Reverse((round(w), rank as u32)))
        .collect();
    // Termination: while free > owed, some backend is below its upper bound (the upper bounds
    // add up to at least `size`) and stays queued; once free == owed it stays so, and the
    // backends below their lower bound stay queued. A queued backend's permutation reaches
    // every free slot within `size` preferences, and it claims the first free one it examines.
    while free > 0 {
        let Reverse((_, rank)) = queue.pop()?;
        let w = &mut walks[rank as usize];
        let below_low = w.count < w.low;
        if w.count >= w.high || (free == owed && !below_low) {
            // Done for good: the count only grows, and once free == owed it stays so.
            continue;
        }
        let slot = ((w.offset + w.next * w.skip) % size64) as usize;
        w.next += 1;
        if table[slot] == EMPTY {
            table[slot] = order[rank as usize];
            w.count += 1;
            free -= 1;
            if below_low {
                owed -= 1;
            }
        }
        if w.next < size64 {
            queue.push(Reverse((round(w), rank)));
        }
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_from_v4_wire;
    use std::println;

    use crate::test_rng::Rng;

    /// Helpers on the shared test generator.
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    const SEED: u32 = 0x1234_5678;

    /// Backend `n` of a test pool: 10.0.x.y:(8000 + n).
    fn backend(n: u32, weight: u32) -> MaglevBackend {
        let [_, _, x, y] = n.to_be_bytes();
        MaglevBackend {
            addr: addr_from_v4_wire(u32::from_ne_bytes([10, 0, x, y])),
            port_be: (8000 + n as u16).to_be(),
            weight,
        }
    }

    fn pool(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// The table with each entry replaced by the identity of the backend it names.
    fn identities(table: &[u32], backends: &[MaglevBackend]) -> Vec<(Addr, u16)> {
        table
            .iter()
            .map(|&i| (backends[i as usize].addr, backends[i as usize].port_be))
            .collect()
    }

    /// Fraction of the slots counted by `consider` whose owner differs between the tables.
    fn changed(
        before: &[(Addr, u16)],
        after: &[(Addr, u16)],
        consider: impl Fn(&(Addr, u16)) -> bool,
    ) -> f64 {
        let mut total = 0u32;
        let mut moved = 0u32;
        for (a, b) in before.iter().zip(after) {
            if consider(a) {
                total += 1;
                if a != b {
                    moved += 1;
                }
            }
        }
        f64::from(moved) / f64::from(total)
    }

    /// The fill as the module documentation states it, scanning every round: the reference for
    /// the priority queue.
    fn build_table_by_scanning(backends: &[MaglevBackend], size: u32, seed: u32) -> Vec<u32> {
        let mut order: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        order.sort_by_key(|&i| (backends[i].addr, backends[i].port_be, backends[i].weight));
        let weights: Vec<u64> = order.iter().map(|&i| backends[i].weight as u64).collect();
        let max_w = *weights.iter().max().unwrap();
        let q = quotas(&weights, size);
        let low: Vec<u32> = q.iter().map(|&q| q - tolerance(q)).collect();
        let high: Vec<u32> = q.iter().map(|&q| q + tolerance(q)).collect();
        let perms: Vec<(u32, u32)> = order
            .iter()
            .map(|&i| permutation(&backends[i], size, seed))
            .collect();
        let mut examined = vec![0u64; order.len()];
        let mut count = vec![0u32; order.len()];
        let mut table = vec![u32::MAX; size as usize];
        let mut free = size;
        let mut round = 0u64;
        while free > 0 {
            round += 1;
            for r in 0..order.len() {
                if free == 0 {
                    break;
                }
                // Its turn: t * w >= max_w * (examined + 1).
                if round * weights[r] < max_w * (examined[r] + 1) {
                    continue;
                }
                let owed: u32 = (0..order.len())
                    .map(|k| low[k].saturating_sub(count[k]))
                    .sum();
                if count[r] >= high[r] || (free == owed && count[r] >= low[r]) {
                    continue;
                }
                let (offset, skip) = perms[r];
                let slot = ((offset as u64 + examined[r] * skip as u64) % size as u64) as usize;
                examined[r] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = order[r] as u32;
                    count[r] += 1;
                    free -= 1;
                }
            }
        }
        table
    }

    /// Every backend's count is within its quota's tolerance; returns the worst relative
    /// deviation from the exact (unrounded) weight share.
    fn assert_within_bounds(backends: &[MaglevBackend], table: &[u32], size: u32) -> f64 {
        let c = counts(table, backends.len());
        let sum: u64 = backends.iter().map(|b| b.weight as u64).sum();
        let mut worst = 0.0f64;
        for (i, b) in backends.iter().enumerate() {
            let exact = size as f64 * b.weight as f64 / sum as f64;
            if b.weight == 0 {
                assert_eq!(c[i], 0);
                continue;
            }
            // The quota is the exact share rounded up or down.
            let tol = tolerance(exact.ceil() as u32) as f64;
            assert!(
                (c[i] as f64 - exact).abs() <= tol + 1.0,
                "backend {i}: {} slots, exact share {exact}, tolerance {tol}",
                c[i]
            );
            worst = worst.max((c[i] as f64 / exact - 1.0).abs());
        }
        worst
    }

    #[test]
    fn primes() {
        let primes = [
            2u32,
            3,
            5,
            7,
            11,
            13,
            97,
            251,
            257,
            65521,
            65537,
            131071,
            999_983,
            2_147_483_647,
            4_294_967_291,
        ];
        let composites = [
            0u32,
            1,
            4,
            6,
            9,
            15,
            25,
            49,
            91,
            65535,
            65536,
            65539 * 3,
            1_000_000,
            65521 * 65521,
            4_294_967_295,
            65537 * 65521,
            // Carmichael numbers, which fool a Fermat test.
            561,
            1105,
            41041,
        ];
        for p in primes {
            assert!(is_prime(p), "{p}");
        }
        for c in composites {
            assert!(!is_prime(c), "{c}");
        }
        // Against a sieve for small numbers.
        let mut sieve = vec![true; 10_000];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..100 {
            if sieve[i] {
                for j in (i * i..10_000).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), p, "{n}");
        }
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn rejects_bad_input() {
        let b = pool(3);
        for size in [0, 1, 4, 100, 65536] {
            assert_eq!(build_table(&b, size, SEED), None, "size {size}");
        }
        assert_eq!(build_table(&[], 65537, SEED), None);
        let zero: Vec<_> = (0..3).map(|i| backend(i, 0)).collect();
        assert_eq!(build_table(&zero, 65537, SEED), None);
        // The smallest prime works.
        assert_eq!(build_table(&b[..1], 2, SEED), Some(vec![0, 0]));
    }

    #[test]
    fn weight_zero_backend_owns_no_slot() {
        let mut b = pool(5);
        b[2].weight = 0;
        let t = build_table(&b, 65537, SEED).unwrap();
        let c = counts(&t, 5);
        assert_eq!(c[2], 0);
        assert!(c.iter().enumerate().all(|(i, &n)| i == 2 || n > 0));
        // The same as leaving it out (up to the indices).
        let without: Vec<_> = b.iter().copied().filter(|x| x.weight > 0).collect();
        let t2 = build_table(&without, 65537, SEED).unwrap();
        assert_eq!(identities(&t, &b), identities(&t2, &without));
    }

    #[test]
    fn a_single_backend_owns_everything() {
        let b = [backend(0, 0), backend(1, 7)];
        let t = build_table(&b, 251, SEED).unwrap();
        assert!(t.iter().all(|&e| e == 1));
    }

    #[test]
    fn priority_queue_matches_the_round_by_round_scan() {
        let mut rng = Rng(11);
        for case in 0..40 {
            let n = 1 + rng.below(20) as u32;
            let size = [2u32, 3, 13, 251, 1009, 65537][case % 6];
            let b: Vec<_> = (0..n)
                .map(|i| {
                    // Skewed weights make many empty rounds, which the scan pays for.
                    let weight = match rng.below(4) {
                        0 => 0,
                        1 => 1 + rng.below(3) as u32,
                        2 => 1 + rng.below(20) as u32,
                        _ if size <= 1009 => 1 + rng.below(65535) as u32,
                        _ => 1 + rng.below(100) as u32,
                    };
                    backend(i * 7 + case as u32, weight)
                })
                .collect();
            let seed = rng.next() as u32;
            let fast = build_table(&b, size, seed);
            if b.iter().all(|x| x.weight == 0) {
                assert_eq!(fast, None);
                continue;
            }
            let fast = fast.unwrap();
            assert_eq!(fast, build_table_by_scanning(&b, size, seed), "case {case}");
            assert_within_bounds(&b, &fast, size);
        }
    }

    #[test]
    fn balance_with_equal_weights() {
        let b = pool(10);
        let t = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
        assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
        let fair = f64::from(DEFAULT_TABLE_SIZE) / 10.0;
        let c = counts(&t, 10);
        let ratios: Vec<f64> = c.iter().map(|&n| f64::from(n) / fair).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "maglev balance, 10 equal backends, size 65537: slots {c:?}, fair {fair:.1}, \
             min/max ratio {lo:.5}/{hi:.5}"
        );
        for r in ratios {
            assert!((0.99..=1.01).contains(&r), "ratio {r}");
        }
    }

    #[test]
    fn shares_follow_the_weights() {
        for weights in [[1u32, 2, 3, 4], [4, 3, 2, 1], [100, 200, 300, 400]] {
            let b: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| backend(i as u32, w))
                .collect();
            let t = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
            let c = counts(&t, 4);
            let sum: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let share = f64::from(c[i]) / f64::from(DEFAULT_TABLE_SIZE);
                let want = f64::from(w) / f64::from(sum);
                println!(
                    "maglev weights {weights:?}: backend {i} weight {w}: {} slots, share {share:.5} \
                     (want {want:.5}), abs error {:.5}, rel error {:.3}%",
                    c[i],
                    (share - want).abs(),
                    (share - want).abs() / want * 100.0
                );
                assert!(
                    (share - want).abs() <= 0.01,
                    "backend {i}: {share} vs {want}"
                );
            }
        }
        // A skewed case: every backend still gets its share within the tolerance, however small.
        let weights = [1u32, 65535, 10, 1000];
        let b: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(i as u32, w))
            .collect();
        let t = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
        assert_within_bounds(&b, &t, DEFAULT_TABLE_SIZE);
        assert!(counts(&t, 4).iter().all(|&c| c > 0));
    }

    #[test]
    fn minimal_disruption() {
        for n in [5u32, 10, 100] {
            let before_b = pool(n);
            let before = identities(
                &build_table(&before_b, DEFAULT_TABLE_SIZE, SEED).unwrap(),
                &before_b,
            );
            for removed in [0, n / 2, n - 1] {
                let mut after_b = before_b.clone();
                let gone = after_b.remove(removed as usize);
                let after = identities(
                    &build_table(&after_b, DEFAULT_TABLE_SIZE, SEED).unwrap(),
                    &after_b,
                );
                // Every slot of the removed backend must move, and only those ideally.
                assert!(
                    after
                        .iter()
                        .all(|&(a, p)| (a, p) != (gone.addr, gone.port_be))
                );
                let f = changed(&before, &after, |&(a, p)| {
                    (a, p) != (gone.addr, gone.port_be)
                });
                let limit = 1.2 / f64::from(n);
                println!(
                    "maglev remove: N={n} remove #{removed}: {:.4}% of surviving backends' slots \
                     moved (limit {:.4}%)",
                    f * 100.0,
                    limit * 100.0
                );
                assert!(f <= limit, "N={n}, removed {removed}: {f}");
            }
            // Add a backend: at the end, at the start (in identity order), and in the middle.
            for (label, added) in [
                ("end", backend(n, 1)),
                ("start", {
                    let mut x = backend(0, 1);
                    x.addr = addr_from_v4_wire(u32::from_ne_bytes([9, 0, 0, 1]));
                    x
                }),
                ("middle", {
                    let mut x = backend(n / 2, 1);
                    x.port_be = 7999u16.to_be();
                    x
                }),
            ] {
                let mut after_b = before_b.clone();
                after_b.push(added);
                let t = build_table(&after_b, DEFAULT_TABLE_SIZE, SEED).unwrap();
                let after = identities(&t, &after_b);
                let f = changed(&before, &after, |_| true);
                let new_share = f64::from(counts(&t, after_b.len())[n as usize])
                    / f64::from(DEFAULT_TABLE_SIZE);
                let limit = 1.2 / f64::from(n + 1);
                println!(
                    "maglev add: N={n}->{} ({label}): {:.4}% of all slots moved (new backend owns \
                     {:.4}%, ideal {:.4}%, limit {:.4}%)",
                    n + 1,
                    f * 100.0,
                    new_share * 100.0,
                    100.0 / f64::from(n + 1),
                    limit * 100.0
                );
                assert!(f <= limit, "N={n}, add {label}: {f}");
            }
        }
    }

    #[test]
    fn deterministic() {
        let mut rng = Rng(12);
        let b: Vec<_> = (0..20)
            .map(|i| backend(i, 1 + rng.below(5) as u32))
            .collect();
        let t1 = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
        let t2 = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
        assert_eq!(t1, t2);

        let other = build_table(&b, DEFAULT_TABLE_SIZE, SEED ^ 1).unwrap();
        let differ = t1.iter().zip(&other).filter(|(a, b)| a != b).count();
        println!(
            "maglev: seed changed by one bit moves {:.2}% of slots",
            differ as f64 * 100.0 / f64::from(DEFAULT_TABLE_SIZE)
        );
        // Two unrelated tables of 20 backends agree on about 1/20 of the slots by chance.
        assert!(
            differ as f64 > 0.8 * f64::from(DEFAULT_TABLE_SIZE),
            "{differ}"
        );

        // Reordering the input renames the entries but gives each slot the same owner.
        for _ in 0..5 {
            let mut shuffled = b.clone();
            rng.shuffle(&mut shuffled);
            let t3 = build_table(&shuffled, DEFAULT_TABLE_SIZE, SEED).unwrap();
            assert_eq!(identities(&t1, &b), identities(&t3, &shuffled));
        }
        // Also with duplicate identities of different weights.
        let mut dup = b.clone();
        dup.push(MaglevBackend { weight: 9, ..b[3] });
        let td = build_table(&dup, 1009, SEED).unwrap();
        let mut dup2 = dup.clone();
        dup2.reverse();
        let td2 = build_table(&dup2, 1009, SEED).unwrap();
        let full = |t: &[u32], bs: &[MaglevBackend]| -> Vec<MaglevBackend> {
            t.iter().map(|&i| bs[i as usize]).collect()
        };
        assert_eq!(full(&td, &dup), full(&td2, &dup2));
    }

    #[test]
    fn a_permutation_ignores_the_other_backends() {
        // The first slots a backend prefers do not depend on its position or the pool.
        let a = backend(3, 1);
        assert_eq!(
            permutation(&a, DEFAULT_TABLE_SIZE, SEED),
            permutation(&backend(3, 5), DEFAULT_TABLE_SIZE, SEED)
        );
        let (offset, skip) = permutation(&a, DEFAULT_TABLE_SIZE, SEED);
        assert!(offset < DEFAULT_TABLE_SIZE);
        assert!((1..DEFAULT_TABLE_SIZE).contains(&skip));
        // The backend first in identity order examines first, so it owns its first preference,
        // wherever it sits in the input.
        let mut b = pool(8);
        b.rotate_left(3);
        let first = b.iter().position(|x| *x == backend(0, 1)).unwrap();
        let (offset, _) = permutation(&b[first], DEFAULT_TABLE_SIZE, SEED);
        let t = build_table(&b, DEFAULT_TABLE_SIZE, SEED).unwrap();
        assert_eq!(t[offset as usize], first as u32);
    }

    #[test]
    fn counts_stay_within_the_tolerance() {
        assert_eq!(tolerance(0), 0);
        assert_eq!(tolerance(1), 0);
        assert_eq!(tolerance(2), 1);
        assert_eq!(tolerance(655), 19);
        assert_eq!(tolerance(6554), 60);
        assert_eq!(tolerance(u32::MAX), 49151);
        let mut rng = Rng(13);
        for (n, size) in [
            (1u32, 65537u32),
            (2, 65537),
            (3, 65537),
            (7, 1009),
            (10, 65537),
            (100, 65537),
            (1000, 65537),
            (1024, 131_071),
        ] {
            for weighted in [false, true] {
                let b: Vec<_> = (0..n)
                    .map(|i| {
                        let w = if weighted { rng.below(10) as u32 } else { 1 };
                        backend(i, w.max(u32::from(i == 0)))
                    })
                    .collect();
                let start = std::time::Instant::now();
                let t = build_table(&b, size, SEED).unwrap();
                let elapsed = start.elapsed();
                let worst = assert_within_bounds(&b, &t, size);
                println!(
                    "maglev bounds: {n} backends ({}), size {size}: worst deviation from the \
                     exact share {:.3}%, built in {elapsed:?}",
                    if weighted { "weights 0..9" } else { "equal" },
                    worst * 100.0
                );
            }
        }
    }
}
