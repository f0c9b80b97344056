use std::collections::{BTreeMap, BTreeSet};

use super::*;

pub(super) const DELAY: u64 = 2_000;

pub(super) fn plan(id: &str) -> Plan {
    Plan {
        id: id.into(),
        steps: vec![100, 1_000, 5_000],
        promoted: 10_000,
        after: Finish::Promote,
        switch_delay_ms: DELAY,
    }
}

pub(super) fn op(change: Change) -> Op {
    Op {
        change,
        by: "r1".into(),
        trigger: "judge".into(),
        reason: "because".into(),
    }
}

/// An advance from `from` confirmed by every one of `live`.
pub(super) fn advance(from: usize, version: u64, live: &[&str]) -> Change {
    Change::Advance {
        from,
        live: live.iter().map(|r| r.to_string()).collect(),
        confirmed: live.iter().map(|r| (r.to_string(), version)).collect(),
    }
}

pub(super) fn started() -> Record {
    propose(None, op(Change::Start(plan("a"))), 1, 1_000).unwrap()
}

/// `r` advanced from its step by epoch 1, `DELAY` after it took effect.
fn advanced(r: &Record) -> Record {
    let c = advance(r.step, r.step_version, &["r1", "r2"]);
    propose(Some(r), op(c), 1, r.effective_at_ms + DELAY).unwrap()
}

#[test]
fn a_start_schedules_the_first_step_and_another_id_replaces_the_record() {
    let r = started();
    assert_eq!(
        (r.phase, r.step, r.version, r.epoch),
        (Phase::Ramping, 0, 1, 1)
    );
    assert_eq!(
        (r.percent_before, r.percent, r.effective_at_ms),
        (0, 100, 3_000)
    );
    assert_eq!((r.percent_at(2_999), r.percent_at(3_000)), (0, 100));
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].decision, DecisionKind::Start);
    assert_eq!(r.history[0].from, None);

    let same = propose(Some(&r), op(Change::Start(plan("a"))), 1, 5_000);
    assert_eq!(same, Err(Refused::SameId("a".into())));
    let b = propose(Some(&r), op(Change::Start(plan("b"))), 0, 5_000).unwrap();
    assert_eq!(
        (b.plan.id.as_str(), b.version, b.started_version),
        ("b", 2, 2)
    );
    // The old id's share holds until the new one's takes effect; the epoch never goes back.
    assert_eq!((b.percent_before, b.percent, b.epoch), (100, 100, 1));
    let empty = Plan {
        steps: vec![],
        ..plan("c")
    };
    assert_eq!(
        propose(Some(&r), op(Change::Start(empty)), 1, 0),
        Err(Refused::NoSteps)
    );
}

#[test]
fn an_advance_lands_once_in_force_and_confirmed_and_schedules_the_next_step() {
    let r = started();
    let a = advanced(&r);
    assert_eq!(
        (a.phase, a.step, a.version, a.step_version),
        (Phase::Ramping, 1, 2, 2)
    );
    assert_eq!((a.percent_before, a.percent), (100, 1_000));
    assert_eq!(a.effective_at_ms, 5_000 + DELAY);
    let e = a.history.last().unwrap();
    assert_eq!(
        (e.decision, e.version, e.epoch),
        (DecisionKind::Advance, 2, 1)
    );
    assert_eq!(e.from.map(|p| p.step), Some(0));
    assert_eq!(e.to.percent, 10.0);
    // Past the last step: the plan's `after`.
    let last = advanced(&advanced(&a));
    assert_eq!(
        (last.phase, last.step, last.percent),
        (Phase::Promoted, 2, 10_000)
    );
    let held = Record {
        plan: Plan {
            after: Finish::Hold,
            ..plan("a")
        },
        ..advanced(&a)
    };
    let h = advanced(&held);
    assert_eq!((h.phase, h.step, h.percent), (Phase::Held, 2, 5_000));
}

