//! What a replica's fleet task and its admin endpoint share: the engine, who this replica is,
//! the highest lease epoch it knows, the fleet view `GET /rollouts` shows, the fleet's
//! metric handles; and the one way anything writes a route's record ([`Fleet::write`]:
//! read, [`record::propose`], compare-and-swap, again on a lost race).
//!
//! Owns: writes of records, operators' actions on them, the audit line of what this replica
//! wrote. Must not touch: the task's cadence (`run`), the request path, the table (the
//! task applies what it reads through the door).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use metrics::{Counter, Gauge, Histogram};
use serde_json::Value;

use super::engine::{Engine, EngineError, Revision};
use super::keys;
use super::lease::{wall_ms, Claimant};
use super::record::{self, Change, Op, Record, Refused};
use super::spec::FleetSpec;
use crate::control::rollout::{Action, Decision, Rollouts};
use crate::telemetry::Metrics;

/// How many times a write is decided again after losing a race before it gives up (each
/// loss means another writer moved the record on; the caller's next tick tries again).
const RACES: usize = 8;

/// The fleet's transitions, each a `cohort_fleet_transitions_total{event}` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connected,
    Disconnected,
    Stale,
    Rejoined,
    JudgeAcquired,
    JudgeLost,
    Applied,
    LocalRollback,
    WriteRefused,
}

impl Event {
    pub const ALL: [Event; 9] = [
        Event::Connected,
        Event::Disconnected,
        Event::Stale,
        Event::Rejoined,
        Event::JudgeAcquired,
        Event::JudgeLost,
        Event::Applied,
        Event::LocalRollback,
        Event::WriteRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connected => "connected",
            Event::Disconnected => "disconnected",
            Event::Stale => "stale",
            Event::Rejoined => "rejoined",
            Event::JudgeAcquired => "judge_acquired",
            Event::JudgeLost => "judge_lost",
            Event::Applied => "applied",
            Event::LocalRollback => "local_rollback",
            Event::WriteRefused => "write_refused",
        }
    }
}

pub const CONNECTED: &str = "cohort_fleet_connected";
pub const JUDGE: &str = "cohort_fleet_judge";
pub const REPLICAS: &str = "cohort_fleet_replicas";
pub const APPLY_LAG: &str = "cohort_fleet_apply_lag_seconds";
pub const TRANSITIONS: &str = "cohort_fleet_transitions_total";

/// The fleet's metric handles, registered once at start.
pub struct FleetMetrics {
    pub connected: Gauge,
    pub judge: Gauge,
    pub replicas: Gauge,
    pub apply_lag: Histogram,
    transitions: Vec<Counter>,
}

impl FleetMetrics {
    pub fn new(m: &Metrics) -> Self {
        FleetMetrics {
            connected: m.gauge(
                CONNECTED,
                "1 while this replica's heartbeats land in the fleet's bucket, else 0.",
                &[],
            ),
            judge: m.gauge(
                JUDGE,
                "1 while this replica holds the fleet's judge lease, else 0.",
                &[],
            ),
            replicas: m.gauge(
                REPLICAS,
                "Replicas whose heartbeat this replica saw within the lease.",
                &[],
            ),
            apply_lag: m.histogram(
                APPLY_LAG,
                "Seconds from a record change's effective time to this replica serving it.",
                &[],
            ),
            transitions: Event::ALL
                .iter()
                .map(|e| {
                    m.counter(
                        TRANSITIONS,
                        "Fleet transitions of this replica, by event.",
                        &[("event", e.as_str())],
                    )
                })
                .collect(),
        }
    }

    pub fn count(&self, e: Event) {
        if let Some(c) = self.transitions.get(e as usize) {
            c.increment(1);
        }
    }
}

/// Why a write did not land.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "the record of route {route:?} cannot be read ({reason}); delete the key to start again"
    )]
    Corrupt { route: String, reason: String },
}

/// A replica's part of its fleet.
pub struct Fleet {
    pub spec: FleetSpec,
    pub engine: Arc<dyn Engine>,
    pub me: Claimant,
    /// The highest lease epoch this replica has seen: what its non-judge writes carry.
    epoch: AtomicU64,
    /// The fleet as this replica last saw it, for `GET /rollouts`.
    view: Mutex<Value>,
    pub metrics: FleetMetrics,
}

