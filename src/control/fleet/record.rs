//! The fleet's shared record of one route's rollout: the value the engine keeps under the
//! route's key and only ever replaces by compare-and-swap, what every replica serves from,
//! and the rules by which it may change ([`propose`]) and by which two copies of it are
//! reconciled ([`merge`]).
//!
//! Owns: the record's fields and JSON form ([`encode`], [`decode`]), the transitions and
//! their refusals, the order in which states move forward. Must not touch: the engine (no
//! I/O, no clock: the time is passed in), the table, the guards' evidence (the judge decides;
//! this only checks that a decision may land). Reuses the single-replica vocabulary:
//! [`Phase`], [`DecisionKind`] and the audit log's [`Position`].
//!
//! Why state only moves forward. Every accepted write raises `version` by one, so a
//! compare-and-swap history is a chain of increasing versions. Within a rollout id the step
//! never decreases and `rolled_back` is terminal, so a lost write leaves an earlier state
//! (an advance happens later), a delayed or replayed one is refused by the store (its
//! revision is gone) or by [`propose`] (it names the step it advanced from), and [`merge`]
//! of any two copies picks the one further along, a rollback above everything of its id.
//! A replica that rolls back applies its own rollback at once, landed or not, and proposes
//! it on the record it applies (the merge of all it has seen), so what it serves never goes
//! back a step either.
//!
//! Fencing. `epoch` is the highest lease epoch any accepted write knew of; a judge's writes
//! (claim, advance) carrying a lower one are refused. A former judge is therefore fenced from
//! the moment a write with the newer epoch lands, which is why a new judge claims before it
//! decides anything: between the lease's change and that claim, the former judge's advance
//! can still land, once (it names its step), as if it had been written a moment earlier.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[path = "record_codec.rs"]
mod codec;
pub use codec::{decode, encode, Corrupt, MAX_BYTES};

use crate::control::rollout::state::Position;
use crate::control::rollout::{DecisionKind, Phase, HISTORY};
use crate::routing::table::rollout::{After, RolloutSpec};

/// The format this code writes. Readers accept any later one: a later format only adds
/// fields (which they ignore); a change that readers must understand takes a new key.
pub const FORMAT: u32 = 1;

/// The longest reason kept in the history (the audit log keeps the whole one).
const REASON_CHARS: usize = 300;

/// What a rollout id runs through, fixed by its start: every replica computes the same
/// percents from it, whatever configuration it has loaded meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    /// The canary's share at each step, in basis points.
    pub steps: Vec<u32>,
    /// The canary's share once promoted, in basis points.
    pub promoted: u32,
    pub after: Finish,
    /// How far after an advance's write it takes effect, so that every replica has seen it
    /// by then and all switch at the same moment.
    pub switch_delay_ms: u64,
}

/// What follows the last step ([`After`], as the record keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Hold,
    Promote,
}

impl From<After> for Finish {
    fn from(a: After) -> Self {
        match a {
            After::Hold => Finish::Hold,
            After::Promote => Finish::Promote,
        }
    }
}

impl Plan {
    pub fn of(spec: &RolloutSpec, switch_delay_ms: u64) -> Self {
        Plan {
            id: spec.id.clone(),
            steps: spec.steps.clone(),
            promoted: spec.promoted(),
            after: spec.after.into(),
            switch_delay_ms,
        }
    }

    /// The canary's share in `phase` at `step`, in basis points.
    fn percent(&self, phase: Phase, step: usize) -> u32 {
        match phase {
            Phase::Ramping | Phase::Paused | Phase::Held => self.steps.get(step).copied(),
            Phase::Promoted => Some(self.promoted),
            Phase::RolledBack | Phase::Halted => Some(0),
        }
        .unwrap_or(0)
    }
}

