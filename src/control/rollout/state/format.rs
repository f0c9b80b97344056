//! The rollout state file's format: what it holds ([`Saved`], [`Decision`]), its text with a
//! checksum of the contents, and the checks that a file which reads also makes sense (counts
//! that recording can produce, a soak and a step in range).
//!
//! Owns: the format and its meaning. Must not touch: the file system (`store`), decisions
//! (`machine`), the table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::guard::Reading;
use super::super::machine::{DecisionKind, Phase, Progress};
use crate::samples::{Tally, BINS, OUTCOME_SLOTS};

const VERSION: u32 = 1;

/// Where a rollout stood, in a decision record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub state: Phase,
    /// Index into the steps (0 is the first).
    pub step: usize,
    /// The canary's share.
    pub percent: f64,
}

/// One decision with the numbers behind it: a line of the audit log, an entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339, UTC.
    pub at: String,
    pub at_unix_ms: u64,
    pub route: String,
    pub id: String,
    pub decision: DecisionKind,
    /// `judge`, `admin`, `startup` or `reload`.
    pub trigger: String,
    /// Absent for a rollout's first decision.
    pub from: Option<Position>,
    pub to: Position,
    pub reason: String,
    pub soaked_seconds: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    pub guards: Vec<Reading>,
}

/// A rollout's state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub version: u32,
    pub route: String,
    pub id: String,
    pub state: Phase,
    pub step: usize,
    pub soaked_ms: u64,
    pub canary: SavedTally,
    pub baseline: SavedTally,
    pub wealth: BTreeMap<String, f64>,
    /// Why the rollout is halted, when it is.
    pub note: Option<String>,
    pub history: Vec<Decision>,
    /// The steps (basis points) `step` indexes, so a restart can refuse an edit of them as a
    /// reload does (see `edit::steps_edit`); empty in a file written before they were kept.
    #[serde(default)]
    pub steps: Vec<u32>,
}

/// A [`Tally`] with its histograms and outcome counters kept sparse: `[index, count]` pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTally {
    pub requests: u64,
    pub errors: u64,
    pub with_outcome: u64,
    pub outcomes: Vec<(usize, u64)>,
    pub latency: Vec<(usize, u64)>,
    pub ttfb: Vec<(usize, u64)>,
    // Added with token usage (issue 17): a state file from before has none of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttft: Vec<(usize, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inter_token: Vec<(usize, u64)>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub with_usage: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tokens: Vec<(usize, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost: Vec<(usize, u64)>,
    /// Added with the sample ratio check (issue 18): files and reports from before have none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub units: u64,
    /// A route with a segment: each segment's counts (values, then `other`). Added with
    /// segments (issue 18): files and reports from before have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SavedTally>,
    // Added with late outcomes (issue 18).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_outcomes: Vec<(usize, u64)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn sparse(v: &[u64]) -> Vec<(usize, u64)> {
    v.iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (i, *c))
        .collect()
}

fn dense(pairs: &[(usize, u64)], len: usize, what: &str) -> Result<Vec<u64>, String> {
    let mut v = vec![0; len];
    for &(i, c) in pairs {
        *v.get_mut(i)
            .ok_or_else(|| format!("{what} index {i} out of range"))? = c;
    }
    Ok(v)
}

impl From<&Tally> for SavedTally {
    fn from(t: &Tally) -> Self {
        SavedTally {
            requests: t.requests,
            errors: t.errors,
            with_outcome: t.with_outcome,
            outcomes: sparse(&t.outcomes),
            latency: sparse(&t.latency),
            ttfb: sparse(&t.ttfb),
            ttft: sparse(&t.ttft),
            inter_token: sparse(&t.inter_token),
            with_usage: t.with_usage,
            output_tokens: sparse(&t.output_tokens),
            cost: sparse(&t.cost),
            units: t.units,
            segments: t.segments.iter().map(SavedTally::from).collect(),
            late_outcomes: sparse(&t.late_outcomes),
        }
    }
}

/// The longest soak a state file may claim: the longest duration a config may give (durations
/// are capped at ten years where they are read), so anything past it was not written by cohort.
const MAX_SOAKED_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// The most decisions a state file may hold: the history cohort keeps, with room to spare.
const MAX_HISTORY: usize = 1000;

impl SavedTally {
    /// The counts, refused when recording cannot have produced them ([`Tally::impossible`]).
    pub fn restore(&self, cohort: &str) -> Result<Tally, String> {
        let t = self.dense()?;
        match t.impossible() {
            Some(why) => Err(format!("{cohort}: {why}")),
            None => Ok(t),
        }
    }

