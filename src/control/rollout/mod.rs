//! Progressive delivery: a route's `rollout` ramps its canary by steps, judges it against the
//! baseline with sequential tests, and rolls it back or moves it on.
//!
//! Owns: the live rollouts ([`Rollouts`]): matching them with the configuration, the state
//! each keeps on disk, the decisions with their audit lines and metrics, and the canary's
//! effective percent, which [`Rollouts::adjust`] writes into a table for `reload` to swap in;
//! and, for `cohort check`, what startup would meet in `state_dir`, found without creating or
//! writing anything ([`preflight`]).
//! Must not touch: the swap itself (only `reload` stores tables), the request path (it only
//! records into [`Cells`] through handles kept in the table).
//!
//! Parts: `spec` (configuration rules), `stats`
//! (the tests), `guard` (a guard over tallies), `machine` (the pure state machine), `state`
//! (files), `weights` (effective percents into a table), `gauges` (metrics), `report` (JSON
//! for the admin endpoints), `judge` (the task that ticks), `simulate` (Monte-Carlo tests).

mod edit;
mod gauges;
pub mod guard;
pub mod judge;
pub mod machine;
mod preflight;
mod report;
#[cfg(test)]
mod simulate;
pub mod state;
pub mod stats;
#[cfg(test)]
mod traffic;
pub mod wealth;
mod weights;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use edit::{check_saved, EditRefused};
pub use gauges::{DECISIONS, STATE, STEP_PERCENT};
pub use machine::{Action, DecisionKind, Phase, Progress};
pub use preflight::{preflight, Preflight};
pub use state::{Decision, StateError};

use crate::routing::table::rollout::RolloutSpec;
use crate::routing::table::RoutingTable;
use crate::samples::{Cells, Tally};
use crate::telemetry::Metrics;
use gauges::Gauges;
use guard::Reading;
use state::{Position, Saved, Store};

/// How often a judged rollout's progress is saved between decisions.
pub const CHECKPOINT: Duration = Duration::from_secs(10);
/// Decisions kept in a rollout's history (the audit log keeps them all).
const HISTORY: usize = 50;

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

/// What becomes of a rollout whose state file is not trusted, in startup's log line and in
/// `cohort check`'s warning, which must say the same.
pub(super) const UNTRUSTED: &str =
    "the canary stays at 0% until an operator resumes, promotes or rolls back";

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
}

impl Entry {
    fn position(&self) -> Position {
        Position {
            state: self.progress.phase,
            step: self.progress.step,
            percent: f64::from(self.progress.percent(&self.spec)) / 100.0,
        }
    }

    /// New cells and no samples for the current step (the canary, the baseline or the
    /// outcome slots changed under the same id). Each guard's test goes on rather than
    /// starting again, so the reset spends no more alpha: its wealth is capped at 1, which
    /// drops the evidence against what was replaced, and a supermartingale lowered at a
    /// stopping time is still one (the null holds block by block, whatever the cohorts are).
    fn reset_evidence(&mut self) {
        self.cells = Default::default();
        self.seen = Default::default();
        let keep = std::mem::replace(&mut self.progress, Progress::start());
        self.progress = Progress {
            phase: keep.phase,
            step: keep.step,
            soaked: keep.soaked,
            wealth: keep
                .wealth
                .into_iter()
                .map(|(k, w)| (k, w.min(0.0)))
                .collect(),
            ..Progress::start()
        };
    }
}

/// Every live rollout of one proxy, and where their state is kept.
pub struct Rollouts {
    store: Option<Store>,
    metrics: Metrics,
    entries: Mutex<BTreeMap<String, Entry>>,
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
            metrics,
            entries: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.store.as_ref().map(Store::dir)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Matches the live rollouts with a freshly built table's (a new id starts a new one, the
    /// same id keeps its state, a rollout found on disk resumes), then writes their effective
    /// percents into it. `trigger` is `startup` or `reload`.
    pub fn reconcile(&self, table: &mut RoutingTable, now: Now, trigger: &str) {
        self.reconcile_in(&mut self.lock(), table, now, trigger);
    }

