//! The fleet task's judging half (the lease each heartbeat; as its holder, a claim of every
//! record, then the pooled verdicts) and the fleet view it leaves for `GET /rollouts`.
//!
//! Owns: when this replica acts as the judge. Must not touch: the record's rules, the
//! request path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Task, Verdict};
use crate::control::fleet::judge::{self, Judging};
use crate::control::fleet::keys;
use crate::control::fleet::lease::{wall_ms, Status};
use crate::control::fleet::record::{Change, Op};
use crate::control::fleet::shared::{Event, Evidence};
use crate::control::rollout::follow::Local;
use crate::control::rollout::judge::Judged;
use crate::samples::Tally;

impl<J: Judged + super::Keeps> Task<J> {
    /// Renews or takes the lease; on taking it, claims every record so that a former
    /// judge's writes are refused from then on.
    pub(super) async fn lease_round(&mut self) {
        match self.lease.tick(wall_ms()).await {
            Ok(Status::Held {
                epoch,
                expires_at_ms,
            }) => {
                self.fleet.saw_epoch(epoch);
                let new = self.holding.is_none_or(|(e, _)| e != epoch);
                self.holding = Some((epoch, expires_at_ms));
                self.judge_holder = Some(self.fleet.spec.replica.clone());
                if new {
                    self.fleet.metrics.judge.set(1.0);
                    self.fleet.metrics.count(Event::JudgeAcquired);
                    tracing::info!(replica = %self.fleet.spec.replica, epoch, "fleet: this replica is the judge");
                    self.judging.clear();
                    let routes: Vec<String> = self.records.keys().cloned().collect();
                    for route in routes {
                        let op = Op {
                            change: Change::Claim,
                            by: self.fleet.spec.replica.clone(),
                            trigger: "judge".into(),
                            reason: "a new judge".into(),
                        };
                        self.write(&route, op, epoch, None).await;
                    }
                }
            }
            Ok(Status::HeldBy(other)) => {
                self.fleet.saw_epoch(other.epoch);
                self.judge_holder = Some(other.holder.clone());
                if self.holding.take().is_some() {
                    self.lost_judge();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "fleet: lease round failed");
                self.holding_expired();
            }
        }
    }

    fn lost_judge(&mut self) {
        self.fleet.metrics.judge.set(0.0);
        self.fleet.metrics.count(Event::JudgeLost);
        self.judging.clear();
        tracing::warn!(replica = %self.fleet.spec.replica, "fleet: no longer the judge");
    }

    /// Stops acting as the judge once the lease it last renewed has run out.
    pub(super) fn holding_expired(&mut self) {
        if self.holding.is_some_and(|(_, until)| wall_ms() >= until) {
            self.holding = None;
            self.lost_judge();
        }
    }

    /// As the judge: one look at `l`'s route's step over the pooled reports, and the verdict
    /// written.
    pub(super) async fn judge(&mut self, l: &Local, epoch: u64) {
        let route = l.route.as_str();
        let Some(r) = self.records.get(route).filter(|r| r.plan.id == l.spec.id) else {
            return;
        };
        if !r.phase.judged() {
            self.judging.remove(route);
            return;
        }
        let r = r.clone();
        let key = judge::step_key(&r);
        if self.judging.get(route).is_none_or(|j| *j.key() != key) {
            let saved = match self.fleet.engine.get(&keys::judge(route)).await {
                Ok(Some((b, _))) => serde_json::from_slice::<judge::Saved>(&b).ok(),
                _ => None,
            };
            self.judging
                .insert(route.to_string(), Judging::new(&r, saved, Instant::now()));
        }
        let now_ms = wall_ms();
        let lease = self.fleet.spec.lease.as_millis() as u64;
        let live: BTreeSet<String> = self
            .beats
            .values()
            .filter(|b| now_ms.saturating_sub(b.at_ms) <= lease)
            .map(|b| b.replica.clone())
            .collect();
        let applied: BTreeMap<String, u64> = self
            .beats
            .values()
            .filter_map(|b| Some((b.replica.clone(), *b.applied.get(route)?)))
            .collect();
        let spec = judge::spec_for(&l.spec, &r, self.fleet.spec.max_replicas);
        let reports = self
            .reports
            .iter()
            .filter(|((rt, _), _)| rt == route)
            .map(|(_, rep)| rep);
        let Some(j) = self.judging.get_mut(route) else {
            return;
        };
        let verdict = j.look(
            &spec,
            &r,
            reports,
            &live,
            &applied,
            (Instant::now(), now_ms),
        );
        let saved = j.saved(epoch);
        let evidence = || Evidence {
            soaked_seconds: j.progress.soaked.as_secs_f64(),
            canary_samples: j.progress.canary.requests,
            baseline_samples: j.progress.baseline.requests,
            guards: j.readings.clone(),
        };
        let (change, reason, ev) = match verdict {
            Verdict::Wait => (None, String::new(), None),
            Verdict::Rollback(reason) => (
                Some(Change::Rollback {
                    id: r.plan.id.clone(),
                }),
                reason,
                Some(evidence()),
            ),
            Verdict::Halt(reason) => (Some(Change::Halt), reason, Some(evidence())),
            Verdict::Passed(reason) => (
                Some(Change::Advance {
                    from: r.step,
                    live,
                    confirmed: applied,
                }),
                reason,
                Some(evidence()),
            ),
        };
        let bytes = Bytes::from(serde_json::to_vec(&saved).unwrap_or_default());
        let _ = self.put(keys::judge(route), bytes).await;
        if let Some(change) = change {
            let op = Op {
                change,
                by: self.fleet.spec.replica.clone(),
                trigger: "judge".into(),
                reason,
            };
            self.write(route, op, epoch, ev).await;
        }
    }

