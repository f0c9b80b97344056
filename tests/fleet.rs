//! The fleet end to end (issue 16): three `cohort run` processes (replicas r1, r2, r3, each
//! with its own state directory) in front of two upstreams that name themselves, coordinated
//! through a real three-node NATS JetStream cluster, with fast timings (heartbeat 200 ms,
//! lease 2 s, stale_after 4 s, switch_delay 500 ms). Everything is observed from outside:
//! requests with per-request timestamps, `GET /rollouts`, `/metrics`, and processes killed,
//! stopped and restarted.
//!
//! The tests print what they measure (switch windows, rollback propagation, samples to a
//! rollback, takeover time); run them with `--nocapture --test-threads=1` to read it.
//!
//! Without a `nats-server` these tests print SKIPPED and pass, unless COHORT_REQUIRE_NATS=1.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::{
    band, bp, fixed_keys, in_canary, ms, now_ms, now_us, switches, Fleet, Keys, RecordWatch,
    Sample, Sampler, Seen, Timeline,
};
use support::fleet::{phase, replica_yaml, Replica, Timings, Upstream};

/// Runs `f`, failing the test if it takes longer than `limit`.
async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    if tokio::time::timeout(limit, f).await.is_err() {
        panic!("the test did not finish within {limit:?}");
    }
}

/// The widest the switch window may be: the time from the first replica serving a new
/// step to the last one doing so (generous: the design aims at the same moment).
const SWITCH_WINDOW: Duration = Duration::from_millis(1500);

/// The one series of `name` (whatever its labels), or None.
fn gauge(s: &support::Scrape, name: &str) -> Option<f64> {
    let series = s.series(name);
    assert!(
        series.len() <= 1,
        "{name}: more than one series: {series:?}"
    );
    series.first().map(|x| x.value)
}

/// Waits up to `limit` until every running replica's fleet gauges are `connected`, and,
/// when connected, exactly one is judge and each sees `replicas` live replicas.
async fn expect_fleet_gauges(
    fleet: &Fleet,
    connected: bool,
    replicas: Option<f64>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let mut seen = Vec::new();
        for r in fleet.replicas.iter().filter(|r| r.running()) {
            let s = r.scrape().await;
            seen.push((
                r.id.clone(),
                gauge(&s, "cohort_fleet_connected"),
                gauge(&s, "cohort_fleet_judge"),
                gauge(&s, "cohort_fleet_replicas"),
            ));
        }
        let want = if connected { 1.0 } else { 0.0 };
        let ok = seen.iter().all(|(_, c, _, _)| *c == Some(want))
            && (!connected
                || (seen.iter().filter(|(_, _, j, _)| *j == Some(1.0)).count() == 1
                    && seen.iter().all(|(_, _, j, _)| j.is_some())
                    && replicas
                        .is_none_or(|want| seen.iter().all(|(_, _, _, n)| *n == Some(want)))));
        if ok {
            eprintln!("fleet gauges (replica, connected, judge, replicas): {seen:?}");
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "fleet gauges not as expected (connected {connected}, replicas {replicas:?}) \
                 within {limit:?}: (replica, connected, judge, replicas) = {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples that disagree with the record while in flight (give or take `slack`).
fn disagreeing<'a>(samples: &'a [Sample], timeline: &Timeline, slack: Duration) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| !timeline.agrees(s, slack))
        .collect()
}

/// The distance from `s` to the nearest change of the share, in µs.
fn to_nearest_change(s: &Sample, timeline: &Timeline) -> u64 {
    timeline
        .changes()
        .iter()
        .map(|c| {
            let at = c.at_ms * 1000;
            if s.recv_us < at {
                at - s.recv_us
            } else {
                s.sent_us.saturating_sub(at)
            }
        })
        .min()
        .unwrap_or(u64::MAX)
}

