//! The sample ratio check's statistics, as pure functions: is the canary's share of a step's
//! units the share its percent says?
//!
//! Owns: the test and its reading ([`Srm`]). Must not touch: time, state, cells, the table
//! (it only sees counts and the expected share).
//!
//! The test. A step's units (distinct keys served from their band, see `samples::units`) are
//! each in the canary with probability `p = w_canary / (w_canary + w_baseline)` when the split
//! is sound, independently. Against that point null, the e-value after `k` canary units of `n`
//! is the Beta-binomial Bayes factor
//!
//! ```text
//!   BF_c(k, n) = B(k + c p, n - k + c (1 - p)) / (B(c p, c (1 - p)) p^k (1 - p)^(n - k))
//! ```
//!
//! (the likelihood of the counts under a share drawn from `Beta(c p, c (1 - p))`, a prior
//! centred on `p` that weighs like `c` units, over their likelihood under `p`). As a mixture of
//! likelihood ratios it is a nonnegative martingale under the null with mean 1, and so is an
//! equal-weight average of several: [`CONCENTRATIONS`] spreads the prior from broad (a gross
//! break, caught in tens of units) to narrow (a share a few percent off, caught in tens of
//! thousands). By Ville's inequality it ever reaches `1 / alpha` with probability at most
//! `alpha`, however often it is looked at: the judge may read it at every tick. It depends on
//! the step's totals alone, so it needs no state beyond the counts.
//!
//! A restart within a step begins with empty slots, so the keys counted before would count
//! again, each twice, in the same cohort: no longer independent units. The e-value reached
//! so far is kept instead (`Progress::carry_units`), the units start over, and the reading
//! is the product of the two: a test martingale stopped at the restart, times a new one
//! begun there. (Approximately one: the users who return after the restart were partly
//! counted before, so their cohorts are not quite independent of the first factor's
//! imbalance.)

use serde::Serialize;

