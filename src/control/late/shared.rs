//! The fleet's percent history, taken into this replica's own: a route's entries from the
//! start of the fleet's copy on become that copy's, in memory and in `state_dir`, so every
//! replica attributes a late outcome with the same splits.
//!
//! Owns: [`Late::adopt`]. Must not touch: the engine (the fleet task hands the entries in, off
//! the request path), what adopting means for the entries (`routing::history::shared`).

use super::{file, lock, Late};
use crate::routing::history::Entry;

impl Late {
    /// Takes the fleet's `shared` entries of `route` into the history (see
    /// [`crate::routing::history::History::adopt`]); whether anything changed.
    pub fn adopt(&self, route: &str, shared: &[Entry]) -> bool {
        let mut kept = lock(&self.kept);
        if !kept.history.adopt(route, shared) {
            return false;
        }
        tracing::debug!(
            route,
            entries = shared.len(),
            "percent history: the fleet's entries adopted"
        );
        let Some(dir) = &self.dir else { return true };
        if let Err(e) = file::rewrite(dir, &kept.history) {
            tracing::error!(error = %e, "cannot write the percent history");
        }
        kept.lines = kept.history.entries().len();
        true
    }
}
