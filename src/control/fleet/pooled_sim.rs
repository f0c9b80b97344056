//! Monte-Carlo checks of the fleet's statistics with `rollout::traffic`'s agents (failures
//! fast, successes after 1 to 30 s, evidence of the requests that started in the step):
//! several replicas, each with its own traffic and its own local e-process, report their
//! cumulative counts every simulated second to the judge's [`Pool`], whose blocks drive the
//! same [`Progress`] a single replica's judge runs. An advance is written at one tick and
//! every replica switches `SWITCH_TICKS` later (the record's common effective time); the
//! judge's new step is judged from the switch on.
//!
//! Owns: the simulated fleet. Test-only.

use std::collections::VecDeque;
use std::time::Duration;

use fastrand::Rng;

use super::tests::issue_spec;
use super::{Pool, Report, Split, StepKey};
use crate::control::rollout::guard::Status;
use crate::control::rollout::traffic::tests::unending_spec;
use crate::control::rollout::traffic::{self, record, Agent, Evidence, Request, Traffic};
use crate::control::rollout::{DecisionKind, Phase, Progress};
use crate::routing::table::rollout::RolloutSpec;
use crate::samples::Tally;

/// Ticks from an advance's write to the moment every replica serves the new step.
const SWITCH_TICKS: u64 = 2;

struct Replica {
    /// Requests in flight, by the tick they end in.
    ending: VecDeque<Vec<Request>>,
    /// The step's cumulative counts (its cells), and what its local judge has seen of them.
    counts: (Tally, Tally),
    seen: (Tally, Tally),
    local: Progress,
    seq: u64,
}

impl Replica {
    fn new(step: usize) -> Self {
        Replica {
            ending: (0..32).map(|_| Vec::new()).collect(),
            counts: Default::default(),
            seen: Default::default(),
            local: Progress {
                step,
                ..Progress::start()
            },
            seq: 0,
        }
    }

    /// A new step's cells and local e-process; requests in flight stay in flight.
    fn switch(&mut self, step: usize) {
        self.counts = Default::default();
        self.seen = Default::default();
        self.local = Progress {
            step,
            ..Progress::start()
        };
    }
}

/// A simulated fleet: a replica per pair of agents (baseline, canary), each with `per_tick`
/// requests a second.
#[derive(Clone)]
pub struct Fleet {
    pub per_tick: u64,
    pub agents: Vec<(Agent, Agent)>,
    /// How alpha is shared with local rollbacks; without, the judge alone, at the whole alpha.
    pub split: Option<Split>,
    /// The local e-processes a step may see, as `fleet.max_replicas` (its default, 20, as
    /// the proxy runs).
    pub max_replicas: usize,
}

/// How a simulated fleet rollout ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ending {
    pub phase: Phase,
    pub step: usize,
    /// Whether a replica's own rollback (rather than the judge) ended it.
    pub local: bool,
    /// Canary requests started per replica, to the end.
    pub canary_per_replica: u64,
    /// The canary's answers per replica in the judge's evidence of the last step.
    pub evidence_per_replica: u64,
}

fn key(step: usize, epoch: u32) -> StepKey {
    StepKey {
        id: "sim".into(),
        step,
        step_version: u64::from(epoch),
    }
}

