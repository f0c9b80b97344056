//! The fleet's judge runs the sample ratio check on the replicas' pooled units, and its
//! verdict halts the shared record with the reason.

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

/// The verdict on two replicas' reports of `canary` and `baseline` units each.
fn verdict(canary: u64, baseline: u64) -> (Verdict, Record) {
    let r = record();
    let spec = spec_for(&spec_of(&[10.0, 50.0], 600, 10, 0.05, vec![]), &r);
    let mut j = Judging::new(&r, None, Instant::now());
    let reports: Vec<Report> = ["r1", "r2"]
        .iter()
        .map(|name| Report::new(name, 1, 1, step_key(&r), (&units(canary), &units(baseline))))
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
fn pooled_units_off_the_split_halt_the_record_with_the_reason() {
    // 5% of the units in the canary where 10% are due: 40 of 800 pooled.
    let (v, r) = verdict(20, 380);
    let Verdict::Halt(reason) = v else {
        panic!("no halt")
    };
    assert!(
        reason.starts_with(
            "sample ratio mismatch: canary 40 of 800 units (5.00%) against 10.00% expected"
        ),
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
fn pooled_units_on_the_split_do_not() {
    let (v, _) = verdict(40, 360);
    assert!(matches!(v, Verdict::Wait));
}
