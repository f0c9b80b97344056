//! The rollout metrics of one route: `cohort_rollout_step_percent`, `cohort_rollout_state`
//! (1 for the current state, 0 for the others) and `cohort_rollout_decisions_total`, labelled
//! by route and state or decision names only; and the sample ratio check's
//! `cohort_rollout_srm_statistic` and `cohort_rollout_srm_halts_total`, by route.
//!
//! Owns: their names, help texts and handles. Must not touch: decisions.

use metrics::{Counter, Gauge};

use super::machine::{DecisionKind, Phase};
use crate::telemetry::Metrics;

pub const STEP_PERCENT: &str = "cohort_rollout_step_percent";
pub const STATE: &str = "cohort_rollout_state";
pub const DECISIONS: &str = "cohort_rollout_decisions_total";
pub const SRM_STATISTIC: &str = "cohort_rollout_srm_statistic";
pub const SRM_HALTS: &str = "cohort_rollout_srm_halts_total";

pub(super) struct Gauges {
    step_percent: Gauge,
    states: [Gauge; 6],
    pub(super) decisions: [Counter; 8],
    pub(super) srm_statistic: Gauge,
    pub(super) srm_halts: Counter,
}

impl Gauges {
    pub(super) fn new(metrics: &Metrics, route: &str) -> Self {
        let state = |p: Phase| {
            metrics.gauge(
                STATE,
                "1 for the state each rollout is in, 0 for the others.",
                &[("route", route), ("state", p.as_str())],
            )
        };
        let decision = |d: DecisionKind| {
            metrics.counter(
                DECISIONS,
                "Rollout decisions, by route and decision.",
                &[("route", route), ("decision", d.as_str())],
            )
        };
        Gauges {
            step_percent: metrics.gauge(
                STEP_PERCENT,
                "The canary's effective percent under its rollout.",
                &[("route", route)],
            ),
            states: Phase::ALL.map(state),
            decisions: DecisionKind::ALL.map(decision),
            srm_statistic: metrics.gauge(
                SRM_STATISTIC,
                "ln of the sample ratio check's e-value in the rollout's current step (it halts at ln(1 / alpha per step)).",
                &[("route", route)],
            ),
            srm_halts: metrics.counter(
                SRM_HALTS,
                "Rollouts halted by a sample ratio mismatch, by route.",
                &[("route", route)],
            ),
        }
    }

    pub(super) fn show(&self, phase: Option<Phase>, percent: u32) {
        self.step_percent.set(f64::from(percent) / 100.0);
        for (p, g) in Phase::ALL.iter().zip(&self.states) {
            g.set(if Some(*p) == phase { 1.0 } else { 0.0 });
        }
    }
}