    fn dense(&self) -> Result<Tally, String> {
        Ok(Tally {
            requests: self.requests,
            errors: self.errors,
            with_outcome: self.with_outcome,
            outcomes: dense(&self.outcomes, OUTCOME_SLOTS, "outcome")?,
            latency: dense(&self.latency, BINS, "latency bin")?,
            ttfb: dense(&self.ttfb, BINS, "ttfb bin")?,
            ttft: dense(&self.ttft, BINS, "ttft bin")?,
            inter_token: dense(&self.inter_token, BINS, "inter_token bin")?,
            with_usage: self.with_usage,
            output_tokens: dense(&self.output_tokens, BINS, "output_tokens bin")?,
            cost: dense(&self.cost, BINS, "cost bin")?,
            units: self.units,
            segments: self.dense_segments()?,
            late_outcomes: dense(&self.late_outcomes, OUTCOME_SLOTS, "late outcome")?,
        })
    }

    /// The segments, at most one per value a segment may have and `other`, none of them
    /// with segments of its own.
    fn dense_segments(&self) -> Result<Vec<Tally>, String> {
        let most = crate::routing::table::segment::MAX_SEGMENT_VALUES + 1;
        if self.segments.len() > most {
            return Err(format!(
                "{} segments, more than {most}",
                self.segments.len()
            ));
        }
        self.segments
            .iter()
            .map(|s| match s.segments.is_empty() {
                true => s.dense(),
                false => Err("a segment with segments of its own".to_string()),
            })
            .collect()
    }
}

impl Saved {
    pub fn new(
        route: &str,
        id: &str,
        p: &Progress,
        note: Option<String>,
        history: Vec<Decision>,
        steps: &[u32],
    ) -> Self {
        Saved {
            version: VERSION,
            route: route.to_string(),
            id: id.to_string(),
            state: p.phase,
            step: p.step,
            soaked_ms: u64::try_from(p.soaked.as_millis()).unwrap_or(u64::MAX),
            canary: (&p.canary).into(),
            baseline: (&p.baseline).into(),
            // A wealth that is not a number would not survive JSON; it restarts at 1.
            wealth: p
                .wealth
                .iter()
                .map(|(k, w)| (k.clone(), if w.is_finite() { *w } else { 0.0 }))
                .collect(),
            note,
            history,
            steps: steps.to_vec(),
        }
    }

    /// The progress this file describes, or why it makes no sense. A file whose checksum
    /// matches can still hold counts that recording cannot produce (hand-edited and re-summed,
    /// or written by a bug): it is refused like a damaged one, never half-trusted.
    pub fn progress(&self) -> Result<Progress, String> {
        if self.wealth.values().any(|w| !w.is_finite()) {
            return Err("a guard's wealth is not a number".into());
        }
        if self.soaked_ms > MAX_SOAKED_MS {
            return Err(format!(
                "soaked for {}, longer than any soak cohort can be given",
                humantime::format_duration(Duration::from_millis(self.soaked_ms))
            ));
        }
        if self.history.len() > MAX_HISTORY {
            return Err(format!("{} decisions in its history", self.history.len()));
        }
        Ok(Progress {
            phase: self.state,
            step: self.step,
            soaked: Duration::from_millis(self.soaked_ms),
            canary: self.canary.restore("canary")?,
            baseline: self.baseline.restore("baseline")?,
            wealth: self.wealth.clone(),
            recent: Default::default(),
        })
    }

    /// [`Saved::progress`], also checked against the rollout it is resumed for: its step must
    /// be one of the steps the file says it indexes, or, in a file written before they were
    /// kept, one of the rollout's `steps`. (A file whose own steps differ from the rollout's
    /// is an edit, which `edit` refuses before anything is resumed.)
    pub fn progress_for(&self, steps: usize) -> Result<Progress, String> {
        let p = self.progress()?;
        let steps = if self.steps.is_empty() {
            steps
        } else {
            self.steps.len()
        };
        if p.step >= steps {
            return Err(format!(
                "at step {} of a rollout with {steps} steps",
                p.step + 1
            ));
        }
        Ok(p)
    }
}

/// The file's text: `{"checksum":"<xxh3 of the state's JSON, 16 hex digits>","state":{...}}`.
pub(super) fn encode(saved: &Saved) -> String {
    // Serialising plain data with string keys cannot fail.
    let body = serde_json::to_string(saved).unwrap_or_default();
    let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
    format!("{{\"checksum\":\"{sum:016x}\",\"state\":{body}}}\n")
}

pub(super) fn decode(text: &str) -> Result<Saved, String> {
    let shape = || "not a cohort rollout state file".to_string();
    let rest = text.strip_prefix("{\"checksum\":\"").ok_or_else(shape)?;
    let (hex, rest) = rest.split_at_checked(16).ok_or_else(shape)?;
    let body = rest
        .strip_prefix("\",\"state\":")
        .and_then(|r| r.trim_end().strip_suffix('}'))
        .ok_or_else(shape)?;
    let want = u64::from_str_radix(hex, 16).map_err(|_| shape())?;
    if xxhash_rust::xxh3::xxh3_64(body.as_bytes()) != want {
        return Err("checksum mismatch: edited or damaged".into());
    }
    let saved: Saved = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if saved.version != VERSION {
        return Err(format!("unknown version {}", saved.version));
    }
    Ok(saved)
}