/// Runs from `start_step` until the rollout leaves the judged phases or `max_ticks` pass.
pub fn run(
    spec: &RolloutSpec,
    start_step: usize,
    fleet: &Fleet,
    max_ticks: u64,
    rng: &mut Rng,
) -> Ending {
    let (judge_spec, local_spec) = match fleet.split {
        Some(s) => {
            let (j, l) = s.specs(spec, fleet.max_replicas);
            (j, Some(l))
        }
        None => (spec.clone(), None),
    };
    let mut judge = Progress {
        step: start_step,
        ..Progress::start()
    };
    let (mut served, mut epoch) = (start_step, 0u32);
    let mut pool = Pool::new(key(served, epoch));
    let mut switch_at: Option<u64> = None;
    let mut replicas: Vec<Replica> = (0..fleet.agents.len())
        .map(|_| Replica::new(served))
        .collect();
    let mut canary_started = 0u64;
    let n = fleet.agents.len() as u64;
    let ending = |phase, step, local, canary_started: u64, judge: &Progress| Ending {
        phase,
        step,
        local,
        canary_per_replica: canary_started / n,
        evidence_per_replica: judge.canary.requests / n,
    };
    for tick in 0..max_ticks {
        if switch_at == Some(tick) {
            switch_at = None;
            (served, epoch) = (judge.step, epoch + 1);
            pool = Pool::new(key(served, epoch));
            replicas.iter_mut().for_each(|r| r.switch(served));
        }
        let share = f64::from(spec.steps[served]) / 10_000.0;
        for (i, (r, agents)) in replicas.iter_mut().zip(&fleet.agents).enumerate() {
            for _ in 0..fleet.per_tick {
                let canary = rng.f64() < share;
                let agent = if canary { &agents.1 } else { &agents.0 };
                let (ends, request) = agent.request(epoch, canary, rng);
                r.ending[ends].push(request);
                canary_started += u64::from(canary);
            }
            let now = r.ending.pop_front().unwrap_or_default();
            r.ending.push_back(Vec::new());
            for q in now.iter().filter(|q| q.epoch == epoch) {
                record(
                    if q.canary {
                        &mut r.counts.0
                    } else {
                        &mut r.counts.1
                    },
                    q,
                );
            }
            if let Some(local_spec) = &local_spec {
                let block = (r.counts.0.since(&r.seen.0), r.counts.1.since(&r.seen.1));
                r.seen = r.counts.clone();
                r.local
                    .observe(local_spec, Duration::from_secs(1), &block.0, &block.1);
                let readings = r.local.readings(local_spec);
                if readings.iter().any(|g| g.status == Status::Fail) {
                    return ending(Phase::RolledBack, served, true, canary_started, &judge);
                }
            }
            r.seq += 1;
            let report = Report::new(
                &format!("r{i}"),
                1,
                r.seq,
                key(served, epoch),
                (&r.counts.0, &r.counts.1),
            );
            if let Err(e) = pool.offer(&report) {
                panic!("a simulated report was refused: {e}");
            }
        }
        if switch_at.is_some() {
            // The judge's next step is judged once every replica serves it.
            continue;
        }
        let (c, b) = pool.block();
        judge.observe(&judge_spec, Duration::from_secs(1), &c, &b);
        let readings = judge.readings(&judge_spec);
        if let Some((kind, _)) = judge.verdict(&judge_spec, &readings) {
            if kind == DecisionKind::Rollback {
                return ending(Phase::RolledBack, served, false, canary_started, &judge);
            }
            judge.apply(kind);
            if !judge.phase.judged() {
                return ending(judge.phase, judge.step, false, canary_started, &judge);
            }
            switch_at = Some(tick + SWITCH_TICKS);
        }
    }
    ending(judge.phase, judge.step, false, canary_started, &judge)
}

/// A/A rollouts of `spec` on `fleet`: how many were rolled back by the judge, and by a
/// replica's own evidence.
fn aa(spec: &RolloutSpec, fleet: &Fleet, sims: u64, seed: u64) -> (u64, u64) {
    let mut rng = Rng::with_seed(seed);
    let (mut by_judge, mut by_replica) = (0u64, 0u64);
    for _ in 0..sims {
        let end = run(spec, 0, fleet, 2_000, &mut rng);
        assert_ne!(end.phase, Phase::Ramping, "{end:?}");
        if end.phase == Phase::RolledBack {
            *(if end.local {
                &mut by_replica
            } else {
                &mut by_judge
            }) += 1;
        }
    }
    (by_judge, by_replica)
}

fn alike(agent: Agent) -> Fleet {
    Fleet {
        per_tick: 100,
        agents: vec![(agent, agent); 3],
        split: Some(Split::EVEN),
        max_replicas: 20,
    }
}

#[test]
fn an_aa_canary_on_three_replicas_with_local_rollbacks_is_rolled_back_at_most_alpha_of_the_time() {
    // 240 runs (as `rollout::simulate`'s A/A test): twice alpha would pass with probability
    // under 0.01.
    let (sims, spec) = (240u64, issue_spec());
    let (by_judge, by_replica) = aa(&spec, &alike(Agent::new(0.1, 4.0)), sims, 1);
    let rolled_back = by_judge + by_replica;
    println!(
        "3 replicas, A/A: {rolled_back} of {sims} rolled back ({by_judge} by the pooled judge, \
         {by_replica} by a replica's own evidence), alpha 0.05"
    );
    assert!(
        rolled_back * 20 <= sims,
        "{rolled_back} of {sims} rolled back"
    );
}

/// `cargo test --lib fleet_aa_long -- --ignored --nocapture`: longer runs, at a larger alpha
/// where false rollbacks are frequent enough to count, and with replicas whose base rates
/// differ (canary and baseline alike on each).
#[test]
#[ignore]
fn fleet_aa_long() {
    let sims = 1_000;
    let uneven = Fleet {
        agents: [0.05, 0.1, 0.15]
            .map(|e| (Agent::new(e, 4.0), Agent::new(e, 4.0)))
            .to_vec(),
        ..alike(Agent::new(0.1, 4.0))
    };
    for alpha in [0.05, 0.2] {
        let spec = RolloutSpec {
            alpha,
            ..issue_spec()
        };
        for (name, fleet) in [
            ("alike", alike(Agent::new(0.1, 4.0))),
            ("uneven", uneven.clone()),
        ] {
            let (j, l) = aa(&spec, &fleet, sims, 11);
            println!("alpha {alpha}, 3 {name} replicas: {} of {sims} rolled back ({j} by the judge, {l} locally)", j + l);
            assert!((j + l) as f64 <= alpha * sims as f64);
        }
    }
}

