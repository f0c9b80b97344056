//! The fleet task of one replica: it watches the bucket and applies each route's record
//! through the door at its effective time; every heartbeat it says which versions it serves,
//! publishes its step's counts, writes its own rollbacks, starts a new rollout id, renews or
//! takes the judge's lease, and, as the judge, pools the reports and writes the verdicts.
//! Without contact for `stale_after` it sets every canary to 0%, and on contact it rejoins
//! the record as it stands.
//!
//! Owns: the cadence and the caches of what was read. Must not touch: the request path
//! (the table changes only through `Rollouts::apply`), the record's rules (`record`), the
//! local judge's (the rollout judge task keeps ticking in a fleet too).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::engine::{Change as KvChange, Changes, EngineError, Revision};
use super::history::{self, Copies, Keeps};
use super::judge::{Judging, Verdict};
use super::keys::{self, Key};
use super::lease::{wall_ms, Lease};
use super::pooled::{Report, StepKey};
use super::record::{self, Change, Op, Plan, Record, Refused};
use super::shared::{decision, Event, Evidence, Fleet, WriteError};
use crate::control::rollout::follow::{Follow, Local, Shared};
use crate::control::rollout::judge::Judged;
use crate::control::rollout::segment_needs;
use crate::control::rollout::Phase;

#[path = "run_view.rs"]
mod view;

/// A replica's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub replica: String,
    pub incarnation: u64,
    pub at_ms: u64,
    pub judge: bool,
    /// Route -> the record version it serves.
    pub applied: BTreeMap<String, u64>,
}

struct Task<J> {
    fleet: Arc<Fleet>,
    on: Arc<J>,
    lease: Lease,
    revs: HashMap<String, Revision>,
    records: BTreeMap<String, Record>,
    corrupt: BTreeSet<String>,
    beats: BTreeMap<String, Beat>,
    reports: BTreeMap<(String, String), Report>,
    /// Route -> the record version last put in force here.
    applied: BTreeMap<String, u64>,
    judging: BTreeMap<String, Judging>,
    /// (epoch, expires_at_ms) while this replica judges.
    holding: Option<(u64, u64)>,
    judge_holder: Option<String>,
    seq: u64,
    /// The `at_ms` of the last heartbeat this replica wrote, and of its own last one the
    /// watch delivered back: when the second falls behind, the watch has gone quiet.
    beat_written_ms: u64,
    beat_seen_ms: u64,
    /// Whether the current watch has brought back one of this replica's heartbeats: one
    /// that never did is made again without a warning each time (NATS still electing).
    watch_delivered: bool,
    /// Wall ms since which this task has watched without a gap: changes in force before it
    /// were read, not seen happen.
    since_ms: u64,
    last_contact: Instant,
    connected: bool,
    stale: bool,
    /// Ids whose record holds another, logged once each.
    behind: BTreeSet<String>,
    /// The shared percent history of each route, as this replica has it.
    history: Copies,
}