impl Fleet {
    pub fn new(spec: FleetSpec, engine: Arc<dyn Engine>, metrics: &Metrics) -> Self {
        let me = Claimant::new(spec.replica.clone());
        Fleet {
            spec,
            engine,
            me,
            epoch: AtomicU64::new(0),
            view: Mutex::new(Value::Null),
            metrics: FleetMetrics::new(metrics),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn saw_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    pub fn view(&self) -> Value {
        self.view.lock().map(|v| v.clone()).unwrap_or(Value::Null)
    }

    pub fn set_view(&self, v: Value) {
        if let Ok(mut g) = self.view.lock() {
            *g = v;
        }
    }

    /// The route's record and its revision, as the engine holds it now.
    pub async fn read(&self, route: &str) -> Result<Option<(Record, Revision)>, WriteError> {
        match self.engine.get(&keys::route(route)).await? {
            None => Ok(None),
            Some((bytes, rev)) => {
                record::decode(&bytes)
                    .map(|r| Some((r, rev)))
                    .map_err(|e| WriteError::Corrupt {
                        route: route.to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Proposes `op` on the route's record at `epoch` and writes it by compare-and-swap,
    /// deciding again on whatever won a race; the record written.
    pub async fn write(&self, route: &str, op: Op, epoch: u64) -> Result<Record, WriteError> {
        let key = keys::route(route);
        let mut last = EngineError::Conflict { key: key.clone() };
        for _ in 0..RACES {
            let current = self.read(route).await?;
            let next =
                record::propose(current.as_ref().map(|c| &c.0), op.clone(), epoch, wall_ms())?;
            let bytes = Bytes::from(record::encode(&next));
            let written = match current {
                None => self.engine.create(&key, bytes).await,
                Some((_, rev)) => self.engine.update(&key, bytes, rev).await,
            };
            match written {
                Ok(_) => return Ok(next),
                Err(e @ EngineError::Conflict { .. }) => last = e,
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.into())
    }

    /// An operator's action, on the shared record so that it takes effect fleet-wide; its
    /// decision (audited here, by its writer).
    pub async fn act(
        &self,
        rollouts: &Rollouts,
        route: &str,
        action: Action,
    ) -> Result<Decision, WriteError> {
        let change = match action {
            Action::Pause => Change::Pause,
            Action::Resume => Change::Resume,
            Action::Promote => Change::Promote,
            Action::Rollback => match self.read(route).await? {
                Some((r, _)) => Change::Rollback { id: r.plan.id },
                None => return Err(Refused::NoRecord.into()),
            },
        };
        let op = Op {
            change,
            by: self.spec.replica.clone(),
            trigger: "admin".into(),
            reason: format!(
                "{} asked through the admin endpoint of {}",
                action_word(action),
                self.spec.replica
            ),
        };
        let written = self.write(route, op, self.epoch()).await?;
        let d = decision(route, &written, None).ok_or(Refused::NoRecord)?;
        rollouts.audit_fleet(d.clone());
        Ok(d)
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Promote => "promote",
        Action::Rollback => "rollback",
    }
}

/// The evidence behind a judge's decision, for its audit line.
pub struct Evidence {
    pub soaked_seconds: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    pub guards: Vec<crate::control::rollout::guard::Reading>,
}

/// The audit line of `r`'s latest decision.
pub fn decision(route: &str, r: &Record, evidence: Option<Evidence>) -> Option<Decision> {
    let e = r.history.last()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_unix_ms);
    let ev = evidence.unwrap_or(Evidence {
        soaked_seconds: 0.0,
        canary_samples: 0,
        baseline_samples: 0,
        guards: Vec::new(),
    });
    Some(Decision {
        at: humantime::format_rfc3339_millis(at).to_string(),
        at_unix_ms: e.at_unix_ms,
        route: route.to_string(),
        id: r.plan.id.clone(),
        decision: e.decision,
        trigger: format!("fleet {} by {}", e.trigger, e.by),
        from: e.from,
        to: e.to,
        reason: e.reason.clone(),
        soaked_seconds: ev.soaked_seconds,
        canary_samples: ev.canary_samples,
        baseline_samples: ev.baseline_samples,
        guards: ev.guards,
    })
}
