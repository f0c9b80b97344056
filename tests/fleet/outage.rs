//! A fleet losing NATS: one node down (nothing changes), every node down (held, then 0%, then
//! resumed), and a step switched with a node down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fleet::{
    fixed_keys, in_canary, ms, now_ms, now_us, Fleet, Keys, Sample, Sampler, Timeline,
};
use crate::support::fleet::{phase, Timings};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_node_down_changes_nothing_and_all_down_holds_then_zero_then_resumes() {
    let _one = one_at_a_time().await;
    let rollout = "{id: nd-v1, canary: canary, steps: [10, 40, 100], soak: 2s, min_samples: 20, \
                   guards: [{metric: error_rate, margin: 5}]}";
    // stale_after above the 4 to 9 s a NATS stream takes to replace a crashed leader, so
    // that losing one node of three never looks like losing the fleet.
    let timings = Timings {
        stale_after: Duration::from_secs(10),
        ..Timings::default()
    };
    let Some(mut fleet) = Fleet::start_with("down", 3, rollout, (0.0, 0.0), timings).await else {
        return;
    };
    bounded(Duration::from_secs(180), async {
        let keys = Arc::new(fixed_keys(200));
        let sampler = Sampler::start(
            &fleet.public_addrs(),
            Keys::Cycle(Arc::clone(&keys)),
            1,
            Duration::from_millis(4),
        );
        fleet
            .until_synced("every replica at step 1", Duration::from_secs(60), |r| r["step"] == 1)
            .await;
        // Held at 40% by an operator, so nothing but the outage can change what is served.
        let (status, body) = fleet.replicas[0].act("pause").await;
        assert_eq!(status, 200, "{body:#}");
        fleet
            .until_synced("every replica paused", Duration::from_secs(10), |r| phase(r) == "paused")
            .await;
        let at_40 = |s: &Sample| in_canary(&s.key, 4000) == s.canary;
        let stable_only = |s: &Sample| !s.canary;
        let bucket = "KV_cohort_down";

        // One node down, a follower of the bucket's stream, then its leader: nothing changes
        // (stale_after is longer than the stream's new leader takes to be elected).
        for what in ["a follower", "the leader"] {
            let leader = fleet.cluster.stream_leader(bucket).await;
            let victim = match (what, leader) {
                ("a follower", _) => (0..3).find(|i| Some(*i) != leader).unwrap(),
                (_, Some(l)) => l,
                (_, None) => {
                    eprintln!("no stream leader known: {what} not killed");
                    continue;
                }
            };
            let from = now_us();
            fleet.cluster.kill(victim);
            // Each replica's cohort_fleet_connected meanwhile: the moments it read 0.
            let deadline = Instant::now() + Duration::from_secs(12);
            let mut dropped: Vec<Vec<u64>> = vec![Vec::new(); 3];
            // And the moments each saw fewer than 3 live replicas (it missed heartbeats).
            let mut blind: Vec<Vec<(u64, f64)>> = vec![Vec::new(); 3];
            while Instant::now() < deadline {
                for (i, r) in fleet.replicas.iter().enumerate() {
                    let m = r.scrape().await;
                    let at = (now_us() - from) / 1000;
                    if gauge(&m, "cohort_fleet_connected") != Some(1.0) {
                        dropped[i].push(at);
                    }
                    let live = gauge(&m, "cohort_fleet_replicas").unwrap_or(0.0);
                    if live != 3.0 {
                        blind[i].push((at, live));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for (i, b) in blind.iter().enumerate() {
                if let (Some(first), Some(last)) = (b.first(), b.last()) {
                    eprintln!(
                        "r{}: cohort_fleet_replicas below 3 in {} of the readings, from {} ms to {} ms after the kill (values {:?})",
                        i + 1,
                        b.len(),
                        first.0,
                        last.0,
                        b.iter().map(|x| x.1 as u32).collect::<std::collections::BTreeSet<_>>()
                    );
                }
            }
            let to = now_us();
            let during: Vec<_> = sampler
                .snapshot()
                .into_iter()
                .filter(|s| s.sent_us >= from && s.recv_us <= to)
                .collect();
            let wrong: Vec<_> = during.iter().filter(|s| !at_40(s)).collect();
            let zero_at = wrong.iter().map(|s| s.sent_us).min();
            let zero_to = wrong.iter().map(|s| s.recv_us).max();
            eprintln!(
                "node n{victim} ({what}, leader {leader:?}) down for {}: {} answers, {} not at 40% (sent from {} to {} after the kill); \
                 cohort_fleet_connected read 0 at (ms after the kill) r1 {:?} r2 {:?} r3 {:?}",
                ms((to - from) as i64),
                during.len(),
                wrong.len(),
                zero_at.map_or("-".into(), |t| ms((t - from) as i64)),
                zero_to.map_or("-".into(), |t| ms((t - from) as i64)),
                dropped[0],
                dropped[1],
                dropped[2]
            );
            assert!(during.len() > 100, "too few answers to tell");
            assert!(wrong.is_empty(), "{what} down changed the routing: {:?}", &wrong[..wrong.len().min(10)]);
            // (Live replicas aside: see the finding on watches after a server's loss.)
            expect_fleet_gauges(&fleet, true, None, Duration::from_secs(3)).await;
            fleet.cluster.restart(victim);
            fleet.cluster.wait_ready().await;
        }

        // Every node down: the step holds, then after stale_after the canary is at 0%.
        let from = now_us();
        fleet.cluster.kill_all();
        let stale = fleet.timings.stale_after;
        let mut disconnected_seen = None;
        let deadline = Instant::now() + stale + Duration::from_secs(6);
        while Instant::now() < deadline {
            if disconnected_seen.is_none() {
                let mut all = true;
                for r in &fleet.replicas {
                    all &= gauge(&r.scrape().await, "cohort_fleet_connected") == Some(0.0);
                }
                if all {
                    disconnected_seen = Some(now_us() - from);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let to = now_us();
        let during: Vec<_> = sampler
            .snapshot()
            .into_iter()
            .filter(|s| s.sent_us >= from && s.recv_us <= to)
            .collect();
        // Per replica: the last answer at 40% and the first at 0% for a key in the canary.
        for r in 0..3 {
            let mine: Vec<_> = during.iter().filter(|s| s.replica == r).collect();
            let in_band: Vec<_> = mine.iter().filter(|s| in_canary(&s.key, 4000)).collect();
            let last_canary = in_band.iter().filter(|s| s.canary).map(|s| s.recv_us).max();
            let first_stable = in_band.iter().filter(|s| !s.canary).map(|s| s.sent_us).min();
            eprintln!(
                "all down, r{}: last canary answer {} after, first stable answer for a canary key {} after",
                r + 1,
                last_canary.map_or("-".into(), |t| ms((t - from) as i64)),
                first_stable.map_or("-".into(), |t| ms((t - from) as i64))
            );
            let early = stale.as_micros() as u64 - 1_000_000;
            let held: Vec<_> = mine.iter().filter(|s| s.recv_us < from + early).collect();
            assert!(held.len() > 50, "r{}: too few answers while held", r + 1);
            assert!(held.iter().all(|s| at_40(s)), "r{}: did not hold 40% with every node down", r + 1);
            let late: Vec<_> = mine
                .iter()
                .filter(|s| s.sent_us > from + stale.as_micros() as u64 + 1_500_000)
                .collect();
            assert!(late.len() > 50, "r{}: too few answers once stale", r + 1);
            assert!(late.iter().all(|s| stable_only(s)), "r{}: still canary answers {} after every node went down", r + 1, ms((to - from) as i64));
            assert!(first_stable.is_some_and(|t| t >= from + early), "r{}: 0% before stale_after", r + 1);
        }
        eprintln!("every replica's cohort_fleet_connected 0 by {}", disconnected_seen.map_or("never".into(), |t| ms(t as i64)));
        expect_fleet_gauges(&fleet, false, None, Duration::from_secs(1)).await;
        let r1 = fleet.replicas[0].rollout().await;
        assert_eq!((&r1["state"], &r1["step"]), (&"paused".into(), &1.into()), "the phase is kept: {r1:#}");

        // NATS back: every replica serves the shared record again, at the same step.
        fleet.cluster.restart_all();
        let back = Instant::now();
        fleet.cluster.wait_ready().await;
        let records = fleet
            .until_synced("every replica back at step 1", Duration::from_secs(45), |r| r["step"] == 1)
            .await;
        eprintln!("NATS restarted: every replica back on the record {:?} later: {}", back.elapsed(), records[0]);
        let resumed_us = now_us();
        expect_fleet_gauges(&fleet, true, Some(3.0), Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after: Vec<_> = sampler
            .snapshot()
            .into_iter()
            .filter(|s| s.sent_us >= resumed_us)
            .collect();
        assert!(after.len() > 50);
        let wrong: Vec<_> = after.iter().filter(|s| !at_40(s)).collect();
        assert!(
            wrong.is_empty(),
            "{} of {} answers not at 40% after NATS came back and every replica was on the record: {:?}",
            wrong.len(),
            after.len(),
            &wrong[..wrong.len().min(10)]
        );
        let (status, body) = fleet.replicas[1].act("resume").await;
        assert_eq!(status, 200, "{body:#}");
        fleet
            .until_synced("the rollout on to step 2", Duration::from_secs(30), |r| r["step"] == 2)
            .await;
        sampler.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_switches_together_on_three_replicas_with_one_nats_node_down() {
    let _one = one_at_a_time().await;
    let rollout = "{id: od-v1, canary: canary, steps: [10, 50, 100], soak: 3s, min_samples: 20, \
                   after: promote, guards: [{metric: error_rate, margin: 5}]}";
    let timings = Timings {
        stale_after: Duration::from_secs(10),
        ..Timings::default()
    };
    let Some(mut fleet) = Fleet::start_with("onedown", 3, rollout, (0.0, 0.0), timings).await
    else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let (keys, watch, sampler) = watched(&fleet, 2, Duration::from_millis(2));
        fleet
            .until_synced("every replica at the first step", Duration::from_secs(20), |r| {
                r["step"] == 0
            })
            .await;
        // A follower of the bucket's stream that replicas are connected to: they reconnect
        // elsewhere, and the writes go on.
        let leader = fleet.cluster.stream_leader("KV_cohort_onedown").await;
        let urls = fleet.cluster.urls();
        let ports: Vec<Option<u16>> = fleet.replicas.iter().map(|r| r.nats_port()).collect();
        let on = |i: usize| {
            ports
                .iter()
                .filter(|p| p.is_some_and(|p| urls[i].ends_with(&format!(":{p}"))))
                .count()
        };
        let victim = (0..3)
            .filter(|i| Some(*i) != leader)
            .max_by_key(|i| on(*i))
            .unwrap();
        eprintln!(
            "stream leader n{}; replicas on servers {ports:?}; killing n{victim}, which {} replicas use",
            leader.map_or("?".into(), |l| l.to_string()),
            on(victim)
        );
        let killed_us = now_us();
        fleet.cluster.kill(victim);
        let end = watch
            .until("the rollout promoted", Duration::from_secs(90), |s| {
                s.phase() == "promoted"
            })
            .await;
        let last = end.effective_ms().max(now_ms());
        while now_ms() < last + 1500 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let samples = sampler.stop().await;
        let seen = watch.stop().await;
        eprintln!("records seen:\n{}", describe(&seen));
        let timeline = Timeline::of(&seen);
        let widest = check_switches(&samples, &timeline, &keys, killed_us, 2);
        eprintln!("one node down: widest switch window {}", ms(widest as i64));
    })
    .await;
}
