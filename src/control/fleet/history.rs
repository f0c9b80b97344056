//! The percent history a fleet shares, one `history.<route>` key per route: the splits each
//! of the route's record changes put in force, stamped with the record's effective time (the
//! moment every replica switches, the same number on each), so that a late outcome is
//! attributed alike whichever replica receives it, and a replica that started after a change
//! still knows the split served before it came up.
//!
//! Owns: this replica's copy of each route's shared history, the value's JSON form, and its
//! write (union with what the bucket holds, bounds, compare-and-swap, again on a lost race).
//! Must not touch: the request path (the copy is handed to `late` off it), the record, what
//! an entry means (`routing::history`).
//!
//! Why a union. Every replica that applies a change adds the same entry, and the first to
//! write it wins; the others find it there and write nothing. The union of two copies is
//! commutative and idempotent, so lost races, replays and a replica's late start all end in
//! the same list. Entries older than the outcome window are pruned (the one in force at its
//! start stays); an entry older than the first the bucket holds is never written back.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::engine::{Engine, EngineError, Revision};
use super::keys;
use crate::control::late::Late;
use crate::routing::history::shared::{adds_to, bound, union};
use crate::routing::history::Entry;
use crate::routing::table::RoutingTable;

/// The format this code writes.
pub const FORMAT: u32 = 1;

/// The largest value read: [`crate::routing::history::shared::MAX_SHARED`] entries of a
/// route with many cohorts fit well under it.
pub const MAX_BYTES: usize = 1 << 20;

/// How many lost races a write takes before it waits for the next heartbeat.
const RACES: usize = 4;

/// What the fleet task needs of the process to share the history: where it is kept.
pub trait Keeps {
    fn late(&self) -> &Late;
}

impl<K: Keeps + ?Sized> Keeps for std::sync::Arc<K> {
    fn late(&self) -> &Late {
        K::late(self)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Value {
    format: u32,
    entries: Vec<Entry>,
}

/// The entries of `route` a value holds; a value that cannot be read holds none (the next
/// write replaces it).
pub fn decode(route: &str, bytes: &[u8]) -> Vec<Entry> {
    if bytes.len() > MAX_BYTES {
        return Vec::new();
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => union(&v.entries, &[])
            .into_iter()
            .filter(|e| e.route == route)
            .collect(),
        Err(e) => {
            tracing::warn!(route, error = %e, "fleet: the route's shared percent history cannot be read; it is written anew");
            Vec::new()
        }
    }
}

pub fn encode(entries: &[Entry]) -> Bytes {
    let v = Value {
        format: FORMAT,
        entries: entries.to_vec(),
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

#[derive(Debug, Default)]
struct Copy {
    mine: Vec<Entry>,
    /// What the bucket held when last read or written, and its revision.
    theirs: Option<(Vec<Entry>, Revision)>,
}

/// This replica's copies, by route.
#[derive(Debug, Default)]
pub struct Copies {
    routes: BTreeMap<String, Copy>,
}

impl Copies {
    /// The route's copy.
    pub fn of(&self, route: &str) -> &[Entry] {
        self.routes.get(route).map_or(&[], |c| c.mine.as_slice())
    }

    /// Adds `entries` to the route's copy, bounded at `cutoff_ms`; whether it changed.
    fn add(&mut self, route: &str, entries: &[Entry], cutoff_ms: u64) -> bool {
        let copy = self.routes.entry(route.to_string()).or_default();
        let mut next = union(&copy.mine, entries);
        bound(&mut next, cutoff_ms);
        let changed = next != copy.mine;
        copy.mine = next;
        changed
    }

    /// The fleet put `entry` in force here; whether the copy changed.
    pub fn decided(&mut self, entry: Entry, cutoff_ms: u64) -> bool {
        let route = entry.route.clone();
        self.add(&route, &[entry], cutoff_ms)
    }

    /// The bucket's value of the route (from the watch or a read); whether the copy changed.
    pub fn learned(
        &mut self,
        route: &str,
        value: Option<&[u8]>,
        rev: Revision,
        cutoff_ms: u64,
    ) -> bool {
        let theirs = value.map(|b| decode(route, b)).unwrap_or_default();
        let copy = self.routes.entry(route.to_string()).or_default();
        if copy.theirs.as_ref().is_some_and(|(_, r)| *r > rev) {
            // A delivery older than what was written since: its entries are in the copy.
            return false;
        }
        copy.theirs = Some((theirs.clone(), rev));
        self.add(route, &theirs, cutoff_ms)
    }

    /// Every route with a copy.
    pub fn routes(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }

    /// Routes whose copy holds what the bucket lacks (or was never read).
    pub fn pending(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|(_, c)| match &c.theirs {
                Some((theirs, _)) => adds_to(&c.mine, theirs),
                None => !c.mine.is_empty(),
            })
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Writes the union of the route's copy and the bucket's value by compare-and-swap;
    /// whether the copy changed (a peer's entries came in).
    pub async fn push(
        &mut self,
        engine: &dyn Engine,
        route: &str,
        cutoff_ms: u64,
    ) -> Result<bool, EngineError> {
        let key = keys::history(route);
        let mut changed = false;
        for _ in 0..RACES {
            let copy = self.routes.entry(route.to_string()).or_default();
            let theirs = copy.theirs.clone();
            if theirs
                .as_ref()
                .is_some_and(|(t, _)| !adds_to(&copy.mine, t))
            {
                return Ok(changed);
            }
            let mut next = union(&copy.mine, theirs.as_ref().map_or(&[], |(t, _)| t));
            bound(&mut next, cutoff_ms);
            let written = match &theirs {
                Some((_, rev)) => engine.update(&key, encode(&next), *rev).await,
                None => engine.create(&key, encode(&next)).await,
            };
            match written {
                Ok(rev) => {
                    changed |= next != copy.mine;
                    copy.theirs = Some((next.clone(), rev));
                    copy.mine = next;
                    return Ok(changed);
                }
                Err(EngineError::Conflict { .. }) => {
                    let (value, rev) = match engine.get(&key).await? {
                        Some((bytes, rev)) => (Some(bytes), rev),
                        None => (None, 0),
                    };
                    let copy = self.routes.entry(route.to_string()).or_default();
                    // Read back at once: forget what was cached, whatever its revision.
                    copy.theirs = None;
                    changed |= self.learned(route, value.as_deref(), rev, cutoff_ms);
                    if value.is_none() {
                        if let Some(c) = self.routes.get_mut(route) {
                            c.theirs = None;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }
}

/// The split `table` serves for `route`, as beginning at `at_ms`.
pub fn served(table: &RoutingTable, route: &str, at_ms: u64) -> Option<Entry> {
    crate::control::late::entries_of(table, at_ms)
        .into_iter()
        .find(|e| e.route == route)
}

/// The oldest time a late outcome may still be attributed at, by `table`'s window.
pub fn cutoff(table: &RoutingTable, now_ms: u64) -> u64 {
    now_ms.saturating_sub(u64::try_from(table.late.window.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
