//! `cohort check`'s look at `state_dir`: what startup would meet there, found without creating
//! or writing anything.
//!
//! Owns: the notes and warnings `check` prints about the state directory and the saved
//! rollout states. Must not touch: the directory itself (it only reads, through `state`'s own
//! loading), the live rollouts (`Rollouts`).

use super::state::{StateError, Store, UNTRUSTED};
use crate::routing::table::RoutingTable;

/// What `cohort run` would meet in a table's `state_dir`, short of failing to start.
#[derive(Debug, Default, PartialEq)]
pub struct Preflight {
    /// Not problems, but worth saying (the directory does not exist here yet).
    pub notes: Vec<String>,
    /// What startup would log and get past: state files it would not trust.
    pub warnings: Vec<String>,
}

/// What [`Rollouts::open`] and then [`Rollouts::reconcile`] would meet in `table`'s
/// `state_dir`, found without creating or writing anything: `cohort check` runs this, often on
/// a machine where the directory does not exist. An error is one that would fail
/// [`Rollouts::open`]; a state file that startup would not trust is only a warning, since
/// startup halts that rollout and goes on serving.
pub fn preflight(table: &RoutingTable) -> Result<Preflight, StateError> {
    let mut out = Preflight::default();
    let Some(dir) = table.state_dir.as_deref() else {
        return Ok(out);
    };
    let Some(store) = Store::inspect(dir)? else {
        out.notes.push(format!(
            "state_dir {} does not exist here; cohort run creates it",
            dir.display()
        ));
        return Ok(out);
    };
    for route in &table.routes {
        let Some(spec) = &route.rollout else {
            continue;
        };
        // The very load startup runs (`open_entry`), which only reads.
        let Err(err) = store.load(&route.name, &spec.id, spec.steps.len()) else {
            continue;
        };
        let (trust, aside) = match &err {
            // Its text already says it is not trusted.
            StateError::Corrupt { .. } => {
                let aside = store.aside_path(&route.name);
                let name = aside.file_name().unwrap_or_default().to_string_lossy();
                ("", format!("moves it aside to {name} and "))
            }
            _ => ("; not trusted", String::new()),
        };
        out.warnings.push(format!(
            "route {:?}: {err}{trust}: cohort run {aside}halts the rollout; {UNTRUSTED}",
            route.name
        ));
    }
    Ok(out)
}
