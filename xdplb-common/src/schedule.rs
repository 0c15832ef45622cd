//! Tables of the rotating schedulers (user space only).
//!
//! The data plane walks a table with a per-CPU cursor, so the whole policy is in the table:
//! entries are indices into the `weights` slice given, and a backend of weight 0 (drained) gets
//! no entry. An empty table means no backend takes new flows.

use std::vec::Vec;

/// Round robin: each backend with weight > 0 once, in input order.
pub fn round_robin_table(weights: &[u32]) -> Vec<u32> {
    (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] > 0)
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Weighted round robin: a sequence in which each backend `i` with `weights[i] > 0` appears in
/// proportion to its weight, interleaved smoothly (nginx's smooth weighted round robin: every
/// step adds each backend's count to its credit, picks the backend with the most credit, the
/// lowest index on a tie, and takes the table length from its credit).
///
/// Length and counts:
/// - if `L = sum(w) / gcd(w) <= max_len`, the table has `L` entries and backend `i` appears
///   exactly `w_i / gcd(w)` times: its share is exactly its weight share;
/// - otherwise the table has `max_len` entries and the counts are apportioned by largest
///   remainder (Hamilton's method): each backend first gets `floor(max_len * w_i / sum(w))`
///   entries, and the entries left over (fewer than the number of backends) go one each to the
///   backends with the largest remainders `max_len * w_i mod sum(w)`, lower index first on a
///   tie. So each count differs from the exact quota `max_len * w_i / sum(w)` by less than
///   one, i.e. each share is within `1 / max_len` of the weight share. A backend whose weight
///   share is below `1 / max_len` may thus get no entry at all.
///
/// Returns an empty table if no weight is above 0 or `max_len` is 0.
pub fn weighted_round_robin_table(weights: &[u32], max_len: usize) -> Vec<u32> {
    let g = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 || max_len == 0 {
        return Vec::new();
    }
    let reduced_len: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
    let counts: Vec<u64> = if reduced_len <= max_len as u64 {
        weights.iter().map(|&w| u64::from(w) / g).collect()
    } else {
        apportion(weights, max_len as u64)
    };
    smooth_sequence(&counts)
}

/// Largest-remainder apportionment of `len` entries by `weights` (not all zero).
fn apportion(weights: &[u32], len: u64) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let len128 = u128::from(len);
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|&w| (len128 * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = counts.iter().sum();
    let mut by_remainder: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    // Largest remainder first; the sort is stable, so lower indices first on a tie.
    by_remainder.sort_by_key(|&i| core::cmp::Reverse(len128 * u128::from(weights[i]) % sum));
    for &i in by_remainder.iter().take((len - given) as usize) {
        counts[i] += 1;
    }
    counts
}

