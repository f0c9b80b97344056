//! The percent history a fleet shares: each route's splits as the fleet's record put them in
//! force (stamped with the record's effective time, the same on every replica), their union
//! with a copy read from a peer, their bounds, and how a replica's own history adopts them.
//!
//! Owns: the canonical form of a route's shared entries (sorted, no two in a row dealing keys
//! alike), [`union`], [`bound`], [`History::adopt`]. Must not touch: the engine or the
//! encoding of the value in the bucket (`control::fleet`), files.

use std::cmp::Ordering;

use super::{Entry, History};

/// At most this many shared entries per route: far beyond a rollout's steps within any
/// sensible outcome window, and small enough (about 150 bytes each) for one key-value entry.
pub const MAX_SHARED: usize = 1024;

/// A total order on one route's entries, so every replica sorts the same set alike (two at
/// the same millisecond included: the later in this order is the one in force there).
fn order(a: &Entry, b: &Entry) -> Ordering {
    let shares = |e: &Entry| {
        e.cohorts
            .iter()
            .map(|s| (s.cohort.clone(), s.weight))
            .collect::<Vec<_>>()
    };
    (a.at_unix_ms, &a.salt)
        .cmp(&(b.at_unix_ms, &b.salt))
        .then_with(|| shares(a).cmp(&shares(b)))
}

/// Sorted, ill-formed and repeated entries gone, and an entry that deals keys as the one
/// before it does dropped (the earlier says it all): the same set gives the same list
/// whatever order it came in.
fn canonical(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.retain(Entry::well_formed);
    entries.sort_by(order);
    entries.dedup_by(|later, earlier| later.same_split(earlier));
    entries
}

/// The union of two copies of one route's shared entries, in canonical form. Commutative and
/// idempotent, so replicas that exchange copies in any order end with the same list.
pub fn union(a: &[Entry], b: &[Entry]) -> Vec<Entry> {
    canonical(a.iter().chain(b).cloned().collect())
}

/// Drops what no time at or after `cutoff_ms` needs (the entry in force at the cutoff stays),
/// then the oldest beyond [`MAX_SHARED`].
pub fn bound(entries: &mut Vec<Entry>, cutoff_ms: u64) {
    let in_force = entries.partition_point(|e| e.at_unix_ms <= cutoff_ms);
    entries.drain(..in_force.saturating_sub(1));
    let over = entries.len().saturating_sub(MAX_SHARED);
    entries.drain(..over);
}

/// Whether `mine` holds an entry that `theirs` lacks, from the start of `theirs` on: what is
/// older was pruned there (by a clock a little ahead), and writing it back would only have it
/// pruned again.
pub fn adds_to(mine: &[Entry], theirs: &[Entry]) -> bool {
    let from = theirs.first().map_or(0, |e| e.at_unix_ms);
    mine.iter()
        .filter(|e| e.at_unix_ms >= from)
        .any(|e| !theirs.contains(e))
}

impl History {
    /// Makes `route`'s entries from the start of `shared` on exactly `shared` (the fleet's
    /// word is final there, so every replica attributes alike), keeping its own entries from
    /// before that start; whether anything changed. A split this replica served on its own
    /// after the fleet's last entry (while it started, or stale) is dropped: it is the
    /// fleet's split a late outcome is attributed with.
    pub fn adopt(&mut self, route: &str, shared: &[Entry]) -> bool {
        let shared = canonical(
            shared
                .iter()
                .filter(|e| e.route == route)
                .cloned()
                .collect(),
        );
        let Some(start) = shared.first().map(|e| e.at_unix_ms) else {
            return false;
        };
        let mine: Vec<Entry> = self.of(route).cloned().collect();
        let mut next: Vec<Entry> = mine
            .iter()
            .filter(|e| e.at_unix_ms < start)
            .cloned()
            .collect();
        // The own entry just before the fleet's first, when it deals alike, says it first.
        next.extend(shared);
        next.dedup_by(|later, earlier| later.same_split(earlier));
        if next == mine {
            return false;
        }
        self.entries.retain(|e| e.route != route);
        self.entries.extend(next);
        // Stable, so each route's order (and its same-millisecond ties) is kept.
        self.entries.sort_by_key(|e| e.at_unix_ms);
        true
    }
}

#[cfg(test)]
#[path = "history_shared_tests.rs"]
mod tests;
