//! Plain copies of the cells' counts, and the arithmetic the judge does on them.
//!
//! Owns: [`Tally`] and its checks. Must not touch: the atomics (`cells`).

use super::{BINS, OUTCOME_SLOTS};

/// Counts of one cohort over some span (a judge tick, a step): plain numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    /// 5xx answers (the proxy's own 502/504 included) and bodies cut by an upstream failure.
    pub errors: u64,
    /// Answers that carried an outcome header.
    pub with_outcome: u64,
    /// Per outcome slot, [`OUTCOME_SLOTS`] long.
    pub outcomes: Vec<u64>,
    /// Request duration of successful answers, per bin, [`BINS`] long; abandoned requests
    /// in the last bin.
    pub latency: Vec<u64>,
    /// Time to first byte of successful answers, per bin, [`BINS`] long; abandoned requests
    /// that saw no byte in the last bin.
    pub ttfb: Vec<u64>,
    /// Streamed (SSE) answers' time to their first event, per bin; those abandoned before it
    /// in the last bin.
    pub ttft: Vec<u64>,
    /// Streamed answers with two events or more: the mean gap between events, per bin.
    pub inter_token: Vec<u64>,
    /// Successful answers whose usage was read.
    pub with_usage: u64,
    /// Their output tokens, per bin (one token per microsecond of the bins).
    pub output_tokens: Vec<u64>,
    /// Their cost in millionths of the price's currency, per bin, where the upstream has a
    /// price.
    pub cost: Vec<u64>,
    /// Distinct keys served from the cohort's band (the sample ratio check's units).
    pub units: u64,
    /// A route with a segment: the same counts in each segment (its values, then `other`),
    /// whose own `segments` are empty; empty without one.
    pub segments: Vec<Tally>,
    /// Late outcomes attributed to this cohort, per outcome slot ([`OUTCOME_SLOTS`] long):
    /// outcome observations of guards with `include_late`, besides the answers'.
    pub late_outcomes: Vec<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            errors: 0,
            with_outcome: 0,
            outcomes: vec![0; OUTCOME_SLOTS],
            latency: vec![0; BINS],
            ttfb: vec![0; BINS],
            ttft: vec![0; BINS],
            inter_token: vec![0; BINS],
            with_usage: 0,
            output_tokens: vec![0; BINS],
            cost: vec![0; BINS],
            units: 0,
            segments: Vec::new(),
            late_outcomes: vec![0; OUTCOME_SLOTS],
        }
    }
}

impl Tally {
    /// `self - earlier`, for counters that only grow (saturating, should they not).
    pub fn since(&self, earlier: &Tally) -> Tally {
        self.zip(earlier, u64::saturating_sub)
    }

    pub fn plus(&self, other: &Tally) -> Tally {
        self.zip(other, u64::saturating_add)
    }

    /// Every count halved (rounding down), for a tally that forgets its older samples.
    pub fn halved(&self) -> Tally {
        self.zip(self, |a, _| a / 2)
    }

    pub(super) fn zip(&self, other: &Tally, f: fn(u64, u64) -> u64) -> Tally {
        let each = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
        Tally {
            requests: f(self.requests, other.requests),
            errors: f(self.errors, other.errors),
            with_outcome: f(self.with_outcome, other.with_outcome),
            outcomes: each(&self.outcomes, &other.outcomes),
            latency: each(&self.latency, &other.latency),
            ttfb: each(&self.ttfb, &other.ttfb),
            ttft: each(&self.ttft, &other.ttft),
            inter_token: each(&self.inter_token, &other.inter_token),
            with_usage: f(self.with_usage, other.with_usage),
            output_tokens: each(&self.output_tokens, &other.output_tokens),
            cost: each(&self.cost, &other.cost),
            units: f(self.units, other.units),
            segments: super::segmented::zip_segments(&self.segments, &other.segments, f),
            late_outcomes: each(&self.late_outcomes, &other.late_outcomes),
        }
    }

    /// Why these counts cannot have come from recording (see [`super::Cells::record`]), if
    /// they cannot: errors, answers with an outcome and timed answers are each a subset of the
    /// requests (timed answers and errors may overlap: an abandoned request is both), the
    /// outcome slots' counts of the answers with an outcome, first-byte and first-token times
    /// of the timed answers, token gaps of the first-token times, answers with usage of the
    /// timed answers, and output-token and cost counts of the answers with usage. Sums are
    /// taken wide so that counts near `u64::MAX` cannot wrap into something plausible.
    pub fn impossible(&self) -> Option<String> {
        let sum = |v: &[u64]| v.iter().map(|&c| u128::from(c)).sum::<u128>();
        let (requests, errors) = (u128::from(self.requests), u128::from(self.errors));
        let with_outcome = u128::from(self.with_outcome);
        let with_usage = u128::from(self.with_usage);
        let timed = sum(&self.latency);
        let checks = [
            (errors, requests, "errors", "requests"),
            (
                with_outcome,
                requests,
                "answers with an outcome",
                "requests",
            ),
            (
                sum(&self.outcomes),
                with_outcome,
                "outcomes",
                "answers with an outcome",
            ),
            (timed, requests, "timed answers", "requests"),
            (sum(&self.ttfb), timed, "first-byte times", "timed answers"),
            (sum(&self.ttft), timed, "first-token times", "timed answers"),
            (
                sum(&self.inter_token),
                sum(&self.ttft),
                "token gaps",
                "first-token times",
            ),
            (with_usage, timed, "answers with usage", "timed answers"),
            (
                sum(&self.output_tokens),
                with_usage,
                "output-token counts",
                "answers with usage",
            ),
            (sum(&self.cost), with_usage, "costs", "answers with usage"),
        ];
        checks
            .into_iter()
            .find(|(part, whole, ..)| part > whole)
            .map(|(part, whole, what, of)| format!("{part} {what} but {whole} {of}"))
            .or_else(|| super::segmented::impossible_segment(&self.segments))
    }

    /// Whether every vector has its fixed length (a restored tally is checked with this).
    pub fn well_formed(&self) -> bool {
        self.outcomes.len() == OUTCOME_SLOTS
            && [
                &self.latency,
                &self.ttfb,
                &self.ttft,
                &self.inter_token,
                &self.output_tokens,
                &self.cost,
            ]
            .iter()
            .all(|v| v.len() == BINS)
            && self
                .segments
                .iter()
                .all(|s| s.segments.is_empty() && s.well_formed())
    }
}
