//! `per_segment` guards: each tested in every segment of the route (its values and `other`),
//! on that segment's counts alone, at the guard's alpha split among the segments; and the
//! cells a rollout's evidence is recorded in, segmented when its route is.
//!
//! Owns: the per-segment e-processes' keys, feeding and reading (`impl Progress`), which
//! counts a fleet report must carry of the segments, and the rule that a segment still short
//! of `min_samples` does not hold a step. Must not touch: the overall guards, decisions
//! (`machine` takes the readings), state files, the request path.

use std::sync::Arc;

use super::guard::{Reading, Status};
use super::machine::{feed, Progress};
use super::stats::log_threshold;
use crate::routing::table::rollout::{GuardKind, Latency, Rate, RolloutSpec};
use crate::samples::{Cells, Needs, Tally};

/// A new step's cells for the canary and the baseline, with a cell per segment when the
/// route has a segment.
pub(super) fn fresh_cells(spec: &RolloutSpec) -> (Arc<Cells>, Arc<Cells>) {
    let n = spec.segments.len();
    (
        Arc::new(Cells::with_segments(n)),
        Arc::new(Cells::with_segments(n)),
    )
}

/// The wealth key of `guard_key` in `segment`.
fn key(guard_key: &str, segment: &str) -> String {
    format!("{guard_key} [segment {segment}]")
}

fn segment(t: &Tally, i: usize) -> &Tally {
    static ZERO: std::sync::OnceLock<Tally> = std::sync::OnceLock::new();
    t.segments
        .get(i)
        .unwrap_or_else(|| ZERO.get_or_init(Tally::default))
}

impl Progress {
    /// One block into every `per_segment` guard, segment by segment; called by `observe`
    /// before the block joins the step's counts.
    pub(super) fn observe_segments(
        &mut self,
        spec: &RolloutSpec,
        canary: &Tally,
        baseline: &Tally,
    ) {
        for (i, name) in spec.segments.iter().enumerate() {
            let step = (segment(&self.canary, i), segment(&self.baseline, i));
            let recent = (segment(&self.recent.0, i), segment(&self.recent.1, i));
            let block = (segment(canary, i), segment(baseline, i));
            for g in &spec.segment_guards {
                feed(&mut self.wealth, g, &key(&g.key, name), step, recent, block);
            }
        }
    }

    /// Every `per_segment` guard's reading in every segment, guard by guard.
    pub(super) fn segment_readings(&self, spec: &RolloutSpec) -> Vec<Reading> {
        let threshold = log_threshold(spec.alpha_per_segment_test());
        let mut out = Vec::with_capacity(spec.segment_guards.len() * spec.segments.len());
        for g in &spec.segment_guards {
            for (i, name) in spec.segments.iter().enumerate() {
                let w = self.wealth.get(&key(&g.key, name)).copied().unwrap_or(0.0);
                let (c, b) = (segment(&self.canary, i), segment(&self.baseline, i));
                let mut r = g.read(w, c, b, spec.min_samples, threshold);
                r.segment = Some(name.clone());
                out.push(r);
            }
        }
        out
    }
}

impl Reading {
    /// Whether this reading lets a step pass: a pass; or a segment that has not reached
    /// `min_samples` in the step, so that a rare segment (or an `other` no client sends)
    /// cannot hold a rollout forever. Such a segment is judged once it has the samples,
    /// and fails whenever it is judged and regressed.
    pub fn lets_pass(&self) -> bool {
        self.status == Status::Pass || (self.segment.is_some() && self.status == Status::Waiting)
    }
}

/// Which counts of the segments the `per_segment` guards of `spec` read.
pub fn needs(spec: &RolloutSpec) -> Needs {
    let mut n = Needs::default();
    for g in &spec.segment_guards {
        match g.kind {
            GuardKind::Rate {
                source: Rate::Errors,
                ..
            } => n.errors = true,
            GuardKind::Rate {
                source: Rate::Outcome(_) | Rate::OutcomeWithLate(_),
                ..
            } => n.outcomes = true,
            GuardKind::Latency { source, .. } => match source {
                Latency::Duration => n.latency = true,
                Latency::Ttfb => n.ttfb = true,
                Latency::Ttft => n.ttft = true,
                Latency::InterToken => n.inter_token = true,
                Latency::OutputTokens => n.output_tokens = true,
                Latency::Cost => n.cost = true,
            },
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::state::Saved;

    fn segmented(segs: &[(u64, u64)]) -> Tally {
        let segments: Vec<Tally> = segs
            .iter()
            .map(|&(requests, errors)| Tally {
                requests,
                errors,
                ..Tally::default()
            })
            .collect();
        Tally {
            requests: segments.iter().map(|s| s.requests).sum(),
            errors: segments.iter().map(|s| s.errors).sum(),
            segments,
            ..Tally::default()
        }
    }

    #[test]
    fn a_step_s_segment_counts_survive_a_restart_and_broken_ones_are_refused() {
        let p = Progress {
            canary: segmented(&[(10, 3), (20, 0), (1, 1)]),
            baseline: segmented(&[(30, 1), (40, 0), (2, 0)]),
            ..Progress::start()
        };
        let saved = Saved::new("r", "v2", &p, None, Vec::new(), &[500]);
        let text = serde_json::to_string(&saved).unwrap();
        let back: Saved = serde_json::from_str(&text).unwrap();
        assert_eq!(back.progress().unwrap(), p);
        // A tally without segments is written as before: files stay readable both ways.
        let plain = Saved::new("r", "v2", &Progress::start(), None, Vec::new(), &[500]);
        assert!(!serde_json::to_string(&plain).unwrap().contains("segments"));

        let broken = Progress {
            canary: segmented(&[(10, 3), (2, 5)]),
            ..p
        };
        let saved = Saved::new("r", "v2", &broken, None, Vec::new(), &[500]);
        assert_eq!(
            saved.progress(),
            Err("canary: segment 1: 5 errors but 2 requests".to_string())
        );
    }

    #[test]
    fn fresh_cells_keep_a_cell_per_segment_and_record_into_both() {
        let mut spec = crate::control::rollout::traffic::tests::issue_spec();
        assert_eq!(fresh_cells(&spec).0.segment_count(), 0);
        spec.segments = ["a", "b", "other"].map(String::from).to_vec();
        let (c, _) = fresh_cells(&spec);
        let answer = crate::samples::Answer {
            status: 503,
            ..Default::default()
        };
        c.record_in(Some(1), &answer);
        c.record_in(None, &answer);
        c.record_abandoned_in(Some(2));
        let t = c.snapshot();
        assert_eq!((t.requests, t.errors), (3, 3));
        let per: Vec<(u64, u64)> = t.segments.iter().map(|s| (s.requests, s.errors)).collect();
        assert_eq!(per, [(0, 0), (1, 1), (1, 1)]);
        assert_eq!(t.segments[2].latency[crate::samples::BINS - 1], 1);
    }
}
