//! Progressive delivery: a route's `rollout` ramps its canary by steps, judges it against the
//! baseline with sequential tests, and rolls it back or moves it on.
//!
//! Owns: the live rollouts ([`Rollouts`]): matching them with the configuration, the state
//! each keeps on disk, the decisions with their audit lines and metrics, and the canary's
//! effective percent, which [`Rollouts::adjust`] writes into a table and [`Rollouts::apply`]
//! swaps in through the door; and, for `cohort check`, what startup would meet in
//! `state_dir`, found without creating or writing anything ([`preflight`]).
//! Must not touch: the store itself (`control::door` owns it), `reload` (which imports this,
//! never the reverse: the judge reaches its owner through [`judge::Judged`]), the rollout
//! configuration rules (`routing::table::rollout`), the request path (it only records into
//! `samples::Cells` through handles kept in the table).
//!
//! Parts: `reconcile` (entries across configurations), `edit` (edits refused under an id),
//! `stats` (the tests), `srm` (the sample ratio check), `guard` (a guard over tallies), `machine` (the pure state machine),
//! `state` (files), `weights` (effective percents into a table, and through the door),
//! `gauges` (metrics), `report` (JSON for the admin endpoints), `judge` (the task that ticks);
//! test-only: `simulate`, `traffic`, `srm_sim` and `late_sim` (Monte-Carlo checks).

mod edit;
pub mod follow;
mod gauges;
pub(crate) mod guard;
pub mod judge;
#[cfg(test)]
mod late_sim;
pub(crate) mod machine;
mod preflight;
mod reconcile;
mod report;
#[cfg(test)]
mod segment_sim;
mod segments;
#[cfg(test)]
pub(crate) mod simulate;
pub(crate) mod srm;
#[cfg(test)]
mod srm_sim;
pub mod state;
pub(crate) mod stats;
#[cfg(test)]
pub(crate) mod traffic;
pub(crate) mod wealth;
mod weights;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use edit::{check_saved, EditRefused};
pub use gauges::{DECISIONS, SRM_HALTS, SRM_STATISTIC, STATE, STEP_PERCENT};
pub use machine::{Action, DecisionKind, Phase, Progress};
pub use preflight::{preflight, Preflight};
pub use segments::needs as segment_needs;
pub use state::{Decision, StateError};

use crate::routing::table::rollout::RolloutSpec;
use crate::samples::{Cells, Tally};
use crate::telemetry::Metrics;
use gauges::Gauges;
use guard::Reading;
use state::{Position, Saved, Store};

/// How often a judged rollout's progress is saved between decisions.
pub const CHECKPOINT: Duration = Duration::from_secs(10);
/// Decisions kept in a rollout's history (the audit log keeps them all).
pub(crate) const HISTORY: usize = 50;

/// A moment, on the monotonic clock (soak time) and the wall clock (records).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn real() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// This moment moved `by` later on both clocks (for simulated time).
    pub fn later(self, by: Duration) -> Self {
        Now {
            mono: self.mono + by,
            wall: self.wall + by,
        }
    }
}

/// Why an operator's action was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("no rollout on route {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// One live rollout.
struct Entry {
    spec: Arc<RolloutSpec>,
    progress: Progress,
    /// Canary's and baseline's cells, and their values at the last tick.
    cells: (Arc<Cells>, Arc<Cells>),
    seen: (Tally, Tally),
    readings: Vec<Reading>,
    history: VecDeque<Decision>,
    last_tick: Instant,
    last_saved: Instant,
    /// Why the rollout is halted, when it is.
    note: Option<String>,
    /// The last failure to write its state or audit line, for `/rollouts`.
    problem: Option<String>,
    gauges: Gauges,
    /// In a fleet, what the shared record says this replica serves (see `follow`).
    followed: Option<follow::Followed>,
    /// The keys each step has counted (`samples::units`), for the sample ratio check.
    slots: Arc<crate::samples::Seen>,
}

impl Entry {
    fn position(&self) -> Position {
        Position {
            state: self.progress.phase,
            step: self.progress.step,
            percent: f64::from(follow::serving(self)) / 100.0,
        }
    }
}

