//! The percent history of routes: every split a route has served, with the time it began, and
//! the cohort a key had at any moment of it. What late outcomes are attributed with, inside the
//! proxy and outside it (`cohort assign --at`).
//!
//! Owns: the entries, their order, pruning, and the lookup "which cohort had this key at that
//! time", through the contract's formula ([`super::bands`]). Must not touch: files (the state
//! directory is `control`'s), metrics, the serving table (it is handed the splits to record).

use serde::{Deserialize, Serialize};

use super::bands::{self, Bands, BUCKETS};

#[path = "history_shared.rs"]
pub mod shared;

/// One cohort of a recorded split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub cohort: String,
    /// Basis points (percent x 100), as the bands are built from.
    pub weight: u32,
}

/// A split a route began serving at `at_unix_ms`, in force until the route's next entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub route: String,
    pub at_unix_ms: u64,
    /// Kept because the seed is part of the formula: a reload that changes it re-deals keys.
    pub salt: String,
    /// In `split` order: the first is the baseline.
    pub cohorts: Vec<Share>,
}

impl Entry {
    /// Whether `other` deals keys as this one does (same salt, cohorts and weights).
    pub fn same_split(&self, other: &Entry) -> bool {
        self.salt == other.salt && self.cohorts == other.cohorts
    }

    /// The bucket of `key` and the cohort that owned it under this split.
    pub fn assign(&self, key: &[u8]) -> (u32, &str) {
        let seed = bands::seed_for(&self.salt);
        let bucket = bands::bucket(key, seed);
        let widths: Vec<u32> = self.cohorts.iter().map(|s| s.weight).collect();
        let i = Bands::new(&widths).lookup(bucket);
        (
            bucket,
            self.cohorts.get(i).map_or("", |s| s.cohort.as_str()),
        )
    }

    /// A split whose weights cannot have come from a table (their sum is not [`BUCKETS`]).
    pub fn well_formed(&self) -> bool {
        !self.cohorts.is_empty() && self.cohorts.iter().map(|s| s.weight).sum::<u32>() == BUCKETS
    }
}

/// At most this many entries are kept per route, the oldest dropped first: a rollout that
/// steps every minute for a week stays far under it, and memory stays bounded whatever a
/// misbehaving automation does.
pub const MAX_PER_ROUTE: usize = 4096;

/// Why a key has no cohort at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Nothing was recorded for the route at or before that time.
    BeforeHistory,
}

