//! One rollout's progress as a pure state machine: the phase, the step, the soak time and the
//! step's evidence; what a block of samples does to it, what the judge decides from it, and
//! what an operator's action may do.
//!
//! Owns: the rules of progression. Must not touch: clocks (elapsed time is passed in), cells,
//! files, the table. The Monte-Carlo tests drive exactly this code.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::guard::{Reading, Status};
use super::stats::log_threshold;
use super::wealth::Wealth;
use crate::routing::table::rollout::{After, RolloutSpec};
use crate::samples::Tally;

/// About how many canary answers the recent rates are taken from.
pub const RECENT: u64 = 500;

/// The `wealth` entry that keeps the sample ratio check's ln e-value from before a restart
/// within the step (no guard's key: those hold a space).
const SRM_CARRIED: &str = "srm";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// At a step, judged, moving on when the step passes.
    Ramping,
    /// At a step, judged (a failed guard still rolls back), not moving on.
    Paused,
    /// Past the last step with `after: hold`: the canary stays there; judging has ended.
    Held,
    /// The canary has the baseline's share too; judging has ended.
    Promoted,
    /// The canary is at 0% until the rollout's id changes.
    RolledBack,
    /// The state could not be trusted (a corrupt state file), or the split is broken (a
    /// sample ratio mismatch): the canary is at 0% until an operator resumes (at the same
    /// step), promotes or rolls back.
    Halted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Ramping,
        Phase::Paused,
        Phase::Held,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Halted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ramping => "ramping",
            Phase::Paused => "paused",
            Phase::Held => "held",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Halted => "halted",
        }
    }

    /// Whether guards judge the canary in this phase.
    pub fn judged(self) -> bool {
        matches!(self, Phase::Ramping | Phase::Paused)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A new rollout (a new id) starts at its first step.
    Start,
    /// The step passed: on to the next.
    Advance,
    /// The last step passed with `after: hold`.
    Hold,
    /// The canary takes the baseline's share (the last step passed with `after: promote`, or
    /// an operator said so).
    Promote,
    /// A guard failed, or an operator said so: the canary goes to 0%.
    Rollback,
    Pause,
    Resume,
    /// The saved state could not be trusted, or the step's units show a sample ratio
    /// mismatch.
    Halt,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 8] = [
        DecisionKind::Start,
        DecisionKind::Advance,
        DecisionKind::Hold,
        DecisionKind::Promote,
        DecisionKind::Rollback,
        DecisionKind::Pause,
        DecisionKind::Resume,
        DecisionKind::Halt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Start => "start",
            DecisionKind::Advance => "advance",
            DecisionKind::Hold => "hold",
            DecisionKind::Promote => "promote",
            DecisionKind::Rollback => "rollback",
            DecisionKind::Pause => "pause",
            DecisionKind::Resume => "resume",
            DecisionKind::Halt => "halt",
        }
    }
}

/// What an operator may ask for through the admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Rollback,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "rollback" => Action::Rollback,
            _ => return None,
        })
    }
}

/// Where a rollout stands, with its current step's evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Index into the spec's steps.
    pub step: usize,
    /// Time spent judged at this step.
    pub soaked: Duration,
    pub canary: Tally,
    pub baseline: Tally,
    /// The step's answers with the older ones halved away, so they weigh about the last
    /// [`RECENT`] canary answers: what the recent parts of each guard bet on. Not saved (a
    /// restart begins it again); it only picks bets.
    pub recent: (Tally, Tally),
    /// ln of each guard's e-value in this step, by guard key, and of each of its parts (see
    /// [`Wealth`]) under `"<key> @<part>"`.
    pub wealth: BTreeMap<String, f64>,
}

impl Progress {
    /// A new rollout at its first step.
    pub fn start() -> Self {
        Progress {
            phase: Phase::Ramping,
            step: 0,
            soaked: Duration::ZERO,
            canary: Tally::default(),
            baseline: Tally::default(),
            wealth: BTreeMap::new(),
            recent: Default::default(),
        }
    }

    /// The canary's share in basis points.
    pub fn percent(&self, spec: &RolloutSpec) -> u32 {
        let at_step = || {
            let last = spec.steps.len().saturating_sub(1);
            spec.steps.get(self.step.min(last)).copied().unwrap_or(0)
        };
        match self.phase {
            Phase::Ramping | Phase::Paused | Phase::Held => at_step(),
            Phase::Promoted => spec.promoted(),
            Phase::RolledBack | Phase::Halted => 0,
        }
    }