/// Runs the fleet task until `abort`.
pub async fn run<J: Judged + Keeps>(fleet: Arc<Fleet>, on: Arc<J>, abort: CancellationToken) {
    let lease = Lease::new(
        Arc::clone(&fleet.engine),
        keys::LEASE,
        fleet.me.clone(),
        fleet.spec.lease,
    );
    let mut t = Task {
        fleet,
        on,
        lease,
        revs: HashMap::new(),
        records: BTreeMap::new(),
        corrupt: BTreeSet::new(),
        beats: BTreeMap::new(),
        reports: BTreeMap::new(),
        applied: BTreeMap::new(),
        judging: BTreeMap::new(),
        holding: None,
        judge_holder: None,
        seq: 0,
        beat_written_ms: 0,
        beat_seen_ms: 0,
        watch_delivered: false,
        since_ms: u64::MAX,
        last_contact: Instant::now(),
        connected: false,
        stale: false,
        behind: BTreeSet::new(),
        history: Copies::default(),
    };
    let mut beat = tokio::time::interval(t.fleet.spec.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch: Option<Changes> = None;
    loop {
        let switch = t.next_switch();
        tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            change = next(&mut watch) => match change {
                Some(Ok(c)) => t.on_change(c),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "fleet: watch ended");
                    (watch, t.since_ms) = (None, u64::MAX);
                }
                None => (watch, t.since_ms) = (None, u64::MAX),
            },
            _ = tokio::time::sleep(switch) => t.follow_all(),
            _ = beat.tick() => {
                // Engine calls are bounded but several may queue behind an absent engine:
                // shutdown does not wait for them.
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    _ = async {
                        if watch.is_none() && t.fleet.engine.connected() {
                            watch = t.fleet.engine.watch("").await.ok();
                            if watch.is_some() {
                                t.since_ms = wall_ms();
                                // A new watch gets two heartbeats to bring this replica's
                                // own back before it is called quiet.
                                t.beat_seen_ms = t.beat_written_ms;
                                t.watch_delivered = false;
                            }
                        }
                        if t.tick().await {
                            if std::mem::take(&mut t.watch_delivered) {
                                tracing::warn!(replica = %t.fleet.spec.replica, "fleet: the watch has gone quiet; watching again");
                            } else {
                                tracing::debug!(replica = %t.fleet.spec.replica, "fleet: the new watch has delivered nothing yet; watching again");
                            }
                            (watch, t.since_ms) = (None, u64::MAX);
                        }
                    } => {}
                }
            }
        }
    }
    t.fleet.metrics.judge.set(0.0);
}

async fn next(watch: &mut Option<Changes>) -> Option<Result<KvChange, EngineError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

impl<J: Judged + Keeps> Task<J> {
    /// Until the next record change comes into force (a minute when none is pending).
    fn next_switch(&self) -> Duration {
        let now = wall_ms();
        self.records
            .iter()
            .filter(|(route, r)| {
                r.effective_at_ms > now || self.applied.get(*route) != Some(&r.version)
            })
            .map(|(_, r)| Duration::from_millis(r.effective_at_ms.saturating_sub(now)))
            .min()
            .unwrap_or(Duration::from_secs(60))
    }

    fn on_change(&mut self, c: KvChange) {
        self.contact();
        match keys::parse(&c.key) {
            Some(Key::Route(route)) => match c.value {
                Some(bytes) => match record::decode(&bytes) {
                    Ok(r) => {
                        self.corrupt.remove(&route);
                        self.learn(&route, r);
                        self.follow(&route);
                    }
                    Err(e) => {
                        if self.corrupt.insert(route.clone()) {
                            tracing::error!(route, error = %e, "fleet: the route's record cannot be read; its canary stays at 0% here until the key is deleted or rewritten");
                        }
                        self.records.remove(&route);
                        self.unsync(&route);
                    }
                },
                None => {
                    self.records.remove(&route);
                }
            },
            Some(Key::Beat(replica)) => match c.value.map(|b| serde_json::from_slice::<Beat>(&b)) {
                Some(Ok(b)) => {
                    if b.replica == self.fleet.spec.replica
                        && b.incarnation == self.fleet.me.incarnation
                    {
                        self.beat_seen_ms = self.beat_seen_ms.max(b.at_ms);
                        self.watch_delivered = true;
                    }
                    self.beats.insert(replica, b);
                }
                _ => {
                    self.beats.remove(&replica);
                }
            },
            Some(Key::History(route)) => {
                let cutoff = history::cutoff(&self.on.door().current(), wall_ms());
                if self
                    .history
                    .learned(&route, c.value.as_deref(), c.revision, cutoff)
                {
                    self.adopt(&route);
                }
            }
            Some(Key::Report { route, replica }) => match c.value.map(|b| Report::decode(&b)) {
                Some(Ok(r)) => {
                    self.reports.insert((route, replica), r);
                }
                _ => {
                    self.reports.remove(&(route, replica));
                }
            },
            _ => {}
        }
    }

    /// Keeps the copy further along of what was cached and what was read: a read may come
    /// from a copy of the bucket that lags (a direct get), or cross a watch delivery, and
    /// what this replica serves must never go back a step.
    fn learn(&mut self, route: &str, r: Record) {
        let next = match self.records.remove(route) {
            Some(old) => record::merge(old, r),
            None => r,
        };
        self.records.insert(route.to_string(), next);
    }

