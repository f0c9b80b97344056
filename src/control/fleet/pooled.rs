//! The fleet's statistics: pooled evidence and the local rollback threshold.
//!
//! Pooled evidence. Every replica publishes, for the current step, its cumulative counts per
//! cohort (the [`Tally`] every guard reads from: requests, errors, outcomes, latency and
//! first-byte histograms, sparse) tagged with (replica, incarnation) ([`Report`]). The
//! judge's [`Pool`] keeps the latest report of each (replica, incarnation) and sums them;
//! [`Pool::block`] gives the judge what a single replica's judge gets from its cells, the
//! counts new since the last block, so the same `Progress::observe` runs over them.
//!
//! A restarted replica reports under a new incarnation, from zero. Its old incarnation's last
//! report stays in the sum: those answers happened in the step and were already fed to the
//! judge, and the new incarnation's counts are answers to other requests, so the pooled sum
//! still counts each answer once and only grows, and every block holds only answers the
//! judge has not seen. Nothing is dropped but what a dead incarnation never reported, which
//! is chosen by when it died, not by what it answered. The e-processes stay valid since
//! their guarantee holds block by block, whatever each block's size (see `rollout::stats`).
//!
//! A judge that takes over resumes the pool source by source ([`SavedPool`]), not from the
//! sum alone: its own copy of the reports may lag its predecessor's, and a sum it has not
//! caught up with would give a block that no recording can make. Each source's next report
//! is then a delta from the counts the predecessor fed, and an older one adds nothing.
//!
//! Local rollbacks. See [`Split`] and the README's "Fleets".
//!
//! Owns: the report's form, the pool, the thresholds. Must not touch: the engine (reports
//! arrive and leave as values), the tests themselves (`rollout::stats`, `rollout::guard`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::rollout::state::SavedTally;
use crate::control::rollout::stats::log_threshold;
use crate::routing::table::rollout::RolloutSpec;
use crate::samples::Tally;

/// The largest report [`Report::decode`] reads: two full sparse tallies (six histograms
/// each, every bin at its largest count) are about 75 KB; real ones a few KB. A segmented
/// rollout's reports add the segments' counts that its `per_segment` guards read, at most
/// `MAX_SEGMENT_HISTOGRAMS` histograms per cohort: about 520 KB at the very worst (see
/// `segment_report_tests`), under NATS's default 1 MB payload.
pub const MAX_REPORT_BYTES: usize = 768 * 1024;

/// The most (replica, incarnation) pairs one step's pool keeps (a fleet of 20 replicas
/// restarting every minute for three days).
pub const MAX_SOURCES: usize = 100_000;

/// The step a report's counts belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepKey {
    pub id: String,
    pub step: usize,
    /// The record's version that put the step in force (`Record::step_version`): a halt and
    /// a resume at the same step begin new evidence.
    pub step_version: u64,
}

/// One replica's cumulative counts for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub replica: String,
    /// Different at each start of the replica's process (its start time, say).
    pub incarnation: u64,
    /// One more with each report of an incarnation: a late report never replaces a newer.
    pub seq: u64,
    pub step: StepKey,
    pub canary: SavedTally,
    pub baseline: SavedTally,
    /// Whether this incarnation saw the step begin (`follow::Followed::judges`): its units
    /// are then every key it served in the step, each once, which the judge's sample ratio
    /// check tests on their own (see `judge`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub judges: bool,
}

impl Report {
    pub fn new(
        replica: &str,
        incarnation: u64,
        seq: u64,
        step: StepKey,
        counts: (&Tally, &Tally),
    ) -> Self {
        Report {
            replica: replica.to_string(),
            incarnation,
            seq,
            step,
            canary: counts.0.into(),
            baseline: counts.1.into(),
            judges: false,
        }
    }

    /// This report, from an incarnation that saw its step begin (or not).
    pub fn judging(mut self, judges: bool) -> Self {
        self.judges = judges;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Report, Rejected> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(Rejected::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| Rejected::Parse(e.to_string()))
    }
}

/// Why a report does not enter the pool.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("report of {0} bytes, more than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    #[error("report does not parse: {0}")]
    Parse(String),
    #[error("report for another step")]
    OtherStep,
    #[error("report {seq} is not newer than {latest}")]
    Stale { seq: u64, latest: u64 },
    #[error("counts went down within an incarnation")]
    WentBack,
    #[error("impossible counts: {0}")]
    Impossible(String),
    #[error("more than {MAX_SOURCES} replica incarnations in one step")]
    TooManySources,
    #[error("report of an incarnation its replica has since replaced")]
    Retired,
}