    /// One block of answers: the soak clock and every guard's e-process move on.
    pub fn observe(
        &mut self,
        spec: &RolloutSpec,
        elapsed: Duration,
        canary: &Tally,
        baseline: &Tally,
    ) {
        if !self.phase.judged() {
            return;
        }
        self.soaked += elapsed;
        let recent = (&self.recent.0, &self.recent.1);
        for g in &spec.guards {
            let step = (&self.canary, &self.baseline);
            feed(
                &mut self.wealth,
                g,
                &g.key,
                step,
                recent,
                (canary, baseline),
            );
        }
        self.observe_segments(spec, canary, baseline);
        self.canary = self.canary.plus(canary);
        self.baseline = self.baseline.plus(baseline);
        self.recent = (self.recent.0.plus(canary), self.recent.1.plus(baseline));
        if self.recent.0.requests > 2 * RECENT {
            self.recent = (self.recent.0.halved(), self.recent.1.halved());
        }
    }

    /// Every guard's reading over the step so far.
    pub fn readings(&self, spec: &RolloutSpec) -> Vec<Reading> {
        let threshold = log_threshold(spec.alpha_per_test());
        let mut readings: Vec<Reading> = spec
            .guards
            .iter()
            .map(|g| {
                let w = self.wealth.get(&g.key).copied().unwrap_or(0.0);
                g.read(w, &self.canary, &self.baseline, spec.min_samples, threshold)
            })
            .collect();
        readings.extend(self.segment_readings(spec));
        readings
    }

    /// The sample ratio check over the step's units so far; None where it does not apply
    /// (see `srm::read`) or in a phase that is not judged.
    pub fn srm(&self, spec: &RolloutSpec) -> Option<super::srm::Srm> {
        if !self.phase.judged() {
            return None;
        }
        let canary = f64::from(self.percent(spec));
        let p = canary / f64::from(spec.promoted());
        let units = (self.canary.units, self.baseline.units);
        let carried = self.wealth.get(SRM_CARRIED).copied().unwrap_or(0.0);
        super::srm::read(units, p, spec.srm_alpha_per_step()).map(|s| s.carried(carried))
    }

    /// A new process resumes this step with empty unit slots: keys counted before would be
    /// counted again. The check's e-value so far is kept aside and the units start over;
    /// the product of the two stays a test supermartingale (see `srm`).
    pub fn carry_units(&mut self, spec: &RolloutSpec) {
        if let Some(s) = self.srm(spec) {
            self.wealth
                .insert(SRM_CARRIED.to_string(), s.statistic.min(s.threshold));
        }
        self.canary.units = 0;
        self.baseline.units = 0;
    }

    /// The judge's decision on `readings`, with its reason: roll back on a failed guard; when
    /// ramping, move on once the step has soaked, both cohorts have `min_samples` requests
    /// and every guard has been judged and passes.
    pub fn verdict(
        &self,
        spec: &RolloutSpec,
        readings: &[Reading],
    ) -> Option<(DecisionKind, String)> {
        if !self.phase.judged() {
            return None;
        }
        // Before the guards: a broken split makes their comparison meaningless.
        if let Some(s) = self.srm(spec).filter(|s| s.mismatch) {
            return Some((DecisionKind::Halt, super::srm::describe(&s)));
        }
        if let Some(r) = readings.iter().find(|r| r.status == Status::Fail) {
            return Some((
                DecisionKind::Rollback,
                format!("guard failed: {}", describe(r)),
            ));
        }
        let enough = |t: &Tally| t.requests >= spec.min_samples;
        // A step that leaves the baseline nothing cannot be compared: it passes on soak and
        // the canary's samples alone.
        let comparable = self.percent(spec) < spec.promoted();
        if self.phase != Phase::Ramping
            || self.soaked < spec.soak
            || !enough(&self.canary)
            || (comparable && (!enough(&self.baseline) || readings.iter().any(|r| !r.lets_pass())))
        {
            return None;
        }
        let kind = match (self.step + 1 < spec.steps.len(), spec.after) {
            (true, _) => DecisionKind::Advance,
            (false, After::Hold) => DecisionKind::Hold,
            (false, After::Promote) => DecisionKind::Promote,
        };
        let reason = format!(
            "step passed: soaked {}s, {} canary and {} baseline requests, every guard passing",
            self.soaked.as_secs(),
            self.canary.requests,
            self.baseline.requests
        );
        Some((kind, reason))
    }