    /// [`Rollouts::reconcile`] with the entries already locked.
    fn reconcile_in(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        table: &mut RoutingTable,
        now: Now,
        trigger: &str,
    ) {
        let mut live = BTreeSet::new();
        for route in &table.routes {
            let Some(spec) = &route.rollout else { continue };
            live.insert(route.name.clone());
            match entries.get_mut(&route.name) {
                Some(e) if e.spec.id == spec.id => {
                    let same_samples = e.spec.canary == spec.canary
                        && e.spec.baseline == spec.baseline
                        && e.spec.outcomes == spec.outcomes;
                    e.spec = Arc::clone(spec);
                    if !same_samples {
                        e.reset_evidence();
                    }
                    e.progress.step = e.progress.step.min(spec.steps.len().saturating_sub(1));
                }
                _ => {
                    let e = self.open_entry(&route.name, Arc::clone(spec), now, trigger);
                    entries.insert(route.name.clone(), e);
                }
            }
        }
        entries.retain(|name, e| {
            let keep = live.contains(name);
            if !keep {
                // Saved as it stands, so the same id coming back resumes where it was.
                self.save(name, e, now);
                tracing::info!(route = %name, id = %e.spec.id, "rollout removed from the configuration; its state stays on disk");
                e.gauges.show(None, 0);
            }
            keep
        });
        weights::adjust(entries, table);
    }

    /// A rollout seen for the first time by this process: resumed from its state file when
    /// that is for the same id, started afresh otherwise, halted when the file is corrupt.
    fn open_entry(&self, route: &str, spec: Arc<RolloutSpec>, now: Now, trigger: &str) -> Entry {
        let mut e = Entry {
            progress: Progress::start(),
            cells: Default::default(),
            seen: Default::default(),
            readings: Vec::new(),
            history: VecDeque::new(),
            last_tick: now.mono,
            last_saved: now.mono,
            note: None,
            problem: None,
            gauges: Gauges::new(&self.metrics, route),
            spec,
        };
        let loaded = match &self.store {
            Some(store) => store.load(route, &e.spec.id, e.spec.steps.len()),
            None => Ok(None),
        };
        let first = match loaded {
            // `load` has checked it against this rollout: the error arm is never taken.
            Ok(Some(saved)) if saved.id == e.spec.id => match saved.progress() {
                Ok(p) => {
                    e.progress = p;
                    e.note = saved.note;
                    e.history = saved.history.into_iter().collect();
                    tracing::info!(route, id = %e.spec.id, state = %e.progress.phase, step = e.progress.step, soaked_s = e.progress.soaked.as_secs(), "rollout resumed from its state file");
                    None
                }
                Err(reason) => Some((DecisionKind::Halt, reason)),
            },
            Ok(_) => Some((DecisionKind::Start, "a new rollout id".to_string())),
            Err(err) => {
                tracing::error!(route, error = %err, "rollout state not trusted; {UNTRUSTED}");
                if let (StateError::Corrupt { .. }, Some(store)) = (&err, &self.store) {
                    match store.set_aside(route) {
                        Ok(aside) => {
                            tracing::warn!(route, file = %aside.display(), "corrupt state file set aside")
                        }
                        Err(e) => {
                            tracing::warn!(route, error = %e, "could not set the corrupt state file aside")
                        }
                    }
                }
                Some((DecisionKind::Halt, err.to_string()))
            }
        };
        match first {
            Some((DecisionKind::Halt, reason)) => {
                e.note = Some(reason.clone());
                self.decide(route, &mut e, DecisionKind::Halt, trigger, reason, now);
            }
            Some((kind, reason)) => self.decide(route, &mut e, kind, trigger, reason, now),
            None => e
                .gauges
                .show(Some(e.progress.phase), e.progress.percent(&e.spec)),
        }
        e
    }

    /// Writes every rollout's effective percents (and the cells of judged cohorts) into
    /// `table`; whether anything changed.
    pub fn adjust(&self, table: &mut RoutingTable) -> bool {
        weights::adjust(&self.lock(), table)
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
                e.progress.observe(&e.spec, elapsed, &block.0, &block.1);
                e.readings = e.progress.readings(&e.spec);
                if let Some((kind, reason)) = e.progress.verdict(&e.spec, &e.readings) {
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

    /// Saves every rollout's progress now (at shutdown).
    pub fn checkpoint(&self, now: Now) {
        let mut entries = self.lock();
        for (route, e) in entries.iter_mut() {
            self.save(route, e, now);
        }
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
            e.cells = Default::default();
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
        if let Some(store) = &self.store {
            if let Err(err) = store.audit(&d) {
                tracing::error!(route, error = %err, "cannot append to the rollout audit log");
                e.problem = Some(err.to_string());
            }
        }
        e.gauges.decisions[kind as usize].increment(1);
        e.gauges.show(Some(to.state), e.progress.percent(&e.spec));
        e.history.push_back(d);
        while e.history.len() > HISTORY {
            e.history.pop_front();
        }
        self.save(route, e, now);
    }

    fn save(&self, route: &str, e: &mut Entry, now: Now) {
        e.last_saved = now.mono;
        let Some(store) = &self.store else { return };
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