struct Latest {
    seq: u64,
    counts: (Tally, Tally),
    /// As its latest report said ([`Report::judges`]); unknown (false) once restored, until
    /// its next report.
    judges: bool,
}

/// One step's pooled evidence, as the judge sees it.
pub struct Pool {
    step: StepKey,
    latest: BTreeMap<(String, u64), Latest>,
    /// Incarnations whose counts a predecessor judge fed and that are in `base` alone.
    retired: BTreeSet<(String, u64)>,
    base: (Tally, Tally),
    totals: (Tally, Tally),
    /// The totals at the last block.
    fed: (Tally, Tally),
}

fn covers(new: &Tally, old: &Tally) -> bool {
    old.since(new).is_zero()
}

impl Pool {
    pub fn new(step: StepKey) -> Self {
        Pool {
            step,
            latest: BTreeMap::new(),
            retired: BTreeSet::new(),
            base: Default::default(),
            totals: Default::default(),
            fed: Default::default(),
        }
    }

    pub fn step(&self) -> &StepKey {
        &self.step
    }

    /// Takes a report in, replacing its (replica, incarnation)'s previous one.
    pub fn offer(&mut self, r: &Report) -> Result<(), Rejected> {
        if r.step != self.step {
            return Err(Rejected::OtherStep);
        }
        let counts = (
            r.canary.restore("canary").map_err(Rejected::Impossible)?,
            r.baseline
                .restore("baseline")
                .map_err(Rejected::Impossible)?,
        );
        let key = (r.replica.clone(), r.incarnation);
        if self.retired.contains(&key) {
            return Err(Rejected::Retired);
        }
        let zero = (Tally::default(), Tally::default());
        let old = match self.latest.get(&key) {
            Some(l) if r.seq <= l.seq => {
                return Err(Rejected::Stale {
                    seq: r.seq,
                    latest: l.seq,
                })
            }
            Some(l) => &l.counts,
            None if self.latest.len() + self.retired.len() >= MAX_SOURCES => {
                return Err(Rejected::TooManySources)
            }
            None => &zero,
        };
        // Cumulative counters only grow; one that shrank is not the same incarnation's.
        if !covers(&counts.0, &old.0) || !covers(&counts.1, &old.1) {
            return Err(Rejected::WentBack);
        }
        self.totals = (
            self.totals.0.plus(&counts.0.since(&old.0)),
            self.totals.1.plus(&counts.1.since(&old.1)),
        );
        let judges = r.judges;
        self.latest.insert(
            key,
            Latest {
                seq: r.seq,
                counts,
                judges,
            },
        );
        Ok(())
    }

    /// Every replica's latest counts summed: the step's pooled evidence so far.
    pub fn totals(&self) -> &(Tally, Tally) {
        &self.totals
    }

    /// The pooled answers new since the last block, as the judge feeds its guards.
    pub fn block(&mut self) -> (Tally, Tally) {
        let block = (
            self.totals.0.since(&self.fed.0),
            self.totals.1.since(&self.fed.1),
        );
        self.fed = self.totals.clone();
        block
    }

    /// Each (replica, incarnation)'s latest counts, for the fleet view.
    pub fn sources(&self) -> impl Iterator<Item = (&str, u64, &(Tally, Tally))> {
        self.latest
            .iter()
            .map(|((r, i), l)| (r.as_str(), *i, &l.counts))
    }

    /// The latest counts of each incarnation that saw the step begin, by replica.
    pub fn judging_sources(&self) -> impl Iterator<Item = (&str, &(Tally, Tally))> {
        self.latest
            .iter()
            .filter(|(_, l)| l.judges)
            .map(|((r, _), l)| (r.as_str(), &l.counts))
    }

    /// What a successor judge needs to go on from here (see the module's doc). Every
    /// replica's newest incarnation is kept whole; older ones are summed, since their
    /// replica's report key now holds the newer one's counts and they report no more.
    pub fn save(&self) -> SavedPool {
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for (r, i) in self.latest.keys() {
            let n = newest.entry(r.as_str()).or_insert(*i);
            *n = (*n).max(*i);
        }
        let mut out = SavedPool {
            retired: self.retired.iter().cloned().collect(),
            ..SavedPool::default()
        };
        let mut base = self.base.clone();
        for ((r, i), l) in &self.latest {
            if newest.get(r.as_str()) == Some(i) {
                out.sources.push(SavedSource {
                    replica: r.clone(),
                    incarnation: *i,
                    seq: l.seq,
                    canary: (&l.counts.0).into(),
                    baseline: (&l.counts.1).into(),
                });
            } else {
                out.retired.push((r.clone(), *i));
                base = (base.0.plus(&l.counts.0), base.1.plus(&l.counts.1));
            }
        }
        out.base = ((&base.0).into(), (&base.1).into());
        out
    }

