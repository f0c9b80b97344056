//! The statistics behind the guards, as pure functions: an e-process (a test martingale) for
//! "the canary's rate of some event is worse than the baseline's by more than a margin", and
//! the histogram arithmetic the latency guards need.
//!
//! Owns: the numbers, and the tests on the null boundary `routing::table::rollout` validates
//! (`impl Boundary`). Must not touch: time, state, files, cells (it only sees counts).
//!
//! The test. Each judge tick brings a block of new answers: `na` canary trials with `xa`
//! events, `nb` baseline trials with `xb` events. Before seeing the block, the guard bets on an
//! alternative `(ta, tb)` on the worse side of the null boundary `pa = offset + slope * pb`
//! (a plug-in: the rates seen so far in the step, smoothed). The block multiplies the guard's
//! wealth by the likelihood ratio of the alternative against the point `(qa, qb)` of the
//! boundary where, for this block's `na` and `nb`, the log expected ratio is flat along the
//! boundary. The expected ratio is then at most 1 under every null rate pair, each block's
//! rates free to differ (Turner, Ly and Grünwald's exact e-variables for 2x2 tables, extended
//! to margins by the same concavity argument). The product is a nonnegative supermartingale
//! under the null, so by Ville's inequality it ever reaches `1/alpha` with probability at most
//! `alpha`: looking after every block, for as long as one likes, keeps the error rate. It is
//! exact at any sample size (no normal approximation, so a single error at 1% traffic cannot
//! fake a regression), and a shared incident that raises both cohorts' rates is no evidence.

use crate::routing::table::rollout::{Boundary, Worse};
use crate::samples::{bin_floor, BINS};

/// Events among trials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub trials: u64,
}

impl Counts {
    pub fn new(events: u64, trials: u64) -> Self {
        Counts { events, trials }
    }

    /// The events that can count: never more than the trials, whatever the counts say (the
    /// guard refuses impossible counts on its own; the numbers here stay finite regardless).
    fn possible_events(&self) -> u64 {
        self.events.min(self.trials)
    }

    /// The observed rate; 0 without trials.
    pub fn rate(&self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            self.possible_events() as f64 / self.trials as f64
        }
    }

    /// The Krichevsky-Trofimov estimate `(x + 1/2) / (n + 1)`: strictly inside (0, 1).
    fn smoothed(&self) -> f64 {
        // Past 2^53 trials the ratio rounds to 0 or 1, whose logarithms are infinite.
        ((self.possible_events() as f64 + 0.5) / (self.trials as f64 + 1.0)).clamp(EDGE, 1.0 - EDGE)
    }

    pub fn plus(self, other: Counts) -> Counts {
        Counts::new(self.events + other.events, self.trials + other.trials)
    }
}

const EDGE: f64 = 1e-12;

impl Boundary {
    /// The canary rate the boundary allows for a baseline rate, within [0, 1].
    pub fn limit(&self, baseline: f64) -> f64 {
        (self.offset + self.slope * baseline).clamp(0.0, 1.0)
    }

    /// Whether a canary rate is on the worse side of the boundary.
    pub fn is_worse(&self, canary: f64, baseline: f64) -> bool {
        let edge = self.offset + self.slope * baseline;
        match self.worse {
            Worse::Higher => canary > edge,
            Worse::Lower => canary < edge,
        }
    }

