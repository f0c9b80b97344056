//! One guard: which counts of the step's tallies it compares, how it feeds them block by block
//! into its e-process, and what it reads out (values, statistic, threshold, verdict).
//!
//! Owns: the mapping from tallies to the tests in `stats` (`impl Guard`; the guard itself is
//! a validated value of `routing::table::rollout`). Must not touch: state transitions, time,
//! files. Pure functions over [`Tally`] values.

use serde::{Deserialize, Serialize};

use super::stats::{self, Counts};
use crate::routing::table::rollout::{Boundary, Guard, GuardKind, Latency, Margin, Rate, Worse};
use crate::samples::{bin_floor, Tally, BINS};

/// Where a guard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fewer than `min_samples` in a cohort: not judged yet.
    Waiting,
    Pass,
    Fail,
    /// Judged, but its statistic is not a number: it never passes, so the step holds, and
    /// [`Reading::note`] says why.
    Invalid,
}

/// What a guard reads at one moment, with the numbers behind its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub guard: String,
    pub status: Status,
    /// A rate (0 to 1) for rate guards; the quantile for the others: in seconds (latency,
    /// ttfb, ttft, inter_token), tokens (output_tokens) or the price's currency (cost).
    pub canary: f64,
    pub baseline: f64,
    /// The worst canary value the margin allows against this baseline.
    pub limit: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    /// ln of the e-process's wealth, and ln of the wealth at which the guard fails.
    pub statistic: f64,
    pub threshold: f64,
    /// Latency guards: the chance a canary sample is slower than a baseline one (the
    /// Mann-Whitney statistic; 0.5 when alike), for information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slower_share: Option<f64>,
    /// Why the status is not what the statistic alone says (`invalid`, impossible counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A `per_segment` guard's reading in one segment: which (absent for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

fn counts(t: &Tally, source: Rate) -> Counts {
    match source {
        Rate::Errors => Counts::new(t.errors, t.requests),
        Rate::Outcome(slot) => {
            Counts::new(t.outcomes.get(slot).copied().unwrap_or(0), t.with_outcome)
        }
        Rate::OutcomeWithLate(slot) => {
            let late = t.late_outcomes.get(slot).copied().unwrap_or(0);
            let late_all: u64 = t.late_outcomes.iter().sum();
            Counts::new(
                t.outcomes
                    .get(slot)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(late),
                t.with_outcome.saturating_add(late_all),
            )
        }
    }
}

fn bins(t: &Tally, source: Latency) -> &[u64] {
    match source {
        Latency::Duration => &t.latency,
        Latency::Ttfb => &t.ttfb,
        Latency::Ttft => &t.ttft,
        Latency::InterToken => &t.inter_token,
        Latency::OutputTokens => &t.output_tokens,
        Latency::Cost => &t.cost,
    }
}

/// The baseline's tail starts at bin `from.1`, the canary's at `from.0`: the bin after the
/// one holding the baseline's quantile, and the first at or past `1 + margin` times its edge.
fn tail_starts(baseline: &[u64], quantile: f64, margin: f64) -> Option<(usize, usize)> {
    let total = stats::total(baseline);
    // Too few baseline samples place the quantile by chance: no bet yet.
    if total < 20 {
        return None;
    }
    let base_from = stats::quantile_bin(baseline, quantile)? + 1;
    if base_from >= BINS {
        return None;
    }
    let canary_from = stats::first_bin_from(bin_floor(base_from) * (1.0 + margin));
    Some((canary_from, base_from))
}

/// Samples at or past `from` among all of a histogram's.
fn tail(bins: &[u64], from: usize) -> Counts {
    Counts::new(stats::at_or_above(bins, from), stats::total(bins))
}

impl Guard {
    /// The wealth after one more block of answers; `before` is the step until now.
    pub fn observe(
        &self,
        log_wealth: f64,
        before: (&Tally, &Tally),
        block: (&Tally, &Tally),
    ) -> f64 {
        match &self.kind {
            GuardKind::Rate { source, boundary } => boundary.update(
                log_wealth,
                (counts(before.0, *source), counts(before.1, *source)),
                (counts(block.0, *source), counts(block.1, *source)),
            ),
            GuardKind::Latency {
                source,
                quantile,
                relative_margin,
            } => {
                let Some((c_from, b_from)) =
                    tail_starts(bins(before.1, *source), *quantile, *relative_margin)
                else {
                    return log_wealth;
                };
                let boundary = Boundary::new(Worse::Higher, Margin::Points(0.0));
                boundary.update(
                    log_wealth,
                    (
                        tail(bins(before.0, *source), c_from),
                        tail(bins(before.1, *source), b_from),
                    ),
                    (
                        tail(bins(block.0, *source), c_from),
                        tail(bins(block.1, *source), b_from),
                    ),
                )
            }
        }
    }