/// Canary requests per replica from the start of a step to its rollback, started and in the
/// judge's evidence, each sorted, in `sims` runs; runs not caught in time count as
/// `u64::MAX`.
fn per_replica_to_catch(
    spec: &RolloutSpec,
    fleet: Option<&Fleet>,
    good: &Agent,
    bad: &Agent,
    sims: u64,
    seed: u64,
) -> (Vec<u64>, Vec<u64>) {
    let mut rng = Rng::with_seed(seed);
    let caught: Vec<(u64, u64)> = (0..sims)
        .map(|_| match fleet {
            Some(f) => {
                let end = run(spec, 1, f, 1_500, &mut rng);
                if end.phase == Phase::RolledBack {
                    (end.canary_per_replica, end.evidence_per_replica)
                } else {
                    (u64::MAX, u64::MAX)
                }
            }
            None => {
                let traffic = Traffic {
                    per_tick: 100,
                    baseline: good,
                    canary: good,
                    later: Some((0, bad)),
                    evidence: Evidence::StartedInStep,
                };
                let start = Progress {
                    step: 1,
                    ..Progress::start()
                };
                let end = traffic::run(spec, start, &traffic, 1_500, &mut rng);
                if end.phase == Phase::RolledBack {
                    (end.canary_since, end.evidence)
                } else {
                    (u64::MAX, u64::MAX)
                }
            }
        })
        .collect();
    let sorted = |f: fn(&(u64, u64)) -> u64| {
        let mut v: Vec<u64> = caught.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    (sorted(|c| c.0), sorted(|c| c.1))
}

#[test]
fn three_replicas_pooled_catch_a_one_point_regression_with_a_third_of_the_samples_each() {
    let spec = unending_spec();
    let (good, bad) = (Agent::new(0.01, 4.0), Agent::new(0.02, 4.0));
    let sims = 60;
    let mut fleet = Fleet {
        per_tick: 100,
        agents: vec![(good, bad); 3],
        split: None,
        max_replicas: 20,
    };
    let single = per_replica_to_catch(&spec, None, &good, &bad, sims, 5);
    let pooled = per_replica_to_catch(&spec, Some(&fleet), &good, &bad, sims, 6);
    fleet.split = Some(Split::EVEN);
    let split = per_replica_to_catch(&spec, Some(&fleet), &good, &bad, sims, 7);
    let median = |v: &[u64]| v[v.len() / 2];
    let ratio = |a: &[u64], b: &[u64]| median(a) as f64 / median(b) as f64;
    for v in [&single, &pooled, &split] {
        assert!(median(&v.0) < u64::MAX, "half the runs not caught");
    }
    let (started, evidence) = (ratio(&pooled.0, &single.0), ratio(&pooled.1, &single.1));
    let (split_started, split_evidence) = (ratio(&split.0, &single.0), ratio(&split.1, &single.1));
    // Each replica gets 100 requests a second, 60 of them canary: the time to the decision.
    let secs = |v: &(Vec<u64>, Vec<u64>)| median(&v.0) as f64 / 60.0;
    println!(
        "judge's decision time, 1% -> 2% errors at 60%, 100 requests/s per replica (median): \
         one replica {:.0} s, three pooled {:.0} s, three pooled with local rollbacks {:.0} s",
        secs(&single),
        secs(&pooled),
        secs(&split)
    );
    println!(
        "1% -> 2% errors at 60%, canary samples per replica to the rollback, median of {sims} \
         (started; in the judge's evidence): one replica {} ({}); three pooled {} ({}), \
         ratio {started:.2} ({evidence:.2}); three pooled with local rollbacks, alpha split \
         evenly, {} ({}), ratio {split_started:.2} ({split_evidence:.2})",
        median(&single.0),
        median(&single.1),
        median(&pooled.0),
        median(&pooled.1),
        median(&split.0),
        median(&split.1),
    );
    // Started requests include the few seconds of answers still in flight at the decision,
    // the same for one replica as for three, so that ratio sits a little above the evidence's.
    assert!((0.25..=0.42).contains(&evidence), "pooled {evidence}");
    assert!(started <= 0.45, "pooled {started}");
    assert!(split_started <= 0.5, "split {split_started}");
}
