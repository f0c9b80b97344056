//! Monte-Carlo checks of the guards, driven through [`Progress`] exactly as the judge drives
//! it (one block of answers per simulated second): the false rollback rate of an A/A canary
//! stays within alpha, real regressions are caught, and how many samples that takes.
//!
//! Owns: simulated cohorts (error, escalation and latency distributions). Test-only.

use std::time::Duration;

use fastrand::Rng;

use super::machine::{DecisionKind, Phase, Progress};
use crate::config::{RawAfter, RawGuard, RawGuardMetric, RawRollout};
use crate::routing::table::rollout::{self as spec, RolloutSpec};
use crate::samples::{bin_of, Tally};

/// One simulated cohort.
#[derive(Clone)]
pub struct Cohort {
    pub error: f64,
    /// Share of successful answers that end `escalated` (the rest `resolved`).
    pub escalated: f64,
    /// Latency bins to draw from (a precomputed sample of the distribution).
    pub latency: Vec<usize>,
}

/// A lognormal latency with this median and log-sd, as bins.
pub fn lognormal(rng: &mut Rng, median_ms: f64, sigma: f64) -> Vec<usize> {
    (0..20_000)
        .map(|_| {
            let (u, v) = (rng.f64().max(1e-12), rng.f64());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            bin_of(Duration::from_secs_f64(
                median_ms / 1000.0 * (sigma * z).exp(),
            ))
        })
        .collect()
}

impl Cohort {
    pub fn new(rng: &mut Rng, error: f64, escalated: f64, median_ms: f64) -> Self {
        Cohort {
            error,
            escalated,
            latency: lognormal(rng, median_ms, 0.5),
        }
    }

    fn answer(&self, t: &mut Tally, rng: &mut Rng) {
        t.requests += 1;
        if rng.f64() < self.error {
            t.errors += 1;
            return;
        }
        t.with_outcome += 1;
        // Outcome slots as in the default list: resolved 0, escalated 1.
        t.outcomes[usize::from(rng.f64() < self.escalated)] += 1;
        if !self.latency.is_empty() {
            let b = self.latency[rng.usize(..self.latency.len())];
            t.latency[b] += 1;
        }
    }
}

/// How a simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ending {
    pub phase: Phase,
    /// The step it ended at, and the step's samples then.
    pub step: usize,
    pub canary: u64,
    pub baseline: u64,
}

/// Runs a rollout from `start` until it leaves the judged phases or `max_ticks` pass, with
/// `per_tick` requests a second split by the current step.
pub fn run(
    spec: &RolloutSpec,
    start: Progress,
    canary: &Cohort,
    baseline: &Cohort,
    per_tick: u64,
    max_ticks: u64,
    rng: &mut Rng,
) -> Ending {
    let mut p = start;
    for _ in 0..max_ticks {
        if !p.phase.judged() {
            break;
        }
        let share = f64::from(p.percent(spec)) / 10_000.0;
        let (mut c, mut b) = (Tally::default(), Tally::default());
        for _ in 0..per_tick {
            if rng.f64() < share {
                canary.answer(&mut c, rng);
            } else {
                baseline.answer(&mut b, rng);
            }
        }
        p.observe(spec, Duration::from_secs(1), &c, &b);
        let readings = p.readings(spec);
        if let Some((kind, _)) = p.verdict(spec, &readings) {
            if kind == DecisionKind::Rollback {
                return Ending {
                    phase: Phase::RolledBack,
                    step: p.step,
                    canary: p.canary.requests,
                    baseline: p.baseline.requests,
                };
            }
            p.apply(kind);
        }
    }
    Ending {
        phase: p.phase,
        step: p.step,
        canary: p.canary.requests,
        baseline: p.baseline.requests,
    }
}

pub fn guard(metric: RawGuardMetric, relative_margin: Option<f64>) -> RawGuard {
    RawGuard {
        metric,
        margin: None,
        relative_margin,
        quantile: None,
        outcome: None,
        per_segment: false,
        include_late: false,
    }
}

/// A validated spec for the route `stable, canary` with default outcomes.
pub fn spec_of(
    steps: &[f64],
    soak_s: u64,
    min_samples: u64,
    alpha: f64,
    guards: Vec<RawGuard>,
) -> RolloutSpec {
    let raw = RawRollout {
        id: "sim".into(),
        canary: "canary".into(),
        steps: steps.to_vec(),
        soak: Duration::from_secs(soak_s),
        min_samples,
        after: RawAfter::Promote,
        alpha,
        guards,
        srm_alpha: 0.001,
    };
    let outcomes: Vec<String> = crate::routing::table::DEFAULT_OUTCOMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    match spec::build(
        &raw,
        &[("stable", 9_900), ("canary", 100)],
        &outcomes,
        None,
        None,
    ) {
        Ok(s) => s,
        Err(e) => panic!("simulated spec rejected: {e}"),
    }
}