    /// What the guard reads over the step's tallies, with wealth `log_wealth`.
    pub fn read(
        &self,
        log_wealth: f64,
        canary: &Tally,
        baseline: &Tally,
        min_samples: u64,
        threshold: f64,
    ) -> Reading {
        let (c, b, limit, cn, bn, slower) = match &self.kind {
            GuardKind::Rate { source, boundary } => {
                let (c, b) = (counts(canary, *source), counts(baseline, *source));
                let limit = boundary.limit(b.rate());
                (c.rate(), b.rate(), limit, c.trials, b.trials, None)
            }
            GuardKind::Latency {
                source,
                quantile,
                relative_margin,
            } => {
                let (cb, bb) = (bins(canary, *source), bins(baseline, *source));
                let scale = source.scale();
                let cq = stats::quantile(cb, *quantile).unwrap_or(0.0) * scale;
                let bq = stats::quantile(bb, *quantile).unwrap_or(0.0) * scale;
                let slower = stats::slower_share(cb, bb);
                (
                    cq,
                    bq,
                    bq * (1.0 + relative_margin),
                    stats::total(cb),
                    stats::total(bb),
                    slower,
                )
            }
        };
        let impossible = (canary.impossible().map(|why| format!("canary: {why}")))
            .or_else(|| baseline.impossible().map(|why| format!("baseline: {why}")));
        let (status, note) = if let Some(why) = impossible {
            // Counts that recording cannot produce mean the evidence itself is broken: the
            // canary is not judged safe on it.
            (Status::Fail, Some(format!("impossible counts ({why})")))
        } else if cn < min_samples || bn < min_samples {
            (Status::Waiting, None)
        } else if log_wealth >= threshold {
            (Status::Fail, None)
        } else if !log_wealth.is_finite() {
            let note = format!("statistic {log_wealth} is not a finite number; the step holds");
            (Status::Invalid, Some(note))
        } else {
            (Status::Pass, None)
        };
        Reading {
            guard: self.name.clone(),
            status,
            canary: c,
            baseline: b,
            limit,
            canary_samples: cn,
            baseline_samples: bn,
            statistic: log_wealth,
            threshold,
            slower_share: slower,
            note,
            segment: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::bin_of;
    use std::time::Duration;

    fn latency_tally(ms: &[u64]) -> Tally {
        let mut t = Tally::default();
        for &m in ms {
            t.requests += 1;
            t.latency[bin_of(Duration::from_millis(m))] += 1;
        }
        t
    }

    #[test]
    fn a_slower_canary_builds_latency_evidence_and_reads_its_quantiles() {
        let g = Guard {
            name: "latency p50".into(),
            key: "latency p50 0.1".into(),
            kind: GuardKind::Latency {
                source: Latency::Duration,
                quantile: 0.5,
                relative_margin: 0.1,
            },
        };
        let stable: Vec<u64> = (0..100).map(|i| 50 + i % 50).collect();
        let slow: Vec<u64> = (0..10).map(|i| 120 + i * 5).collect();
        let (mut c, mut b) = (Tally::default(), Tally::default());
        let mut w = 0.0;
        for _ in 0..30 {
            let (cb, bb) = (latency_tally(&slow), latency_tally(&stable));
            w = g.observe(w, (&c, &b), (&cb, &bb));
            c = c.plus(&cb);
            b = b.plus(&bb);
        }
        let r = g.read(w, &c, &b, 100, stats::log_threshold(0.01));
        assert_eq!(r.status, Status::Fail, "{r:?}");
        assert!(
            r.canary > r.limit && r.baseline > 0.07 && r.baseline < 0.08,
            "{r:?}"
        );
        assert_eq!(r.slower_share, Some(1.0));
        let early = g.read(w, &c, &b, 1_000_000, 1.0);
        assert_eq!(early.status, Status::Waiting);
    }

    fn error_rate() -> Guard {
        Guard {
            name: "error_rate".into(),
            key: "error_rate 0".into(),
            kind: GuardKind::Rate {
                source: Rate::Errors,
                boundary: Boundary::new(Worse::Higher, Margin::Points(0.0)),
            },
        }
    }

    fn latency_p95() -> Guard {
        Guard {
            name: "latency p95".into(),
            key: "latency p95 0".into(),
            kind: GuardKind::Latency {
                source: Latency::Duration,
                quantile: 0.95,
                relative_margin: 0.0,
            },
        }
    }

    #[test]
    fn impossible_counts_fail_and_a_statistic_that_is_not_a_number_holds() {
        let g = error_rate();
        let sound = Tally {
            requests: 100,
            errors: 2,
            ..Tally::default()
        };
        let broken = Tally {
            requests: 100,
            errors: 150,
            ..Tally::default()
        };
        let r = g.read(0.0, &broken, &sound, 10, 3.0);
        assert_eq!(r.status, Status::Fail);
        let note = r.note.unwrap();
        assert_eq!(
            note,
            "impossible counts (canary: 150 errors but 100 requests)"
        );
        assert_eq!(
            crate::control::rollout::machine::describe(&g.read(0.0, &sound, &broken, 10, 3.0)),
            "error_rate: impossible counts (baseline: 150 errors but 100 requests)"
        );
        for w in [f64::NAN, f64::NEG_INFINITY] {
            let r = g.read(w, &sound, &sound, 10, 3.0);
            assert_eq!(r.status, Status::Invalid, "{w}");
            assert!(r.note.unwrap().contains("not a finite number"));
        }
        assert_eq!(
            g.read(f64::INFINITY, &sound, &sound, 10, 3.0).status,
            Status::Fail
        );
        // Not yet judged: a statistic that is not a number still does not pass.
        assert_eq!(
            g.read(f64::NAN, &sound, &sound, 1000, 3.0).status,
            Status::Waiting
        );
    }

    fn tally_from(c: (u64, u64, u64, u64, usize)) -> Tally {
        let (requests, errors, latency, ttfb, bin) = c;
        let mut t = Tally {
            requests,
            errors,
            ..Tally::default()
        };
        t.latency[bin % BINS] = latency;
        t.ttfb[(bin * 7) % BINS] = ttfb;
        t
    }

    proptest::proptest! {
        /// Whatever the counts, including impossible and enormous ones, a guard's e-process
        /// stays a number, and no reading passes on a statistic that is not finite.
        #[test]
        fn no_counts_make_a_statistic_that_is_not_finite_pass(
            blocks in proptest::collection::vec(
                (
                    (0..u64::MAX, 0..u64::MAX, 0..u64::MAX, 0..u64::MAX, 0..BINS),
                    (0..u64::MAX, 0..u64::MAX, 0..u64::MAX, 0..u64::MAX, 0..BINS),
                    (0u64..200, 0u64..200, 0u64..200, 0u64..200, 0..BINS),
                ),
                1..12,
            ),
        ) {
            for g in [error_rate(), latency_p95()] {
                let (mut c, mut b) = (Tally::default(), Tally::default());
                let mut w = 0.0;
                for (huge_c, huge_b, small) in &blocks {
                    let (cb, bb) = (tally_from(*huge_c), tally_from(*huge_b));
                    let small = tally_from(*small);
                    for (cb, bb) in [(&cb, &bb), (&small, &small), (&small, &bb)] {
                        w = g.observe(w, (&c, &b), (cb, bb));
                        proptest::prop_assert!(!w.is_nan(), "{} went NaN", g.name);
                        c = c.plus(cb);
                        b = b.plus(bb);
                        let r = g.read(w, &c, &b, 1, stats::log_threshold(0.05));
                        proptest::prop_assert!(
                            r.status != Status::Pass || r.statistic.is_finite(),
                            "{r:?}"
                        );
                        proptest::prop_assert!(
                            r.status == Status::Fail
                                || (c.impossible().is_none() && b.impossible().is_none()),
                            "{r:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rate_guards_count_errors_or_one_outcome() {
        let mut t = Tally {
            requests: 10,
            errors: 2,
            with_outcome: 8,
            ..Tally::default()
        };
        t.outcomes[1] = 4;
        assert_eq!(counts(&t, Rate::Errors), Counts::new(2, 10));
        assert_eq!(counts(&t, Rate::Outcome(1)), Counts::new(4, 8));
        t.late_outcomes[1] = 3;
        t.late_outcomes[0] = 2;
        assert_eq!(counts(&t, Rate::Outcome(1)), Counts::new(4, 8));
        assert_eq!(counts(&t, Rate::OutcomeWithLate(1)), Counts::new(7, 13));
    }
}