#[test]
fn an_advance_is_refused_unless_every_condition_holds() {
    let r = started();
    let at = r.effective_at_ms;
    let try_ = |c: Change, epoch, now| propose(Some(&r), op(c), epoch, now);
    assert_eq!(
        try_(advance(0, 1, &["r1"]), 0, at),
        Err(Refused::Fenced {
            writer: 0,
            record: 1
        })
    );
    assert_eq!(
        try_(advance(1, 1, &["r1"]), 1, at),
        Err(Refused::Moved { from: 1, at: 0 })
    );
    assert_eq!(
        try_(advance(0, 1, &["r1"]), 1, at - 1),
        Err(Refused::NotInForce { step: 0, at_ms: at })
    );
    assert_eq!(try_(advance(0, 1, &[]), 1, at), Err(Refused::NobodyLive));
    // r2 is live but reports an older version, r3 nothing at all.
    let c = Change::Advance {
        from: 0,
        live: ["r1", "r2", "r3"].map(String::from).into(),
        confirmed: BTreeMap::from([("r1".into(), 1), ("r2".into(), 0)]),
    };
    assert_eq!(
        try_(c, 1, at),
        Err(Refused::Unconfirmed(vec!["r2".into(), "r3".into()]))
    );
    // A confirmation from a replica that is no longer live does not matter.
    let c = Change::Advance {
        from: 0,
        live: BTreeSet::from(["r1".to_string()]),
        confirmed: BTreeMap::from([("r1".into(), 7), ("gone".into(), 0)]),
    };
    assert!(try_(c, 1, at).is_ok());
    let paused = propose(Some(&r), op(Change::Pause), 0, at).unwrap();
    assert_eq!(
        propose(Some(&paused), op(advance(0, 1, &["r1"])), 1, at),
        Err(Refused::Phase {
            what: "advance",
            phase: Phase::Paused
        })
    );
    // A later judge's epoch is accepted and fences the earlier one from then on.
    let later = try_(advance(0, 1, &["r1"]), 2, at).unwrap();
    assert_eq!(later.epoch, 2);
    assert!(matches!(
        propose(Some(&later), op(advance(1, 2, &["r1"])), 1, at + DELAY),
        Err(Refused::Fenced { .. })
    ));
}

#[test]
fn a_claim_fences_older_judges_and_changes_nothing_else() {
    let r = started();
    let c = propose(Some(&r), op(Change::Claim), 3, 2_000).unwrap();
    assert_eq!((c.epoch, c.version, c.step_version), (3, 2, 1));
    assert_eq!(
        (c.phase, c.step, c.percent, c.history.len()),
        (r.phase, 0, 100, 1)
    );
    assert_eq!(
        propose(Some(&c), op(Change::Claim), 2, 2_000),
        Err(Refused::Fenced {
            writer: 2,
            record: 3
        })
    );
    // The step's confirmations still count: a claim does not change what is served.
    assert!(propose(Some(&c), op(advance(0, 1, &["r1"])), 3, 3_000).is_ok());
}

#[test]
fn pause_resume_and_promote_act_from_any_epoch_where_the_phase_allows() {
    let r = started();
    let p = propose(Some(&r), op(Change::Pause), 0, 2_000).unwrap();
    assert_eq!(
        (p.phase, p.percent, p.effective_at_ms),
        (Phase::Paused, 100, 3_000)
    );
    assert_eq!(p.step_version, 1, "a pause changes no share");
    let phase = |what, phase| Err(Refused::Phase { what, phase });
    assert_eq!(
        propose(Some(&p), op(Change::Pause), 0, 2_000),
        phase("pause", Phase::Paused)
    );
    assert_eq!(
        propose(Some(&r), op(Change::Resume), 0, 2_000),
        phase("resume", Phase::Ramping)
    );
    let back = propose(Some(&p), op(Change::Resume), 0, 4_000).unwrap();
    assert_eq!(
        (back.phase, back.step_version, back.percent),
        (Phase::Ramping, 1, 100)
    );
    let up = propose(Some(&p), op(Change::Promote), 0, 4_000).unwrap();
    assert_eq!(
        (up.phase, up.percent_before, up.percent),
        (Phase::Promoted, 100, 10_000)
    );
    assert_eq!(up.effective_at_ms, 4_000 + DELAY);
    assert_eq!(
        propose(Some(&up), op(Change::Promote), 0, 4_000),
        phase("promote", Phase::Promoted)
    );
    assert_eq!(
        propose(None, op(Change::Pause), 0, 0),
        Err(Refused::NoRecord)
    );
}

#[test]
fn a_rollback_lands_from_anyone_at_once_and_is_terminal_for_the_id() {
    let r = advanced(&started());
    // A replica that never held the lease (epoch 0) rolls back while the step is scheduled.
    let rb = Change::Rollback { id: "a".into() };
    let b = propose(Some(&r), op(rb.clone()), 0, 5_500).unwrap();
    assert_eq!(
        (b.phase, b.step, b.percent, b.percent_before),
        (Phase::RolledBack, 1, 0, 100)
    );
    assert_eq!(
        (b.effective_at_ms, b.percent_at(5_500), b.epoch),
        (5_500, 0, 1)
    );
    assert_eq!(b.history.last().unwrap().decision, DecisionKind::Rollback);
    for c in [
        rb.clone(),
        Change::Claim,
        advance(1, 2, &["r1"]),
        Change::Pause,
        Change::Resume,
        Change::Promote,
        Change::Halt,
    ] {
        assert_eq!(
            propose(Some(&b), op(c), 9, 10_000),
            Err(Refused::RolledBack("a".into()))
        );
    }
    assert_eq!(
        propose(Some(&r), op(Change::Rollback { id: "x".into() }), 0, 5_500),
        Err(Refused::OtherId {
            current: "a".into(),
            asked: "x".into()
        })
    );
    // Only a new id moves on.
    let n = propose(Some(&b), op(Change::Start(plan("b"))), 0, 10_000).unwrap();
    assert_eq!(
        (n.plan.id.as_str(), n.phase, n.percent_before),
        ("b", Phase::Ramping, 0)
    );
    // From every phase.
    for c in [Change::Pause, Change::Promote, Change::Halt] {
        let s = propose(Some(&r), op(c), 0, 8_000).unwrap();
        let b = propose(Some(&s), op(rb.clone()), 0, 8_000).unwrap();
        assert_eq!((b.phase, b.percent), (Phase::RolledBack, 0));
    }
}

