//! Rollout evidence: the samples the request path records for a rollout's guards, per
//! (route, cohort) atomic counters and fixed-size histograms ([`Cells`]): latency, first byte,
//! first token, the gaps between tokens, output tokens and cost per answer, and the distinct
//! keys each cohort served (`units`, for the sample ratio check); and the plain copies
//! ([`Tally`]) the judge (`control::rollout`) reads them into; on a route with a segment, the
//! same again for each segment (`segmented`).
//!
//! A leaf, so that the table (which carries the cells to the request path), the request path
//! (which writes them) and the judge (which reads them) all point down to it. Owns: the
//! histogram bin layout, the outcome slots and what one finished request adds. Must not touch:
//! statistics, decisions, files or the table; it imports nothing of the crate but `telemetry`.
//! Recording takes no lock and allocates nothing: a few relaxed atomic additions into memory
//! allocated when the rollout started.

use std::time::Duration;

use crate::telemetry::OutcomeSlot;

/// Histogram bins: exact microseconds below 8 µs, then 8 bins per power of two (each 6 to 12%
/// wide) up to about 4.5 hours; longer durations share the last bin. Counts (tokens, cost in
/// millionths of the price's currency) use the same bins, one unit per microsecond.
pub const BINS: usize = 256;

/// Outcome counters: one per allowed outcome of the route, up to 31; the last slot holds
/// `other` (and any allowed outcome past the 31st, which guards may not name).
pub const OUTCOME_SLOTS: usize = 32;

/// The slot of the route's `other` outcome.
pub const OTHER_SLOT: usize = OUTCOME_SLOTS - 1;

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
    bin_of_count(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The bin of a count (tokens, micro-units of cost): the bin of that many microseconds.
#[inline]
pub fn bin_of_count(us: u64) -> usize {
    if us < 8 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize;
    let mantissa = ((us >> (exp - 3)) & 7) as usize;
    ((exp - 2) * 8 + mantissa).min(BINS - 1)
}

/// The lower edge of bin `b`, in seconds (the last bin has no upper edge); for counts, in
/// millions of the unit.
pub fn bin_floor(b: usize) -> f64 {
    let us = if b < 8 {
        b as u64
    } else {
        (8 + (b % 8) as u64) << (b / 8 - 1)
    };
    us as f64 / 1e6
}

mod cells;
mod segmented;
mod tally;
mod units;

pub use cells::{Answer, Cells};
pub use segmented::Needs;
pub use tally::Tally;
pub use units::{unit_hash, Seen, Units};

#[cfg(test)]
mod tests;
