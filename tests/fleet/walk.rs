//! A fleet walking its steps: the harness itself, an A/A canary through every step, and a
//! failing canary rolled back everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fleet::{
    band, fixed_keys, in_canary, ms, now_ms, now_us, Fleet, Keys, RecordWatch, Sample, Sampler,
    Timeline,
};
use crate::support::fleet::{replica_yaml, Replica, Upstream};

use super::common::*;

/// The harness itself, on one proxy without a fleet (no NATS needed): the mock upstreams name
/// themselves, and the sampler's answers are the contract's assignment at the rollout's
/// percent, which is what the fleet tests compare every answer with.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_reads_a_single_proxy_s_routing_as_the_contract_says() {
    bounded(Duration::from_secs(60), async {
        let stable = Upstream::start("stable", 0.0).await;
        let canary = Upstream::start("canary", 0.0).await;
        let dir = tempfile::tempdir().unwrap();
        let rollout = "{id: h-v1, canary: canary, steps: [30, 100], soak: 1h}";
        let state = dir.path().join("state");
        let yaml = replica_yaml(&stable, &canary, &state, rollout, None);
        let mut single = Replica::new("single", yaml, state, dir.path().join("single.log"));
        single.start().await;
        let keys = Arc::new(fixed_keys(200));
        let sampler = Sampler::start(
            &[Arc::clone(&single.public)],
            Keys::Cycle(Arc::clone(&keys)),
            2,
            Duration::ZERO,
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let samples = sampler.stop().await;
        assert!(samples.len() > 400, "{} samples", samples.len());
        let wrong: Vec<_> = samples
            .iter()
            .filter(|s| in_canary(&s.key, 3000) != s.canary)
            .collect();
        assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(5)]);
        let canaries = keys.iter().filter(|k| in_canary(k, 3000)).count();
        assert!(
            (40..80).contains(&canaries),
            "{canaries} of 200 keys in 30%"
        );
        assert_eq!(band(&keys, 3000, 10_000).len(), 200 - canaries);
        assert_eq!(stable.served() + canary.served(), samples.len() as u64);
        let local = single.rollout().await;
        assert_eq!(local["percent"], 30.0, "{local:#}");
        single.stop().await;
        assert!(std::fs::read_to_string(&single.log)
            .unwrap()
            .contains("started at"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aa_canary_walks_every_step_on_three_replicas_and_they_agree() {
    let _one = one_at_a_time().await;
    let rollout = "{id: aa-v1, canary: canary, steps: [10, 50, 100], soak: 2s, min_samples: 30, \
                   after: promote, guards: [{metric: error_rate, margin: 5}]}";
    let Some(fleet) = Fleet::start("aa", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let (keys, watch, sampler) = watched(&fleet, 2, Duration::from_millis(2));
        // Every replica starts unsynced (canary 0%) until it has read the record: judge
        // agreement from the moment all three have.
        fleet
            .until_synced("every replica synced", Duration::from_secs(20), |_| true)
            .await;
        let synced_us = now_us();
        expect_fleet_gauges(&fleet, true, Some(3.0), Duration::from_secs(5)).await;

        let end = watch
            .until("the rollout promoted", Duration::from_secs(90), |s| {
                s.phase() == "promoted"
            })
            .await;
        // Past the last switch's moment, with room for a late replica.
        let last = end.effective_ms().max(now_ms());
        while now_ms() < last + 1500 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let samples: Vec<Sample> = sampler
            .stop()
            .await
            .into_iter()
            .filter(|s| s.sent_us >= synced_us)
            .collect();
        let seen = watch.stop().await;
        eprintln!("records seen:\n{}", describe(&seen));
        let timeline = Timeline::of(&seen);

        // The walk: every step, in order, then promoted.
        let mut shares: Vec<u32> = timeline.versions.iter().map(|v| v.2).collect();
        shares.dedup();
        assert_eq!(shares, [1000, 5000, 10000], "{}", describe(&seen));
        for r in &fleet.replicas {
            let local = r.rollout().await;
            assert_eq!(local["state"], "promoted", "{}: {local:#}", r.id);
            assert_eq!(local["percent"], 100.0, "{}: {local:#}", r.id);
        }

        // Each switch: when each replica started serving the new share; and every answer
        // the record's share of its moment but near a switch.
        let widest = check_switches(&samples, &timeline, &keys, synced_us, 2);
        eprintln!("widest switch window: {}", ms(widest as i64));
        for r in 0..3 {
            assert!(
                samples.iter().filter(|s| s.replica == r).count() > 1000,
                "replica {r} was barely sampled"
            );
        }
        expect_fleet_gauges(&fleet, true, Some(3.0), Duration::from_secs(5)).await;
    })
    .await;
}

/// The pause after each answer of the rollback test's traffic: about 100 requests a second
/// per replica, the same for the fleet and the single replica.
const RATE_GAP: Duration = Duration::from_millis(8);

/// Canary answers of replica `r` received by `at_ms`.
fn canary_before(samples: &[Sample], r: usize, at_ms: u64) -> usize {
    samples
        .iter()
        .filter(|s| s.replica == r && s.canary && s.recv_us <= at_ms * 1000)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_on_all_three_within_two_seconds() {
    let _one = one_at_a_time().await;
    let rollout = "{id: rb-v1, canary: canary, steps: [50, 100], soak: 1h, min_samples: 50, \
                   guards: [{metric: error_rate}]}";
    let Some(mut fleet) = Fleet::start("rb", 3, rollout, 0.05, 0.12).await else {
        return;
    };
    bounded(Duration::from_secs(150), async {
        let watch = RecordWatch::start(&fleet.admin_addrs());
        fleet
            .until_synced("every replica synced", Duration::from_secs(20), |_| true)
            .await;
        let sampler = Sampler::start(&fleet.public_addrs(), Keys::Fresh, 1, RATE_GAP);
        let started = Instant::now();
        let rolled = watch
            .until("the fleet rolled back", Duration::from_secs(90), |s| {
                s.phase() == "rolled_back"
            })
            .await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let samples = sampler.stop().await;
        let seen = watch.stop().await;
        eprintln!("records seen:\n{}", describe(&seen));

        // The decision's moment, from the history of a replica that has it.
        let mut at_ms = None;
        let mut by = String::new();
        for r in &fleet.replicas {
            let local = r.rollout().await;
            assert_eq!(local["state"], "rolled_back", "{}: {local:#}", r.id);
            assert_eq!(local["percent"], 0.0, "{}: {local:#}", r.id);
            if let Some(d) = last_decision(&local, "rollback") {
                at_ms = at_ms.or(d["at_unix_ms"].as_u64());
                if by.is_empty() {
                    by = format!("{} (trigger {}, canary_samples {})", r.id, d["trigger"], d["canary_samples"]);
                }
            }
        }
        let shared = last_decision(&rolled.record, "rollback");
        if let Some(d) = &shared {
            eprintln!(
                "the record's rollback: at {} by {} (trigger {}): {}",
                d["at_unix_ms"], d["by"], d["trigger"], d["reason"]
            );
        }
        let at_ms = shared
            .and_then(|d| d["at_unix_ms"].as_u64())
            .or(at_ms)
            .unwrap_or_else(|| {
                eprintln!("no history has the rollback: its effective time stands for it");
                rolled.effective_ms()
            });
        eprintln!(
            "rolled back {took:?} after traffic started; decision at {at_ms} (effective {}, first seen by the test {} ms after it), in the history of {by}",
            rolled.effective_ms(),
            rolled.observed_ms as i64 - at_ms as i64
        );

        // Every replica's last canary answer, relative to the decision.
        let mut counts = Vec::new();
        for r in 0..3 {
            let mine: Vec<_> = samples.iter().filter(|s| s.replica == r).collect();
            let last_canary = mine.iter().filter(|s| s.canary).map(|s| s.sent_us).max();
            let after = mine
                .iter()
                .filter(|s| s.sent_us > (at_ms + 2000) * 1000)
                .count();
            eprintln!(
                "r{}: last canary answer sent {} after the decision; {} answers sent more than 2 s after it, none canary",
                r + 1,
                last_canary.map_or("-".into(), |t| ms(t as i64 - at_ms as i64 * 1000)),
                after
            );
            assert!(after > 20, "r{}: too few answers after the decision to tell", r + 1);
            assert!(
                last_canary.is_none_or(|t| t <= (at_ms + 2000) * 1000),
                "r{}: a canary answer sent {} after the decision",
                r + 1,
                ms(last_canary.unwrap() as i64 - at_ms as i64 * 1000)
            );
            counts.push(canary_before(&samples, r, at_ms));
        }
        let pooled = fleet.replicas[0].fleet().await["routes"]["agent"].clone();
        eprintln!(
            "canary answers per replica up to the decision (client side): {counts:?}; the fleet's pooled counts: {} per replica: {}",
            pooled["pooled"], pooled["per_replica"]
        );

        // The same traffic on one replica without a fleet: how many canary answers it takes.
        for r in &mut fleet.replicas {
            r.kill();
        }
        let mut single = fleet.replica("single", None);
        single.start().await;
        let sampler = Sampler::start(&[Arc::clone(&single.public)], Keys::Fresh, 1, RATE_GAP);
        let deadline = Instant::now() + Duration::from_secs(60);
        let decision = loop {
            let local = single.rollout().await;
            if local["state"] == "rolled_back" {
                break last_decision(&local, "rollback").expect("the single replica's rollback");
            }
            assert!(Instant::now() < deadline, "the single replica did not roll back within 60 s: {local:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let samples = sampler.stop().await;
        let single_at = decision["at_unix_ms"].as_u64().unwrap();
        let alone = canary_before(&samples, 0, single_at);
        let per_replica = counts.iter().sum::<usize>() as f64 / 3.0;
        eprintln!(
            "single replica: {alone} canary answers up to its rollback (its decision counts {}); fleet: {per_replica:.0} per replica, ratio {:.2}",
            decision["canary_samples"],
            per_replica / alone.max(1) as f64
        );
        single.kill();
    })
    .await;
}