    /// The null point `(qa, qb)` for alternative `(ta, tb)` and block sizes `na`, `nb`: on the
    /// boundary, where `na * s_a * slope + nb * s_b = 0` with `s = (t - q) / (q (1 - q))`.
    /// The left side decreases in `qb`, and changes sign between `tb` and the `qb` whose `qa`
    /// is `ta`, so bisection finds it.
    fn project(&self, ta: f64, tb: f64, na: f64, nb: f64) -> (f64, f64) {
        let score = |t: f64, q: f64| (t - q) / (q * (1.0 - q));
        let qa_of = |qb: f64| (self.offset + self.slope * qb).clamp(EDGE, 1.0 - EDGE);
        let h = |qb: f64| na * score(ta, qa_of(qb)) * self.slope + nb * score(tb, qb);
        let other = ((ta - self.offset) / self.slope).clamp(EDGE, 1.0 - EDGE);
        let (mut lo, mut hi) = if tb < other { (tb, other) } else { (other, tb) };
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if h(mid) > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo < 1e-15 {
                break;
            }
        }
        let qb = (0.5 * (lo + hi)).clamp(EDGE, 1.0 - EDGE);
        (qa_of(qb), qb)
    }

    /// The alternative a guard bets on before a block, from everything seen before it: the
    /// smoothed rates when the canary's is on the worse side, else no bet (`None`).
    pub fn bet(&self, canary: Counts, baseline: Counts) -> Option<(f64, f64)> {
        let (ta, tb) = (canary.smoothed(), baseline.smoothed());
        self.is_worse(ta, tb).then_some((ta, tb))
    }

    /// ln of what one block multiplies the wealth by, betting on `alt` (see the module doc).
    pub fn log_factor(&self, alt: (f64, f64), canary: Counts, baseline: Counts) -> f64 {
        let (ta, tb) = alt;
        let (na, nb) = (canary.trials as f64, baseline.trials as f64);
        if na == 0.0 || nb == 0.0 {
            // One side alone says nothing about the difference.
            return 0.0;
        }
        let (qa, qb) = self.project(ta, tb, na, nb);
        let term = |c: Counts, t: f64, q: f64| {
            let x = c.possible_events() as f64;
            let n = c.trials as f64;
            x * (t / q).ln() + (n - x) * ((1.0 - t) / (1.0 - q)).ln()
        };
        term(canary, ta, qa) + term(baseline, tb, qb)
    }

    /// The wealth after one more block: `before` is what the step saw until now (the bet is
    /// chosen from it), `block` the new answers.
    pub fn update(
        &self,
        log_wealth: f64,
        before: (Counts, Counts),
        block: (Counts, Counts),
    ) -> f64 {
        match self.bet(before.0, before.1) {
            Some(alt) => log_wealth + self.log_factor(alt, block.0, block.1),
            None => log_wealth,
        }
    }
}

/// ln of the wealth at which a test with error rate `alpha` rejects.
pub fn log_threshold(alpha: f64) -> f64 {
    (1.0 / alpha).ln()
}

/// The samples in some bins, saturating: counts from a state file or a long-lived process
/// must not overflow into a panic or a small number.
pub fn total(bins: &[u64]) -> u64 {
    bins.iter().fold(0u64, |t, &c| t.saturating_add(c))
}

/// The bin holding quantile `q` of a histogram (the first whose cumulative count reaches
/// `q * total`), or `None` when it is empty.
pub fn quantile_bin(bins: &[u64], q: f64) -> Option<usize> {
    let total = total(bins);
    if total == 0 {
        return None;
    }
    let target = (q * total as f64).max(1.0);
    let mut cum = 0u64;
    for (b, &c) in bins.iter().enumerate() {
        cum = cum.saturating_add(c);
        if cum as f64 >= target {
            return Some(b);
        }
    }
    Some(bins.len() - 1)
}

/// Quantile `q` of a histogram in seconds, interpolated within its bin.
pub fn quantile(bins: &[u64], q: f64) -> Option<f64> {
    let b = quantile_bin(bins, q)?;
    let below = total(&bins[..b]);
    let total = total(bins);
    let target = (q * total as f64).max(1.0);
    let within = ((target - below as f64) / bins[b] as f64).clamp(0.0, 1.0);
    let (lo, hi) = (bin_floor(b), bin_floor((b + 1).min(BINS)));
    let hi = if b + 1 >= BINS { lo * 1.125 } else { hi };
    Some(lo + within * (hi - lo))
}

/// The first bin whose lower edge is at least `seconds`.
pub fn first_bin_from(seconds: f64) -> usize {
    (0..BINS)
        .find(|&b| bin_floor(b) >= seconds * (1.0 - 1e-12))
        .unwrap_or(BINS)
}

/// Samples in bins `from..`.
pub fn at_or_above(bins: &[u64], from: usize) -> u64 {
    bins.get(from..).map_or(0, total)
}

