//! Monte-Carlo traffic as agents make it, for the rollout's statistics: each request starts
//! at a moment of its own and ends when its outcome says (failures fast, successes after a
//! realistic agent turn of 1 to 30 s), so a block holds what *ended* in a second, across step
//! advances, with requests in flight at every decision. Driven through [`Progress`] as the
//! judge drives it, once a simulated second.
//!
//! Owns: simulated agents and the timed loop. Test-only. Must not touch: the statistics
//! themselves (it only feeds them tallies).

use std::collections::VecDeque;
use std::time::Duration;

use fastrand::Rng;

use super::machine::{DecisionKind, Phase, Progress};
use crate::routing::table::rollout::RolloutSpec;
use crate::samples::{bin_of, Tally};

/// How an agent backend answers.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub error: f64,
    /// Failures end within this many seconds of their start (uniformly).
    pub fail_within_s: f64,
    /// Successes take a lognormal time with this median and log-sd, within 1 to 30 s.
    pub ok_median_s: f64,
    pub ok_sigma: f64,
}

impl Agent {
    /// An agent whose failures are immediate and whose turns take about `median_s`.
    pub fn new(error: f64, median_s: f64) -> Self {
        Agent {
            error,
            fail_within_s: 0.2,
            ok_median_s: median_s,
            ok_sigma: 0.6,
        }
    }

    fn answer(&self, rng: &mut Rng) -> (bool, f64) {
        if rng.f64() < self.error {
            return (true, rng.f64() * self.fail_within_s);
        }
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        (
            false,
            (self.ok_median_s * (self.ok_sigma * z).exp()).clamp(1.0, 30.0),
        )
    }
}

/// Which requests a step's evidence holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Those that started in the step (what the proxy does).
    StartedInStep,
    /// Those that ended in it, whenever they started (what it did before).
    EndedInStep,
}

/// The simulated traffic: rate, cohorts, and a regression that may start later.
pub struct Traffic<'a> {
    pub per_tick: u64,
    pub baseline: &'a Agent,
    pub canary: &'a Agent,
    /// From this tick on, the canary's new requests are answered by this agent instead.
    pub later: Option<(u64, &'a Agent)>,
    pub evidence: Evidence,
}

impl<'a> Traffic<'a> {
    /// 100 requests a second to two cohorts answered alike.
    pub fn alike(agent: &'a Agent, evidence: Evidence) -> Self {
        Traffic {
            per_tick: 100,
            baseline: agent,
            canary: agent,
            later: None,
            evidence,
        }
    }
}

/// How a simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ending {
    pub phase: Phase,
    pub step: usize,
    /// The tick of the last decision.
    pub tick: u64,
    /// Canary requests started since the regression (or the start), to the end.
    pub canary_since: u64,
    /// The lowest ln e-value any guard had in the step it ended at.
    pub lowest: f64,
    /// The canary's answers in the evidence of the step it ended at.
    pub evidence: u64,
}

/// One simulated request: the step epoch it started in, its cohort, how it ended.
#[derive(Clone, Copy)]
pub struct Request {
    pub epoch: u32,
    pub canary: bool,
    pub failed: bool,
    pub bin: usize,
}

impl Agent {
    /// A request started now in `epoch`, and the tick (from now) it ends in.
    pub fn request(&self, epoch: u32, canary: bool, rng: &mut Rng) -> (usize, Request) {
        let (failed, took) = self.answer(rng);
        let ends = (rng.f64() + took) as usize;
        let bin = bin_of(Duration::from_secs_f64(took));
        (
            ends,
            Request {
                epoch,
                canary,
                failed,
                bin,
            },
        )
    }
}

pub fn record(t: &mut Tally, r: &Request) {
    t.requests += 1;
    if r.failed {
        t.errors += 1;
    } else {
        t.with_outcome += 1;
        t.outcomes[0] += 1;
        t.latency[r.bin] += 1;
    }
}

