//! A route's `rollout` section, validated with the rest of the table: the canary and the
//! baseline, the steps in basis points, soak, samples, alpha, and each guard with the null
//! boundary its test is run against.
//!
//! Owns: the rollout's configuration rules and the value types the table keeps of them
//! ([`RolloutSpec`], [`Guard`], [`Boundary`]). Must not touch: the rollouts' state, files,
//! the judging: `control::rollout` reads these values and adds the statistics (`impl Guard`
//! in its `guard`, `impl Boundary` in its `stats`); nothing here imports `control`.
//! `route.rs` calls [`build`] and places its errors in the file.

use std::time::Duration;

use crate::config::{RawAfter, RawGuard, RawGuardMetric, RawRollout};
use crate::samples::OTHER_SLOT;

/// What happens once the last step has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The canary stays at the last step.
    Hold,
    /// The canary takes the baseline's share too.
    Promote,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    pub id: String,
    pub canary: String,
    /// The split's first cohort.
    pub baseline: String,
    /// The canary's share at each step, in basis points, increasing.
    pub steps: Vec<u32>,
    pub soak: Duration,
    pub min_samples: u64,
    pub after: After,
    /// The rollout-wide chance of rolling back a canary as good as the baseline.
    pub alpha: f64,
    pub guards: Vec<Guard>,
    /// Basis points held by the split's other cohorts (neither baseline nor canary).
    pub others: u32,
    /// The route's outcome values, which give outcome guards their slots.
    pub outcomes: Vec<String>,
    /// The rollout-wide chance of halting on a sample ratio mismatch that is not there,
    /// apart from `alpha`; 0 when the check is off.
    pub srm_alpha: f64,
    /// The route's segments (its values, then `other`; empty without a segment): every
    /// one is tested by each of `segment_guards`.
    pub segments: Vec<String>,
    /// The `per_segment` guards, tested in each segment apart (see `alpha_per_segment_test`).
    pub segment_guards: Vec<Guard>,
}

impl RolloutSpec {
    /// Each guard at each step is one test at `alpha / (guards x steps)` (Bonferroni), so
    /// the whole rollout rolls back an A/A canary with probability at most `alpha`.
    pub fn alpha_per_test(&self) -> f64 {
        let guards = self.guards.len() + self.segment_guards.len();
        self.alpha / (guards.max(1) * self.steps.len().max(1)) as f64
    }

    /// A `per_segment` guard's share of alpha at a step, split evenly (Bonferroni again)
    /// among the segments it is tested in: all of them, `other` included.
    pub fn alpha_per_segment_test(&self) -> f64 {
        self.alpha_per_test() / self.segments.len().max(1) as f64
    }

    /// The sample ratio check at each step tests at `srm_alpha / steps`; 0 when it is off.
    pub fn srm_alpha_per_step(&self) -> f64 {
        self.srm_alpha / self.steps.len().max(1) as f64
    }

    /// The canary's share once promoted.
    pub fn promoted(&self) -> u32 {
        crate::routing::bands::BUCKETS - self.others
    }
}

/// A broken rule at `field`, relative to the rollout (`steps[2]`, `guards[0].margin`; empty
/// for the rollout itself).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        field: field.into(),
        message: message.into(),
    })
}

