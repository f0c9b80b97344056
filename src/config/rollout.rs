//! The raw serde types of a route's `rollout` section: steps, soak, the alpha budget and the
//! guards, with their documented defaults.
//!
//! Owns: the section's shape as serde reads and writes it. Must not touch: what makes a rollout
//! valid (see `routing::table`'s rollout spec) or how it runs (`control::rollout`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A route's rollout: the canary's steps, how long and on how many samples each is judged,
/// and the guards that judge it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// A new id starts a new rollout; the same id keeps its state across reloads and restarts.
    pub id: String,
    /// The cohort being rolled out (the split's last); the split's first is the baseline.
    pub canary: String,
    /// The canary's percents, increasing.
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// The least time spent at each step.
    #[serde(
        default = "default_soak",
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub soak: Duration,
    /// Samples each cohort needs in a step before it is judged.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// After the last step: `hold` there, or `promote` (the canary takes the baseline's share).
    #[serde(default)]
    pub after: RawAfter,
    /// The chance of rolling back a canary as good as the baseline, over the whole rollout.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_guards")]
    pub guards: Vec<RawGuard>,
    /// The chance of halting on a sample ratio mismatch when the split is sound, over the
    /// whole rollout; apart from `alpha`. 0 turns the check off.
    #[serde(default = "default_srm_alpha")]
    pub srm_alpha: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawAfter {
    #[default]
    Hold,
    Promote,
}

/// One guard: a metric compared between canary and baseline within the current step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub metric: RawGuardMetric,
    /// Rate guards: how many percentage points worse the canary may be.
    pub margin: Option<f64>,
    /// How much worse, relative to the baseline, the canary may be (0.1 = 10%).
    pub relative_margin: Option<f64>,
    /// Latency, ttfb, ttft, inter_token, output_tokens and cost guards: the quantile compared
    /// (0.5 to 0.999).
    pub quantile: Option<f64>,
    /// Outcome guards: the outcome value counted.
    pub outcome: Option<String>,
    /// Tested in each of the route's segments (its values and `other`) instead of over all
    /// answers, with the guard's alpha split across them.
    #[serde(default)]
    pub per_segment: bool,
    /// Outcome guards: also count late outcomes (`POST /outcomes`) as observations of the
    /// cohort they are attributed to, in the step in which they arrive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_late: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawGuardMetric {
    ErrorRate,
    EscalationRate,
    ResolutionRate,
    Latency,
    Ttfb,
    /// Streamed answers: time to the first event.
    Ttft,
    /// Streamed answers: the mean gap between events, per answer.
    InterToken,
    /// Output tokens per answer (from its usage).
    OutputTokens,
    /// Cost per answer (usage times the upstream's price).
    Cost,
}

fn default_steps() -> Vec<f64> {
    vec![1.0, 5.0, 25.0, 50.0, 100.0]
}
fn default_soak() -> Duration {
    Duration::from_secs(600)
}
fn default_min_samples() -> u64 {
    500
}
fn default_alpha() -> f64 {
    0.05
}
fn default_srm_alpha() -> f64 {
    0.001
}
fn default_guards() -> Vec<RawGuard> {
    vec![RawGuard {
        metric: RawGuardMetric::ErrorRate,
        margin: None,
        relative_margin: None,
        quantile: None,
        outcome: None,
        per_segment: false,
        include_late: false,
    }]
}
