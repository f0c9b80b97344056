//! Configurations in: the initial load, reloads from any trigger, the audit line for each
//! applied change, and the record of the last failure; and [`Control`], which holds the door
//! to the serving table with the live rollouts. [`check`] runs the initial load's checks
//! without opening or swapping anything, for `cohort check`.
//!
//! Owns: the generation counter, what makes a reload refused, and the wiring of the door with
//! the rollouts. Must not touch: the store itself (every swap goes through `door`, the judge's
//! too), the request path (which only loads), sockets, or file watching (see `watch`).
//! Arrows: `admin` and `watch` import this; this imports `rollout` and `door`, never the
//! reverse.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError};
use crate::control::door::Door;
use crate::control::fleet::spec::{self as fleet, FleetSpec};
use crate::control::late::Late;
use crate::control::rollout::judge::Judged;
use crate::control::rollout::{
    self, Action, ActionError, Decision, Now, Preflight, Rollouts, StateError,
};
use crate::routing::table::{self, RoutingTable};
use crate::telemetry::Metrics;

/// The last reload that failed, for `GET /routes`.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: SystemTime,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file's contents did not change since the serving table was built.
    Unchanged,
    Applied {
        generation: u64,
    },
    Rejected(String),
}

pub struct Control {
    /// The serving table, and the turn every reload and rollout swap waits for.
    door: Door,
    pub metrics: Metrics,
    path: PathBuf,
    last_error: Mutex<Option<LastError>>,
    /// Hash of the contents last tried, good or bad, so the watcher and the poll retry a bad
    /// file only once it changes again.
    last_seen: AtomicU64,
    /// The live rollouts, whose state sets their canaries' effective percents in every table
    /// stored here.
    rollouts: Rollouts,
    /// The validated `fleet` section, as read at start: with one, the rollouts follow the
    /// fleet's shared records (`control::fleet::run`).
    fleet: Option<FleetSpec>,
    /// The section as written at start: a reload that changes it is refused.
    fleet_raw: Option<config::RawFleet>,
    /// Late outcomes, and the percent history the door keeps them told of.
    late: Arc<Late>,
}

/// A reload that changes listeners or the admin address cannot be applied live.
pub const NEEDS_RESTART: &str = "changing listeners or the admin address needs a restart; the rest of this config was not applied";

/// Rollout state stays where the process started keeping it.
pub const STATE_DIR_RESTART: &str =
    "changing state_dir needs a restart; the rest of this config was not applied";

/// The fleet a process belongs to stays the one it started in.
pub const FLEET_RESTART: &str =
    "changing the fleet section needs a restart; the rest of this config was not applied";

/// A state directory that cannot be used, as a config error at the field that names it.
fn state_dir_error(loaded: &config::Loaded, e: StateError) -> ConfigError {
    loaded.error_at("state_dir", e.to_string())
}

/// A rollout whose steps were edited under its id, at the route's `rollout.steps`.
fn edit_error(loaded: &config::Loaded, e: rollout::EditRefused) -> ConfigError {
    loaded.error_at(&format!("routes[{}].rollout.steps", e.route), e.message)
}

/// What [`Control::start`] would make of `path`, without creating or writing anything: the
/// table it would build and what it would meet in `state_dir` (see [`rollout::preflight`]),
/// or the error that would stop it, placed where startup places it.
pub fn check(path: &Path, metrics: &Metrics) -> Result<(RoutingTable, Preflight), ConfigError> {
    let loaded = config::load(path)?;
    let table = table::from_loaded(&loaded, metrics, None, 1)?;
    let fleet = fleet::from_loaded(&loaded)?;
    let mut state = rollout::preflight(&table).map_err(|e| state_dir_error(&loaded, e))?;
    state
        .warnings
        .extend(fleet.iter().flat_map(|f| f.warnings()));
    rollout::check_saved(&table).map_err(|e| edit_error(&loaded, e))?;
    Ok((table, state))
}

impl Control {
    /// Loads and validates `path` as generation 1.
    pub fn start(path: &Path, metrics: Metrics) -> Result<Self, ConfigError> {
        let loaded = config::load(path)?;
        let mut table = table::from_loaded(&loaded, &metrics, None, 1)?;
        let fleet = fleet::from_loaded(&loaded)?;
        let mut rollouts = Rollouts::open(table.state_dir.as_deref(), metrics.clone())
            .map_err(|e| state_dir_error(&loaded, e))?;
        if let Some(f) = &fleet {
            // Each replica's own rollbacks spend half the alpha, split among them.
            let split = crate::control::fleet::pooled::Split::EVEN;
            rollouts = rollouts.in_fleet(split.local_alpha(1.0, f.max_replicas));
        }
        // A restart on an edited file refuses what a reload would have refused.
        rollouts
            .reconcile_checked(&mut table, Now::real(), "startup")
            .map_err(|e| edit_error(&loaded, e))?;
        let fleet_warnings = fleet.iter().flat_map(|f| f.warnings());
        for w in table.warnings().into_iter().chain(fleet_warnings) {
            tracing::warn!(warning = %w, "configuration warning");
        }
        table.publish_gauges();
        metrics.generation.set(1.0);
        tracing::info!(generation = 1, config_hash = %format_args!("{:016x}", table.config_hash), routes = table.routes.len(), file = %path.display(), "configuration loaded");
        let seen = fingerprint(path, &table).unwrap_or(0);
        let late = Arc::new(Late::open(table.state_dir.as_deref(), &metrics));
        let door = Door::new(table);
        door.observe(Arc::clone(&late) as Arc<dyn crate::control::door::Observer>);
        Ok(Control {
            door,
            metrics,
            path: path.to_path_buf(),
            last_error: Mutex::new(None),
            last_seen: AtomicU64::new(seen),
            rollouts,
            fleet,
            fleet_raw: loaded.raw.fleet.clone(),
            late,
        })
    }

