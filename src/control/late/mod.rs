//! Late outcomes: outcomes that other systems post after the turn (a reopen, a CSAT score, a
//! refund), attributed to the cohort the key had when its conversation started, and the
//! percent history that attribution reads.
//!
//! Owns: [`Late`]: the percent history of every route (recorded from each table the door
//! stores, kept in `state_dir` when there is one), the remembered event ids, the refusal
//! counters; `POST /outcomes` and `GET /outcomes/history` (`endpoint`). Must not touch: the
//! store itself (`door` tells this of each table through [`crate::control::door::Observer`]),
//! the request path, the rollouts' state (it only adds to the late cells of a judged cohort).
//!
//! Parts: `event` (the body's shape, refusal reasons), `attribute` (the checks and the count),
//! `dedupe` (ids), `file` (the history on disk), `endpoint` (HTTP), `shared` (the fleet's
//! history taken in).

mod attribute;
mod dedupe;
pub mod endpoint;
pub mod event;
pub mod file;
mod shared;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::Counter;
use serde_json::{json, Value};

use crate::control::door::Observer;
use crate::routing::history::{Entry, History, Share};
use crate::routing::table::RoutingTable;
use crate::telemetry::Metrics;
use attribute::{attribute, Context};
use dedupe::Dedupe;
use event::{Reason, Refusal};

pub use attribute::Counted;

/// The history with the number of lines its file holds, so a file that grew well past what is
/// kept (appends since the last prune) is rewritten.
struct Kept {
    history: History,
    lines: usize,
}

pub struct Late {
    dir: Option<PathBuf>,
    kept: Mutex<Kept>,
    dedupe: Mutex<Dedupe>,
    /// Aligned with [`Reason::ALL`].
    refused: [Counter; Reason::ALL.len()],
    evicted: Counter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    ms_of(SystemTime::now())
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The splits `table` serves, one entry per route, as they begin at `at_ms`.
pub fn entries_of(table: &RoutingTable, at_ms: u64) -> Vec<Entry> {
    table
        .routes
        .iter()
        .map(|r| Entry {
            route: r.name.clone(),
            at_unix_ms: at_ms,
            salt: r.salt.clone(),
            cohorts: r
                .cohorts
                .iter()
                .map(|c| Share {
                    cohort: c.name.clone(),
                    weight: c.weight,
                })
                .collect(),
        })
        .collect()
}

impl Late {
    /// Reads the history kept in `state_dir` (none without one: the history then lives as long
    /// as the process). A file that cannot be read is logged and started afresh beside it.
    pub fn open(state_dir: Option<&Path>, metrics: &Metrics) -> Self {
        let (history, lines) = match state_dir.map(file::read).transpose() {
            Ok(Some((h, bad))) => {
                if bad > 0 {
                    tracing::warn!(
                        file = file::HISTORY_FILE,
                        lines = bad,
                        "percent history: lines that do not parse were skipped"
                    );
                }
                let lines = h.entries().len() + bad;
                (h, lines)
            }
            Ok(None) => (History::default(), 0),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the percent history; late outcomes before now cannot be attributed");
                (History::default(), 0)
            }
        };
        Late {
            dir: state_dir.map(Path::to_path_buf),
            kept: Mutex::new(Kept { history, lines }),
            dedupe: Mutex::new(Dedupe::default()),
            refused: metrics.late_refused(Reason::ALL.map(Reason::as_str)),
            evicted: metrics.late_evicted(),
        }
    }

    /// Records the splits of `table` as beginning at `at_ms` (those that changed), forgets
    /// routes it no longer has and entries older than the outcome window needs.
    pub fn record(&self, table: &RoutingTable, at_ms: u64) {
        let mut kept = lock(&self.kept);
        let window = u64::try_from(table.late.window.as_millis()).unwrap_or(u64::MAX);
        let mut appended = Vec::new();
        for entry in entries_of(table, at_ms) {
            if kept.history.record(entry.clone()) {
                appended.push(entry);
            }
        }
        let before = kept.history.entries().len();
        kept.history
            .retain_routes(|name| table.route(name).is_some());
        let dropped = before - kept.history.entries().len()
            + kept.history.prune(at_ms.saturating_sub(window));
        let Some(dir) = &self.dir else { return };
        kept.lines += appended.len();
        let wasteful = kept.lines > 2 * kept.history.entries().len() + 64;
        let result = if dropped > 0 || wasteful {
            let r = file::rewrite(dir, &kept.history);
            kept.lines = kept.history.entries().len();
            r
        } else {
            appended.iter().try_for_each(|e| file::append(dir, e))
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the percent history");
        }
        for e in &appended {
            tracing::debug!(route = %e.route, at_unix_ms = e.at_unix_ms, "percent history: split recorded");
        }
    }

    /// The history, for `GET /outcomes/history`.
    pub fn history_json(&self) -> Value {
        let kept = lock(&self.kept);
        json!({ "entries": kept.history.entries() })
    }

    /// Counts a body refused whole.
    pub fn refused_whole(&self, reason: Reason) {
        self.refused[reason as usize].increment(1);
    }

    /// Checks and counts each event of `items` against `table` at `now_ms`; the answer's JSON.
    pub fn ingest(&self, table: &RoutingTable, items: &[Value], now_ms: u64) -> Value {
        let kept = lock(&self.kept);
        let mut dedupe = lock(&self.dedupe);
        let mut cx = Context {
            table,
            history: &kept.history,
            dedupe: &mut dedupe,
            now_ms,
        };
        let mut by_reason = [0u64; Reason::ALL.len()];
        let mut accepted = 0u64;
        let mut results = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let id = item.get("id").and_then(Value::as_str);
            let outcome = event::parse(item).and_then(|e| attribute(&mut cx, &e));
            results.push(match outcome {
                Ok(c) => {
                    accepted += 1;
                    if c.evicted > 0 {
                        self.evicted.increment(c.evicted as u64);
                    }
                    json!({"index": index, "id": id, "result": "accepted", "cohort": c.cohort,
                           "bucket": c.bucket, "split_since_unix_ms": c.split_since_ms})
                }
                Err(Refusal { reason, detail }) => {
                    by_reason[reason as usize] += 1;
                    self.refused[reason as usize].increment(1);
                    json!({"index": index, "id": id, "result": "refused",
                           "reason": reason.as_str(), "detail": detail})
                }
            });
        }
        let refused: u64 = by_reason.iter().sum();
        let by_reason: serde_json::Map<String, Value> = Reason::ALL
            .iter()
            .zip(by_reason)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "accepted": accepted,
            "refused": refused,
            "refused_by_reason": by_reason,
            "results": results,
        })
    }
}

impl Observer for Late {
    fn stored(&self, table: &RoutingTable) {
        self.record(table, now_ms());
    }
}