/// One decision in the record's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The record's version this decision wrote.
    pub version: u64,
    pub at_unix_ms: u64,
    pub decision: DecisionKind,
    /// The replica that wrote it, and as what (`judge`, `replica`, `admin`, `reload`).
    pub by: String,
    pub trigger: String,
    pub epoch: u64,
    pub from: Option<Position>,
    pub to: Position,
    pub reason: String,
}

/// One route's rollout as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub plan: Plan,
    pub phase: Phase,
    pub step: usize,
    /// The canary's share from `effective_at_ms` on, and before it (basis points).
    pub percent: u32,
    pub percent_before: u32,
    /// Unix ms at which `percent` takes effect.
    pub effective_at_ms: u64,
    /// The highest judge's fencing epoch any accepted write carried.
    pub epoch: u64,
    /// One more with every accepted write, across ids.
    pub version: u64,
    /// The version that started this id, and the one that put the current step's percent in
    /// force: a replica confirms a step by reporting an applied version at least this.
    pub started_version: u64,
    pub step_version: u64,
    /// Why the rollout is halted, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The last [`HISTORY`] decisions, oldest first.
    pub history: Vec<Entry>,
    /// The ids this record held before the current one, latest last (at most [`HISTORY`]):
    /// a replica whose configuration still names one of them is behind, and never starts
    /// it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<String>,
}

impl Record {
    /// The canary's share in force at `unix_ms`, in basis points.
    pub fn percent_at(&self, unix_ms: u64) -> u32 {
        if unix_ms >= self.effective_at_ms {
            self.percent
        } else {
            self.percent_before
        }
    }

    pub fn position(&self) -> Position {
        Position {
            state: self.phase,
            step: self.step,
            percent: f64::from(self.percent) / 100.0,
        }
    }

    /// Where state only moves forward: a later start, then a rollback, then the step, then
    /// the version (see [`merge`]).
    fn rank(&self) -> (u64, bool, usize, u64) {
        (
            self.started_version,
            self.phase == Phase::RolledBack,
            self.step,
            self.version,
        )
    }
}

/// An asked-for change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new rollout id at its first step; refused for the id already in the record.
    Start(Plan),
    /// A new judge stamps its epoch, fencing every older one before it decides anything.
    Claim,
    /// The judge's: the step `from` passed. Lands only while ramping at `from`, once the step
    /// is in force and every live replica has confirmed it (`confirmed`: replica -> applied
    /// version).
    Advance {
        from: usize,
        live: BTreeSet<String>,
        confirmed: BTreeMap<String, u64>,
    },
    Pause,
    Resume,
    Promote,
    /// From anyone, at any epoch, for the id its evidence is about.
    Rollback {
        id: String,
    },
    /// The state cannot be trusted: the canary at 0% until an operator acts. Unlike a single
    /// replica's halt, it keeps the step (a resume returns to it), so the step never goes
    /// back within an id.
    Halt,
}

/// A change with who asks for it and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub change: Change,
    /// The writing replica's id, and the trigger the history records.
    pub by: String,
    pub trigger: String,
    pub reason: String,
}

/// Why a change does not land.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("no rollout record yet")]
    NoRecord,
    #[error("rollout {0:?} is already the record's; change its id to start a new one")]
    SameId(String),
    #[error("the record is rollout {current:?}, not {asked:?}")]
    OtherId { current: String, asked: String },
    #[error("rollout {0:?} was rolled back; change its id to start a new one")]
    RolledBack(String),
    #[error("fenced: epoch {writer} is older than the record's {record}")]
    Fenced { writer: u64, record: u64 },
    #[error("cannot {what} a rollout that is {phase}")]
    Phase { what: &'static str, phase: Phase },
    #[error("the record is at step {at}, not {from}")]
    Moved { from: usize, at: usize },
    #[error("step {step} takes effect at {at_ms}, not yet")]
    NotInForce { step: usize, at_ms: u64 },
    #[error("not every live replica serves the step yet: {0:?}")]
    Unconfirmed(Vec<String>),
    #[error("no live replica serves the step")]
    NobodyLive,
    #[error("the plan has no steps")]
    NoSteps,
}