/// The A/A setup: every guard at a zero margin (the hardest null: exactly on its edge).
fn aa_spec(alpha: f64) -> RolloutSpec {
    spec_of(
        &[1.0, 5.0, 25.0, 50.0, 100.0],
        30,
        100,
        alpha,
        vec![
            guard(RawGuardMetric::ErrorRate, None),
            guard(RawGuardMetric::EscalationRate, None),
            guard(RawGuardMetric::Latency, Some(0.0)),
        ],
    )
}

/// Runs `sims` A/A rollouts of `spec`; the number rolled back.
fn aa_rollbacks(sims: u64, spec: &RolloutSpec, seed: u64) -> u64 {
    let mut rng = Rng::with_seed(seed);
    let mut rolled_back = 0;
    for i in 0..sims {
        // Several base rates: rare errors are where normal approximations fail.
        let error = [0.001, 0.01, 0.05, 0.2][(i % 4) as usize];
        let same = Cohort::new(&mut rng, error, 0.2, 200.0);
        let end = run(spec, Progress::start(), &same, &same, 100, 5_000, &mut rng);
        assert_ne!(
            end.phase,
            Phase::Ramping,
            "an A/A rollout did not finish: {end:?}"
        );
        if end.phase == Phase::RolledBack {
            rolled_back += 1;
        }
    }
    rolled_back
}

#[test]
fn an_aa_canary_is_rolled_back_at_most_alpha_of_the_time() {
    let (sims, alpha) = (240, 0.05);
    let rolled_back = aa_rollbacks(sims, &aa_spec(alpha), 42);
    let rate = rolled_back as f64 / sims as f64;
    assert!(
        rate <= alpha,
        "{rolled_back} of {sims} A/A rollouts rolled back ({rate})"
    );
}

/// `cargo test --lib aa_long -- --ignored --nocapture`: a longer run, for the figures.
#[test]
#[ignore]
fn aa_long() {
    let sims = 2_000;
    let pct = |n: u64| 100.0 * n as f64 / sims as f64;
    for alpha in [0.05, 0.2] {
        let rolled_back = aa_rollbacks(sims, &aa_spec(alpha), 7);
        println!("alpha {alpha}, three guards: {rolled_back} of {sims} A/A rollouts rolled back ({:.2}%)", pct(rolled_back));
        assert!(rolled_back as f64 / sims as f64 <= alpha);
    }
    // The same with one error_rate guard, against a z-test for two proportions looked at
    // every second at the same per-step alpha: what continuous monitoring does to a test
    // made for one look.
    let alpha = 0.05;
    let one = spec_of(
        &[1.0, 5.0, 25.0, 50.0, 100.0],
        30,
        100,
        alpha,
        vec![guard(RawGuardMetric::ErrorRate, None)],
    );
    let e = aa_rollbacks(sims, &one, 8);
    let z = naive_rollbacks(sims, &one, 8);
    println!("alpha {alpha}, error_rate alone: e-process {e} ({:.2}%), z-test at every look {z} ({:.2}%)", pct(e), pct(z));
}

/// A/A rollouts judged by a pooled one-sided z-test on the step's error counts at every tick
/// (at `alpha / steps`, after `min_samples`), moving on as the judge does; the number rolled
/// back.
fn naive_rollbacks(sims: u64, spec: &RolloutSpec, seed: u64) -> u64 {
    let mut rng = Rng::with_seed(seed);
    let z_crit = normal_quantile(1.0 - spec.alpha / spec.steps.len() as f64);
    let mut rolled_back = 0;
    'sims: for i in 0..sims {
        let error = [0.001, 0.01, 0.05, 0.2][(i % 4) as usize];
        for &w in &spec.steps {
            let share = f64::from(w) / 10_000.0;
            let (mut xc, mut nc, mut xs, mut ns) = (0u64, 0u64, 0u64, 0u64);
            for tick in 1u64.. {
                for _ in 0..100 {
                    let failed = u64::from(rng.f64() < error);
                    if rng.f64() < share {
                        (xc, nc) = (xc + failed, nc + 1);
                    } else {
                        (xs, ns) = (xs + failed, ns + 1);
                    }
                }
                let enough = nc >= spec.min_samples && ns >= spec.min_samples;
                let p = (xc + xs) as f64 / (nc + ns) as f64;
                if enough && p > 0.0 {
                    let (rc, rs) = (xc as f64 / nc as f64, xs as f64 / ns as f64);
                    let z =
                        (rc - rs) / (p * (1.0 - p) * (1.0 / nc as f64 + 1.0 / ns as f64)).sqrt();
                    if z > z_crit {
                        rolled_back += 1;
                        continue 'sims;
                    }
                }
                let done = tick >= spec.soak.as_secs() && nc >= spec.min_samples;
                if done && (enough || w == 10_000) {
                    break;
                }
            }
        }
    }
    rolled_back
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9 after
/// its refinement is skipped: ample here).
fn normal_quantile(p: f64) -> f64 {
    let a = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    let b = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    let c = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    let d = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        let t = (-2.0 * q.ln()).sqrt();
        (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5])
            / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0)
    };
    if p > 0.975 {
        -tail(1.0 - p)
    } else if p < 0.025 {
        tail(p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    }
}

