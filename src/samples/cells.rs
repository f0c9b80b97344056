//! The cells themselves: what one finished request adds, and the snapshot the judge reads.
//!
//! Owns: the atomic counters and the order they are written and read in. Must not touch:
//! anything but `super`'s bins.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use super::{bin_of, bin_of_count, outcome_index, Tally, BINS, OUTCOME_SLOTS};
use crate::telemetry::OutcomeSlot;

/// What the request path records for one (route, cohort) under a rollout. Shared by every table
/// that serves the rollout, so counts survive reloads; the judge only ever reads it.
pub struct Cells {
    requests: AtomicU64,
    errors: AtomicU64,
    with_outcome: AtomicU64,
    with_usage: AtomicU64,
    outcomes: [AtomicU64; OUTCOME_SLOTS],
    latency: [AtomicU64; BINS],
    ttfb: [AtomicU64; BINS],
    ttft: [AtomicU64; BINS],
    inter_token: [AtomicU64; BINS],
    output_tokens: [AtomicU64; BINS],
    cost: [AtomicU64; BINS],
    /// Late outcomes (posted after the turn, `control::late`) attributed to this cohort: not
    /// part of any request, so outside the request counts' order.
    late_outcomes: [AtomicU64; OUTCOME_SLOTS],
    /// Distinct keys this cohort served from its band (see `super::units`), and the epoch
    /// that marks this step's keys in the rollout's slots: new cells, a new epoch.
    units: AtomicU64,
    epoch: u16,
    /// A route with a segment: the cells of each segment (values, then `other`), written
    /// with the whole ([`Cells::record_in`]).
    pub(super) segments: Box<[Cells]>,
}

/// The last epoch handed out. 0 is never one: it is what fresh slots hold.
static EPOCHS: AtomicU16 = AtomicU16::new(0);

fn next_epoch() -> u16 {
    loop {
        let e = EPOCHS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if e != 0 {
            return e;
        }
    }
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            with_outcome: AtomicU64::new(0),
            with_usage: AtomicU64::new(0),
            outcomes: zeros(),
            latency: zeros(),
            ttfb: zeros(),
            ttft: zeros(),
            inter_token: zeros(),
            output_tokens: zeros(),
            cost: zeros(),
            units: AtomicU64::new(0),
            epoch: next_epoch(),
            segments: Box::default(),
            late_outcomes: zeros(),
        }
    }
}

/// One answered request, as the guards see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer {
    /// What the client got; `cut` says the upstream body failed after the head.
    pub status: u16,
    pub cut: bool,
    pub outcome: Option<OutcomeSlot>,
    /// Absent when no body byte arrived.
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    /// Streamed answers: until the first event, and the mean gap between consecutive
    /// events (one figure per answer, so that the guards' samples are independent answers,
    /// not the correlated gaps of one stream).
    pub ttft: Option<Duration>,
    pub gap: Option<Duration>,
    /// The answer's usage: its output tokens, and its cost in millionths of the price's
    /// currency when the upstream has a price.
    pub usage: Option<(u64, Option<u64>)>,
}

#[inline]
fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Release);
}

impl Cells {
    /// Records one answered request. Errors (5xx and cut bodies) count in the error rate
    /// only: their latency is not a service time, and their usage not an answer's. 1xx
    /// (upgraded connections) count as requests, without latency.
    #[inline]
    pub fn record(&self, a: &Answer) {
        // Each count is added after the counts it is part of, with Release, and
        // [`Cells::snapshot`] reads in the opposite order with Acquire: a snapshot that sees
        // an error, an outcome or a time also sees its request, so no snapshot holds more
        // errors than requests ([`Tally::impossible`]). Free on x86, where every atomic add
        // is already a full barrier.
        add(&self.requests);
        if let Some(slot) = a.outcome {
            add(&self.with_outcome);
            add(&self.outcomes[outcome_index(slot)]);
        }
        if a.status >= 500 || a.cut {
            add(&self.errors);
            return;
        }
        if a.status < 200 {
            return;
        }
        add(&self.latency[bin_of(a.duration)]);
        if let Some(t) = a.ttfb {
            add(&self.ttfb[bin_of(t)]);
        }
        if let Some(t) = a.ttft {
            add(&self.ttft[bin_of(t)]);
            if let Some(g) = a.gap {
                add(&self.inter_token[bin_of(g)]);
            }
        }
        if let Some((output, cost)) = a.usage {
            add(&self.with_usage);
            add(&self.output_tokens[bin_of_count(output)]);
            if let Some(c) = cost {
                add(&self.cost[bin_of_count(c)]);
            }
        }
    }

    /// Records a request whose client left before the response head: a failed turn for the
    /// error rate and, since the client waited at least as long as any threshold, an answer
    /// slower than every one for the latency guards (the last bin). Ordered as in
    /// [`Cells::record`].
    #[inline]
    pub fn record_abandoned(&self) {
        add(&self.requests);
        add(&self.errors);
        add(&self.latency[BINS - 1]);
        add(&self.ttfb[BINS - 1]);
    }

    /// Counts a unit new to the step (`super::Units::record`).
    #[inline]
    pub fn count_unit(&self) {
        self.units.fetch_add(1, Ordering::Relaxed);
    }

    /// The epoch of this step's marks in the rollout's slots.
    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// Records one late outcome of this cohort (see [`Tally::late_outcomes`]).
    pub fn record_late(&self, slot: OutcomeSlot) {
        add(&self.late_outcomes[outcome_index(slot)]);
    }

    /// A copy of every counter, read parts before wholes (see [`Cells::record`]): a request
    /// recorded meanwhile may show in its wholes and not yet in its parts, never the reverse,
    /// and is complete in the next snapshot.
    pub fn snapshot(&self) -> Tally {
        let read = |a: &[AtomicU64]| a.iter().map(|c| c.load(Ordering::Acquire)).collect();
        let cost = read(&self.cost);
        let output_tokens = read(&self.output_tokens);
        let with_usage = self.with_usage.load(Ordering::Acquire);
        let inter_token = read(&self.inter_token);
        let ttft = read(&self.ttft);
        let ttfb = read(&self.ttfb);
        let latency = read(&self.latency);
        let errors = self.errors.load(Ordering::Acquire);
        let outcomes = read(&self.outcomes);
        let with_outcome = self.with_outcome.load(Ordering::Acquire);
        Tally {
            requests: self.requests.load(Ordering::Acquire),
            errors,
            with_outcome,
            outcomes,
            latency,
            ttfb,
            ttft,
            inter_token,
            with_usage,
            output_tokens,
            cost,
            units: self.units.load(Ordering::Relaxed),
            segments: self.segments.iter().map(Cells::snapshot).collect(),
            late_outcomes: read(&self.late_outcomes),
        }
    }
}