/// Prior concentrations (in units) averaged with equal weights.
pub const CONCENTRATIONS: [f64; 4] = [10.0, 100.0, 1_000.0, 10_000.0];

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms: about 15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(π x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let sum = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln of the Bayes factor `BF_c(k, n)` (see the module's doc) for `0 < p < 1`.
pub fn ln_bayes_factor(k: u64, n: u64, p: f64, c: f64) -> f64 {
    let k = k.min(n);
    let (k, m) = (k as f64, (n - k) as f64);
    let (a, b) = (c * p, c * (1.0 - p));
    ln_beta(k + a, m + b) - ln_beta(a, b) - k * p.ln() - m * (1.0 - p).ln()
}

/// ln of the e-value: the average of [`ln_bayes_factor`] over [`CONCENTRATIONS`].
pub fn ln_e_value(k: u64, n: u64, p: f64) -> f64 {
    let parts = CONCENTRATIONS.map(|c| ln_bayes_factor(k, n, p, c));
    let top = parts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = parts.iter().map(|l| (l - top).exp()).sum();
    top + (sum / parts.len() as f64).ln()
}

/// The check's reading over a step so far, for `/rollouts`, the audit log and the decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Srm {
    pub canary_units: u64,
    pub baseline_units: u64,
    /// The canary's share of the two cohorts' units that the step's percents say.
    pub expected_share: f64,
    /// The share seen; absent before the first unit.
    pub observed_share: Option<f64>,
    /// ln of the e-value, and the ln(1 / alpha_per_step) it halts at.
    pub statistic: f64,
    pub threshold: f64,
    pub mismatch: bool,
}

/// The reading for `units` (canary, baseline) against the expected share `p`, at
/// `alpha` for the step. None when there is nothing to test: `p` at 0 or 1 (a cohort has no
/// share) or `alpha` 0 (the check is off).
pub fn read(units: (u64, u64), p: f64, alpha: f64) -> Option<Srm> {
    if !(p > 0.0 && p < 1.0 && alpha > 0.0) {
        return None;
    }
    let (k, b) = units;
    let n = k.saturating_add(b);
    let statistic = ln_e_value(k, n, p);
    let threshold = (1.0 / alpha).ln();
    Some(Srm {
        canary_units: k,
        baseline_units: b,
        expected_share: p,
        observed_share: (n > 0).then(|| k as f64 / n as f64),
        statistic,
        threshold,
        mismatch: statistic >= threshold,
    })
}

impl Srm {
    /// This reading times an e-value `ln_before` from earlier in the step (before a restart
    /// emptied the slots).
    pub fn carried(mut self, ln_before: f64) -> Srm {
        self.statistic += ln_before;
        self.mismatch = self.statistic >= self.threshold;
        self
    }
}

/// The decision's reason, with the numbers.
pub fn describe(s: &Srm) -> String {
    format!(
        "sample ratio mismatch: canary {} of {} units ({:.2}%) against {:.2}% expected; ln e-value {:.2} >= {:.2}",
        s.canary_units,
        s.canary_units + s.baseline_units,
        s.observed_share.unwrap_or(0.0) * 100.0,
        s.expected_share * 100.0,
        s.statistic,
        s.threshold
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ln BF_c by the product form: B(k+a, m+b) / B(a, b) is the rising factorials
    /// a^(k) b^(m) / (a+b)^(k+m), which needs no gamma function.
    fn by_products(k: u64, n: u64, p: f64, c: f64) -> f64 {
        let (a, b) = (c * p, c * (1.0 - p));
        let rising = |x: f64, j: u64| (0..j).map(|i| (x + i as f64).ln()).sum::<f64>();
        let m = n - k;
        rising(a, k) + rising(b, m)
            - rising(a + b, n)
            - k as f64 * p.ln()
            - m as f64 * (1.0 - p).ln()
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(5) = 24, Γ(1/2) = √π, Γ(0.1) = 9.513507698668732.
        let cases = [
            (1.0, 0.0),
            (2.0, 0.0),
            (5.0, 24f64.ln()),
            (0.5, std::f64::consts::PI.sqrt().ln()),
            (0.1, 9.513_507_698_668_732f64.ln()),
            // ln 100! = 363.73937555556347.
            (101.0, 363.739_375_555_563_47),
        ];
        for (x, want) in cases {
            assert!(
                (ln_gamma(x) - want).abs() < 1e-10,
                "ln Γ({x}) = {}",
                ln_gamma(x)
            );
        }
    }

    #[test]
    fn the_bayes_factor_matches_hand_computed_values() {
        // One canary unit, p = 1/2, c = 2 (a uniform prior): BF = (1/2) / (1/2) = 1.
        assert!(ln_bayes_factor(1, 1, 0.5, 2.0).abs() < 1e-12);
        // Two canary units of two under a uniform prior: ∫ q² dq = 1/3 against 1/4: BF = 4/3.
        assert!((ln_bayes_factor(2, 2, 0.5, 2.0) - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        // One of each: ∫ q (1 - q) dq = 1/6 against 1/4: BF = 2/3.
        assert!((ln_bayes_factor(1, 2, 0.5, 2.0) - (2.0f64 / 3.0).ln()).abs() < 1e-12);
        // p = 0.1, c = 10 (Beta(1, 9)), one canary unit: E[q] = 0.1 = p, so BF = 1.
        assert!(ln_bayes_factor(1, 1, 0.1, 10.0).abs() < 1e-12);
        // ... one baseline unit then one canary unit: E[q(1-q)] = 9/110, over 0.09: BF = 10/11.
        assert!((ln_bayes_factor(1, 2, 0.1, 10.0) - (10.0f64 / 11.0).ln()).abs() < 1e-12);
        // No units: no evidence.
        assert_eq!(ln_e_value(0, 0, 0.3), 0.0);
        for (k, n, p, c) in [
            (40, 100, 0.25, 10.0),
            (5, 300, 0.05, 1_000.0),
            (700, 1_000, 0.5, 100.0),
        ] {
            let (fast, slow) = (ln_bayes_factor(k, n, p, c), by_products(k, n, p, c));
            assert!(
                (fast - slow).abs() < 1e-8,
                "{k}/{n} at {p}, c {c}: {fast} vs {slow}"
            );
        }
    }

    #[test]
    fn the_mixture_is_the_average_of_its_parts() {
        let (k, n, p) = (130, 500, 0.2);
        let mean = CONCENTRATIONS
            .iter()
            .map(|c| ln_bayes_factor(k, n, p, *c).exp())
            .sum::<f64>()
            / CONCENTRATIONS.len() as f64;
        assert!((ln_e_value(k, n, p) - mean.ln()).abs() < 1e-10);
    }

    #[test]
    fn the_expected_e_value_under_the_null_is_one() {
        // Exactly: Σ_k Binomial(k; n, p) BF(k, n) = 1 for every n (a martingale's mean).
        for (n, p) in [(1u64, 0.5f64), (20, 0.05), (200, 0.3)] {
            let ln_binom = |k: u64| {
                ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
                    + k as f64 * p.ln()
                    + (n - k) as f64 * (1.0f64 - p).ln()
            };
            let mean: f64 = (0..=n)
                .map(|k| (ln_binom(k) + ln_e_value(k, n, p)).exp())
                .sum();
            assert!((mean - 1.0).abs() < 1e-9, "n {n}, p {p}: {mean}");
        }
    }

    #[test]
    fn a_restart_keeps_the_e_value_and_counts_units_anew() {
        use crate::control::rollout::machine::Progress;
        use crate::control::rollout::simulate::spec_of;
        let spec = spec_of(&[5.0, 50.0], 60, 10, 0.05, vec![]);
        let mut p = Progress::start();
        (p.canary.units, p.baseline.units) = (30, 70);
        let before = p.srm(&spec).unwrap();
        assert_eq!(before.expected_share, 0.05);
        assert!((before.statistic - ln_e_value(30, 100, 0.05)).abs() < 1e-12);
        assert!((before.threshold - (2_000f64).ln()).abs() < 1e-9);
        assert!(before.mismatch, "{before:?}");
        p.carry_units(&spec);
        assert_eq!((p.canary.units, p.baseline.units), (0, 0));
        // Kept at most at the threshold: a rollout saved just as it crossed halts at once.
        let kept = p.srm(&spec).unwrap();
        assert_eq!(kept.statistic, before.threshold);
        (p.canary.units, p.baseline.units) = (3, 97);
        let after = p.srm(&spec).unwrap();
        let want = before.threshold + ln_e_value(3, 100, 0.05);
        assert!((after.statistic - want).abs() < 1e-12, "{after:?}");
    }

    #[test]
    fn a_broken_split_crosses_and_a_sound_one_does_not() {
        let alpha = 0.001 / 5.0;
        // Half the canary's users lost at a 50% step: a third of the units in the canary.
        let broken = read((1_000, 2_000), 0.5, alpha).unwrap();
        assert!(broken.mismatch, "{broken:?}");
        assert!(describe(&broken).starts_with(
            "sample ratio mismatch: canary 1000 of 3000 units (33.33%) against 50.00% expected"
        ));
        let sound = read((1_510, 1_490), 0.5, alpha).unwrap();
        assert!(!sound.mismatch && sound.statistic < 0.0, "{sound:?}");
        assert_eq!(sound.observed_share, Some(1_510.0 / 3_000.0));
        assert!((sound.threshold - (5_000f64).ln()).abs() < 1e-9);
        // Nothing to test: the check off, or a step that leaves the baseline no share.
        assert_eq!(read((1, 1), 0.5, 0.0), None);
        assert_eq!(read((1, 0), 1.0, alpha), None);
    }
}
