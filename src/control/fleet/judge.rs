//! The fleet's judge over one route's current step: every replica's reports pooled, fed
//! block by block to the same `Progress` a single replica's judge runs, at the judge's share
//! of alpha, soaking only while every live replica confirms the step; and its progress
//! saved under `judge.<route>` so that a successor goes on with the same soak and the same
//! e-processes. The sample ratio check is the exception: it runs on each replica's own units
//! (see [`Judging::look`]), not on the pool.
//!
//! Owns: the pooled progress of the step being judged. Must not touch: the record (the
//! caller writes the verdict through `Fleet::write`), the local rollouts, the request path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pooled::{Pool, Report, SavedPool, Split, StepKey};
use super::record::Record;
use crate::control::rollout::guard::Reading;
use crate::control::rollout::state::SavedTally;
use crate::control::rollout::{srm, DecisionKind, Progress};
use crate::routing::table::rollout::RolloutSpec;

/// The judge's progress in a step, as saved for a successor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub step: StepKey,
    pub epoch: u64,
    pub soaked_ms: u64,
    pub wealth: BTreeMap<String, f64>,
    pub canary: SavedTally,
    pub baseline: SavedTally,
    /// The pool behind `canary` and `baseline`, source by source. A saved state without it
    /// (or one whose sum is not theirs) is not resumed: the step's judgement starts over.
    #[serde(default)]
    pub pool: SavedPool,
}

/// One step under judgement.
pub struct Judging {
    pub progress: Progress,
    pool: Pool,
    last: Instant,
    pub readings: Vec<Reading>,
    /// Whether every live replica served the step at the last look.
    pub confirmed: bool,
}

/// What a look at the step found.
pub enum Verdict {
    Wait,
    Rollback(String),
    /// A sample ratio mismatch in one replica's units: ask the record to halt.
    Halt(String),
    /// The step passed: ask the record to move on.
    Passed(String),
}

/// The spec the judge tests with: the replica's guards, at the judge's share of alpha, over
/// the steps the record's plan fixed; and `srm_alpha` at one replica's share (of
/// `max_replicas`), which each replica's units are tested at (see [`Judging::look`]).
pub fn spec_for(local: &RolloutSpec, r: &Record, max_replicas: usize) -> RolloutSpec {
    RolloutSpec {
        alpha: Split::EVEN.judge_alpha(local.alpha),
        steps: r.plan.steps.clone(),
        srm_alpha: local.srm_alpha * Split::EVEN.local_alpha(1.0, max_replicas),
        ..local.clone()
    }
}

pub fn step_key(r: &Record) -> StepKey {
    StepKey {
        id: r.plan.id.clone(),
        step: r.step,
        step_version: r.step_version,
    }
}

impl Judging {
    /// The step's judgement, continued from `saved` when that is this step's.
    pub fn new(r: &Record, saved: Option<Saved>, now: Instant) -> Self {
        let key = step_key(r);
        let fresh = Progress {
            phase: r.phase,
            step: r.step,
            ..Progress::start()
        };
        let saved = saved.filter(|s| s.step == key);
        let had = saved.is_some();
        let resumed = saved.and_then(|s| {
            let progress = Progress {
                soaked: Duration::from_millis(s.soaked_ms),
                canary: s.canary.restore("canary").ok()?,
                baseline: s.baseline.restore("baseline").ok()?,
                wealth: s
                    .wealth
                    .into_iter()
                    .filter(|(_, w)| w.is_finite())
                    .collect(),
                ..fresh.clone()
            };
            let pool = Pool::restore(key.clone(), &s.pool).ok()?;
            // The progress must have been fed exactly the pool's counts, or a block would
            // feed some answers twice or none at all.
            (pool.totals() == &(progress.canary.clone(), progress.baseline.clone()))
                .then_some((progress, pool))
        });
        if had && resumed.is_none() {
            tracing::warn!(rollout = %key.id, step = key.step, "fleet: the former judge's progress in this step does not hold together; the step is judged from its start");
        }
        let (progress, pool) = resumed.unwrap_or_else(|| (fresh, Pool::new(key)));
        Judging {
            progress,
            pool,
            last: now,
            readings: Vec::new(),
            confirmed: false,
        }
    }

    pub fn key(&self) -> &StepKey {
        self.pool.step()
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// One look: the reports in, the new answers fed, the soak moved on while every live
    /// replica (`live`) serves the step (`applied`: replica -> the record version it serves).
    pub fn look<'a>(
        &mut self,
        spec: &RolloutSpec,
        r: &Record,
        reports: impl Iterator<Item = &'a Report>,
        live: &BTreeSet<String>,
        applied: &BTreeMap<String, u64>,
        (now, now_ms): (Instant, u64),
    ) -> Verdict {
        for rep in reports {
            if let Err(e) = self.pool.offer(rep) {
                tracing::trace!(replica = %rep.replica, error = %e, "fleet: report not pooled");
            }
        }
        let block = self.pool.block();
        self.confirmed = now_ms >= r.effective_at_ms
            && !live.is_empty()
            && live
                .iter()
                .all(|rep| applied.get(rep).is_some_and(|v| *v >= r.step_version));
        let elapsed = if self.confirmed {
            now.saturating_duration_since(self.last)
        } else {
            Duration::ZERO
        };
        self.last = now;
        self.progress.phase = r.phase;
        // The sample ratio check runs on each replica's units, not on their sum: a replica
        // dedupes only what it sees, so a key whose requests reach three replicas is three
        // units of the sum, in one cohort, and the sum spreads wider than independent units
        // (by up to the replicas a key reaches). Each replica that saw the step begin is one
        // exact test at `spec.srm_alpha`, its share, as the local rollbacks are.
        let pooled = RolloutSpec {
            srm_alpha: 0.0,
            ..spec.clone()
        };
        self.progress.observe(&pooled, elapsed, &block.0, &block.1);
        self.readings = self.progress.readings(&pooled);
        if let Some(reason) = self.mismatch(spec) {
            return Verdict::Halt(reason);
        }
        match self.progress.verdict(&pooled, &self.readings) {
            Some((DecisionKind::Rollback, reason)) => Verdict::Rollback(reason),
            Some((_, reason)) if self.confirmed => Verdict::Passed(reason),
            _ => Verdict::Wait,
        }
    }

    /// The first replica whose own units show a sample ratio mismatch, as the reason.
    fn mismatch(&self, spec: &RolloutSpec) -> Option<String> {
        self.pool.judging_sources().find_map(|(replica, (c, b))| {
            let own = Progress {
                canary: c.clone(),
                baseline: b.clone(),
                ..self.progress.clone()
            };
            let s = own.srm(spec).filter(|s| s.mismatch)?;
            Some(format!("{} at replica {replica}", srm::describe(&s)))
        })
    }

    pub fn saved(&self, epoch: u64) -> Saved {
        Saved {
            step: self.key().clone(),
            epoch,
            soaked_ms: u64::try_from(self.progress.soaked.as_millis()).unwrap_or(u64::MAX),
            wealth: self
                .progress
                .wealth
                .iter()
                .map(|(k, w)| (k.clone(), if w.is_finite() { *w } else { 0.0 }))
                .collect(),
            canary: (&self.progress.canary).into(),
            baseline: (&self.progress.baseline).into(),
            pool: self.pool.save(),
        }
    }
}

#[cfg(test)]
#[path = "judge_srm_tests.rs"]
mod srm_tests;