/// Every route's entries, each route's in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// Entries in any order (a file's lines); ill-formed ones are dropped.
    pub fn from_entries(mut entries: Vec<Entry>) -> Self {
        entries.retain(Entry::well_formed);
        // Stable: two entries of a route at the same millisecond keep their order (the later
        // line wins).
        entries.sort_by_key(|e| e.at_unix_ms);
        History { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries of `route`, oldest first.
    pub fn of<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.route == route)
    }

    /// The split `route` served at `at_unix_ms`: its last entry at or before that time.
    pub fn at(&self, route: &str, at_unix_ms: u64) -> Result<&Entry, Unknown> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.route == route && e.at_unix_ms <= at_unix_ms)
            .ok_or(Unknown::BeforeHistory)
    }

    /// Appends `entry` unless the route already serves that split; whether it was appended.
    /// A clock that went back is clamped to the route's last entry, so entries stay in order.
    pub fn record(&mut self, mut entry: Entry) -> bool {
        if !entry.well_formed() {
            return false;
        }
        let last = self.entries.iter().rev().find(|e| e.route == entry.route);
        if let Some(last) = last {
            if last.same_split(&entry) {
                return false;
            }
            entry.at_unix_ms = entry.at_unix_ms.max(last.at_unix_ms);
        }
        let at = entry.at_unix_ms;
        let pos = self.entries.partition_point(|e| e.at_unix_ms <= at);
        self.entries.insert(pos, entry);
        let route = &self.entries[pos].route;
        if self.of(route).count() > MAX_PER_ROUTE {
            let route = route.clone();
            if let Some(first) = self.entries.iter().position(|e| e.route == route) {
                self.entries.remove(first);
            }
        }
        true
    }

    /// Keeps only the routes `keep` says yes to.
    pub fn retain_routes(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|e| keep(&e.route));
    }

    /// Drops what no time at or after `cutoff_ms` can need: a route's entry is kept while it
    /// is its last one or the next begins after `cutoff_ms`. How many were dropped.
    pub fn prune(&mut self, cutoff_ms: u64) -> usize {
        let before = self.entries.len();
        // From the newest back: the start of each route's next entry, seen so far.
        let mut next: std::collections::HashMap<&str, u64> = Default::default();
        let mut keep = vec![true; before];
        for (i, e) in self.entries.iter().enumerate().rev() {
            if next.get(e.route.as_str()).is_some_and(|&n| n <= cutoff_ms) {
                keep[i] = false;
            }
            next.insert(e.route.as_str(), e.at_unix_ms);
        }
        let mut k = keep.into_iter();
        self.entries.retain(|_| k.next().unwrap_or(true));
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-cohort split of `agent` at `at` (also `shared`'s tests').
    pub(super) fn entry(at: u64, canary: u32) -> Entry {
        Entry {
            route: "agent".into(),
            at_unix_ms: at,
            salt: "agent".into(),
            cohorts: vec![
                Share {
                    cohort: "stable".into(),
                    weight: BUCKETS - canary,
                },
                Share {
                    cohort: "canary".into(),
                    weight: canary,
                },
            ],
        }
    }

    #[test]
    fn a_key_has_the_cohort_of_the_split_in_force() {
        let mut h = History::default();
        assert!(h.record(entry(1_000, 500)));
        assert!(h.record(entry(2_000, 1000)));
        assert!(h.record(entry(3_000, 0)));
        // user-2 is bucket 8756 (the contract's vectors): stable at 5% and 10%, user-3 (9955)
        // canary at both, and both stable once the canary is at 0%.
        assert_eq!(h.at("agent", 999), Err(Unknown::BeforeHistory));
        let cases = [
            (1_000, "user-3", 9955, "canary"),
            (1_999, "user-2", 8756, "stable"),
            (2_500, "user-3", 9955, "canary"),
            (3_000, "user-3", 9955, "stable"),
        ];
        for (at, key, bucket, cohort) in cases {
            let got = h.at("agent", at).map(|e| e.assign(key.as_bytes()));
            assert_eq!(got, Ok((bucket, cohort)), "{key} at {at}");
        }
        assert_eq!(h.at("other", 5_000), Err(Unknown::BeforeHistory));
    }

    #[test]
    fn the_same_split_is_not_recorded_twice_and_time_never_goes_back() {
        let mut h = History::default();
        assert!(h.record(entry(5_000, 500)));
        assert!(!h.record(entry(6_000, 500)));
        assert!(h.record(entry(4_000, 2500)));
        assert_eq!(h.entries().len(), 2);
        assert_eq!(h.entries()[1].at_unix_ms, 5_000);
        assert_eq!(h.at("agent", 5_000).unwrap().cohorts[1].weight, 2500);
    }

    #[test]
    fn pruning_keeps_the_split_in_force_at_the_cutoff() {
        let mut h = History::default();
        for (i, w) in [100, 500, 2500, 5000].into_iter().enumerate() {
            h.record(entry(1_000 * (i as u64 + 1), w));
        }
        assert_eq!(h.prune(2_500), 1);
        assert_eq!(h.at("agent", 2_500).unwrap().cohorts[1].weight, 500);
        assert_eq!(h.prune(10_000), 2);
        assert_eq!(h.entries().len(), 1);
        assert_eq!(h.entries()[0].cohorts[1].weight, 5000);
    }

    #[test]
    fn ill_formed_splits_are_dropped() {
        let mut bad = entry(1, 500);
        bad.cohorts[0].weight = 1;
        let h = History::from_entries(vec![bad.clone(), entry(2, 500)]);
        assert_eq!(h.entries().len(), 1);
        let mut h = History::default();
        assert!(!h.record(bad));
    }

    #[test]
    fn entries_per_route_are_capped() {
        let mut h = History::default();
        for i in 0..(MAX_PER_ROUTE as u64 + 10) {
            h.record(entry(i, if i % 2 == 0 { 500 } else { 600 }));
        }
        assert_eq!(h.entries().len(), MAX_PER_ROUTE);
        assert_eq!(h.entries()[0].at_unix_ms, 10);
    }
}
