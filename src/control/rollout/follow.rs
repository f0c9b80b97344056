//! A fleet replica's rollouts: what the fleet's shared record says each one serves, applied
//! to the entries; what a replica needs to tell the fleet (its applied versions, its own
//! rollbacks, its step's counts); and the audit line of a decision this replica wrote.
//!
//! Owns: the rules by which a record's state becomes an entry's (a local rollback is never
//! undone by a record that has not seen it; a new step or a new id begins new cells; no
//! contact for `stale_after`, or no record read yet, serves the canary at 0%). Must not
//! touch: the record's own rules or the engine (`control::fleet`, which imports this, never
//! the reverse: what it passes in is [`Shared`], plain values), the swap (`weights::apply`
//! through the door), the request path.

use std::borrow::Cow;
use std::sync::Arc;

use super::machine::{DecisionKind, Phase, Progress};
use super::{Decision, Entry, Rollouts};
use crate::routing::table::rollout::RolloutSpec;
use crate::samples::Tally;

/// What the shared record says of one route's rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shared<'a> {
    pub id: &'a str,
    pub phase: Phase,
    pub step: usize,
    /// The record's version, and the one that put the step in force.
    pub version: u64,
    pub step_version: u64,
    /// The canary's share in force now, basis points.
    pub percent: u32,
    /// Whether the record's latest change is in force yet (its effective time has come).
    pub in_force: bool,
    /// Unix ms from which the step is in force.
    pub step_from_ms: u64,
}

/// What the fleet has put in force on one entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Followed {
    /// The canary's share (basis points); `None` until a record was read.
    pub percent: Option<u32>,
    /// The record version applied (0: none yet), and the step evidence it began.
    pub version: u64,
    pub step: usize,
    pub step_version: u64,
    /// No contact for `stale_after`: the canary at 0% until contact returns.
    pub stale: bool,
    /// Whether this replica's own judge may roll back in this step: only when it saw the
    /// step begin, so that a step's local e-processes are the replicas serving at its start
    /// (at most `max_replicas`), whatever restarts follow.
    pub judges: bool,
}

/// How a record met an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    /// No rollout on this route here.
    Absent,
    /// The record is another id than this replica's configuration (one of them is behind):
    /// the canary at 0% here.
    OtherId,
    /// This replica rolled back on its own and the record has not heard: kept.
    KeptRollback,
    /// Applied; whether what the table must hold changed.
    Applied { changed: bool },
}

/// What the fleet task needs of one local rollout.
#[derive(Debug, Clone)]
pub struct Local {
    pub route: String,
    pub spec: Arc<RolloutSpec>,
    pub phase: Phase,
    /// This replica's own rollback, with its reason, when it rolled back on its own evidence.
    pub own_rollback: Option<String>,
    pub followed: Option<Followed>,
    /// The cells of the step applied: canary, baseline (cumulative).
    pub counts: (Tally, Tally),
}

/// What this replica serves of `e`'s canary, basis points.
pub(super) fn serving(e: &Entry) -> u32 {
    match &e.followed {
        None => e.progress.percent(&e.spec),
        Some(_) if e.progress.phase == Phase::RolledBack => 0,
        Some(f) if f.stale => 0,
        Some(f) => f.percent.unwrap_or(0),
    }
}

/// The spec a replica's own judge tests with: the whole alpha alone, `share` of it in a fleet
/// (of `srm_alpha` too: the fleet's judge tests each replica's units at that share, so that
/// what `/rollouts` shows here is what the fleet halts on).
pub(super) fn judging(spec: &RolloutSpec, fleet: Option<f64>) -> Cow<'_, RolloutSpec> {
    match fleet {
        None => Cow::Borrowed(spec),
        Some(share) => Cow::Owned(RolloutSpec {
            alpha: spec.alpha * share,
            srm_alpha: spec.srm_alpha * share,
            ..spec.clone()
        }),
    }
}