/// Validates a route's rollout. `cohorts` are the split's names and basis points in order,
/// `outcomes` the route's (lower-cased) outcome values, `fallback` the cohort keyless
/// requests go to, if one is named, `segments` the route's segments (its values, then
/// `other`) if it has a segment, which a guard marked `per_segment` needs.
pub fn build(
    raw: &RawRollout,
    cohorts: &[(&str, u32)],
    outcomes: &[String],
    fallback: Option<usize>,
    segments: Option<&[String]>,
) -> Result<RolloutSpec, SpecError> {
    let Some(canary) = cohorts.iter().position(|(n, _)| *n == raw.canary) else {
        return fail(
            "canary",
            format!("{:?} is not a cohort of this route's split", raw.canary),
        );
    };
    if canary == 0 {
        return fail(
            "canary",
            "the canary cannot be the split's first cohort, the baseline",
        );
    }
    if canary + 1 != cohorts.len() {
        return fail(
            "canary",
            "the canary must be the split's last cohort, so that ramping it moves no other cohort's users",
        );
    }
    if fallback == Some(canary) {
        return fail(
            "canary",
            "the route's fallback sends keyless requests to the canary whatever its step: use `random` or another cohort",
        );
    }
    let others: u32 = cohorts[1..canary].iter().map(|(_, w)| w).sum();
    let room = crate::routing::bands::BUCKETS - others;
    if raw.steps.is_empty() {
        return fail("steps", "at least one step is required");
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, &p) in raw.steps.iter().enumerate() {
        let field = format!("steps[{i}]");
        let Some(w) = super::basis_points(p).filter(|w| *w > 0) else {
            return fail(
                field,
                format!("{p} is not a percent above 0 and at most 100 with at most two decimals"),
            );
        };
        if steps.last().is_some_and(|last| w <= *last) {
            return fail(field, "steps must increase");
        }
        if w > room {
            return fail(
                field,
                format!(
                    "{p}% leaves the baseline less than nothing: the split's other cohorts hold {}%",
                    f64::from(others) / 100.0
                ),
            );
        }
        steps.push(w);
    }
    if raw.min_samples == 0 {
        return fail("min_samples", "must be at least 1");
    }
    if !(raw.alpha > 0.0 && raw.alpha <= 0.5) {
        return fail(
            "alpha",
            format!("{} is not a probability above 0 and at most 0.5", raw.alpha),
        );
    }
    if !(raw.srm_alpha >= 0.0 && raw.srm_alpha <= 0.5) {
        return fail(
            "srm_alpha",
            format!(
                "{} is not a probability from 0 (the check off) to 0.5",
                raw.srm_alpha
            ),
        );
    }
    let mut guards: Vec<Guard> = Vec::with_capacity(raw.guards.len());
    let mut segment_guards: Vec<Guard> = Vec::new();
    for (j, g) in raw.guards.iter().enumerate() {
        if g.per_segment && segments.is_none() {
            return fail(
                format!("guards[{j}].per_segment"),
                "the route has no `segment` to test this guard in",
            );
        }
        if g.per_segment && g.include_late {
            // A late outcome names a key and a time, never the segment of a turn.
            return fail(
                format!("guards[{j}].include_late"),
                "late outcomes carry no segment: a per_segment guard cannot include them",
            );
        }
        let guard = guard(g, outcomes).map_err(|mut e| {
            e.field = match e.field.as_str() {
                "" => format!("guards[{j}]"),
                f => format!("guards[{j}].{f}"),
            };
            e
        })?;
        let (list, what) = if g.per_segment {
            (&mut segment_guards, "per_segment ")
        } else {
            (&mut guards, "")
        };
        if list.iter().any(|other| other.name == guard.name) {
            return fail(
                format!("guards[{j}]"),
                format!("a second {what}{} guard", guard.name),
            );
        }
        list.push(guard);
    }
    if let Some(segments) = segments {
        super::segment::histograms_fit(&segment_guards, segments.len())
            .or_else(|message| fail("guards", message))?;
    }
    Ok(RolloutSpec {
        id: raw.id.clone(),
        canary: raw.canary.clone(),
        baseline: cohorts[0].0.to_string(),
        steps,
        soak: raw.soak,
        min_samples: raw.min_samples,
        after: match raw.after {
            RawAfter::Hold => After::Hold,
            RawAfter::Promote => After::Promote,
        },
        alpha: raw.alpha,
        guards,
        others,
        outcomes: outcomes.to_vec(),
        srm_alpha: raw.srm_alpha,
        segments: segments.map(<[String]>::to_vec).unwrap_or_default(),
        segment_guards,
    })
}