/// The record after `op`, written by a replica whose fencing epoch is `epoch` (the highest
/// lease epoch it knows; the judge's own), at `now_ms` (unix ms); or why it is refused.
pub fn propose(
    current: Option<&Record>,
    op: Op,
    epoch: u64,
    now_ms: u64,
) -> Result<Record, Refused> {
    let Op {
        change,
        by,
        trigger,
        reason,
    } = op;
    let author = Author {
        by,
        trigger,
        reason,
    };
    let Some(cur) = current else {
        return match change {
            Change::Start(plan) => start(None, plan, author, epoch, now_ms),
            _ => Err(Refused::NoRecord),
        };
    };
    if cur.phase == Phase::RolledBack && !matches!(change, Change::Start(_)) {
        return Err(Refused::RolledBack(cur.plan.id.clone()));
    }
    let fenced = || {
        (epoch < cur.epoch).then_some(Refused::Fenced {
            writer: epoch,
            record: cur.epoch,
        })
    };
    let phase_is = |what, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Refused::Phase {
                what,
                phase: cur.phase,
            })
        }
    };
    let mut next = cur.clone();
    next.version = cur.version + 1;
    next.epoch = cur.epoch.max(epoch);
    let delayed = now_ms.saturating_add(cur.plan.switch_delay_ms);
    let kind = match change {
        Change::Start(plan) => return start(Some(cur), plan, author, epoch, now_ms),
        Change::Claim => {
            if let Some(f) = fenced() {
                return Err(f);
            }
            return Ok(next);
        }
        Change::Advance {
            from,
            live,
            confirmed,
        } => {
            if let Some(f) = fenced() {
                return Err(f);
            }
            phase_is("advance", cur.phase == Phase::Ramping)?;
            if from != cur.step {
                return Err(Refused::Moved { from, at: cur.step });
            }
            if now_ms < cur.effective_at_ms {
                return Err(Refused::NotInForce {
                    step: cur.step,
                    at_ms: cur.effective_at_ms,
                });
            }
            if live.is_empty() {
                return Err(Refused::NobodyLive);
            }
            let missing: Vec<String> = live
                .into_iter()
                .filter(|r| confirmed.get(r).is_none_or(|v| *v < cur.step_version))
                .collect();
            if !missing.is_empty() {
                return Err(Refused::Unconfirmed(missing));
            }
            let kind = if cur.step + 1 < cur.plan.steps.len() {
                next.step = cur.step + 1;
                DecisionKind::Advance
            } else {
                match cur.plan.after {
                    Finish::Hold => DecisionKind::Hold,
                    Finish::Promote => DecisionKind::Promote,
                }
            };
            next.phase = match kind {
                DecisionKind::Advance => Phase::Ramping,
                DecisionKind::Hold => Phase::Held,
                _ => Phase::Promoted,
            };
            schedule(&mut next, cur, delayed, now_ms);
            kind
        }
        Change::Pause => {
            phase_is("pause", cur.phase == Phase::Ramping)?;
            next.phase = Phase::Paused;
            DecisionKind::Pause
        }
        Change::Resume => {
            phase_is("resume", matches!(cur.phase, Phase::Paused | Phase::Halted))?;
            next.phase = Phase::Ramping;
            next.note = None;
            if cur.phase == Phase::Halted {
                // Back from 0%: the step's share returns together, and is confirmed anew.
                schedule(&mut next, cur, delayed, now_ms);
            }
            DecisionKind::Resume
        }
        Change::Promote => {
            phase_is("promote", cur.phase != Phase::Promoted)?;
            next.phase = Phase::Promoted;
            schedule(&mut next, cur, delayed, now_ms);
            DecisionKind::Promote
        }
        Change::Rollback { id } => {
            if id != cur.plan.id {
                return Err(Refused::OtherId {
                    current: cur.plan.id.clone(),
                    asked: id,
                });
            }
            next.phase = Phase::RolledBack;
            // At once: a rollback waits for nobody.
            schedule(&mut next, cur, now_ms, now_ms);
            DecisionKind::Rollback
        }
        Change::Halt => {
            phase_is("halt", cur.phase != Phase::Halted)?;
            next.phase = Phase::Halted;
            next.note = Some(bounded(&author.reason));
            schedule(&mut next, cur, now_ms, now_ms);
            DecisionKind::Halt
        }
    };
    let entry = Entry {
        version: next.version,
        at_unix_ms: now_ms,
        decision: kind,
        by: author.by,
        trigger: author.trigger,
        epoch,
        from: Some(cur.position()),
        to: next.position(),
        reason: bounded(&author.reason),
    };
    push(&mut next.history, entry);
    Ok(next)
}

