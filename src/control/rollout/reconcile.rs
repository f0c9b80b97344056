//! Matching the live rollouts with a freshly built table: a new id starts a rollout, the same
//! id keeps its state (its evidence reset when its cohorts or outcome slots changed), a rollout
//! this process has not seen resumes from its state file, or halts when that file is not
//! trusted.
//!
//! Owns: the entries' life cycle across configurations. Must not touch: the swap (the caller
//! stores the table through `door`), decisions beyond the first (`machine`, through
//! `Rollouts::decide`), the request path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::edit::{check, EditRefused};
use super::gauges::Gauges;
use super::machine::{DecisionKind, Progress};
use super::state::{StateError, UNTRUSTED};
use super::{weights, Entry, Now, Rollouts};
use crate::routing::table::rollout::RolloutSpec;
use crate::routing::table::RoutingTable;

impl Entry {
    /// New cells and no samples for the current step (the canary, the baseline or the
    /// outcome slots changed under the same id). Each guard's test goes on rather than
    /// starting again, so the reset spends no more alpha: its wealth is capped at 1, which
    /// drops the evidence against what was replaced, and a supermartingale lowered at a
    /// stopping time is still one (the null holds block by block, whatever the cohorts are).
    fn reset_evidence(&mut self) {
        self.cells = super::segments::fresh_cells(&self.spec);
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

impl Rollouts {
    /// Refuses `table` when one of its rollouts keeps an id whose state (live, or saved in
    /// `state_dir` for a process that restarts) stands at a step that the new steps moved;
    /// else [`Rollouts::reconcile`]s it. One lock for both: the judge cannot move a rollout
    /// on to another step between the check and the match. A state file that cannot be read
    /// is not this check's concern: startup halts that rollout anyway.
    pub fn reconcile_checked(
        &self,
        table: &mut RoutingTable,
        now: Now,
        trigger: &str,
    ) -> Result<(), EditRefused> {
        let mut entries = self.lock();
        check(table, self.store.as_ref(), |route, id| {
            entries
                .get(route)
                .filter(|e| e.spec.id == id)
                .map(|e| (e.spec.steps.clone(), e.progress.step))
        })?;
        self.reconcile_in(&mut entries, table, now, trigger);
        Ok(())
    }

    /// Matches the live rollouts with a freshly built table's (a new id starts a new one, the
    /// same id keeps its state, a rollout found on disk resumes), then writes their effective
    /// percents into it. `trigger` is `startup` or `reload`.
    pub fn reconcile(&self, table: &mut RoutingTable, now: Now, trigger: &str) {
        self.reconcile_in(&mut self.lock(), table, now, trigger);
    }

    /// [`Rollouts::reconcile`] with the entries already locked.
    pub(super) fn reconcile_in(
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
                        && e.spec.outcomes == spec.outcomes
                        && e.spec.segments == spec.segments;
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
            cells: super::segments::fresh_cells(&spec),
            seen: Default::default(),
            readings: Vec::new(),
            history: VecDeque::new(),
            last_tick: now.mono,
            last_saved: now.mono,
            note: None,
            problem: None,
            gauges: Gauges::new(&self.metrics, route),
            // Until the shared record is read, a fleet replica serves no canary.
            followed: self.fleet.map(|_| super::follow::Followed::default()),
            spec,
            slots: Default::default(),
        };
        let loaded = match &self.store {
            Some(store) => store.load(route, &e.spec.id, e.spec.steps.len()),
            None => Ok(None),
        };
        let first = match loaded {
            // `load` has checked it against this rollout: the error arm is never taken.
            Ok(Some(saved)) if saved.id == e.spec.id => match saved.progress() {
                Ok(mut p) => {
                    p.carry_units(&e.spec);
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
                if let (StateError::Corrupt { .. }, Some(store)) = (&err, self.writable()) {
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
                .show(Some(e.progress.phase), super::follow::serving(&e)),
        }
        e
    }
}