/// The Mann-Whitney statistic as a probability: the chance that a canary sample is slower
/// than a baseline sample, samples in the same bin counting half. 0.5 when alike.
pub fn slower_share(canary: &[u64], baseline: &[u64]) -> Option<f64> {
    let (nc, nb) = (total(canary), total(baseline));
    if nc == 0 || nb == 0 {
        return None;
    }
    let mut below = 0.0;
    let mut u = 0.0;
    for (c, b) in canary.iter().zip(baseline) {
        u += *c as f64 * (below + 0.5 * *b as f64);
        below += *b as f64;
    }
    Some(u / (nc as f64 * nb as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::rollout::Margin;

    /// The exact expected factor of one block under null rates `(pa, pb)`: each trial
    /// contributes a linear bracket, so the expectation is a product of powers.
    fn expected_factor(bd: &Boundary, alt: (f64, f64), na: u64, nb: u64, pa: f64, pb: f64) -> f64 {
        let (qa, qb) = bd.project(alt.0, alt.1, na as f64, nb as f64);
        let bracket = |p: f64, t: f64, q: f64| p * t / q + (1.0 - p) * (1.0 - t) / (1.0 - q);
        bracket(pa, alt.0, qa).powi(na as i32) * bracket(pb, alt.1, qb).powi(nb as i32)
    }

    #[test]
    fn one_block_never_pays_more_than_one_on_average_under_any_null() {
        let margins = [
            (Worse::Higher, Margin::Points(0.0)),
            (Worse::Higher, Margin::Points(0.02)),
            (Worse::Higher, Margin::Relative(0.25)),
            (Worse::Lower, Margin::Points(0.03)),
            (Worse::Lower, Margin::Relative(0.2)),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for (worse, margin) in margins {
            let bd = Boundary::new(worse, margin);
            for _ in 0..400 {
                let (tb, ta) = (rng.f64(), rng.f64());
                if !bd.is_worse(ta, tb) || ta <= 0.0 || tb <= 0.0 {
                    continue;
                }
                let (na, nb) = (rng.u64(1..40), rng.u64(1..400));
                // Null rate pairs on the boundary and inside the null region.
                for _ in 0..30 {
                    let pb = rng.f64();
                    let edge = bd.offset + bd.slope * pb;
                    let pa = match worse {
                        Worse::Higher => edge - rng.f64() * 0.1,
                        Worse::Lower => edge + rng.f64() * 0.1,
                    };
                    if !(0.0..=1.0).contains(&pa) {
                        continue;
                    }
                    let e = expected_factor(&bd, (ta, tb), na, nb, pa, pb);
                    assert!(
                        e <= 1.0 + 1e-9,
                        "{worse:?} {margin:?}: E = {e} at pa {pa} pb {pb}, bet {ta} {tb}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_clear_regression_grows_the_wealth_and_no_events_keep_it() {
        let bd = Boundary::new(Worse::Higher, Margin::Points(0.0));
        let mut w = 0.0;
        let mut seen = (Counts::default(), Counts::default());
        for _ in 0..50 {
            let block = (Counts::new(2, 10), Counts::new(10, 1000));
            w = bd.update(w, seen, block);
            seen = (seen.0.plus(block.0), seen.1.plus(block.1));
        }
        assert!(w > log_threshold(0.001), "wealth {w}");
        // No bet when the canary looks no worse; one-sided blocks say nothing.
        let none = bd.update(0.0, (Counts::new(0, 100), Counts::new(50, 1000)), seen);
        assert_eq!(none, 0.0);
        let alt = (0.2, 0.01);
        assert_eq!(
            bd.log_factor(alt, Counts::new(3, 3), Counts::default()),
            0.0
        );
    }

    #[test]
    fn histogram_helpers() {
        let mut bins = vec![0u64; BINS];
        bins[100] = 50;
        bins[120] = 50;
        assert_eq!(quantile_bin(&bins, 0.5), Some(100));
        assert_eq!(quantile_bin(&bins, 0.51), Some(120));
        let q = quantile(&bins, 0.5).unwrap();
        assert!(q > bin_floor(100) && q <= bin_floor(101));
        assert_eq!(at_or_above(&bins, 101), 50);
        assert_eq!(at_or_above(&bins, BINS), 0);
        assert_eq!(first_bin_from(bin_floor(120)), 120);
        assert_eq!(first_bin_from(bin_floor(120) * 1.01), 121);
        assert_eq!(slower_share(&bins, &bins), Some(0.5));
        let mut slow = vec![0u64; BINS];
        slow[130] = 10;
        assert_eq!(slower_share(&slow, &bins), Some(1.0));
        assert_eq!(quantile(&[0; BINS], 0.5), None);
    }
}
