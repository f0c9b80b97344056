//! One guard: which counts of the step's tallies it compares, how it feeds them block by block
//! into its e-process, and what it reads out (values, statistic, threshold, verdict).
//!
//! Owns: the mapping from tallies to the tests in `stats`. Must not touch: state transitions,
//! time, files. Pure functions over [`Tally`] values.

use serde::{Deserialize, Serialize};

use super::cells::{bin_floor, Tally, BINS};
use super::stats::{self, Boundary, Counts, Margin, Worse};

/// A validated guard of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// What `/rollouts` and the audit log call it: `error_rate`, `latency p95`, ...
    pub name: String,
    /// The name with every parameter: a changed guard starts a new e-process.
    pub key: String,
    pub kind: GuardKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GuardKind {
    /// A rate of events compared with a one-sided test for two proportions.
    Rate { source: Rate, boundary: Boundary },
    /// A latency quantile: how often each cohort is slower than the baseline's quantile (the
    /// canary against that quantile times `1 + relative_margin`), compared as proportions.
    Latency {
        source: Latency,
        quantile: f64,
        relative_margin: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// 5xx answers and cut bodies among requests.
    Errors,
    /// One outcome slot among the answers that carried an outcome.
    Outcome(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    Duration,
    Ttfb,
}

/// Where a guard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fewer than `min_samples` in a cohort: not judged yet.
    Waiting,
    Pass,
    Fail,
}

/// What a guard reads at one moment, with the numbers behind its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub guard: String,
    pub status: Status,
    /// A rate (0 to 1) for rate guards; the quantile in seconds for latency guards.
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
}

fn counts(t: &Tally, source: Rate) -> Counts {
    match source {
        Rate::Errors => Counts::new(t.errors, t.requests),
        Rate::Outcome(slot) => {
            Counts::new(t.outcomes.get(slot).copied().unwrap_or(0), t.with_outcome)
        }
    }
}

fn bins(t: &Tally, source: Latency) -> &[u64] {
    match source {
        Latency::Duration => &t.latency,
        Latency::Ttfb => &t.ttfb,
    }
}

/// The baseline's tail starts at bin `from.1`, the canary's at `from.0`: the bin after the
/// one holding the baseline's quantile, and the first at or past `1 + margin` times its edge.
fn tail_starts(baseline: &[u64], quantile: f64, margin: f64) -> Option<(usize, usize)> {
    let total: u64 = baseline.iter().sum();
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
    Counts::new(stats::at_or_above(bins, from), bins.iter().sum())
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
                let cq = stats::quantile(cb, *quantile).unwrap_or(0.0);
                let bq = stats::quantile(bb, *quantile).unwrap_or(0.0);
                let n = |b: &[u64]| b.iter().sum::<u64>();
                let slower = stats::slower_share(cb, bb);
                (cq, bq, bq * (1.0 + relative_margin), n(cb), n(bb), slower)
            }
        };
        let status = if cn < min_samples || bn < min_samples {
            Status::Waiting
        } else if log_wealth >= threshold {
            Status::Fail
        } else {
            Status::Pass
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::cells::bin_of;
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
    }
}
