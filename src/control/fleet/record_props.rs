//! The record under a simulated compare-and-swap store (a value and a revision), written by
//! interleaved writers from cached, possibly stale reads: the judge of the lease's epoch, a
//! stale judge of the epoch before, replicas rolling back, operators; with lost writes,
//! replayed ones, conflicts, and watch deliveries that come late, twice or out of order; a
//! replica's own rollback applies there at once, landed or not.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::tests::{op, plan};
use super::*;

const WRITERS: usize = 4;
const REPLICAS: usize = 3;

#[derive(Debug, Clone, Copy)]
enum What {
    JudgeAdvance,
    StaleAdvance,
    Claim,
    StaleClaim,
    Rollback(u64),
    Pause,
    Resume,
    Promote,
    Halt,
    StartNew,
}

#[derive(Debug, Clone)]
enum Act {
    Read(usize),
    Write {
        w: usize,
        what: What,
        lost: bool,
    },
    Replay(usize),
    Deliver {
        replica: usize,
        stored: usize,
    },
    /// The watch's usual case: the store's current value.
    DeliverLatest(usize),
    Confirm(usize),
    /// Every replica applies the current value and confirms it.
    Heartbeats,
    MoveLease,
    Tick(u64),
}

fn what() -> impl Strategy<Value = What> {
    prop_oneof![
        6 => Just(What::JudgeAdvance),
        3 => Just(What::StaleAdvance),
        1 => Just(What::Claim),
        1 => Just(What::StaleClaim),
        1 => (0u64..6).prop_map(What::Rollback),
        1 => Just(What::Pause),
        1 => Just(What::Resume),
        1 => Just(What::Promote),
        1 => Just(What::Halt),
        1 => Just(What::StartNew),
    ]
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => (0..WRITERS).prop_map(Act::Read),
        6 => (0..WRITERS, what(), proptest::bool::weighted(0.2))
            .prop_map(|(w, what, lost)| Act::Write { w, what, lost }),
        2 => (0usize..64).prop_map(Act::Replay),
        3 => (0..REPLICAS, 0usize..64).prop_map(|(replica, stored)| Act::Deliver { replica, stored }),
        4 => (0..REPLICAS).prop_map(Act::DeliverLatest),
        4 => (0..REPLICAS).prop_map(Act::Confirm),
        3 => Just(Act::Heartbeats),
        1 => Just(Act::MoveLease),
        3 => (0u64..3_000).prop_map(Act::Tick),
    ]
}

/// The store, its writers' cached reads, the replicas' applied records.
struct World {
    value: Record,
    revision: u64,
    /// Every value the store held, in order, with the epoch and change that wrote it.
    stored: Vec<(Record, u64, What)>,
    views: Vec<(Record, u64)>,
    /// Writes sent (value, expected revision, epoch, change), for replays.
    sent: Vec<(Record, u64, u64, What)>,
    applied: Vec<Record>,
    confirmed: BTreeMap<String, u64>,
    lease: u64,
    now: u64,
    ids: u32,
}

impl World {
    fn new() -> Self {
        let first = propose(None, op(Change::Start(plan("a0"))), 1, 1_000).unwrap();
        World {
            value: first.clone(),
            revision: 1,
            stored: vec![(first.clone(), 1, What::StartNew)],
            views: vec![(first.clone(), 1); WRITERS],
            sent: Vec::new(),
            applied: vec![first; REPLICAS],
            confirmed: BTreeMap::new(),
            lease: 1,
            now: 1_000,
            ids: 0,
        }
    }

    fn change(&mut self, view: &Record, what: What) -> (Change, u64) {
        let live = (0..REPLICAS).map(|r| format!("r{r}")).collect();
        let judge = |from| Change::Advance {
            from,
            live,
            confirmed: self.confirmed.clone(),
        };
        let stale = self.lease.saturating_sub(1);
        match what {
            What::JudgeAdvance => (judge(view.step), self.lease),
            What::StaleAdvance => (judge(view.step), stale),
            What::Claim => (Change::Claim, self.lease),
            What::StaleClaim => (Change::Claim, stale),
            What::Rollback(e) => (
                Change::Rollback {
                    id: view.plan.id.clone(),
                },
                // Nobody knows of an epoch the lease has not reached.
                e.min(self.lease),
            ),
            What::Pause => (Change::Pause, 0),
            What::Resume => (Change::Resume, 0),
            What::Promote => (Change::Promote, 0),
            What::Halt => (Change::Halt, 0),
            What::StartNew => {
                self.ids += 1;
                (Change::Start(plan(&format!("a{}", self.ids))), 0)
            }
        }
    }

    /// A compare-and-swap: lands only on the revision it was proposed from.
    fn cas(&mut self, value: Record, expected: u64, epoch: u64, what: What) -> bool {
        if expected != self.revision {
            return false;
        }
        self.check_landing(&value, epoch, what);
        self.value = value.clone();
        self.revision += 1;
        self.stored.push((value, epoch, what));
        true
    }

    /// What may land on the current value.
    fn check_landing(&self, next: &Record, epoch: u64, what: What) {
        let cur = &self.value;
        if matches!(what, What::JudgeAdvance | What::StaleAdvance) && next.version > cur.version {
            // Stale: older than an epoch the store already carries (a new judge's claim or
            // any write that knew of the new lease).
            assert!(
                epoch >= cur.epoch,
                "an advance of epoch {epoch} over {}",
                cur.epoch
            );
            if next.step != cur.step || next.phase != cur.phase {
                for r in &self.applied {
                    assert!(
                        r.version >= cur.step_version,
                        "advanced past an unconfirmed replica"
                    );
                }
            }
        }
    }

