//! The check that an edited config may keep each rollout's state: run on a new table before
//! it is reconciled, at a reload and at startup, so both refuse the same edits.
//!
//! Owns: the rule (`steps_edit`) and finding where each rollout stands (its live entry, which
//! `reconcile` passes in, else its state file). Must not touch: the entries or the files (it
//! only reads), decisions; it imports nothing of `rollout`'s root.

use super::state::Store;
use crate::routing::table::rollout::RolloutSpec;
use crate::routing::table::{show_percent, RoutingTable};

/// A route whose rollout may not go on under its id with the new config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRefused {
    /// Index of the route in the table (and in the file's `routes`).
    pub route: usize,
    pub message: String,
}

/// What [`Rollouts::reconcile_checked`] would refuse at startup, from the state files alone and without
/// creating anything: for `cohort check`.
pub fn check_saved(table: &RoutingTable) -> Result<(), EditRefused> {
    let store = table
        .state_dir
        .as_deref()
        .and_then(|d| Store::inspect(d).ok().flatten());
    check(table, store.as_ref(), |_, _| None)
}

/// Each rollout of `table` against where it stands: `live` (route, id) first, else its state
/// file for the same id.
pub(super) fn check(
    table: &RoutingTable,
    store: Option<&Store>,
    live: impl Fn(&str, &str) -> Option<(Vec<u32>, usize)>,
) -> Result<(), EditRefused> {
    for (i, route) in table.routes.iter().enumerate() {
        let Some(spec) = &route.rollout else { continue };
        let at = live(&route.name, &spec.id).or_else(|| {
            store
                .and_then(|s| {
                    s.load(&route.name, &spec.id, spec.steps.len())
                        .ok()
                        .flatten()
                })
                .filter(|saved| saved.id == spec.id && !saved.steps.is_empty())
                .map(|saved| (saved.steps, saved.step))
        });
        if let Some((old, step)) = at {
            steps_edit(&old, step, spec).map_err(|message| EditRefused { route: i, message })?;
        }
    }
    Ok(())
}

/// Whether a rollout at step `at` of `old` steps may go on under the same id with `new`'s:
/// only when every step up to the current one is unchanged. Anything else would either keep
/// the index and so move the canary to a percent no evidence was gathered for (a jump past
/// the next configured step, or a drop that moves users back out of the canary), or need a
/// new meaning for the evidence already held. Later steps may change freely.
fn steps_edit(old: &[u32], at: usize, new: &RolloutSpec) -> Result<(), String> {
    let kept = &old[..old.len().min(at + 1)];
    if new.steps.starts_with(kept) {
        return Ok(());
    }
    let list = |steps: &[u32]| {
        let shown: Vec<String> = steps.iter().map(|w| show_percent(*w)).collect();
        format!("[{}]", shown.join(", "))
    };
    Err(format!(
        "rollout {:?} is at step {} of {} ({}%); under the same id the steps up to it must stay \
         {}, or the canary's percent would change without evidence: to change them, give the \
         rollout a new id",
        new.id,
        at + 1,
        list(old),
        kept.last()
            .map_or_else(|| "0".to_string(), |w| show_percent(*w)),
        list(kept)
    ))
}
