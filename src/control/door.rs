//! The one door to the serving table: the `ArcSwap<RoutingTable>` the request path loads from,
//! the serialisation of every swap (a reload from any trigger, a rollout's new percents from
//! the judge or the admin endpoint), what changed between two tables for the audit line, and
//! the one observer told of every table stored (the percent history of late outcomes).
//!
//! Owns: the store and its turn. Must not touch: how a new table is made (`reload` reads
//! files, `rollout` rewrites percents), the request path (which only loads), sockets. It
//! imports nothing of `control`, so both `reload` and `rollout` go through it without
//! importing each other.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;

use crate::routing::table::{show_percent, RoutingTable};

pub struct Door {
    table: Arc<ArcSwap<RoutingTable>>,
    /// Serialises swaps from signals, the admin endpoint, the watcher and the judge. Never
    /// taken on the request path.
    turn: Mutex<()>,
    /// Told of every table stored, within the turn (the percent history of late outcomes).
    observer: OnceLock<Arc<dyn Observer>>,
}

/// What wants to know of every table that begins serving, in the order they do: set once
/// with [`Door::observe`], so the door names nothing of who listens.
pub trait Observer: Send + Sync {
    fn stored(&self, table: &RoutingTable);
}

/// One swap at a time: while a turn is held no other can store, so [`Turn::old`] is the
/// serving table until this turn stores.
pub struct Turn<'a> {
    table: &'a ArcSwap<RoutingTable>,
    _one_at_a_time: MutexGuard<'a, ()>,
    /// The table serving when the turn began.
    pub old: Arc<RoutingTable>,
    observer: Option<&'a Arc<dyn Observer>>,
}

impl Door {
    pub fn new(table: RoutingTable) -> Self {
        Door {
            table: Arc::new(ArcSwap::from_pointee(table)),
            turn: Mutex::new(()),
            observer: OnceLock::new(),
        }
    }

    /// Sets the observer of every later store (once; a second is ignored), and tells it of
    /// the serving table now.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let _turn = self.enter();
        observer.stored(&self.current());
        let _ = self.observer.set(observer);
    }

    /// The shared handle the request path loads from.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        Arc::clone(&self.table)
    }

    /// The serving table, without waiting for a turn.
    pub fn current(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Waits for the previous swap to finish; the turn ends when it is dropped.
    pub fn enter(&self) -> Turn<'_> {
        let guard = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        Turn {
            table: &self.table,
            _one_at_a_time: guard,
            old: self.table.load_full(),
            observer: self.observer.get(),
        }
    }
}

impl Turn<'_> {
    /// Publishes `new`'s gauges and makes it the serving table in one store; what changed
    /// since [`Turn::old`], for the caller's audit line.
    pub fn store(&self, new: RoutingTable) -> Vec<String> {
        let changes = diff(&self.old, &new);
        new.publish_gauges();
        let new = Arc::new(new);
        self.table.store(Arc::clone(&new));
        if let Some(o) = self.observer {
            o.stored(&new);
        }
        changes
    }
}

/// What changed between two tables, for the audit line: routes added or removed, and each
/// cohort's percent from -> to.
pub fn diff(old: &RoutingTable, new: &RoutingTable) -> Vec<String> {
    let mut out = Vec::new();
    for r in &old.routes {
        if new.route(&r.name).is_none() {
            out.push(format!("route {} removed", r.name));
        }
    }
    for r in &new.routes {
        let Some(before) = old.route(&r.name) else {
            out.push(format!("route {} added", r.name));
            continue;
        };
        for c in &r.cohorts {
            let was = before
                .cohorts
                .iter()
                .find(|b| b.name == c.name)
                .map(|b| b.weight);
            match was {
                Some(w) if w == c.weight => {}
                Some(w) => out.push(format!(
                    "{}/{}: {}% -> {}%",
                    r.name,
                    c.name,
                    show_percent(w),
                    show_percent(c.weight)
                )),
                None => out.push(format!(
                    "{}/{}: added at {}%",
                    r.name,
                    c.name,
                    show_percent(c.weight)
                )),
            }
        }
        for b in &before.cohorts {
            if r.cohorts.iter().all(|c| c.name != b.name) {
                out.push(format!(
                    "{}/{}: removed (was {}%)",
                    r.name,
                    b.name,
                    show_percent(b.weight)
                ));
            }
        }
    }
    if old.watched_files_hash != new.watched_files_hash || old.watched_files != new.watched_files {
        out.push("certificates, keys, tokens or secrets changed".into());
    }
    if out.is_empty() {
        out.push("no split changes".into());
    }
    out
}