    fn step(&mut self, a: &Act) {
        match *a {
            Act::Read(w) => {
                self.views[w] = (self.value.clone(), self.revision);
                if w < REPLICAS {
                    self.step(&Act::DeliverLatest(w));
                }
            }
            Act::Write { w, what, lost } => {
                let (mut view, rev) = self.views[w].clone();
                if matches!(what, What::Rollback(_)) && w < REPLICAS {
                    // A replica rolls back the record it applies, the newest it has seen.
                    view = merge(view, self.applied[w].clone());
                }
                let (change, epoch) = self.change(&view, what);
                let fresh = rev == self.revision && view == self.value;
                let is_rollback = matches!(change, Change::Rollback { .. });
                match propose(Some(&view), op(change), epoch, self.now) {
                    Ok(next) => {
                        // A replica's own rollback takes effect there at once, whether or
                        // not the write lands (the first writers are the replicas).
                        if is_rollback && w < REPLICAS {
                            let after = merge(self.applied[w].clone(), next.clone());
                            check_forward(&self.applied[w], &after);
                            self.applied[w] = after;
                        }
                        self.sent.push((next.clone(), rev, epoch, what));
                        if !lost && !self.cas(next, rev, epoch, what) {
                            self.views[w] = (self.value.clone(), self.revision);
                        }
                    }
                    Err(why) => {
                        // A rollback read fresh is refused only when one already landed.
                        if is_rollback && fresh {
                            assert_eq!(why, Refused::RolledBack(view.plan.id.clone()));
                        }
                    }
                }
            }
            Act::Replay(k) => {
                if let Some((v, rev, epoch, what)) =
                    self.sent.get(k % self.sent.len().max(1)).cloned()
                {
                    self.cas(v, rev, epoch, what);
                }
            }
            Act::Deliver { replica, stored } => {
                let (v, ..) = self.stored[stored % self.stored.len()].clone();
                let before = self.applied[replica].clone();
                let after = merge(before.clone(), v);
                check_forward(&before, &after);
                self.applied[replica] = after;
            }
            Act::DeliverLatest(r) => {
                let after = merge(self.applied[r].clone(), self.value.clone());
                check_forward(&self.applied[r], &after);
                self.applied[r] = after;
            }
            Act::Confirm(r) => {
                self.confirmed
                    .insert(format!("r{r}"), self.applied[r].version);
            }
            Act::Heartbeats => {
                for r in 0..REPLICAS {
                    self.step(&Act::DeliverLatest(r));
                    self.step(&Act::Confirm(r));
                }
            }
            Act::MoveLease => self.lease += 1,
            Act::Tick(ms) => self.now += ms,
        }
    }
}

/// From `before` to `after` of the same id: never out of a rollback, never a step back.
fn check_forward(before: &Record, after: &Record) {
    if before.plan.id == after.plan.id {
        assert!(
            before.phase != Phase::RolledBack || after.phase == Phase::RolledBack,
            "a rollback of {} undone: {} then {}",
            before.plan.id,
            before.phase,
            after.phase
        );
        assert!(
            after.step >= before.step,
            "step {} then {}",
            before.step,
            after.step
        );
        assert!(after.version >= before.version);
    } else {
        assert!(
            after.started_version > before.started_version,
            "an older id came back"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_interleaving_of_writes_losses_or_replays_undoes_a_rollback(
        acts in proptest::collection::vec(act(), 1..120),
    ) {
        let mut world = World::new();
        for a in &acts {
            world.step(a);
        }
        // The store's history: versions increase; within an id a rollback stays and the step
        // never decreases; each id appears in one run.
        let mut seen_ids = Vec::<String>::new();
        for pair in world.stored.windows(2) {
            let (before, after) = (&pair[0].0, &pair[1].0);
            prop_assert!(after.version > before.version);
            check_forward(before, after);
            if before.plan.id != after.plan.id {
                prop_assert!(!seen_ids.contains(&after.plan.id), "{} came back", after.plan.id);
                seen_ids.push(before.plan.id.clone());
                prop_assert_eq!(after.history.last().map(|e| e.decision), Some(DecisionKind::Start));
            }
        }
        for r in &world.applied {
            let own = r.phase == Phase::RolledBack && world.sent.iter().any(|(s, ..)| s == r);
            prop_assert!(own || world.stored.iter().any(|(s, ..)| s == r), "a replica applied a value never stored");
        }
        // Whatever order copies arrive in, and however often: merge is a join (over the
        // latest stored and sent copies, where ranks are close).
        let copies: Vec<&Record> = world
            .stored
            .iter()
            .rev()
            .take(3)
            .map(|(r, ..)| r)
            .chain(world.sent.iter().rev().take(3).map(|(r, ..)| r))
            .collect();
        for a in &copies {
            prop_assert_eq!(&merge((*a).clone(), (*a).clone()), *a);
            for b in &copies {
                let ab = merge((*a).clone(), (*b).clone());
                prop_assert_eq!(&ab, &merge((*b).clone(), (*a).clone()));
                for c in copies.iter().rev().take(2) {
                    prop_assert_eq!(
                        merge(ab.clone(), (*c).clone()),
                        merge((*a).clone(), merge((*b).clone(), (*c).clone()))
                    );
                }
            }
        }
    }
}