    /// Late outcomes (`POST /outcomes`) and the percent history.
    pub fn late(&self) -> &Late {
        &self.late
    }

    /// The validated `fleet` section, if the file has one.
    pub fn fleet(&self) -> Option<&FleetSpec> {
        self.fleet.as_ref()
    }

    pub fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// Swaps in a copy of the serving table with the effective percents the rollouts want
    /// now, if they differ: how a rollout's decision reaches the request path, in one store.
    /// Whether a table was swapped in.
    pub fn apply_rollouts(&self, trigger: &str) -> bool {
        self.rollouts.apply(&self.door, trigger)
    }

    /// An operator's action on `route`'s rollout, applied to the serving table at once.
    pub fn rollout_action(&self, route: &str, action: Action) -> Result<Decision, ActionError> {
        let decision = self.rollouts.act(route, action, Now::real())?;
        self.apply_rollouts("admin");
        Ok(decision)
    }

    /// The shared handle the request path loads from.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.door.table()
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        self.door.current()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Reloads only when the file's contents differ from the last ones tried: what the file
    /// watcher and the poll call, so a bad file is reported once, not every poll.
    pub fn reload_if_changed(&self, trigger: &str) -> Outcome {
        match fingerprint(&self.path, &self.door.current()) {
            Some(f) if f == self.last_seen.load(Ordering::Acquire) => Outcome::Unchanged,
            // Unreadable (mid-swap, say) or changed: let `reload` read it and report.
            _ => self.reload(trigger),
        }
    }

    /// Re-reads the file; builds the new table entirely off the request path and publishes it
    /// with one store, or leaves the serving table untouched. `trigger` is for the log.
    pub fn reload(&self, trigger: &str) -> Outcome {
        let turn = self.door.enter();
        let old = Arc::clone(&turn.old);
        if let Some(f) = fingerprint(&self.path, &old) {
            self.last_seen.store(f, Ordering::Release);
        }
        let result = config::load(&self.path).and_then(|loaded| {
            let same_files = crate::tls::files_hash(&old.watched_files) == old.watched_files_hash;
            if loaded.content_hash() == old.config_hash && same_files {
                return Ok(None);
            }
            let mut new =
                table::from_loaded(&loaded, &self.metrics, Some(&old), old.generation + 1)?;
            if loaded.raw.fleet != self.fleet_raw {
                return Err(loaded.error_at("fleet", FLEET_RESTART));
            }
            if new.state_dir != old.state_dir {
                return Err(loaded.error_at("state_dir", STATE_DIR_RESTART));
            }
            if new.listeners != old.listeners || new.admin_address != old.admin_address {
                return Err(loaded.error_at(
                    if new.listeners != old.listeners {
                        "listeners"
                    } else {
                        "admin.address"
                    },
                    NEEDS_RESTART,
                ));
            }
            self.rollouts
                .reconcile_checked(&mut new, Now::real(), "reload")
                .map_err(|e| edit_error(&loaded, e))?;
            Ok(Some(new))
        });
        match result {
            Ok(None) => {
                tracing::debug!(trigger, "configuration unchanged");
                Outcome::Unchanged
            }
            Ok(Some(new)) => {
                let generation = new.generation;
                let hash = new.config_hash;
                let serving = owners(&new);
                let segments = segment_owners(&new);
                let changes = turn.store(new);
                // Only once nothing new can take a handle of a removed cohort.
                self.metrics.settle(&serving);
                self.metrics.settle_segments(&segments);
                self.metrics.generation.set(generation as f64);
                self.metrics.reload_success.increment(1);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                tracing::info!(trigger, generation, config_hash = %format_args!("{hash:016x}"), changes = %changes.join("; "), "configuration applied");
                Outcome::Applied { generation }
            }
            Err(e) => {
                // The refused table may have registered series for cohorts nobody serves.
                self.metrics.settle(&owners(&old));
                self.metrics.settle_segments(&segment_owners(&old));
                self.metrics.reload_failure.increment(1);
                let message = e.to_string();
                tracing::error!(trigger, file = %e.file.display(), line = e.line, column = e.column, field = %e.field, error = %e.message, "configuration rejected; still serving the previous one");
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(LastError {
                        at: SystemTime::now(),
                        message: message.clone(),
                    });
                }
                Outcome::Rejected(message)
            }
        }
    }
}

/// The config file's contents and the other files the serving table was read from, as one
/// hash: a change to either (a rotated certificate or override secret, say) is a change to
/// reload.
fn fingerprint(path: &Path, table: &RoutingTable) -> Option<u64> {
    let yaml = xxhash_rust::xxh3::xxh3_64(&std::fs::read(path).ok()?);
    Some(yaml ^ crate::tls::files_hash(&table.watched_files).rotate_left(1))
}

/// Each route's name and its cohorts': whose series a table's handles feed.
/// Each (route, cohort) of `table` with its route's segments (none without one).
fn segment_owners(table: &RoutingTable) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for r in &table.routes {
        let names = r.segment.as_ref().map(|s| s.names()).unwrap_or_default();
        for c in &r.cohorts {
            out.push((r.name.clone(), c.name.clone(), names.clone()));
        }
    }
    out
}

fn owners(table: &RoutingTable) -> Vec<(String, Vec<String>)> {
    table
        .routes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.cohorts.iter().map(|c| c.name.clone()).collect(),
            )
        })
        .collect()
}

impl crate::control::fleet::history::Keeps for Control {
    fn late(&self) -> &Late {
        &self.late
    }
}

impl Judged for Control {
    fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    fn door(&self) -> &Door {
        &self.door
    }
}
