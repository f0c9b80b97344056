//! Rollout evidence: the samples the request path records for a rollout's guards, per
//! (route, cohort) atomic counters and fixed-size latency histograms ([`Cells`]), and the plain
//! copies ([`Tally`]) the judge (`control::rollout`) reads them into.
//!
//! A leaf, so that the table (which carries the cells to the request path), the request path
//! (which writes them) and the judge (which reads them) all point down to it. Owns: the
//! histogram bin layout, the outcome slots and what one finished request adds. Must not touch:
//! statistics, decisions, files or the table; it imports nothing of the crate but `telemetry`.
//! Recording takes no lock and allocates nothing: a few relaxed atomic additions into memory
//! allocated when the rollout started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry::OutcomeSlot;

/// Latency bins: exact microseconds below 8 µs, then 8 bins per power of two (each 6 to 12%
/// wide) up to about 4.5 hours; longer durations share the last bin.
pub const BINS: usize = 256;

/// Outcome counters: one per allowed outcome of the route, up to 31; the last slot holds
/// `other` (and any allowed outcome past the 31st, which guards may not name).
pub const OUTCOME_SLOTS: usize = 32;

/// The slot of the route's `other` outcome.
pub const OTHER_SLOT: usize = OUTCOME_SLOTS - 1;

/// What the request path records for one (route, cohort) under a rollout. Shared by every table
/// that serves the rollout, so counts survive reloads; the judge only ever reads it.
pub struct Cells {
    requests: AtomicU64,
    errors: AtomicU64,
    with_outcome: AtomicU64,
    outcomes: [AtomicU64; OUTCOME_SLOTS],
    latency: [AtomicU64; BINS],
    ttfb: [AtomicU64; BINS],
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            with_outcome: AtomicU64::new(0),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            ttfb: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The outcome counter index of a backend's verdict.
#[inline]
pub fn outcome_index(slot: OutcomeSlot) -> usize {
    match slot {
        OutcomeSlot::Allowed(i) => i.min(OTHER_SLOT),
        OutcomeSlot::Other => OTHER_SLOT,
    }
}

/// The bin of a duration (see [`BINS`]).
#[inline]
pub fn bin_of(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if us < 8 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize;
    let mantissa = ((us >> (exp - 3)) & 7) as usize;
    ((exp - 2) * 8 + mantissa).min(BINS - 1)
}

/// The lower edge of bin `b`, in seconds (the last bin has no upper edge).
pub fn bin_floor(b: usize) -> f64 {
    let us = if b < 8 {
        b as u64
    } else {
        (8 + (b % 8) as u64) << (b / 8 - 1)
    };
    us as f64 / 1e6
}

impl Cells {
    /// Records one answered request. `status` is what the client got; `cut` says the upstream
    /// body failed after the head; `ttfb` is absent when no body byte arrived. Errors (5xx
    /// and cut bodies) count in the error rate only: their latency is not a service time. 1xx
    /// (upgraded connections) count as requests, without latency.
    #[inline]
    pub fn record(
        &self,
        status: u16,
        cut: bool,
        outcome: Option<OutcomeSlot>,
        ttfb: Option<Duration>,
        duration: Duration,
    ) {
        // Each count is added after the counts it is part of, with Release, and
        // [`Cells::snapshot`] reads in the opposite order with Acquire: a snapshot that sees
        // an error, an outcome or a time also sees its request, so no snapshot holds more
        // errors than requests ([`Tally::impossible`]). Free on x86, where every atomic add
        // is already a full barrier.
        self.requests.fetch_add(1, Ordering::Release);
        if let Some(slot) = outcome {
            self.with_outcome.fetch_add(1, Ordering::Release);
            self.outcomes[outcome_index(slot)].fetch_add(1, Ordering::Release);
        }
        if status >= 500 || cut {
            self.errors.fetch_add(1, Ordering::Release);
            return;
        }
        if status >= 200 {
            self.latency[bin_of(duration)].fetch_add(1, Ordering::Release);
            if let Some(t) = ttfb {
                self.ttfb[bin_of(t)].fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Records a request whose client left before the response head: a failed turn for the
    /// error rate and, since the client waited at least as long as any threshold, an answer
    /// slower than every one for the latency guards (the last bin). Ordered as in
    /// [`Cells::record`].
    #[inline]
    pub fn record_abandoned(&self) {
        self.requests.fetch_add(1, Ordering::Release);
        self.errors.fetch_add(1, Ordering::Release);
        self.latency[BINS - 1].fetch_add(1, Ordering::Release);
        self.ttfb[BINS - 1].fetch_add(1, Ordering::Release);
    }

    /// A copy of every counter, read parts before wholes (see [`Cells::record`]): a request
    /// recorded meanwhile may show in its wholes and not yet in its parts, never the reverse,
    /// and is complete in the next snapshot.
    pub fn snapshot(&self) -> Tally {
        let read = |a: &[AtomicU64]| a.iter().map(|c| c.load(Ordering::Acquire)).collect();
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
        }
    }
}

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

    fn zip(&self, other: &Tally, f: fn(u64, u64) -> u64) -> Tally {
        let each = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
        Tally {
            requests: f(self.requests, other.requests),
            errors: f(self.errors, other.errors),
            with_outcome: f(self.with_outcome, other.with_outcome),
            outcomes: each(&self.outcomes, &other.outcomes),
            latency: each(&self.latency, &other.latency),
            ttfb: each(&self.ttfb, &other.ttfb),
        }
    }

    /// Why these counts cannot have come from recording (see [`Cells::record`]), if they
    /// cannot: errors, answers with an outcome and timed answers are each a subset of the
    /// requests (timed answers and errors may overlap: an abandoned request is both), the outcome slots' counts of the answers with an outcome, and first-byte times
    /// of the timed answers. Sums are taken wide so that counts near `u64::MAX` cannot wrap
    /// into something plausible.
    pub fn impossible(&self) -> Option<String> {
        let sum = |v: &[u64]| v.iter().map(|&c| u128::from(c)).sum::<u128>();
        let (requests, errors) = (u128::from(self.requests), u128::from(self.errors));
        let with_outcome = u128::from(self.with_outcome);
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
            (sum(&self.latency), requests, "timed answers", "requests"),
            (
                sum(&self.ttfb),
                sum(&self.latency),
                "first-byte times",
                "timed answers",
            ),
        ];
        checks
            .into_iter()
            .find(|(part, whole, ..)| part > whole)
            .map(|(part, whole, what, of)| format!("{part} {what} but {whole} {of}"))
    }