#[test]
fn a_halt_goes_to_zero_keeping_the_step_and_a_resume_returns_to_it_together() {
    let r = advanced(&started());
    let mut why = op(Change::Halt);
    why.reason = "x".repeat(1_000);
    let h = propose(Some(&r), why, 0, 8_000).unwrap();
    assert_eq!(
        (h.phase, h.step, h.percent, h.effective_at_ms),
        (Phase::Halted, 1, 0, 8_000)
    );
    assert!(h.note.as_ref().unwrap().chars().count() <= REASON_CHARS + 1);
    assert!(matches!(
        propose(Some(&h), op(Change::Halt), 0, 8_000),
        Err(Refused::Phase { .. })
    ));
    let back = propose(Some(&h), op(Change::Resume), 0, 9_000).unwrap();
    assert_eq!(
        (back.phase, back.step, back.note.as_deref()),
        (Phase::Ramping, 1, None)
    );
    assert_eq!(
        (back.percent_before, back.percent, back.effective_at_ms),
        (0, 1_000, 9_000 + DELAY)
    );
    assert_eq!(back.step_version, back.version, "to be confirmed anew");
}

#[test]
fn the_history_keeps_the_last_decisions() {
    let mut r = started();
    for i in 0..(HISTORY as u64 + 10) {
        let c = if r.phase == Phase::Paused {
            Change::Resume
        } else {
            Change::Pause
        };
        r = propose(Some(&r), op(c), 0, 2_000 + i).unwrap();
    }
    assert_eq!(r.history.len(), HISTORY);
    assert_eq!(r.history.last().unwrap().version, r.version);
    assert!(r.history.windows(2).all(|w| w[0].version < w[1].version));
}

#[test]
fn records_read_back_ignore_unknown_fields_and_refuse_nonsense() {
    let r = advanced(&started());
    let bytes = encode(&r);
    assert_eq!(decode(&bytes), Ok(r.clone()));
    // A later writer's additions are ignored.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["format"] = 2.into();
    v["lanes"] = serde_json::json!({"new": [1, 2]});
    v["history"][0]["signature"] = "abc".into();
    let later = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!((later.format, later.step, later.history.len()), (2, 1, 2));

    assert!(matches!(decode(b"{\"format\":1"), Err(Corrupt::Parse(_))));
    assert!(matches!(decode(b"[]"), Err(Corrupt::Parse(_))));
    assert!(matches!(
        decode(&vec![b' '; MAX_BYTES + 1]),
        Err(Corrupt::TooLarge(_))
    ));
    let nonsense = |f: &dyn Fn(&mut Record)| {
        let mut bad = r.clone();
        f(&mut bad);
        decode(&encode(&bad))
    };
    for f in [
        &(|b: &mut Record| b.step = 3) as &dyn Fn(&mut Record),
        &|b| b.percent = 100,
        &|b| b.format = 0,
        &|b| b.plan.steps = vec![100, 100, 200],
        &|b| b.plan.id.clear(),
        &|b| b.step_version = b.version + 1,
        &|b| b.percent_before = 10_001,
        &|b| b.history[0].version = 99,
    ] {
        assert!(
            matches!(nonsense(f), Err(Corrupt::Nonsense(_))),
            "{:?}",
            nonsense(f)
        );
    }
}

#[test]
fn merge_moves_forward_only() {
    let r = started();
    let a = advanced(&r);
    let paused = propose(Some(&a), op(Change::Pause), 0, 8_000).unwrap();
    let rolled = propose(Some(&r), op(Change::Rollback { id: "a".into() }), 0, 2_000).unwrap();
    // Within an id: the further step, then the later version; a rollback above both.
    assert_eq!(merge(r.clone(), a.clone()), a);
    assert_eq!(merge(paused.clone(), a.clone()), paused);
    assert_eq!(merge(paused.clone(), rolled.clone()), rolled);
    assert_eq!(merge(rolled.clone(), paused.clone()), rolled);
    // Across ids: the later start, whatever the older id did after.
    let b = propose(Some(&r), op(Change::Start(plan("b"))), 0, 2_000).unwrap();
    let a_late = advanced(&advanced(&a));
    assert!(a_late.version > b.version);
    assert_eq!(merge(a_late.clone(), b.clone()), b);
    assert_eq!(merge(b.clone(), rolled.clone()), b);
    // A total order: equal ranks still agree whichever comes first.
    let mut twin = a.clone();
    twin.history[1].reason = "other".into();
    assert_eq!(merge(a.clone(), twin.clone()), merge(twin, a));
}