#[test]
fn the_normal_quantile_is_right() {
    for (p, z) in [
        (0.5, 0.0),
        (0.975, 1.959964),
        (0.99, 2.326348),
        (0.999, 3.090232),
        (0.01, -2.326348),
    ] {
        assert!(
            (normal_quantile(p) - z).abs() < 1e-4,
            "{p}: {}",
            normal_quantile(p)
        );
    }
}

#[test]
fn twice_the_error_rate_is_rolled_back_in_the_first_step() {
    let mut rng = Rng::with_seed(3);
    let spec = spec_of(
        &[1.0, 5.0, 25.0, 50.0, 100.0],
        300,
        500,
        0.05,
        vec![guard(RawGuardMetric::ErrorRate, None)],
    );
    let stable = Cohort::new(&mut rng, 0.05, 0.2, 200.0);
    let bad = Cohort::new(&mut rng, 0.10, 0.2, 200.0);
    for _ in 0..10 {
        let end = run(
            &spec,
            Progress::start(),
            &bad,
            &stable,
            2_000,
            5_000,
            &mut rng,
        );
        assert_eq!((end.phase, end.step), (Phase::RolledBack, 0), "{end:?}");
    }
}

#[test]
fn an_equal_canary_walks_every_step_and_is_promoted() {
    let mut rng = Rng::with_seed(5);
    let spec = aa_spec(0.05);
    let same = Cohort::new(&mut rng, 0.02, 0.2, 200.0);
    let end = run(&spec, Progress::start(), &same, &same, 200, 5_000, &mut rng);
    assert_eq!(end.phase, Phase::Promoted, "{end:?}");
}

#[test]
fn a_slower_canary_is_caught_by_the_latency_guard() {
    let mut rng = Rng::with_seed(9);
    let spec = spec_of(
        &[5.0, 25.0, 100.0],
        60,
        200,
        0.05,
        vec![
            guard(RawGuardMetric::ErrorRate, None),
            guard(RawGuardMetric::Latency, Some(0.1)),
        ],
    );
    let stable = Cohort::new(&mut rng, 0.01, 0.2, 200.0);
    let slow = Cohort::new(&mut rng, 0.01, 0.2, 300.0);
    let end = run(
        &spec,
        Progress::start(),
        &slow,
        &stable,
        400,
        5_000,
        &mut rng,
    );
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}");
    let mut p = Progress::start();
    let mut b = Tally::default();
    let mut c = Tally::default();
    for _ in 0..200 {
        slow.answer(&mut c, &mut rng);
        for _ in 0..10 {
            stable.answer(&mut b, &mut rng);
        }
    }
    p.observe(&spec, Duration::from_secs(1), &c, &b);
    let r = &p.readings(&spec)[1];
    assert!(r.canary > r.limit, "the canary's p50 {r:?}");
}

/// Canary samples needed to catch an error rate one point higher than the baseline's, at 1%
/// and at 5% of the traffic: each row must be caught within its budget in at least 57 of 60
/// runs (95%). `cargo test --lib detection -- --nocapture` prints the README's table.
#[test]
fn detection() {
    let spec = spec_of(
        &[1.0, 5.0, 25.0, 50.0, 100.0],
        1_000_000,
        500,
        0.05,
        vec![guard(RawGuardMetric::ErrorRate, None)],
    );
    let mut rng = Rng::with_seed(11);
    for (base, share_step, per_tick, budget) in [
        (0.01, 0, 2_000u64, 4_000u64),
        (0.01, 1, 400, 4_500),
        (0.05, 0, 2_000, 17_000),
        (0.05, 1, 400, 20_000),
    ] {
        let stable = Cohort {
            error: base,
            escalated: 0.0,
            latency: Vec::new(),
        };
        let worse = Cohort {
            error: base + 0.01,
            ..stable.clone()
        };
        let mut caught: Vec<(u64, u64)> = Vec::new();
        let sims = 60;
        for _ in 0..sims {
            let start = Progress {
                step: share_step,
                ..Progress::start()
            };
            let end = run(&spec, start, &worse, &stable, per_tick, 4_000, &mut rng);
            if end.phase == Phase::RolledBack {
                caught.push((end.canary, end.baseline));
            }
        }
        caught.sort();
        let at = |q: f64| {
            caught
                .get(((caught.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or((0, 0))
        };
        let within = caught.iter().filter(|c| c.0 <= budget).count();
        println!(
            "{:.0}% -> {:.0}% errors at {}% traffic: caught {} of {sims}, {within} within {budget}; canary samples median {} (baseline {}), 90th percentile {}, 95th {}",
            base * 100.0,
            (base + 0.01) * 100.0,
            f64::from(spec.steps[share_step]) / 100.0,
            caught.len(),
            at(0.5).0,
            at(0.5).1,
            at(0.9).0,
            at(0.95).0,
        );
        assert!(
            within >= 57,
            "{base} at step {share_step}: {within} of {sims} within {budget}"
        );
    }
}