    /// Whether an operator's action applies now, and as which decision.
    pub fn action(&self, action: Action) -> Result<DecisionKind, String> {
        match (action, self.phase) {
            (_, Phase::RolledBack) => {
                Err("the rollout was rolled back; change its id to start a new one".into())
            }
            (Action::Pause, Phase::Ramping) => Ok(DecisionKind::Pause),
            (Action::Resume, Phase::Paused | Phase::Halted) => Ok(DecisionKind::Resume),
            (Action::Promote, p) if p != Phase::Promoted => Ok(DecisionKind::Promote),
            (Action::Rollback, _) => Ok(DecisionKind::Rollback),
            (a, p) => Err(format!("cannot {} a rollout that is {p}", action_name(a))),
        }
    }

    /// Applies a decision; whether the step's evidence starts over (a new step, a new
    /// rollout, a halt or a restart from one), for which the samples must come from new
    /// cells: only requests that start after this decision belong to the new evidence.
    pub fn apply(&mut self, kind: DecisionKind) -> bool {
        match kind {
            DecisionKind::Start => *self = Progress::start(),
            DecisionKind::Advance => {
                *self = Progress {
                    step: self.step + 1,
                    ..Progress::start()
                }
            }
            DecisionKind::Hold => self.phase = Phase::Held,
            DecisionKind::Promote => self.phase = Phase::Promoted,
            DecisionKind::Rollback => self.phase = Phase::RolledBack,
            DecisionKind::Pause => self.phase = Phase::Paused,
            // Back at the step it halted at (a halt on an untrusted file is at the first),
            // with its evidence from the start.
            DecisionKind::Resume if self.phase == Phase::Halted => {
                *self = Progress {
                    step: self.step,
                    ..Progress::start()
                }
            }
            DecisionKind::Resume => {
                self.phase = Phase::Ramping;
                return false;
            }
            DecisionKind::Halt => {
                *self = Progress {
                    phase: Phase::Halted,
                    step: self.step,
                    ..Progress::start()
                }
            }
        }
        matches!(
            kind,
            DecisionKind::Start | DecisionKind::Advance | DecisionKind::Resume | DecisionKind::Halt
        )
    }
}

/// One block into the guard `g`'s wealth under `key`: its parts bet on the step's rates
/// (`step`, the evidence before the block) and on the recent ones.
pub(super) fn feed(
    wealth: &mut BTreeMap<String, f64>,
    g: &crate::routing::table::rollout::Guard,
    key: &str,
    step: (&Tally, &Tally),
    recent: (&Tally, &Tally),
    block: (&Tally, &Tally),
) {
    let mut w = wealth_of(wealth, key);
    w.bet(g.observe(0.0, step, block), g.observe(0.0, recent, block));
    for (j, part) in w.0.iter().enumerate() {
        wealth.insert(part_key(key, j), *part);
    }
    wealth.insert(key.to_string(), w.total());
}

fn part_key(key: &str, part: usize) -> String {
    format!("{key} @{part}")
}

/// A guard's parts as saved; a file without them (an older one) continues each part from
/// the guard's e-value, which keeps the mixture where it was.
fn wealth_of(saved: &BTreeMap<String, f64>, key: &str) -> Wealth {
    let total = saved.get(key).copied().unwrap_or(0.0);
    let mut w = Wealth([total; 3]);
    for (j, part) in w.0.iter_mut().enumerate() {
        if let Some(v) = saved.get(&part_key(key, j)) {
            *part = *v;
        }
    }
    w
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Promote => "promote",
        Action::Rollback => "roll back",
    }
}

/// One line on a reading, for logs and decision reasons.
pub fn describe(r: &Reading) -> String {
    let guard = match &r.segment {
        Some(segment) => format!("{} in segment {segment}", r.guard),
        None => r.guard.clone(),
    };
    if let Some(note) = &r.note {
        return format!("{guard}: {note}");
    }
    let value = |v: f64| {
        if r.guard.starts_with("latency") || r.guard.starts_with("ttfb") {
            format!("{:.1}ms", v * 1000.0)
        } else {
            format!("{:.2}%", v * 100.0)
        }
    };
    format!(
        "{}: canary {} against baseline {} (limit {}) over {} and {} samples; ln e-value {:.2} >= {:.2}",
        guard,
        value(r.canary),
        value(r.baseline),
        value(r.limit),
        r.canary_samples,
        r.baseline_samples,
        r.statistic,
        r.threshold
    )
}