/// nginx's smooth weighted round robin over one full cycle: `sum(counts)` entries, in which
/// index `i` appears exactly `counts[i]` times.
fn smooth_sequence(counts: &[u64]) -> Vec<u32> {
    let len: u64 = counts.iter().sum();
    let active: Vec<(u32, i64)> = (0..counts.len() as u32)
        .filter(|&i| counts[i as usize] > 0)
        .map(|i| (i, counts[i as usize] as i64))
        .collect();
    let mut credit = std::vec![0i64; active.len()];
    let mut table = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let mut best = 0;
        for (k, &(_, c)) in active.iter().enumerate() {
            credit[k] += c;
            if credit[k] > credit[best] {
                best = k;
            }
        }
        credit[best] -= len as i64;
        table.push(active[best].0);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::println;
    use std::vec;

    use crate::test_rng::Rng;

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// Largest deviation, over every backend and every window of the table read cyclically, of
    /// the backend's count in the window from its exact share of the window.
    fn worst_window_deviation(table: &[u32], c: &[u64]) -> f64 {
        let len = table.len();
        let mut worst = 0.0f64;
        for (i, &ci) in c.iter().enumerate() {
            // Prefix counts over two laps make every cyclic window a difference of prefixes.
            let mut prefix = vec![0i64; 2 * len + 1];
            for k in 0..2 * len {
                prefix[k + 1] = prefix[k] + i64::from(table[k % len] == i as u32);
            }
            for start in 0..len {
                for w in 1..=len {
                    let got = (prefix[start + w] - prefix[start]) as f64;
                    let want = w as f64 * ci as f64 / len as f64;
                    worst = worst.max((got - want).abs());
                }
            }
        }
        worst
    }

    /// Longest run of one index, reading the table once or (`cyclic`) round and round.
    fn longest_run(table: &[u32], i: u32, cyclic: bool) -> usize {
        let len = table.len();
        let mut best = 0;
        let mut run = 0;
        for k in 0..if cyclic { 2 * len } else { len } {
            if table[k % len] == i {
                run += 1;
                best = best.max(run.min(len));
            } else {
                run = 0;
            }
        }
        best
    }

    #[test]
    fn round_robin() {
        assert_eq!(round_robin_table(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(round_robin_table(&[5, 0, 65535, 0, 1]), vec![0, 2, 4]);
        assert_eq!(round_robin_table(&[0, 0]), Vec::<u32>::new());
        assert_eq!(round_robin_table(&[]), Vec::<u32>::new());
    }

    #[test]
    fn weighted_1_2_3_4() {
        let t = weighted_round_robin_table(&[1, 2, 3, 4], 1000);
        println!("wrr 1:2:3:4 -> {t:?}");
        assert_eq!(t.len(), 10);
        assert_eq!(counts(&t, 4), vec![1, 2, 3, 4]);
        // Smooth: no backend appears twice in a row within the cycle, and only the heaviest
        // (4 of 10) twice across the wrap; no backend strays more than one entry from its share
        // of any window.
        for i in 0..4 {
            assert_eq!(longest_run(&t, i, false), 1, "{t:?}");
            assert!(longest_run(&t, i, true) <= 2, "{t:?}");
        }
        let dev = worst_window_deviation(&t, &[1, 2, 3, 4]);
        println!("wrr 1:2:3:4: worst window deviation {dev:.3}");
        assert!(dev < 1.5, "{dev}");
        // The same sequence as nginx gives for weights 1, 2, 3, 4.
        assert_eq!(t, vec![3, 2, 1, 3, 0, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() {
        let t = weighted_round_robin_table(&[1000, 0, 2000, 3000], 10);
        assert_eq!(t.len(), 6);
        assert_eq!(counts(&t, 4), vec![1, 0, 2, 3]);
        // Equal weights are plain round robin.
        assert_eq!(weighted_round_robin_table(&[7, 7, 7], 100), vec![0, 1, 2]);
        assert_eq!(weighted_round_robin_table(&[0, 65535], 100), vec![1]);
        // Exactly max_len still fits.
        assert_eq!(weighted_round_robin_table(&[1, 2, 3, 4], 10).len(), 10);
    }

    #[test]
    fn zero_weights_are_excluded() {
        let t = weighted_round_robin_table(&[0, 3, 0, 1, 0], 100);
        assert_eq!(counts(&t, 5), vec![0, 3, 0, 1, 0]);
        assert!(weighted_round_robin_table(&[0, 0, 0], 100).is_empty());
        assert!(weighted_round_robin_table(&[], 100).is_empty());
        assert!(weighted_round_robin_table(&[1, 2], 0).is_empty());
    }

    #[test]
    fn smooth_for_random_weights() {
        let mut rng = Rng(21);
        let mut worst = 0.0f64;
        for _ in 0..200 {
            let n = 1 + (rng.next() % 8) as usize;
            let w: Vec<u32> = (0..n).map(|_| (rng.next() % 10) as u32).collect();
            let t = weighted_round_robin_table(&w, 1000);
            if w.iter().all(|&x| x == 0) {
                assert!(t.is_empty());
                continue;
            }
            let g = w
                .iter()
                .filter(|&&x| x > 0)
                .fold(0, |g, &x| gcd(g, u64::from(x)));
            let want: Vec<u64> = w.iter().map(|&x| u64::from(x) / g).collect();
            let c = counts(&t, n);
            assert_eq!(c, want, "{w:?}");
            // No backend runs longer than its count over the others' plus one, even across the
            // wrap (so one with less than half of the weight appears at most twice in a row).
            let sum: u64 = want.iter().sum();
            for (i, &ci) in want.iter().enumerate() {
                if ci < sum {
                    let limit = ci.div_ceil(sum - ci) as usize + 1;
                    let run = longest_run(&t, i as u32, true);
                    assert!(run <= limit, "{w:?}: {t:?}");
                }
            }
            worst = worst.max(worst_window_deviation(&t, &c));
        }
        println!("wrr random weights: worst window deviation {worst:.3}");
        assert!(worst < 2.0, "{worst}");
    }

    #[test]
    fn long_cycles_are_cut_to_max_len() {
        let cases: [(&[u32], usize); 4] = [
            (&[65535, 65521, 1, 7919, 0, 3], 1000),
            (&[65535, 1], 100),
            (&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 65535], 10),
            (&[40_000, 30_001, 20_000, 10_000, 65_535, 12_345], 65537),
        ];
        for (weights, max_len) in cases {
            let t = weighted_round_robin_table(weights, max_len);
            let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let g = weights
                .iter()
                .filter(|&&w| w > 0)
                .fold(0, |g, &w| gcd(g, u64::from(w)));
            assert!(sum / g > max_len as u64);
            assert_eq!(t.len(), max_len);
            let c = counts(&t, weights.len());
            let mut worst = 0.0f64;
            for (i, &w) in weights.iter().enumerate() {
                let share = c[i] as f64 / max_len as f64;
                let want = f64::from(w) / sum as f64;
                let err = (share - want).abs();
                worst = worst.max(err * max_len as f64);
                assert!(
                    err < 1.0 / max_len as f64,
                    "{weights:?} backend {i}: {share} vs {want}"
                );
                if w == 0 {
                    assert_eq!(c[i], 0);
                }
            }
            println!(
                "wrr {weights:?} cut to {max_len}: counts {c:?}, worst share error {worst:.4}/max_len"
            );
        }
        // The apportionment gives the leftovers to the largest remainders.
        assert_eq!(apportion(&[1, 1, 1], 2), vec![1, 1, 0]);
        assert_eq!(apportion(&[1, 2, 2], 4), vec![1, 2, 1]);
        assert_eq!(apportion(&[2, 3, 5], 7), vec![1, 2, 4]);
    }
}
