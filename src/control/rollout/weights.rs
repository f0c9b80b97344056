//! Effective percents into a table: the canary at its rollout's percent, the baseline with
//! what is left, and the cells of judged cohorts (and the rollout's unit slots, with the step's
//! epoch) attached for the request path; and that table
//! through the door, when a decision changed a percent.
//!
//! Owns: rewriting a route's cohorts and bands in a table not yet (or no longer) serving.
//! Must not touch: the store itself (`door`), the rollouts' state (read only).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Entry, Rollouts};
use crate::control::door::Door;
use crate::routing::bands::{Bands, BUCKETS};
use crate::routing::table::{CohortTarget, RoutingTable};
use crate::samples::Units;

/// Gives each route with a live rollout the weights it wants (the canary at its effective
/// percent, the baseline what is left, the others as configured) and the cells of its judged
/// cohorts; whether any cohort changed.
pub(super) fn adjust(entries: &BTreeMap<String, Entry>, table: &mut RoutingTable) -> bool {
    let mut changed = false;
    for route in &mut table.routes {
        let (Some(spec), Some(e)) = (&route.rollout, entries.get(&route.name)) else {
            continue;
        };
        let Some(canary) = route.cohort_index(spec.canary.as_bytes()) else {
            continue;
        };
        let percent = super::follow::serving(e).min(BUCKETS - spec.others);
        let judged = e.progress.phase.judged();
        let mut weights = Vec::with_capacity(route.cohorts.len());
        let mut route_changed = false;
        for (i, c) in route.cohorts.iter_mut().enumerate() {
            let (weight, guard) = match i {
                0 => (
                    BUCKETS - spec.others - percent,
                    judged.then_some(&e.cells.1),
                ),
                i if i == canary => (percent, judged.then_some(&e.cells.0)),
                _ => (c.configured, None),
            };
            weights.push(weight);
            let same_guard = match (&c.guard, guard) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if c.weight != weight || !same_guard {
                *c = Arc::new(CohortTarget {
                    weight,
                    guard: guard.cloned(),
                    ..CohortTarget::clone(c)
                });
                route_changed = true;
            }
        }
        if route_changed {
            route.bands = Bands::new(&weights);
            changed = true;
        }
        // The step's epoch is its cells': new cells, and every key counts anew.
        let units = judged.then(|| Units {
            seen: Arc::clone(&e.slots),
            epoch: e.cells.0.epoch(),
        });
        let same_units = match (&route.units, &units) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.seen, &b.seen) && a.epoch == b.epoch,
            _ => false,
        };
        if !same_units {
            route.units = units;
            changed = true;
        }
    }
    changed
}

impl Rollouts {
    /// Writes every rollout's effective percents (and the cells of judged cohorts) into
    /// `table`; whether anything changed.
    pub fn adjust(&self, table: &mut RoutingTable) -> bool {
        adjust(&self.lock(), table)
    }

    /// Swaps in a copy of the serving table with the effective percents the rollouts want
    /// now, if they differ: how a rollout's decision reaches the request path, in one store.
    /// Whether a table was swapped in.
    pub fn apply(&self, door: &Door, trigger: &str) -> bool {
        let turn = door.enter();
        let mut new = RoutingTable::clone(&turn.old);
        if !self.adjust(&mut new) {
            return false;
        }
        let changes = turn.store(new);
        tracing::info!(trigger, generation = turn.old.generation, changes = %changes.join("; "), "rollout percents applied");
        true
    }
}