    fn contact(&mut self) {
        self.last_contact = Instant::now();
        if !self.connected {
            self.connected = true;
            self.fleet.metrics.connected.set(1.0);
            self.fleet.metrics.count(Event::Connected);
            tracing::info!(replica = %self.fleet.spec.replica, "fleet: in contact");
        }
        if self.stale {
            self.stale = false;
            self.fleet.metrics.count(Event::Rejoined);
            tracing::warn!(replica = %self.fleet.spec.replica, "fleet: contact is back; serving the shared record again");
            if self.on.rollouts().set_stale(false) {
                self.on.rollouts().apply(self.on.door(), "fleet");
            }
        }
    }

    fn lost_contact(&mut self) {
        if self.connected {
            self.connected = false;
            self.fleet.metrics.connected.set(0.0);
            self.fleet.metrics.count(Event::Disconnected);
            tracing::warn!(replica = %self.fleet.spec.replica, stale_after = ?self.fleet.spec.stale_after, "fleet: no contact; holding the last plan, never advancing");
        }
        if !self.stale && self.last_contact.elapsed() >= self.fleet.spec.stale_after {
            self.stale = true;
            self.fleet.metrics.count(Event::Stale);
            tracing::warn!(replica = %self.fleet.spec.replica, "fleet: no contact for stale_after; every canary at 0% here until contact returns");
            if self.on.rollouts().set_stale(true) {
                self.on.rollouts().apply(self.on.door(), "fleet");
            }
        }
    }

    fn follow_all(&mut self) {
        let routes: Vec<String> = self.records.keys().cloned().collect();
        for r in routes {
            self.follow(&r);
        }
    }

    /// Applies the route's record as it stands now.
    fn follow(&mut self, route: &str) {
        let Some(r) = self.records.get(route) else {
            return;
        };
        let now = wall_ms();
        let in_force = now >= r.effective_at_ms;
        let shared = Shared {
            id: &r.plan.id,
            phase: r.phase,
            step: r.step,
            version: r.version,
            step_version: r.step_version,
            percent: r.percent_at(now),
            in_force,
            step_from_ms: r.effective_at_ms,
        };
        match self.on.rollouts().follow(route, &shared) {
            Follow::Applied { changed } => {
                if changed {
                    self.on.rollouts().apply(self.on.door(), "fleet");
                }
                if in_force && self.applied.get(route) != Some(&r.version) {
                    self.applied.insert(route.to_string(), r.version);
                    // Stamped with the record's effective time, not this replica's switch:
                    // the same entry on every replica.
                    let table = self.on.door().current();
                    let decided = history::served(&table, route, r.effective_at_ms)
                        .is_some_and(|e| self.history.decided(e, history::cutoff(&table, now)));
                    // The lag of a decision this task saw happen: not of a claim (no new
                    // percent), nor of a record read at start or on rejoining.
                    // From when the change could be served: its effective time, or its
                    // write for a change that schedules nothing (a pause).
                    let due = r
                        .history
                        .last()
                        .filter(|e| e.version == r.version)
                        .map(|e| e.at_unix_ms.max(r.effective_at_ms));
                    let lag_ms = due.map(|d| now.saturating_sub(d));
                    if let Some(lag) = lag_ms.filter(|_| due >= Some(self.since_ms)) {
                        self.fleet.metrics.apply_lag.record(lag as f64 / 1000.0);
                    }
                    self.fleet.metrics.count(Event::Applied);
                    tracing::info!(route, id = %r.plan.id, version = r.version, state = %r.phase, step = r.step, percent = f64::from(shared.percent) / 100.0, lag_ms, "fleet: record applied");
                    if decided {
                        self.adopt(route);
                    }
                }
            }
            Follow::OtherId => {
                self.applied.remove(route);
                self.on.rollouts().apply(self.on.door(), "fleet");
            }
            Follow::KeptRollback | Follow::Absent => {}
        }
    }

    /// Takes the route's shared history into the one late outcomes are attributed with.
    fn adopt(&self, route: &str) {
        if self.on.door().current().route(route).is_some() {
            self.on.late().adopt(route, self.history.of(route));
        }
    }