    /// The pool `saved` describes, for `step`, every count in it already fed.
    pub fn restore(step: StepKey, saved: &SavedPool) -> Result<Pool, Rejected> {
        let restore = |c: &SavedTally, b: &SavedTally| -> Result<(Tally, Tally), Rejected> {
            Ok((
                c.restore("canary").map_err(Rejected::Impossible)?,
                b.restore("baseline").map_err(Rejected::Impossible)?,
            ))
        };
        if saved.sources.len() + saved.retired.len() > MAX_SOURCES {
            return Err(Rejected::TooManySources);
        }
        let base = restore(&saved.base.0, &saved.base.1)?;
        let mut pool = Pool {
            retired: saved.retired.iter().cloned().collect(),
            totals: base.clone(),
            base,
            ..Pool::new(step)
        };
        for s in &saved.sources {
            let counts = restore(&s.canary, &s.baseline)?;
            pool.totals = (pool.totals.0.plus(&counts.0), pool.totals.1.plus(&counts.1));
            let key = (s.replica.clone(), s.incarnation);
            let latest = Latest {
                seq: s.seq,
                counts,
                judges: false,
            };
            pool.latest.insert(key, latest);
        }
        pool.fed = pool.totals.clone();
        Ok(pool)
    }
}

/// A [`Pool`] as saved under `judge.<route>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPool {
    pub sources: Vec<SavedSource>,
    /// Incarnations summed into `base`, whose reports count no more.
    pub retired: Vec<(String, u64)>,
    pub base: (SavedTally, SavedTally),
}

impl Default for SavedPool {
    fn default() -> Self {
        let zero = SavedTally::from(&Tally::default());
        SavedPool {
            sources: Vec::new(),
            retired: Vec::new(),
            base: (zero.clone(), zero),
        }
    }
}

/// One incarnation's latest report, as its judge last pooled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSource {
    pub replica: String,
    pub incarnation: u64,
    pub seq: u64,
    pub canary: SavedTally,
    pub baseline: SavedTally,
}

/// How a rollout's alpha is shared: `judge` of it to the pooled judge, the rest to the
/// replicas' own rollbacks, in equal parts. Why the fleet's false rollback rate then stays
/// within alpha: by Ville's inequality the judge's e-process reaches `1 / (judge * a)` with
/// probability at most `judge * a` (for each guard and step's `a`, as for one replica), and
/// each of the `live` local ones reaches `live / ((1 - judge) * a)` with probability at most
/// `(1 - judge) * a / live`; the union of all of them is at most `a`. The average of the
/// local e-processes is itself one, and exceeds `1 / ((1 - judge) * a)` whenever one of them
/// reaches its threshold: the same bound, read the other way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    judge: f64,
}

impl Split {
    /// Half to the judge, half to the replicas.
    pub const EVEN: Split = Split { judge: 0.5 };

    /// `judge` strictly between 0 and 1.
    pub fn new(judge: f64) -> Option<Split> {
        (judge > 0.0 && judge < 1.0).then_some(Split { judge })
    }

    /// The pooled judge's alpha out of `alpha`.
    pub fn judge_alpha(self, alpha: f64) -> f64 {
        alpha * self.judge
    }

    /// One replica's alpha out of `alpha`, with `live` local e-processes in the step. A
    /// count too high only slows local rollbacks; too low, and the bound no longer holds:
    /// pass the most replicas (incarnations that judge without their predecessor's wealth
    /// count apart) that may judge during the step.
    pub fn local_alpha(self, alpha: f64, live: usize) -> f64 {
        alpha * (1.0 - self.judge) / live.max(1) as f64
    }

    /// ln of the e-value at which a replica rolls back on its own evidence, per guard and
    /// step of `spec`.
    pub fn local_log_threshold(self, spec: &RolloutSpec, live: usize) -> f64 {
        log_threshold(self.local_alpha(spec.alpha_per_test(), live))
    }

    /// `spec` with the judge's alpha, and with one replica's: each judges with the same
    /// `Progress` as a single replica does, at its own share.
    pub fn specs(self, spec: &RolloutSpec, live: usize) -> (RolloutSpec, RolloutSpec) {
        let with = |alpha| RolloutSpec {
            alpha,
            ..spec.clone()
        };
        (
            with(self.judge_alpha(spec.alpha)),
            with(self.local_alpha(spec.alpha, live)),
        )
    }
}

#[cfg(test)]
#[path = "pooled_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pooled_sim.rs"]
mod sim;

#[cfg(test)]
#[path = "segment_report_tests.rs"]
mod segment_reports;