    /// The fleet as this replica sees it, for `GET /rollouts`; and the replicas gauge.
    pub(super) fn publish_view(&self, locals: &[Local]) {
        let now_ms = wall_ms();
        let lease = self.fleet.spec.lease.as_millis() as u64;
        let live = self
            .beats
            .values()
            .filter(|b| now_ms.saturating_sub(b.at_ms) <= lease)
            .count();
        self.fleet.metrics.replicas.set(live as f64);
        let counts = |t: &Tally| json!({"requests": t.requests, "errors": t.errors});
        let replicas: Vec<Value> = self
            .beats
            .values()
            .map(|b| {
                json!({
                    "replica": b.replica,
                    "incarnation": b.incarnation,
                    "applied": b.applied,
                    "judge": b.judge,
                    "live": now_ms.saturating_sub(b.at_ms) <= lease,
                    "heartbeat_ms_ago": now_ms.saturating_sub(b.at_ms),
                })
            })
            .collect();
        let mut routes = serde_json::Map::new();
        for l in locals {
            let route = l.route.as_str();
            let record = self.records.get(route).map(|r| {
                json!({
                    "id": r.plan.id,
                    "state": r.phase,
                    "step": r.step,
                    "percent": f64::from(r.percent_at(now_ms)) / 100.0,
                    "effective_at_ms": r.effective_at_ms,
                    "version": r.version,
                    "step_version": r.step_version,
                    "epoch": r.epoch,
                    "history": r.history,
                })
            });
            let per_replica: Vec<Value> = self
                .reports
                .iter()
                .filter(|((rt, _), _)| rt == route)
                .map(|((_, rep), r)| {
                    let (c, b) = (r.canary.restore("canary"), r.baseline.restore("baseline"));
                    json!({
                        "replica": rep,
                        "incarnation": r.incarnation,
                        "step": r.step,
                        "canary": c.as_ref().map(counts).unwrap_or(Value::Null),
                        "baseline": b.as_ref().map(counts).unwrap_or(Value::Null),
                    })
                })
                .collect();
            let pooled = self.judging.get(route).map(|j| {
                let (c, b) = j.pool().totals();
                json!({
                    "step": j.key(),
                    "canary": counts(c),
                    "baseline": counts(b),
                    "soaked_seconds": j.progress.soaked.as_secs_f64(),
                    "every_replica_serves_the_step": j.confirmed,
                    "guards": j.readings,
                })
            });
            routes.insert(
                route.to_string(),
                json!({
                    "record": record,
                    "applied_version": self.applied.get(route),
                    "pooled": pooled,
                    "per_replica": per_replica,
                }),
            );
        }
        self.fleet.set_view(json!({
            "name": self.fleet.spec.name,
            "replica": self.fleet.spec.replica,
            "incarnation": self.fleet.me.incarnation,
            "connected": self.connected,
            "stale": self.stale,
            "judge": {
                "holder": self.judge_holder,
                "epoch": self.fleet.epoch(),
                "this_replica": self.holding.is_some(),
            },
            "replicas": replicas,
            "routes": routes,
        }));
    }
}