fn guard(g: &RawGuard, outcomes: &[String]) -> Result<Guard, SpecError> {
    use RawGuardMetric as M;
    let latency = matches!(
        g.metric,
        M::Latency | M::Ttfb | M::Ttft | M::InterToken | M::OutputTokens | M::Cost
    );
    let outcome_guard = matches!(g.metric, M::EscalationRate | M::ResolutionRate);
    if g.quantile.is_some() && !latency {
        return fail(
            "quantile",
            "only latency, ttfb, ttft, inter_token, output_tokens and cost guards take a quantile",
        );
    }
    if g.outcome.is_some() && !outcome_guard {
        return fail(
            "outcome",
            "only escalation_rate and resolution_rate guards take an outcome",
        );
    }
    if g.include_late && !outcome_guard {
        return fail(
            "include_late",
            "only escalation_rate and resolution_rate guards take include_late",
        );
    }
    if g.margin.is_some() && g.relative_margin.is_some() {
        return fail("margin", "set margin or relative_margin, not both");
    }
    if let Some(r) = g.relative_margin {
        let top = if g.metric == M::ResolutionRate {
            1.0
        } else {
            10.0
        };
        if !(r >= 0.0 && r < top) {
            return fail(
                "relative_margin",
                format!("{r} is not a fraction from 0 to below {top}"),
            );
        }
    }
    if latency {
        if g.margin.is_some() {
            return fail(
                "margin",
                "latency, token and cost guards take relative_margin (0.1 = 10% more)",
            );
        }
        let quantile = g.quantile.unwrap_or(0.5);
        if !(0.5..=0.999).contains(&quantile) {
            return fail(
                "quantile",
                format!("{quantile} is not a quantile from 0.5 to 0.999"),
            );
        }
        let (source, metric) = match g.metric {
            M::Ttfb => (Latency::Ttfb, "ttfb"),
            M::Ttft => (Latency::Ttft, "ttft"),
            M::InterToken => (Latency::InterToken, "inter_token"),
            M::OutputTokens => (Latency::OutputTokens, "output_tokens"),
            M::Cost => (Latency::Cost, "cost"),
            _ => (Latency::Duration, "latency"),
        };
        let relative_margin = g.relative_margin.unwrap_or(0.1);
        let name = format!("{metric} p{}", quantile * 100.0);
        return Ok(Guard {
            key: format!("{name} relative_margin={relative_margin}"),
            name,
            kind: GuardKind::Latency {
                source,
                quantile,
                relative_margin,
            },
        });
    }
    let margin = match (g.margin, g.relative_margin) {
        (Some(points), _) => {
            if !(0.0..100.0).contains(&points) {
                return fail(
                    "margin",
                    format!("{points} is not a number of percentage points from 0 to below 100"),
                );
            }
            Margin::Points(points / 100.0)
        }
        (None, Some(r)) => Margin::Relative(r),
        (None, None) => Margin::Points(0.0),
    };
    let (source, worse, name) = if g.metric == M::ErrorRate {
        (Rate::Errors, Worse::Higher, "error_rate".to_string())
    } else {
        outcome_rate(g, outcomes)?
    };
    Ok(Guard {
        key: format!("{name} {margin:?}"),
        name,
        kind: GuardKind::Rate {
            source,
            boundary: Boundary::new(worse, margin),
        },
    })
}

/// The slot, direction and name of an escalation_rate or resolution_rate guard.
fn outcome_rate(g: &RawGuard, outcomes: &[String]) -> Result<(Rate, Worse, String), SpecError> {
    let (default, worse, metric) = if g.metric == RawGuardMetric::ResolutionRate {
        ("resolved", Worse::Lower, "resolution_rate")
    } else {
        ("escalated", Worse::Higher, "escalation_rate")
    };
    let value = g.outcome.as_deref().unwrap_or(default).to_ascii_lowercase();
    let slot = outcomes.iter().position(|o| *o == value);
    let Some(slot) = slot.filter(|s| *s < OTHER_SLOT) else {
        return fail(
            if g.outcome.is_some() { "outcome" } else { "" },
            format!("outcome {value:?} is not among the route's first {OTHER_SLOT} `outcomes`"),
        );
    };
    let name = if value == default {
        metric.to_string()
    } else {
        format!("{metric} ({value})")
    };
    if g.include_late {
        return Ok((Rate::OutcomeWithLate(slot), worse, format!("{name} +late")));
    }
    Ok((Rate::Outcome(slot), worse, name))
}

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
    /// The same, with the late outcomes attributed to the cohort (`include_late: true`).
    OutcomeWithLate(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    Duration,
    Ttfb,
    Ttft,
    InterToken,
    OutputTokens,
    Cost,
}

impl Latency {
    /// What a quantile read from the bins (their edges are in seconds) is in this source's
    /// unit: seconds; tokens (one per microsecond of the bins); the currency (its millionths
    /// per microsecond).
    pub fn scale(self) -> f64 {
        match self {
            Latency::OutputTokens => 1e6,
            _ => 1.0,
        }
    }
}

/// Which direction of a rate is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    Higher,
    Lower,
}

/// How much worse than the baseline the canary may be before a guard fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Margin {
    /// An absolute difference in rate (0.01 is one percentage point).
    Points(f64),
    /// A relative difference (0.1 is 10% of the baseline's rate).
    Relative(f64),
}

/// The null boundary `canary = offset + slope * baseline`; the null is the side that is not
/// worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Boundary {
    pub offset: f64,
    pub slope: f64,
    pub worse: Worse,
}

impl Boundary {
    pub fn new(worse: Worse, margin: Margin) -> Self {
        let (offset, slope) = match (worse, margin) {
            (Worse::Higher, Margin::Points(d)) => (d, 1.0),
            (Worse::Higher, Margin::Relative(r)) => (0.0, 1.0 + r),
            (Worse::Lower, Margin::Points(d)) => (-d, 1.0),
            (Worse::Lower, Margin::Relative(r)) => (0.0, 1.0 - r),
        };
        Boundary {
            offset,
            slope,
            worse,
        }
    }
}
