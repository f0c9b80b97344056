//! Cohort assignment as pure functions: the contract's bucket formula, and the band layout that
//! maps a bucket to a cohort (the key it hashes is read by [`super::key`]).
//!
//! Owns: the hash formula and band arithmetic that users reproduce outside the proxy.
//! Must not touch: sockets, metrics, configuration files or shared state.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of buckets: one bucket is 0.01% of users.
pub const BUCKETS: u32 = 10_000;

/// The per-route seed: `xxh3_64(salt)`. Fixed, so every instance and restart agrees.
pub fn seed_for(salt: &str) -> u64 {
    xxh3_64(salt.as_bytes())
}

/// `xxh3_64_with_seed(key, seed) % 10000`.
pub fn bucket(key: &[u8], seed: u64) -> u32 {
    (xxh3_64_with_seed(key, seed) % u64::from(BUCKETS)) as u32
}

/// One cohort's half-open range of buckets `[start, end)`; empty when the cohort is at 0%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub start: u32,
    pub end: u32,
}

impl Band {
    pub fn contains(&self, bucket: u32) -> bool {
        self.start <= bucket && bucket < self.end
    }
    pub fn width(&self) -> u32 {
        self.end - self.start
    }
}

/// The band layout of one route's split, built once when the table is built.
///
/// The baseline (first cohort) grows from 0 upwards; every later cohort stacks down from the
/// top in list order. With one canary, raising its share only moves buckets from the baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bands {
    bands: Vec<Band>,
}

impl Bands {
    /// `widths` are the cohorts' shares in buckets (percent x 100), in `split` order, summing
    /// to [`BUCKETS`]; the table checks the sum before calling this.
    pub fn new(widths: &[u32]) -> Self {
        let mut bands = Vec::with_capacity(widths.len());
        let mut top = BUCKETS;
        for (i, &w) in widths.iter().enumerate() {
            if i == 0 {
                bands.push(Band {
                    start: 0,
                    end: w.min(BUCKETS),
                });
            } else {
                let start = top.saturating_sub(w);
                bands.push(Band { start, end: top });
                top = start;
            }
        }
        Bands { bands }
    }

    /// The index of the cohort that owns `bucket`. Falls back to the baseline, which only
    /// happens if widths did not sum to [`BUCKETS`].
    #[inline]
    pub fn lookup(&self, bucket: u32) -> usize {
        // Later cohorts are usually few and small: scan them from the top, baseline last.
        for (i, band) in self.bands.iter().enumerate().skip(1) {
            if band.contains(bucket) {
                return i;
            }
        }
        0
    }

    pub fn as_slice(&self) -> &[Band] {
        &self.bands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_vectors() {
        let cases = [
            ("agent", "user-1", 11548422540501417285u64, 9341u32),
            ("agent", "user-2", 11548422540501417285, 8756),
            ("agent", "user-3", 11548422540501417285, 9955),
            ("agent", "alice", 11548422540501417285, 2871),
            ("support-2026-11", "alice", 14391869356304411198, 8932),
            ("agent", "séance-☃", 11548422540501417285, 2289),
        ];
        for (salt, key, seed, expected) in cases {
            assert_eq!(seed_for(salt), seed, "seed of {salt}");
            assert_eq!(bucket(key.as_bytes(), seed), expected, "bucket of {key}");
        }
    }

    #[test]
    fn minimal_split_puts_user3_in_canary() {
        let bands = Bands::new(&[9500, 500]);
        assert_eq!(
            bands.as_slice(),
            &[
                Band {
                    start: 0,
                    end: 9500
                },
                Band {
                    start: 9500,
                    end: 10000
                }
            ]
        );
        let seed = seed_for("agent");
        let names = ["stable", "canary"];
        let got: Vec<_> = ["user-1", "user-2", "user-3", "alice"]
            .iter()
            .map(|k| names[bands.lookup(bucket(k.as_bytes(), seed))])
            .collect();
        assert_eq!(got, ["stable", "stable", "canary", "stable"]);
    }

    #[test]
    fn three_cohorts_stack_down_from_the_top() {
        let bands = Bands::new(&[9000, 700, 300]);
        assert_eq!(
            bands.as_slice(),
            &[
                Band {
                    start: 0,
                    end: 9000
                },
                Band {
                    start: 9300,
                    end: 10000
                },
                Band {
                    start: 9000,
                    end: 9300
                },
            ]
        );
        assert_eq!(bands.lookup(0), 0);
        assert_eq!(bands.lookup(8999), 0);
        assert_eq!(bands.lookup(9000), 2);
        assert_eq!(bands.lookup(9299), 2);
        assert_eq!(bands.lookup(9300), 1);
        assert_eq!(bands.lookup(9999), 1);
    }

    #[test]
    fn zero_percent_cohort_has_no_buckets() {
        let bands = Bands::new(&[10000, 0]);
        assert_eq!(bands.as_slice()[1].width(), 0);
        assert!((0..BUCKETS).all(|b| bands.lookup(b) == 0));
        let all_canary = Bands::new(&[0, 10000]);
        assert!((0..BUCKETS).all(|b| all_canary.lookup(b) == 1));
    }

    proptest! {
        /// Raising the canary's share never moves a user out of it (whatever a third cohort
        /// holds); with one canary it only moves users in from the baseline.
        #[test]
        fn raising_canary_is_monotonic(key in ".{0,40}", salt in "[a-z0-9-]{1,20}",
                                       other in 0u32..2000, lo in 0u32..8000, step in 0u32..8000) {
            // Half the cases have no third cohort, where the stronger property holds.
            let other = if other < 1000 { 0 } else { other };
            let hi = (lo + step).min(BUCKETS - other);
            let lo = lo.min(hi);
            let before = Bands::new(&[BUCKETS - other - lo, lo, other]);
            let after = Bands::new(&[BUCKETS - other - hi, hi, other]);
            let b = bucket(key.as_bytes(), seed_for(&salt));
            let (was, now) = (before.lookup(b), after.lookup(b));
            if was == 1 { prop_assert_eq!(now, 1); }
            if other == 0 && now != was { prop_assert_eq!((was, now), (0, 1)); }
        }

        #[test]
        fn bands_partition_every_bucket(widths in proptest::collection::vec(0u32..3000, 1..6)) {
            let rest: u32 = widths.iter().sum::<u32>().min(BUCKETS);
            let mut w = vec![BUCKETS - rest];
            let mut left = rest;
            for x in widths { let x = x.min(left); w.push(x); left -= x; }
            let bands = Bands::new(&w);
            let mut counts = vec![0u32; w.len()];
            for b in 0..BUCKETS { counts[bands.lookup(b)] += 1; }
            prop_assert_eq!(counts, w);
        }
    }
}
