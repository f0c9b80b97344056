//! A fleet losing members: the judge killed (a successor at the same step), and a replica
//! restarted (the shared step over its stale file).

use std::time::{Duration, Instant};

use crate::support::fleet::phase;
use crate::support::fleet::{bp, in_canary, ms, now_ms, now_us, Fleet, Timeline};
use serde_json::Value;

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_judge_hands_over_within_the_lease_at_the_same_step() {
    let _one = one_at_a_time().await;
    let rollout =
        "{id: jd-v1, canary: canary, steps: [10, 30, 60, 100], soak: 5s, min_samples: 20, \
                   guards: [{metric: error_rate, margin: 5}]}";
    let Some(mut fleet) = Fleet::start("judge", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let (_keys, watch, sampler) = watched(&fleet, 1, Duration::from_millis(5));
        // Just after the second step took effect everywhere: its soak has barely begun.
        let records = fleet
            .until_synced("every replica at step 1", Duration::from_secs(60), |r| r["step"] == 1)
            .await;
        let before = records[0].clone();
        let judge = {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(j) = fleet.judge().await {
                    break j;
                }
                assert!(Instant::now() < deadline, "no replica says it is the judge");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // Some way into the step's soak, so that a new judge that went on with it would
        // show it.
        let soaked = |view: &Value| view["routes"]["agent"]["pooled"]["soaked_seconds"].as_f64();
        let view = loop {
            let view = fleet.replicas[judge].fleet().await;
            assert_eq!(view["routes"]["agent"]["record"]["step"], 1, "{view:#}");
            if soaked(&view).is_some_and(|s| s >= 2.0) {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let soaked_before = soaked(&view).unwrap();
        let holder = view["judge"]["holder"].clone();
        let epoch = view["judge"]["epoch"].as_u64().unwrap_or(0);
        for (i, r) in fleet.replicas.iter().enumerate() {
            let j = r.fleet().await["judge"].clone();
            assert_eq!(j["holder"], holder, "{}: {j:#}", r.id);
            assert_eq!(j["this_replica"], i == judge, "{}: {j:#}", r.id);
        }
        eprintln!("judge: {} (holder {holder}, epoch {epoch}), record {before}", fleet.replicas[judge].id);

        let killed = Instant::now();
        let killed_ms = now_ms();
        fleet.replicas[judge].kill();
        let lease = fleet.timings.lease;
        let (successor, took) = loop {
            if let Some(j) = fleet.judge().await {
                let view = fleet.replicas[j].fleet().await;
                if view["judge"]["epoch"].as_u64().unwrap_or(u64::MAX) > epoch || epoch == 0 {
                    break (j, killed.elapsed());
                }
            }
            assert!(
                killed.elapsed() < lease + Duration::from_secs(5),
                "no new judge {:?} after the judge was killed",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let record = fleet.replicas[successor].record().await;
        eprintln!(
            "takeover: {} is judge {took:?} after {} was killed (lease {lease:?}); record then {record}",
            fleet.replicas[successor].id, fleet.replicas[judge].id
        );
        assert!(took <= lease + Duration::from_secs(1), "takeover took {took:?}");
        assert_eq!(record["step"], before["step"], "the step changed at the takeover: {record:#}");
        assert_eq!(phase(&record), "ramping", "{record:#}");
        // The other survivor names the new judge by its next lease round.
        let named = Instant::now();
        let new_holder = fleet.replicas[successor].id.clone();
        for r in fleet.replicas.iter().filter(|r| r.running()) {
            loop {
                let j = r.fleet().await["judge"].clone();
                if j["holder"] == new_holder.as_str() {
                    break;
                }
                assert!(
                    named.elapsed() < Duration::from_secs(1),
                    "{} still names another judge: {j:#}",
                    r.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The new judge goes on with the step's soak (saved under `judge.<route>`).
        let soaked_after = loop {
            let view = fleet.replicas[successor].fleet().await;
            if let Some(s) = soaked(&view) {
                break s;
            }
            assert!(killed.elapsed() < lease + Duration::from_secs(5), "the new judge shows no pooled step: {view:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "soak: {soaked_before:.2} s when the judge was killed, {soaked_after:.2} s as the new judge first shows it"
        );
        assert!(
            soaked_after + 1.0 >= soaked_before,
            "the new judge started the step's soak over: {soaked_before} s, then {soaked_after} s"
        );

        // The new judge goes on with the rollout.
        let next = watch
            .until("the next step", Duration::from_secs(30), |s| s.step() >= 2)
            .await;
        eprintln!(
            "step 2 seen {} ms after the kill, {} ms after the takeover (soak 5 s)",
            next.observed_ms as i64 - killed_ms as i64,
            next.observed_ms as i64 - killed_ms as i64 - took.as_millis() as i64
        );
        fleet
            .until_synced("the survivors at step 2", Duration::from_secs(10), |r| r["step"] == 2)
            .await;
        let samples = sampler.stop().await;
        let seen = watch.stop().await;
        let timeline = Timeline::of(&seen);
        let survivors: Vec<_> = samples
            .iter()
            .filter(|s| s.replica != judge && s.sent_us > killed_ms * 1000)
            .cloned()
            .collect();
        let off = disagreeing(&survivors, &timeline, SWITCH_WINDOW);
        assert!(
            off.is_empty(),
            "survivors' answers disagree with the record: {:?}\nrecords seen:\n{}",
            &off[..off.len().min(10)],
            describe(&seen)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_serves_the_shared_step_not_its_stale_file() {
    let _one = one_at_a_time().await;
    let rollout =
        "{id: rs-v1, canary: canary, steps: [10, 30, 60, 100], soak: 3s, min_samples: 20, \
                   guards: [{metric: error_rate, margin: 5}]}";
    let Some(mut fleet) = Fleet::start("restart", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let (_keys, watch, sampler) = watched(&fleet, 2, Duration::from_millis(3));
        let records = fleet
            .until_synced("every replica at step 1", Duration::from_secs(60), |r| r["step"] == 1)
            .await;
        let stale_step = records[0]["step"].as_u64().unwrap();
        let stale_bp = bp(records[0]["percent"].as_f64().unwrap());
        fleet.replicas[2].stop().await;
        let file = fleet.replicas[2].state_dir.join("rollout-agent.json");
        let saved: Option<Value> = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        eprintln!(
            "r3 stopped at step {stale_step}; its state file says step {}",
            saved.map_or("- (no state file)".into(), |s| s["state"]["step"].to_string())
        );

        // The others go on without it, and some time passes after the step's switch.
        let moved = watch
            .until("the fleet past r3's step", Duration::from_secs(30), |s| {
                s.step() > stale_step && s.effective_ms() + 1500 < now_ms()
            })
            .await;
        eprintln!("fleet at step {} ({}bp); r3 was at {stale_step} ({stale_bp}bp)", moved.step(), moved.bp());
        let restarted_us = now_us();
        fleet.replicas[2].start().await;
        fleet
            .until_synced("r3 synced", Duration::from_secs(20), |_| true)
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = sampler.stop().await;
        let seen = watch.stop().await;
        let timeline = Timeline::of(&seen);
        let r3: Vec<_> = samples
            .iter()
            .filter(|s| s.replica == 2 && s.sent_us >= restarted_us)
            .cloned()
            .collect();
        assert!(r3.len() > 100, "too few answers from r3");
        let first_canary = r3.iter().position(|s| s.canary).expect("r3 never answered canary");
        eprintln!(
            "r3: {} answers, the first canary one {} after its restart ({} stable ones before it)",
            r3.len(),
            ms((r3[first_canary].sent_us - restarted_us) as i64),
            first_canary
        );
        // Unsynced, it serves 0%; from its first canary answer on, the fleet's step.
        assert!(r3[..first_canary].iter().all(|s| !s.canary));
        let after = &r3[first_canary..];
        let off = disagreeing(after, &timeline, Duration::from_millis(1000));
        let stale: Vec<_> = after
            .iter()
            .filter(|s| in_canary(&s.key, stale_bp) == s.canary && !timeline.agrees(s, Duration::ZERO))
            .collect();
        assert!(
            off.is_empty(),
            "r3 served something else than the record ({} of {} answers; {} agree with its stale step): {:?}",
            off.len(),
            after.len(),
            stale.len(),
            &off[..off.len().min(10)]
        );
        let local = fleet.replicas[2].rollout().await;
        let record = fleet.replicas[0].record().await;
        assert_eq!(local["step"], record["step"], "{local:#}");
        assert_eq!(local["percent"], record["percent"], "{local:#}");
    })
    .await;
}
