//! The percent history through the fleet (issue 18, late outcomes): replicas that come up
//! after a step change, one restarted on its own (stale) history, one with none, attribute a
//! late outcome of a conversation that started before they came up exactly as the replica
//! that was there.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::fleet::{bp, fixed_keys, in_canary, now_ms, Fleet, Replica};
use crate::support::late::rfc3339;

use super::common::*;

/// `POST /outcomes` of `events` to `r`'s admin listener (loopback: no token needed).
async fn post(r: &Replica, events: &[Value]) -> Value {
    let body = Bytes::from(json!({ "events": events }).to_string());
    let req = crate::support::request(
        "POST",
        r.admin_addr(),
        "/outcomes",
        &[("content-type", "application/json")],
        body,
    );
    let reply = crate::support::fetch(&crate::support::h1_client(), req).await;
    assert_eq!(reply.status.as_u16(), 200, "{}: {}", r.id, reply.text());
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_up_after_a_step_attribute_as_the_replica_that_was_there() {
    let _one = one_at_a_time().await;
    let rollout = "{id: hs-v1, canary: canary, steps: [10, 50, 100], soak: 4s, min_samples: 20, \
                   guards: [{metric: error_rate, margin: 5}]}";
    let Some(mut fleet) = Fleet::start("history", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let (_keys, watch, sampler) = watched(&fleet, 2, Duration::from_millis(3));
        fleet
            .until_synced("every replica at step 0", Duration::from_secs(60), |r| {
                r["step"] == 0
            })
            .await;
        // r2 and r3 go away; r3 loses its own history, to come back as a new replica would,
        // and r2's ends at step 0.
        fleet.replicas[1].stop().await;
        fleet.replicas[2].stop().await;
        let file = fleet.replicas[2].state_dir.join("percent-history.jsonl");
        assert!(file.exists(), "r3 kept no history file");
        std::fs::remove_file(&file).unwrap();
        let step = watch
            .until("step 1 in force", Duration::from_secs(30), |s| {
                s.step() == 1 && s.effective_ms() + 300 < now_ms()
            })
            .await;
        let (switched_ms, step_bp) = (step.effective_ms(), step.bp());
        assert_eq!(step_bp, bp(50.0));
        // Conversations that started in step 1, before r3 came back: keys that moved into the
        // canary at the step, and keys that did not move.
        let started_ms = switched_ms + 150;
        let keys = fixed_keys(400);
        let moved: Vec<&String> = keys
            .iter()
            .filter(|k| in_canary(k, step_bp) && !in_canary(k, bp(10.0)))
            .take(6)
            .collect();
        let stayed: Vec<&String> = keys
            .iter()
            .filter(|k| in_canary(k, step_bp) == in_canary(k, bp(10.0)))
            .take(6)
            .collect();
        assert_eq!((moved.len(), stayed.len()), (6, 6));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let up_ms = now_ms();
        fleet.start_all().await;
        fleet
            .until_synced("r2 and r3 synced", Duration::from_secs(20), |_| true)
            .await;
        // Its first heartbeat has read the shared history by now; one more for slack.
        tokio::time::sleep(fleet.timings.heartbeat * 2).await;
        let events = |replica: &str| -> Vec<Value> {
            moved
                .iter()
                .chain(&stayed)
                .map(|k| {
                    json!({"id": format!("{replica}-{k}"), "route": "agent", "key": k,
                           "outcome": "escalated", "started_at": rfc3339(started_ms)})
                })
                .collect()
        };
        let there = post(&fleet.replicas[0], &events("r1")).await;
        let restarted = post(&fleet.replicas[1], &events("r2")).await;
        let new = post(&fleet.replicas[2], &events("r3")).await;
        eprintln!(
            "step 1 from {switched_ms}, conversations started {started_ms}, r2 and r3 up at {up_ms}"
        );
        eprintln!("r1: {there}\nr2: {restarted}\nr3: {new}");
        for (id, v) in [("r1", &there), ("r2", &restarted), ("r3", &new)] {
            assert_eq!(v["accepted"], 12, "{id}: {v:#}");
        }
        let results = |v: &Value| -> Vec<(Value, Value, Value)> {
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["cohort"].clone(),
                        r["bucket"].clone(),
                        r["split_since_unix_ms"].clone(),
                    )
                })
                .collect()
        };
        assert_eq!(results(&there), results(&new));
        assert_eq!(results(&there), results(&restarted));
        // And all by the public formula over the fleet's percents at started_at, with the
        // split stamped at the record's effective time.
        for (k, (cohort, _, since)) in moved.iter().chain(&stayed).zip(results(&new)) {
            let want = if in_canary(k, step_bp) {
                "canary"
            } else {
                "stable"
            };
            assert_eq!(cohort, want, "{k}");
            assert_eq!(since, switched_ms, "{k}");
        }
        sampler.stop().await;
        watch.stop().await;
    })
    .await;
}