/// Runs from `start` until the rollout leaves the judged phases or `max_ticks` pass.
pub fn run(
    spec: &RolloutSpec,
    start: Progress,
    traffic: &Traffic,
    max_ticks: u64,
    rng: &mut Rng,
) -> Ending {
    let mut p = start;
    // Requests in flight, by the tick they end in (30 s at most, so 32 slots suffice).
    let mut ending: VecDeque<Vec<Request>> = (0..32).map(|_| Vec::new()).collect();
    let (mut epoch, mut last, mut canary_since) = (0u32, 0u64, 0u64);
    let mut lowest = 0.0f64;
    let onset = traffic.later.map_or(0, |(t, _)| t);
    for tick in 0..max_ticks {
        if !p.phase.judged() {
            break;
        }
        let share = f64::from(p.percent(spec)) / 10_000.0;
        for _ in 0..traffic.per_tick {
            let canary = rng.f64() < share;
            let agent = match traffic.later {
                Some((from, a)) if canary && tick >= from => a,
                _ if canary => traffic.canary,
                _ => traffic.baseline,
            };
            let (ends, request) = agent.request(epoch, canary, rng);
            ending[ends].push(request);
            canary_since += u64::from(canary && tick >= onset);
        }
        let (mut c, mut b) = (Tally::default(), Tally::default());
        let now = ending.pop_front().unwrap_or_default();
        ending.push_back(Vec::new());
        let counted = now
            .iter()
            .filter(|r| traffic.evidence == Evidence::EndedInStep || r.epoch == epoch);
        for r in counted {
            record(if r.canary { &mut c } else { &mut b }, r);
        }
        p.observe(spec, Duration::from_secs(1), &c, &b);
        let readings = p.readings(spec);
        lowest = readings.iter().map(|r| r.statistic).fold(lowest, f64::min);
        if let Some((kind, _)) = p.verdict(spec, &readings) {
            last = tick;
            if kind == DecisionKind::Rollback {
                p.phase = Phase::RolledBack;
                break;
            }
            if p.apply(kind) {
                epoch += 1;
                lowest = 0.0;
            }
        }
    }
    Ending {
        phase: p.phase,
        step: p.step,
        tick: last,
        canary_since,
        lowest,
        evidence: p.canary.requests,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::RawGuardMetric;
    use crate::control::rollout::simulate::{guard, spec_of};

    /// The issue's setup: steps 10 and 60%, 10 samples, 15 s soak, alpha 0.05, one error
    /// rate guard, 100 requests a second of agents failing 10% at once.
    pub(crate) fn issue_spec() -> RolloutSpec {
        spec_of(
            &[10.0, 60.0],
            15,
            10,
            0.05,
            vec![guard(RawGuardMetric::ErrorRate, None)],
        )
    }

    /// A/A rollouts of `spec` at `per_tick` requests a second; the number rolled back.
    pub fn aa(spec: &RolloutSpec, sims: u64, evidence: Evidence, seed: u64) -> u64 {
        let mut rng = Rng::with_seed(seed);
        let same = Agent::new(0.1, 4.0);
        let traffic = Traffic::alike(&same, evidence);
        (0..sims)
            .filter(|_| {
                let end = run(spec, Progress::start(), &traffic, 2_000, &mut rng);
                assert_ne!(end.phase, Phase::Ramping, "{end:?}");
                end.phase == Phase::RolledBack
            })
            .count() as u64
    }

    /// Canary requests from a regression's onset (tick `onset`, 0 for one present from the
    /// start) to its rollback, in `sims` runs at the second step of `spec`, sorted; runs not
    /// caught within `max_ticks` count as `u64::MAX`.
    pub fn to_catch(spec: &RolloutSpec, onset: u64, sims: u64, seed: u64) -> Vec<u64> {
        let mut rng = Rng::with_seed(seed);
        let (good, bad) = (Agent::new(0.1, 4.0), Agent::new(0.2, 4.0));
        let traffic = Traffic {
            per_tick: 100,
            baseline: &good,
            canary: &good,
            later: Some((onset, &bad)),
            evidence: Evidence::StartedInStep,
        };
        let start = Progress {
            step: 1,
            ..Progress::start()
        };
        let mut caught: Vec<u64> = (0..sims)
            .map(|_| {
                let end = run(spec, start.clone(), &traffic, onset + 600, &mut rng);
                if end.phase == Phase::RolledBack {
                    end.canary_since
                } else {
                    u64::MAX
                }
            })
            .collect();
        caught.sort_unstable();
        caught
    }

    #[test]
    fn an_aa_agent_canary_is_rolled_back_at_most_alpha_of_the_time_across_advances() {
        // 400 runs: a false rollback rate of twice alpha would pass with probability 0.0002.
        let (sims, spec) = (400, issue_spec());
        let rolled_back = aa(&spec, sims, Evidence::StartedInStep, 1);
        println!("started in step: {rolled_back} of {sims} A/A rollouts rolled back");
        assert!(
            rolled_back * 20 <= sims,
            "{rolled_back} of {sims} rolled back"
        );
        // What evidence counted by completion did: the canary's first answers after an
        // advance are its fast failures.
        let biased = aa(&spec, 40, Evidence::EndedInStep, 1);
        println!("ended in step: {biased} of 40 A/A rollouts rolled back");
        assert!(biased > 20, "{biased} of 40");
    }

    /// [`issue_spec`] with a soak that never ends: for the samples a rollback takes.
    pub(crate) fn unending_spec() -> RolloutSpec {
        spec_of(
            &[10.0, 60.0],
            100_000,
            10,
            0.05,
            vec![guard(RawGuardMetric::ErrorRate, None)],
        )
    }

    #[test]
    fn a_regression_that_starts_mid_step_is_caught_about_as_fast_as_one_from_the_start() {
        let spec = unending_spec();
        let (from_start, mid) = (to_catch(&spec, 0, 100, 3), to_catch(&spec, 60, 100, 3));
        println!(
            "10% -> 20% errors, canary samples to catch, median (90th percentile): from the \
             start {} ({}), from 60 s in {} ({})",
            from_start[50], from_start[90], mid[50], mid[90]
        );
        assert!(mid[99] < u64::MAX && from_start[99] < u64::MAX);
        assert!(
            mid[50] * 4 <= from_start[50] * 5,
            "{} {}",
            mid[50],
            from_start[50]
        );

        // And the guard never went blind while an A/A step ran (with all-in bets alone its
        // ln e-value fell to -14 on these seeds).
        let mut rng = Rng::with_seed(2);
        let same = Agent::new(0.1, 4.0);
        let traffic = Traffic::alike(&same, Evidence::StartedInStep);
        let start = Progress {
            step: 1,
            ..Progress::start()
        };
        let lowest = (0..100)
            .map(|_| run(&spec, start.clone(), &traffic, 300, &mut rng).lowest)
            .fold(0.0, f64::min);
        println!("lowest ln e-value over 100 A/A steps of 300 s: {lowest:.2}");
        assert!(lowest > -8.0, "{lowest}");
    }
}