    /// Whether every vector has its fixed length (a restored tally is checked with this).
    pub fn well_formed(&self) -> bool {
        self.outcomes.len() == OUTCOME_SLOTS
            && self.latency.len() == BINS
            && self.ttfb.len() == BINS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_contiguous_and_increasing() {
        assert_eq!(bin_of(Duration::ZERO), 0);
        assert_eq!(bin_of(Duration::from_micros(7)), 7);
        assert_eq!(bin_of(Duration::from_micros(8)), 8);
        assert_eq!(bin_of(Duration::from_micros(15)), 15);
        assert_eq!(bin_of(Duration::from_micros(16)), 16);
        let mut last = 0;
        for us in (0..5_000_000u64).step_by(37) {
            let b = bin_of(Duration::from_micros(us));
            assert!(b >= last, "{us} µs went back to bin {b}");
            assert!(
                bin_floor(b) <= us as f64 / 1e6 + 1e-12,
                "{us} below its bin"
            );
            assert!(bin_floor(b + 1) > us as f64 / 1e6, "{us} past its bin");
            last = b;
        }
        assert_eq!(bin_of(Duration::from_secs(1_000_000)), BINS - 1);
        // Bins past 8 µs are at most 12.5% wide.
        for b in 8..BINS - 1 {
            let (lo, hi) = (bin_floor(b), bin_floor(b + 1));
            assert!(hi > lo && (hi - lo) / lo <= 0.125 + 1e-9, "bin {b}");
        }
    }

    #[test]
    fn recording_counts_errors_outcomes_and_latency() {
        let c = Cells::default();
        let ms = Duration::from_millis;
        c.record(
            200,
            false,
            Some(OutcomeSlot::Allowed(1)),
            Some(ms(3)),
            ms(9),
        );
        c.record(503, false, Some(OutcomeSlot::Other), Some(ms(1)), ms(1));
        c.record(200, true, None, Some(ms(1)), ms(1));
        c.record(101, false, None, None, ms(500));
        let t = c.snapshot();
        assert_eq!((t.requests, t.errors, t.with_outcome), (4, 2, 2));
        assert_eq!((t.outcomes[1], t.outcomes[OTHER_SLOT]), (1, 1));
        assert_eq!(t.latency.iter().sum::<u64>(), 1);
        assert_eq!(t.latency[bin_of(ms(9))], 1);
        assert_eq!(t.ttfb[bin_of(ms(3))], 1);
        assert_eq!(outcome_index(OutcomeSlot::Allowed(400)), OTHER_SLOT);
        let d = t.since(&Tally::default());
        assert_eq!(d, t);
        assert_eq!(t.plus(&t).requests, 8);
        assert!(t.well_formed());
    }
}