    /// Writes each route's shared history that holds what the bucket lacks, and takes every
    /// copy in again: what this replica served on its own since (a stale spell, its start)
    /// gives way to the fleet's splits even when no change came with contact.
    async fn push_history(&mut self) {
        let cutoff = history::cutoff(&self.on.door().current(), wall_ms());
        let engine = Arc::clone(&self.fleet.engine);
        for route in self.history.pending() {
            match self.history.push(engine.as_ref(), &route, cutoff).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(route, error = %e, "fleet: the shared percent history not written");
                }
            }
        }
        for route in self.history.routes() {
            self.adopt(&route);
        }
    }

    fn unsync(&mut self, route: &str) {
        self.applied.remove(route);
        let shared = Shared {
            id: "",
            phase: Phase::Halted,
            step: 0,
            version: 0,
            step_version: 0,
            percent: 0,
            in_force: true,
            step_from_ms: 0,
        };
        if self.on.rollouts().follow(route, &shared) == Follow::OtherId {
            self.on.rollouts().apply(self.on.door(), "fleet");
        }
    }

    /// Writes `value` under a key only this replica writes.
    async fn put(&mut self, key: String, value: Bytes) -> Result<(), EngineError> {
        let engine = Arc::clone(&self.fleet.engine);
        let first = match self.revs.get(&key) {
            Some(rev) => engine.update(&key, value.clone(), *rev).await,
            None => engine.create(&key, value.clone()).await,
        };
        let rev = match first {
            Err(EngineError::Conflict { .. }) => match engine.get(&key).await? {
                Some((_, rev)) => engine.update(&key, value, rev).await?,
                None => engine.create(&key, value).await?,
            },
            other => other?,
        };
        self.revs.insert(key, rev);
        Ok(())
    }

    /// Whether the watch delivers: it has brought back this replica's own heartbeat of at
    /// most two heartbeats before the last one written (or nothing was written yet).
    fn watch_fresh(&self) -> bool {
        let beat = self.fleet.spec.heartbeat.as_millis() as u64;
        self.beat_written_ms == 0
            || self.beat_seen_ms.saturating_add(2 * beat) >= self.beat_written_ms
    }

    /// One heartbeat; whether the watch has gone quiet and must be made again.
    async fn tick(&mut self) -> bool {
        let locals = self.on.rollouts().locals();
        let me = self.fleet.spec.replica.clone();
        let beat = Beat {
            replica: me.clone(),
            incarnation: self.fleet.me.incarnation,
            at_ms: wall_ms(),
            judge: self.holding.is_some(),
            applied: locals
                .iter()
                .filter_map(|l| {
                    let f = l.followed.as_ref()?;
                    (f.version > 0 && !f.stale && self.applied.get(&l.route) == Some(&f.version))
                        .then(|| (l.route.clone(), f.version))
                })
                .collect(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
        if self.put(keys::beat(&me), bytes).await.is_err() {
            self.lost_contact();
            self.holding_expired();
            self.publish_view(&locals);
            return false;
        }
        self.contact();
        // Checked before this beat counts as written: the watch had a heartbeat to bring the
        // previous one back.
        let fresh = self.watch_fresh();
        self.beat_written_ms = beat.at_ms;
        self.beats.insert(me.clone(), beat);
        for l in &locals {
            self.for_local(l).await;
        }
        self.push_history().await;
        self.lease_round().await;
        // A judge that cannot trust its watch cannot tell a live replica from a dead one (it
        // would think itself alone): it decides nothing until the watch delivers again.
        if let (Some((epoch, _)), true) = (self.holding, fresh) {
            for l in &locals {
                self.judge(l, epoch).await;
            }
        }
        self.publish_view(&locals);
        !fresh
    }

    /// What one local rollout asks of the fleet: a record read for the first time, a new
    /// id started, its own rollback written, and its counts published.
    async fn for_local(&mut self, l: &Local) {
        let route = l.route.as_str();
        // Read every heartbeat, beside the watch: a watch whose server died can go quiet
        // for seconds without an error, and a replica must not miss a step for that long.
        match self.fleet.read(route).await {
            Ok(Some((r, _))) => {
                self.corrupt.remove(route);
                self.learn(route, r);
                self.follow(route);
            }
            Ok(None) if !self.records.contains_key(route) => self.start(l).await,
            // Deleted meanwhile (the watch says so), or a copy that lags: the cache stands.
            Ok(None) => {}
            Err(WriteError::Corrupt { reason, .. }) => {
                if self.corrupt.insert(route.to_string()) {
                    tracing::error!(route, error = %reason, "fleet: the route's record cannot be read; its canary stays at 0% here until the key is deleted or rewritten");
                }
                self.records.remove(route);
                self.unsync(route);
            }
            Err(e) => tracing::debug!(route, error = %e, "fleet: cannot read the route's record"),
        }
        let Some(r) = self.records.get(route) else {
            return;
        };
        if r.plan.id != l.spec.id {
            if r.past.contains(&l.spec.id) {
                if self.behind.insert(l.spec.id.clone()) {
                    tracing::warn!(route, id = %l.spec.id, fleet_id = %r.plan.id, "fleet: this replica's configuration is behind the fleet's record; its canary stays at 0% here until the configuration catches up");
                }
            } else {
                self.start(l).await;
            }
            return;
        }
        if let (Some(reason), false) = (&l.own_rollback, r.phase == Phase::RolledBack) {
            let op = Op {
                change: Change::Rollback {
                    id: l.spec.id.clone(),
                },
                by: self.fleet.spec.replica.clone(),
                trigger: "replica".into(),
                reason: reason.clone(),
            };
            self.fleet.metrics.count(Event::LocalRollback);
            self.write(route, op, self.fleet.epoch(), None).await;
            return;
        }
        let Some(f) = l
            .followed
            .as_ref()
            .filter(|f| f.version > 0 && l.phase.judged())
        else {
            return;
        };
        self.seq += 1;
        let report = Report::new(
            &self.fleet.spec.replica,
            self.fleet.me.incarnation,
            self.seq,
            StepKey {
                id: l.spec.id.clone(),
                step: f.step,
                step_version: f.step_version,
            },
            // Of the segments, only what the per_segment guards read: the report's size.
            (
                &l.counts.0.keeping(segment_needs(&l.spec)),
                &l.counts.1.keeping(segment_needs(&l.spec)),
            ),
        )
        .judging(f.judges);
        let key = keys::report(route, &self.fleet.spec.replica);
        let mine = (route.to_string(), self.fleet.spec.replica.clone());
        if self.put(key, Bytes::from(report.encode())).await.is_ok() {
            self.reports.insert(mine, report);
        }
    }

    async fn start(&mut self, l: &Local) {
        let plan = Plan::of(&l.spec, self.fleet.spec.switch_delay.as_millis() as u64);
        let op = Op {
            change: Change::Start(plan),
            by: self.fleet.spec.replica.clone(),
            trigger: "config".into(),
            reason: "a new rollout id".into(),
        };
        self.write(&l.route, op, self.fleet.epoch(), None).await;
    }

    /// Writes `op`; what landed is cached, applied and audited here, its writer.
    async fn write(&mut self, route: &str, op: Op, epoch: u64, ev: Option<Evidence>) -> bool {
        let claim = op.change == Change::Claim;
        match self.fleet.write(route, op, epoch).await {
            Ok(r) => {
                if !claim {
                    if let Some(d) = decision(route, &r, ev) {
                        tracing::info!(route, id = %r.plan.id, decision = d.decision.as_str(), version = r.version, epoch = r.epoch, "fleet: decision written");
                        self.on.rollouts().audit_fleet(d);
                    }
                }
                self.learn(route, r);
                self.follow(route);
                true
            }
            Err(WriteError::Refused(
                Refused::NotInForce { .. } | Refused::Unconfirmed(_) | Refused::SameId(_),
            )) => false,
            Err(e) => {
                self.fleet.metrics.count(Event::WriteRefused);
                tracing::info!(route, error = %e, "fleet: write not landed");
                if let WriteError::Refused(_) = e {
                    // Another writer moved the record on: read it again next tick.
                    self.records.remove(route);
                }
                false
            }
        }
    }
}
