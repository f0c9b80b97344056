//! Monte-Carlo checks of the `per_segment` guards, driven through [`Progress`] as the judge
//! drives it: an A/A canary (segments of unequal sizes, each with its own error and
//! escalation rates, and durations that depend on the outcome) is rolled back in no segment
//! more than alpha of the time, and a canary worse in one segment alone is caught there
//! while an overall guard with the same margin lets it pass.
//!
//! Owns: simulated segmented traffic. Test-only.

use std::collections::BTreeSet;
use std::time::Duration;

use fastrand::Rng;

use super::guard::Status;
use super::machine::{DecisionKind, Phase, Progress};
use super::simulate::lognormal;
use crate::config::{RawAfter, RawGuard, RawGuardMetric, RawRollout};
use crate::routing::table::rollout::{self as spec, RolloutSpec};
use crate::samples::Tally;

const SEGMENTS: [&str; 4] = ["billing", "shipping", "returns", "other"];

/// How one segment's answers come out in one cohort.
#[derive(Clone)]
struct Segment {
    /// Share of the traffic.
    share: f64,
    error: f64,
    escalated: f64,
    /// Latency bins of errors (fast), escalations (long turns) and resolutions.
    fail_bins: Vec<usize>,
    escalated_bins: Vec<usize>,
    resolved_bins: Vec<usize>,
}

impl Segment {
    fn new(rng: &mut Rng, share: f64, error: f64, escalated: f64, median_ms: f64) -> Self {
        Segment {
            share,
            error,
            escalated,
            fail_bins: lognormal(rng, 40.0, 0.8),
            escalated_bins: lognormal(rng, median_ms * 3.0, 0.5),
            resolved_bins: lognormal(rng, median_ms, 0.5),
        }
    }

    /// One answer: whether it failed, its outcome slot (in the default list: resolved 0,
    /// escalated 1, error 3), and its latency bin (a failure's time is not a latency).
    fn answer(&self, rng: &mut Rng) -> (bool, usize, Option<usize>) {
        let pick = |bins: &[usize], rng: &mut Rng| bins[rng.usize(..bins.len())];
        if rng.f64() < self.error {
            let _fast = pick(&self.fail_bins, rng);
            return (true, 3, None);
        }
        if rng.f64() < self.escalated {
            (false, 1, Some(pick(&self.escalated_bins, rng)))
        } else {
            (false, 0, Some(pick(&self.resolved_bins, rng)))
        }
    }
}

fn add(t: &mut Tally, (failed, slot, bin): (bool, usize, Option<usize>)) {
    t.requests += 1;
    t.errors += u64::from(failed);
    t.with_outcome += 1;
    t.outcomes[slot] += 1;
    if let Some(b) = bin {
        t.latency[b] += 1;
    }
}

/// The four segments, largest first, each with rates and durations of its own.
fn segments(rng: &mut Rng) -> Vec<Segment> {
    vec![
        Segment::new(rng, 0.10, 0.03, 0.30, 900.0),
        Segment::new(rng, 0.55, 0.01, 0.10, 300.0),
        Segment::new(rng, 0.30, 0.02, 0.20, 600.0),
        Segment::new(rng, 0.05, 0.05, 0.40, 200.0),
    ]
}

/// One answer in `segs`, into the whole and its segment.
fn answer(segs: &[Segment], t: &mut Tally, rng: &mut Rng) {
    if t.segments.len() < segs.len() {
        t.segments.resize(segs.len(), Tally::default());
    }
    let mut u = rng.f64();
    let i = segs
        .iter()
        .position(|s| {
            u -= s.share;
            u < 0.0
        })
        .unwrap_or(segs.len() - 1);
    let a = segs[i].answer(rng);
    add(t, a);
    add(&mut t.segments[i], a);
}

fn rollout(min_samples: u64, guards: Vec<RawGuard>) -> RolloutSpec {
    let raw = RawRollout {
        id: "sim".into(),
        canary: "canary".into(),
        steps: vec![10.0, 50.0, 100.0],
        soak: Duration::from_secs(20),
        min_samples,
        after: RawAfter::Promote,
        alpha: 0.05,
        guards,
        srm_alpha: 0.0,
    };
    let outcomes: Vec<String> = crate::routing::table::DEFAULT_OUTCOMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names: Vec<String> = SEGMENTS.iter().map(|s| s.to_string()).collect();
    let cohorts = [("stable", 9_900), ("canary", 100)];
    match spec::build(&raw, &cohorts, &outcomes, None, Some(&names)) {
        Ok(s) => s,
        Err(e) => panic!("simulated spec rejected: {e}"),
    }
}

fn guard(metric: RawGuardMetric, margin: Option<f64>, per_segment: bool) -> RawGuard {
    let latency = metric == RawGuardMetric::Latency;
    RawGuard {
        metric,
        margin: margin.filter(|_| !latency),
        relative_margin: latency.then_some(0.0),
        quantile: None,
        outcome: None,
        per_segment,
        include_late: false,
    }
}

/// How a simulated rollout ended: its last phase, the reason of its rollback if any, and the
/// segments some `per_segment` guard judged (passed or failed) on the way.
struct End {
    phase: Phase,
    why: Option<String>,
    judged: BTreeSet<String>,
}

