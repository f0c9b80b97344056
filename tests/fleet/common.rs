//! What the fleet tests share: a time bound, gauge reads, the switch analysis, and one test
//! at a time.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

use std::sync::Arc;

use crate::support::fleet::{
    band, fixed_keys, ms, switches, Fleet, Keys, RecordWatch, Sample, Sampler, Seen, Timeline,
};

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    if tokio::time::timeout(limit, f).await.is_err() {
        panic!("the test did not finish within {limit:?}");
    }
}

/// The widest the switch window may be: the time from the first replica serving a new
/// step to the last one doing so (generous: the design aims at the same moment).
pub const SWITCH_WINDOW: Duration = Duration::from_millis(1500);

/// The one series of `name` (whatever its labels), or None.
pub fn gauge(s: &crate::support::Scrape, name: &str) -> Option<f64> {
    let series = s.series(name);
    assert!(
        series.len() <= 1,
        "{name}: more than one series: {series:?}"
    );
    series.first().map(|x| x.value)
}

/// Waits up to `limit` until every running replica's fleet gauges are `connected`, and,
/// when connected, exactly one is judge and each sees `replicas` live replicas.
pub async fn expect_fleet_gauges(
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
pub fn disagreeing<'a>(
    samples: &'a [Sample],
    timeline: &Timeline,
    slack: Duration,
) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| !timeline.agrees(s, slack))
        .collect()
}

/// The distance from `s` to the nearest change of the share, in µs.
pub fn to_nearest_change(s: &Sample, timeline: &Timeline) -> u64 {
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

pub fn describe(seen: &[Seen]) -> String {
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
pub fn last_decision(rollout: &Value, kind: &str) -> Option<Value> {
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
pub fn check_switches(
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
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// How most tests watch a fleet: 200 fixed users cycled by `workers` clients, one request
/// each `gap`, spread over the replicas, and every replica's record.
pub fn watched(
    fleet: &Fleet,
    workers: usize,
    gap: Duration,
) -> (Arc<Vec<String>>, RecordWatch, Sampler) {
    let keys = Arc::new(fixed_keys(200));
    let watch = RecordWatch::start(&fleet.admin_addrs());
    let sampler = Sampler::start(
        &fleet.public_addrs(),
        Keys::Cycle(Arc::clone(&keys)),
        workers,
        gap,
    );
    (keys, watch, sampler)
}