/// Every live rollout of one proxy, and where their state is kept.
pub struct Rollouts {
    store: Option<Store>,
    /// Set by the final [`Rollouts::checkpoint`], under the entries' lock that every write
    /// holds: the state directory is the next process's from then on.
    closed: AtomicBool,
    metrics: Metrics,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Wall ms when this process opened its rollouts: a fleet step in force before it began
    /// without this replica's judge (see `follow::Followed::judges`).
    opened_ms: u64,
    /// In a fleet: the share of each guard's alpha this replica's own rollbacks test at
    /// (`fleet::pooled::Split`); the fleet's judge decides everything else.
    fleet: Option<f64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Rollouts {
    /// Opens the state directory (created if missing); without one, no route may have a
    /// rollout (the table's validation sees to that).
    pub fn open(state_dir: Option<&Path>, metrics: Metrics) -> Result<Self, StateError> {
        let store = state_dir.map(Store::open).transpose()?;
        Ok(Rollouts {
            store,
            closed: AtomicBool::new(false),
            metrics,
            entries: Mutex::new(BTreeMap::new()),
            opened_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            fleet: None,
        })
    }

    /// Makes these rollouts a fleet replica's: its own judge tests at `local_share` of each
    /// alpha and only ever rolls back; the percents come from the shared record. Called before
    /// the first reconcile.
    pub fn in_fleet(mut self, local_share: f64) -> Self {
        self.fleet = Some(local_share);
        self
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.store.as_ref().map(Store::dir)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store to write to: none once closed, so a stopped proxy's late reload or action
    /// cannot start a rollout (or save one) over what the next process keeps there.
    fn writable(&self) -> Option<&Store> {
        self.store
            .as_ref()
            .filter(|_| !self.closed.load(Ordering::Acquire))
    }

    /// One judge tick: each judged rollout reads its cells, feeds the block to its guards and
    /// decides; progress is saved every [`CHECKPOINT`]. Whether an effective percent changed
    /// (the caller then has `reload` swap the table).
    pub fn tick(&self, now: Now) -> bool {
        let mut entries = self.lock();
        let mut changed = false;
        for (route, e) in entries.iter_mut() {
            let elapsed = now.mono.saturating_duration_since(e.last_tick);
            e.last_tick = now.mono;
            if e.progress.phase.judged() {
                let snap = (e.cells.0.snapshot(), e.cells.1.snapshot());
                let block = (snap.0.since(&e.seen.0), snap.1.since(&e.seen.1));
                e.seen = snap;
                let spec = follow::judging(&e.spec, self.fleet);
                e.progress.observe(&spec, elapsed, &block.0, &block.1);
                e.readings = e.progress.readings(&spec);
                let srm = e.progress.srm(&spec);
                e.gauges.srm_statistic.set(srm.map_or(0.0, |s| s.statistic));
                let verdict = match self.fleet {
                    // A replica's own units are the fleet's judge's to halt on (from its
                    // reports): here the check must not hide a guard's failure.
                    Some(_) => {
                        let guards_only = RolloutSpec {
                            srm_alpha: 0.0,
                            ..RolloutSpec::clone(&spec)
                        };
                        e.progress.verdict(&guards_only, &e.readings)
                    }
                    None => e.progress.verdict(&spec, &e.readings),
                };
                // A fleet replica only rolls back on its own: the fleet's judge moves on.
                let verdict = verdict.filter(|(k, _)| {
                    self.fleet.is_none()
                        || (*k == DecisionKind::Rollback && Rollouts::judges_locally(e))
                });
                if let Some((kind, reason)) = verdict {
                    if kind == DecisionKind::Halt {
                        e.gauges.srm_halts.increment(1);
                        e.note = Some(reason.clone());
                    }
                    self.decide(route, e, kind, "judge", reason, now);
                    changed = true;
                    continue;
                }
            }
            if e.progress.phase.judged()
                && now.mono.saturating_duration_since(e.last_saved) >= CHECKPOINT
            {
                self.save(route, e, now);
            }
        }
        changed
    }

    /// Saves every rollout's progress now (at shutdown), and writes nothing to the state
    /// directory after: a restart in the same process opens it again meanwhile.
    pub fn checkpoint(&self, now: Now) {
        let mut entries = self.lock();
        for (route, e) in entries.iter_mut() {
            self.save(route, e, now);
        }
        self.closed.store(true, Ordering::Release);
    }

    /// An operator's action on `route`'s rollout; the decision taken.
    pub fn act(&self, route: &str, action: Action, now: Now) -> Result<Decision, ActionError> {
        let mut entries = self.lock();
        let e = entries
            .get_mut(route)
            .ok_or_else(|| ActionError::NotFound(route.to_string()))?;
        let kind = e.progress.action(action).map_err(ActionError::Conflict)?;
        let reason = format!("{} asked through the admin endpoint", kind.as_str());
        self.decide(route, e, kind, "admin", reason, now);
        e.history
            .back()
            .cloned()
            .ok_or_else(|| ActionError::Conflict("no decision recorded".into()))
    }

    /// Takes a decision: applies it, records it (history, audit log, metrics, log) and saves.
    fn decide(
        &self,
        route: &str,
        e: &mut Entry,
        kind: DecisionKind,
        trigger: &str,
        reason: String,
        now: Now,
    ) {
        // A rollout's first decision (a start, or a halt on an untrusted file) has no before.
        let first =
            e.history.is_empty() && matches!(kind, DecisionKind::Start | DecisionKind::Halt);
        let from = (!first).then(|| e.position());
        let (soaked, canary_samples, baseline_samples) = (
            e.progress.soaked,
            e.progress.canary.requests,
            e.progress.baseline.requests,
        );
        let guards = std::mem::take(&mut e.readings);
        let step = e.progress.step;
        if e.progress.apply(kind) {
            // New cells, which `weights::adjust` puts in the next table: a request keeps the
            // cells of the table it started on, so one started before this decision (in the
            // old step, at the old share) never enters the new step's evidence.
            e.cells = segments::fresh_cells(&e.spec);
            e.seen = Default::default();
        }
        if e.progress.step == step {
            // Still the same step's evidence (a rollback keeps showing what failed).
            e.readings = guards.clone();
        }
        if kind == DecisionKind::Resume {
            e.note = None;
        }
        let d = Decision {
            at: rfc3339(now.wall),
            at_unix_ms: now
                .wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            route: route.to_string(),
            id: e.spec.id.clone(),
            decision: kind,
            trigger: trigger.to_string(),
            from,
            to: e.position(),
            reason,
            soaked_seconds: soaked.as_secs_f64(),
            canary_samples,
            baseline_samples,
            guards,
        };
        let to = d.to;
        if kind == DecisionKind::Rollback || kind == DecisionKind::Halt {
            tracing::warn!(route, id = %d.id, decision = kind.as_str(), trigger, percent = to.percent, reason = %d.reason, "rollout decision");
        } else {
            tracing::info!(route, id = %d.id, decision = kind.as_str(), trigger, state = %to.state, step = to.step, percent = to.percent, reason = %d.reason, "rollout decision");
        }
        // In a fleet, a decision is audited by its writer once it lands on the shared record
        // (`audit_fleet`); only this replica's own rollback is its own at once.
        let audited = self.fleet.is_none() || kind == DecisionKind::Rollback;
        if let Some(store) = self.writable().filter(|_| audited) {
            if let Err(err) = store.audit(&d) {
                tracing::error!(route, error = %err, "cannot append to the rollout audit log");
                e.problem = Some(err.to_string());
            }
        }
        e.gauges.decisions[kind as usize].increment(1);
        e.gauges.show(Some(to.state), follow::serving(e));
        e.history.push_back(d);
        while e.history.len() > HISTORY {
            e.history.pop_front();
        }
        self.save(route, e, now);
    }

    fn save(&self, route: &str, e: &mut Entry, now: Now) {
        e.last_saved = now.mono;
        let Some(store) = self.writable() else { return };
        let saved = Saved::new(
            route,
            &e.spec.id,
            &e.progress,
            e.note.clone(),
            e.history.iter().cloned().collect(),
            &e.spec.steps,
        );
        match store.save(&saved) {
            Ok(()) => e.problem = None,
            Err(err) => {
                if e.problem.is_none() {
                    tracing::error!(route, error = %err, "cannot save rollout state");
                }
                e.problem = Some(err.to_string());
            }
        }
    }
}
