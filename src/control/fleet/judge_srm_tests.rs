//! The fleet's judge runs the sample ratio check on each replica's own units (those that saw
//! the step begin), and its verdict halts the shared record with the reason; and, by
//! simulation, why not on their sum: behind a balancer that spreads a user's requests over
//! the replicas, the sum halts sound splits far more often than alpha, each replica's own
//! units at their share of alpha do not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::*;
use crate::control::fleet::record::{propose, Change, Finish, Op, Plan};
use crate::control::rollout::simulate::spec_of;
use crate::control::rollout::Phase;
use crate::samples::Tally;

/// A record at its first step, 10% (of stable and canary alone: the expected share).
fn record() -> Record {
    let plan = Plan {
        id: "a".into(),
        steps: vec![1_000, 5_000],
        promoted: 10_000,
        after: Finish::Promote,
        switch_delay_ms: 0,
    };
    let op = Op {
        change: Change::Start(plan),
        by: "r1".into(),
        trigger: "config".into(),
        reason: "a new rollout id".into(),
    };
    propose(None, op, 1, 1_000).unwrap()
}

fn units(n: u64) -> Tally {
    Tally {
        requests: 3 * n,
        units: n,
        ..Tally::default()
    }
}

/// The verdict on two replicas' reports of `canary` and `baseline` units each, from
/// incarnations that saw the step begin (`judges`) or not.
fn verdict(canary: u64, baseline: u64, judges: bool) -> (Verdict, Record) {
    let r = record();
    let spec = spec_for(&spec_of(&[10.0, 50.0], 600, 10, 0.05, vec![]), &r, 20);
    let mut j = Judging::new(&r, None, Instant::now());
    let reports: Vec<Report> = ["r1", "r2"]
        .iter()
        .map(|name| {
            Report::new(name, 1, 1, step_key(&r), (&units(canary), &units(baseline)))
                .judging(judges)
        })
        .collect();
    let v = j.look(
        &spec,
        &r,
        reports.iter(),
        &BTreeSet::new(),
        &BTreeMap::new(),
        (Instant::now(), 2_000),
    );
    (v, r)
}

#[test]
fn a_replicas_units_off_the_split_halt_the_record_with_the_reason() {
    // 1% of each replica's units in the canary where 10% are due.
    let (v, r) = verdict(6, 594, true);
    let Verdict::Halt(reason) = v else {
        panic!("no halt")
    };
    assert!(
        reason.starts_with(
            "sample ratio mismatch: canary 6 of 600 units (1.00%) against 10.00% expected"
        ) && reason.ends_with(" at replica r1"),
        "{reason}"
    );
    let op = Op {
        change: Change::Halt,
        by: "r1".into(),
        trigger: "judge".into(),
        reason: reason.clone(),
    };
    let halted = propose(Some(&r), op, 1, 3_000).unwrap();
    assert_eq!(
        (halted.phase, halted.step, halted.percent),
        (Phase::Halted, 0, 0)
    );
    assert_eq!(halted.note.as_deref(), Some(reason.as_str()));
}

#[test]
fn units_on_the_split_do_not_nor_those_of_incarnations_that_began_mid_step() {
    assert!(matches!(verdict(40, 360, true).0, Verdict::Wait));
    // A restarted replica's slots began empty mid-step: its units are not tested (the
    // bound counts at most `max_replicas` tests a step).
    assert!(matches!(verdict(6, 594, false).0, Verdict::Wait));
}

/// One A/A step of a fleet of `replicas` behind a balancer that sends each request to any
/// of them: whether the check on the summed units halts it at `alpha`, and whether the one
/// on each replica's own units (at `alpha / replicas` each) does.
fn fleet_step(replicas: usize, alpha: f64, rng: &mut fastrand::Rng) -> (bool, bool) {
    use crate::control::rollout::srm;
    use crate::samples::{unit_hash, Seen};
    let p = 0.25;
    let seen: Vec<Seen> = (0..replicas).map(|_| Seen::default()).collect();
    let mut counts = vec![(0u64, 0u64); replicas];
    let (mut pooled, mut apart) = (false, false);
    // 2 000 users, each in the canary with probability p, each sending a few requests and
    // some many more (1 + Pareto of shape 1.1, scaled to 20 on average: conversations of
    // several turns), over 60 ticks.
    let users: Vec<(u64, bool, f64)> = (0..2_000u64)
        .map(|_| {
            let key = unit_hash(&rng.u64(..).to_le_bytes());
            (
                key,
                rng.f64() < p,
                1.0 + rng.f64().max(1e-9).powf(-1.0 / 1.1),
            )
        })
        .collect();
    let rate: f64 = 20.0 / users.iter().map(|u| u.2).sum::<f64>() * users.len() as f64;
    for _ in 0..60 {
        for &(key, canary, weight) in &users {
            let mut n = weight * rate / 60.0;
            while n > 0.0 {
                if rng.f64() < n {
                    let r = rng.usize(..replicas);
                    if seen[r].first(key, 1) {
                        let c = &mut counts[r];
                        if canary {
                            c.0 += 1
                        } else {
                            c.1 += 1
                        }
                    }
                }
                n -= 1.0;
            }
        }
        let sum = counts.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        pooled |= srm::read(sum, p, alpha).is_some_and(|s| s.mismatch);
        let each = alpha / replicas as f64;
        apart |= counts
            .iter()
            .any(|c| srm::read(*c, p, each).is_some_and(|s| s.mismatch));
    }
    (pooled, apart)
}

#[test]
fn behind_a_spreading_balancer_the_summed_units_break_alpha_and_each_replicas_do_not() {
    // At alpha 0.01 (the default's order: 0.001 over few steps): the spread sum halts
    // far more than that, each replica's own units at most that.
    let (sims, alpha) = (200, 0.01);
    let mut rng = fastrand::Rng::with_seed(18);
    let (mut pooled, mut apart) = (0, 0);
    for _ in 0..sims {
        let (p, a) = fleet_step(4, alpha, &mut rng);
        pooled += u64::from(p);
        apart += u64::from(a);
    }
    println!("A/A fleet steps halted at alpha {alpha}: summed {pooled} of {sims}, per replica {apart} of {sims}");
    assert!(apart as f64 <= alpha * sims as f64, "{apart} of {sims}");
    assert!(
        pooled as f64 >= 5.0 * alpha * sims as f64,
        "{pooled} of {sims}"
    );
}