fn describe(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "v{} {} step {} {}bp eff {} (seen {} ms after)",
                s.version(),
                s.phase(),
                s.step(),
                s.bp(),
                s.effective_ms(),
                s.observed_ms as i64 - s.effective_ms() as i64
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last decision `kind` in a rollout's history.
fn last_decision(rollout: &Value, kind: &str) -> Option<Value> {
    rollout["history"]
        .as_array()?
        .iter()
        .rev()
        .find(|d| d["decision"] == kind)
        .cloned()
}

/// Each change of the share after `since_us` (there must be `expect` of them): when each
/// replica switched, from its answers for the keys that move, printed; the window (from the
/// earliest a replica may have switched to the latest) must be under [`SWITCH_WINDOW`], no
/// replica may go back, and every answer must be the record's share of its moment unless
/// it is within the window of a change. The widest window, in µs.
fn check_switches(
    samples: &[Sample],
    timeline: &Timeline,
    keys: &[String],
    since_us: u64,
    expect: usize,
) -> u64 {
    let samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent_us >= since_us)
        .cloned()
        .collect();
    let synced_us = since_us;
    let changes: Vec<_> = timeline
        .changes()
        .into_iter()
        .filter(|c| c.at_ms * 1000 > synced_us)
        .collect();
    assert_eq!(changes.len(), expect, "{changes:?}");
    let mut widest = 0u64;
    for (i, c) in changes.iter().enumerate() {
        let at = c.at_ms * 1000;
        let lo = if i == 0 {
            synced_us
        } else {
            (changes[i - 1].at_ms * 1000 + at) / 2
        };
        let hi = changes
            .get(i + 1)
            .map_or(u64::MAX, |n| (n.at_ms * 1000 + at) / 2);
        let moving = band(keys, c.from, c.to).len();
        let sw = switches(
            &samples,
            3,
            *c,
            lo.max(at.saturating_sub(3_000_000)),
            hi.min(at + 3_000_000),
        );
        let mut line = format!(
            "switch {}bp -> {}bp at {} ({moving} keys move):",
            c.from, c.to, c.at_ms
        );
        for s in &sw {
            assert!(
                s.first_new_us.is_some(),
                "replica {} never served {}bp: {s:?}",
                s.replica,
                c.to
            );
            assert_eq!(
                s.stray, 0,
                "replica {} went back to {}bp after serving {}bp: {s:?}",
                s.replica, c.from, c.to
            );
            line.push_str(&format!(
                " r{}: last old {} first new {} ({} samples);",
                s.replica + 1,
                s.last_old_us
                    .map_or("-".into(), |t| ms(t as i64 - at as i64)),
                s.first_new_us
                    .map_or("-".into(), |t| ms(t as i64 - at as i64)),
                s.samples
            ));
        }
        // The window: from the earliest a replica may have switched to the latest.
        let earliest = sw
            .iter()
            .filter_map(|s| s.last_old_us.or(s.first_new_us))
            .min()
            .unwrap();
        let latest = sw.iter().filter_map(|s| s.first_new_us).max().unwrap();
        let bound = latest.saturating_sub(earliest);
        let estimates: Vec<u64> = sw.iter().filter_map(|s| s.estimate_us()).collect();
        let spread = estimates.iter().max().unwrap() - estimates.iter().min().unwrap();
        eprintln!(
            "{line}\n  switch window: at most {} (from the brackets), estimated {} (the brackets' middles)",
            ms(bound as i64),
            ms(spread as i64)
        );
        widest = widest.max(bound);
    }
    eprintln!(
        "widest switch window over {} switches: {}",
        changes.len(),
        ms(widest as i64)
    );
    assert!(
        Duration::from_micros(widest) < SWITCH_WINDOW,
        "a switch window of {} (bound {SWITCH_WINDOW:?})",
        ms(widest as i64)
    );

    // Every answer is the record's share of its moment, except inside the switch window
    // around a change.
    let off = disagreeing(&samples, timeline, Duration::ZERO);
    let outside: Vec<_> = off
        .iter()
        .filter(|s| to_nearest_change(s, timeline) > SWITCH_WINDOW.as_micros() as u64)
        .collect();
    eprintln!(
        "{} samples on 3 replicas; {} differ from the record's share of their moment, all within {} of a switch",
        samples.len(),
        off.len(),
        ms(off.iter().map(|s| to_nearest_change(s, timeline)).max().unwrap_or(0) as i64)
    );
    assert!(
        outside.is_empty(),
        "answers away from any switch disagree with the record: {:?}",
        &outside[..outside.len().min(10)]
    );
    widest
}

/// Each fleet test runs three proxies and three NATS servers against timings of a few hundred
/// milliseconds: two at once on two cores would measure the machine, not the fleet.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

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
        let keys = Arc::new(fixed_keys(200));
        let watch = RecordWatch::start(&fleet.admin_addrs());
        let sampler = Sampler::start(
            &fleet.public_addrs(),
            Keys::Cycle(Arc::clone(&keys)),
            2,
            Duration::from_millis(2),
        );
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
        let keys = Arc::new(fixed_keys(200));
        let watch = RecordWatch::start(&fleet.admin_addrs());
        let sampler = Sampler::start(
            &fleet.public_addrs(),
            Keys::Cycle(Arc::clone(&keys)),
            1,
            Duration::from_millis(5),
        );
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
async fn a_restarted_replica_serves_the_shared_step_not_its_stale_file() {
    let _one = one_at_a_time().await;
    let rollout =
        "{id: rs-v1, canary: canary, steps: [10, 30, 60, 100], soak: 3s, min_samples: 20, \
                   guards: [{metric: error_rate, margin: 5}]}";
    let Some(mut fleet) = Fleet::start("restart", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let keys = Arc::new(fixed_keys(200));
        let watch = RecordWatch::start(&fleet.admin_addrs());
        let sampler = Sampler::start(
            &fleet.public_addrs(),
            Keys::Cycle(Arc::clone(&keys)),
            2,
            Duration::from_millis(3),
        );
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
        let keys = Arc::new(fixed_keys(200));
        let watch = RecordWatch::start(&fleet.admin_addrs());
        let sampler = Sampler::start(
            &fleet.public_addrs(),
            Keys::Cycle(Arc::clone(&keys)),
            2,
            Duration::from_millis(2),
        );
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