/// Runs a rollout to its end (or `max_ticks`), `per_tick` answers a second.
fn run(
    spec: &RolloutSpec,
    canary: &[Segment],
    baseline: &[Segment],
    per_tick: u64,
    max_ticks: u64,
    rng: &mut Rng,
) -> End {
    let mut judged = BTreeSet::new();
    let mut p = Progress::start();
    for _ in 0..max_ticks {
        if !p.phase.judged() {
            break;
        }
        let share = f64::from(p.percent(spec)) / 10_000.0;
        let (mut c, mut b) = (Tally::default(), Tally::default());
        for _ in 0..per_tick {
            if rng.f64() < share {
                answer(canary, &mut c, rng);
            } else {
                answer(baseline, &mut b, rng);
            }
        }
        p.observe(spec, Duration::from_secs(1), &c, &b);
        let readings = p.readings(spec);
        for r in &readings {
            if matches!(r.status, Status::Pass | Status::Fail) {
                judged.extend(r.segment.clone());
            }
        }
        if let Some((kind, reason)) = p.verdict(spec, &readings) {
            if kind == DecisionKind::Rollback {
                return End {
                    phase: Phase::RolledBack,
                    why: Some(reason),
                    judged,
                };
            }
            p.apply(kind);
        }
    }
    End {
        phase: p.phase,
        why: None,
        judged,
    }
}

/// Every guard per segment at a zero margin (the hardest null, exactly on its edge).
fn aa_spec() -> RolloutSpec {
    rollout(
        50,
        vec![
            guard(RawGuardMetric::ErrorRate, None, true),
            guard(RawGuardMetric::EscalationRate, None, true),
            guard(RawGuardMetric::Latency, None, true),
        ],
    )
}

#[test]
fn an_aa_canary_is_rolled_back_in_no_segment_more_than_alpha_of_the_time() {
    let spec = aa_spec();
    assert_eq!(spec.segment_guards.len(), 3);
    // Three guards at three steps, each split over four segments.
    assert!((spec.alpha_per_segment_test() - 0.05 / 3.0 / 3.0 / 4.0).abs() < 1e-12);
    let mut rng = Rng::with_seed(18);
    let segs = segments(&mut rng);
    let sims = 100;
    let mut rolled_back = 0;
    for _ in 0..sims {
        let end = run(&spec, &segs, &segs, 200, 3_000, &mut rng);
        if end.phase == Phase::RolledBack {
            rolled_back += 1;
            eprintln!("A/A rollback: {:?}", end.why);
        } else {
            assert_eq!(end.phase, Phase::Promoted, "an A/A rollout did not finish");
            // Not a vacuous pass: every segment was judged on the way, the smallest too.
            assert_eq!(end.judged.len(), SEGMENTS.len(), "{:?}", end.judged);
        }
    }
    let rate = f64::from(rolled_back) / f64::from(sims);
    assert!(
        rate <= spec.alpha,
        "{rolled_back} of {sims} A/A rollouts rolled back ({rate})"
    );
}

#[test]
fn a_regression_in_one_segment_is_caught_there_and_not_by_the_overall_guard() {
    let mut rng = Rng::with_seed(7);
    let stable = segments(&mut rng);
    let mut worse = stable.clone();
    // Billing (a tenth of the traffic) fails 20% of the time instead of 3%: 1.7 points
    // more overall, inside the overall guard's 3-point margin.
    worse[0].error = 0.20;
    let overall = rollout(
        100,
        vec![guard(RawGuardMetric::ErrorRate, Some(3.0), false)],
    );
    let both = rollout(
        100,
        vec![
            guard(RawGuardMetric::ErrorRate, Some(3.0), false),
            guard(RawGuardMetric::ErrorRate, Some(3.0), true),
        ],
    );
    for _ in 0..5 {
        let end = run(&both, &worse, &stable, 400, 3_000, &mut rng);
        assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.why);
        let why = end.why.unwrap_or_default();
        assert!(
            why.starts_with("guard failed: error_rate in segment billing: canary "),
            "{why}"
        );
        let end = run(&overall, &worse, &stable, 400, 3_000, &mut rng);
        assert_eq!(end.phase, Phase::Promoted, "{:?}", end.why);
    }
}

/// `cargo test --lib segments_aa_long -- --ignored --nocapture`: more runs, and a larger
/// alpha, for the figures.
#[test]
#[ignore]
fn segments_aa_long() {
    let mut rng = Rng::with_seed(19);
    let segs = segments(&mut rng);
    for alpha in [0.05, 0.2] {
        let spec = RolloutSpec { alpha, ..aa_spec() };
        let sims = 1_000;
        let rolled_back = (0..sims)
            .filter(|_| run(&spec, &segs, &segs, 200, 3_000, &mut rng).phase == Phase::RolledBack)
            .count();
        println!(
            "alpha {alpha}, per_segment error_rate, escalation_rate and latency over 4 segments: {rolled_back} of {sims} A/A rollouts rolled back"
        );
        assert!(rolled_back as f64 / sims as f64 <= alpha);
    }
}