/// Who writes a change, as the history records it.
struct Author {
    by: String,
    trigger: String,
    reason: String,
}

/// `next`'s percent (from its phase and step) in force from `at_ms`, what was in force at
/// `now_ms` until then.
fn schedule(next: &mut Record, cur: &Record, at_ms: u64, now_ms: u64) {
    next.percent_before = cur.percent_at(now_ms);
    next.percent = next.plan.percent(next.phase, next.step);
    next.effective_at_ms = at_ms;
    next.step_version = next.version;
}

fn start(
    current: Option<&Record>,
    plan: Plan,
    author: Author,
    epoch: u64,
    now_ms: u64,
) -> Result<Record, Refused> {
    if plan.steps.is_empty() {
        return Err(Refused::NoSteps);
    }
    if let Some(cur) = current.filter(|c| c.plan.id == plan.id) {
        return Err(Refused::SameId(cur.plan.id.clone()));
    }
    let version = current.map_or(1, |c| c.version + 1);
    let mut past = current.map_or_else(Vec::new, |c| c.past.clone());
    if let Some(c) = current {
        past.retain(|id| *id != c.plan.id);
        past.push(c.plan.id.clone());
        if past.len() > HISTORY {
            past.drain(..past.len() - HISTORY);
        }
    }
    let mut r = Record {
        format: FORMAT,
        percent: plan.percent(Phase::Ramping, 0),
        percent_before: current.map_or(0, |c| c.percent_at(now_ms)),
        effective_at_ms: now_ms.saturating_add(plan.switch_delay_ms),
        plan,
        phase: Phase::Ramping,
        step: 0,
        epoch: current.map_or(epoch, |c| c.epoch.max(epoch)),
        version,
        started_version: version,
        step_version: version,
        note: None,
        history: Vec::new(),
        past,
    };
    let entry = Entry {
        version,
        at_unix_ms: now_ms,
        decision: DecisionKind::Start,
        by: author.by,
        trigger: author.trigger,
        epoch,
        from: None,
        to: r.position(),
        reason: bounded(&author.reason),
    };
    r.history.push(entry);
    Ok(r)
}

fn push(history: &mut Vec<Entry>, e: Entry) {
    history.push(e);
    if history.len() > HISTORY {
        history.drain(..history.len() - HISTORY);
    }
}

fn bounded(reason: &str) -> String {
    match reason.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_string(),
    }
}

/// The copy further along of two: the one whose id started later; within an id a rollback
/// above everything, then the higher step, then the higher version. A total order (ties
/// fall to the text), so merging copies in any order, any number of times, gives the same.
pub fn merge(a: Record, b: Record) -> Record {
    match a.rank().cmp(&b.rank()) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        // Equal copies are the usual tie (a watch delivering what was read): no text needed.
        std::cmp::Ordering::Equal if a == b || encode(&a) >= encode(&b) => a,
        std::cmp::Ordering::Equal => b,
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
pub(super) mod tests;

#[cfg(test)]
#[path = "record_props.rs"]
mod props;