impl Rollouts {
    /// Applies what the record says of `route`'s rollout.
    pub fn follow(&self, route: &str, s: &Shared<'_>) -> Follow {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(route) else {
            return Follow::Absent;
        };
        let Some(f) = e.followed.clone() else {
            return Follow::Absent;
        };
        let before = (serving(e), e.progress.phase.judged());
        if s.id != e.spec.id {
            e.followed = Some(Followed {
                percent: None,
                version: 0,
                ..f
            });
            e.gauges.show(Some(e.progress.phase), serving(e));
            return Follow::OtherId;
        }
        if e.progress.phase == Phase::RolledBack && s.phase != Phase::RolledBack {
            return Follow::KeptRollback;
        }
        if !s.in_force {
            // Until the switch, what was in force before it; a replica that had nothing yet
            // takes that much.
            if f.percent.is_none() {
                e.followed = Some(Followed {
                    percent: Some(s.percent),
                    ..f
                });
            }
        } else {
            let new_step = (f.step, f.step_version) != (s.step, s.step_version);
            if new_step {
                // A new step's evidence, from requests that start from now on.
                e.progress = Progress {
                    phase: s.phase,
                    step: s.step,
                    ..Progress::start()
                };
                e.cells = super::segments::fresh_cells(&e.spec);
                e.seen = Default::default();
                e.readings.clear();
            }
            e.progress.phase = s.phase;
            e.progress.step = s.step;
            e.followed = Some(Followed {
                percent: Some(s.percent),
                version: s.version,
                step: s.step,
                step_version: s.step_version,
                stale: f.stale,
                judges: if new_step {
                    f.version > 0 || s.step_from_ms >= self.opened_ms
                } else {
                    f.judges
                },
            });
        }
        e.gauges.show(Some(e.progress.phase), serving(e));
        let after = (serving(e), e.progress.phase.judged());
        Follow::Applied {
            changed: before != after
                || e.followed.as_ref().map(|n| (n.step, n.step_version))
                    != Some((f.step, f.step_version)),
        }
    }

    /// Sets whether every fleet rollout has lost the fleet (`stale_after` without contact):
    /// its canary at 0% meanwhile, its state kept. Whether any entry changed.
    pub fn set_stale(&self, stale: bool) -> bool {
        let mut changed = false;
        for e in self.lock().values_mut() {
            if let Some(f) = e.followed.as_mut().filter(|f| f.stale != stale) {
                f.stale = stale;
                changed = true;
                e.gauges.show(Some(e.progress.phase), serving(e));
            }
        }
        changed
    }

    /// Whether `e`'s own judge may roll back now: always alone; in a fleet, in a step it saw
    /// begin.
    pub(super) fn judges_locally(e: &Entry) -> bool {
        e.followed.as_ref().is_none_or(|f| f.judges)
    }

    /// Every live rollout, as the fleet task reports and acts on it.
    pub fn locals(&self) -> Vec<Local> {
        self.lock()
            .iter()
            .map(|(route, e)| Local {
                route: route.clone(),
                spec: Arc::clone(&e.spec),
                phase: e.progress.phase,
                own_rollback: (e.progress.phase == Phase::RolledBack).then(|| {
                    e.history
                        .iter()
                        .rev()
                        .find(|d| d.decision == DecisionKind::Rollback)
                        .map_or_else(|| "rolled back here".to_string(), |d| d.reason.clone())
                }),
                followed: e.followed.clone(),
                counts: (e.cells.0.snapshot(), e.cells.1.snapshot()),
            })
            .collect()
    }

    /// A decision this replica wrote on the shared record: into the audit log (once, by its
    /// writer), the route's history and its decisions counter.
    pub fn audit_fleet(&self, d: Decision) {
        let mut entries = self.lock();
        if let Some(store) = self.writable() {
            if let Err(err) = store.audit(&d) {
                tracing::error!(route = %d.route, error = %err, "cannot append to the rollout audit log");
            }
        }
        if let Some(e) = entries.get_mut(&d.route) {
            e.gauges.decisions[d.decision as usize].increment(1);
            e.history.push_back(d);
            while e.history.len() > super::HISTORY {
                e.history.pop_front();
            }
        }
    }
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
