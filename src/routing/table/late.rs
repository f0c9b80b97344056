//! The validated `late_outcomes` section: the limits of `POST /outcomes` and the windows of
//! attribution and deduplication.
//!
//! Owns: the section's rules. Must not touch: the endpoint or the history (`control::late`).

use std::time::Duration;

use super::build::{err, Invalid, TableError};
use crate::config::RawLateOutcomes;

/// Bodies beyond this are refused however the file sets `max_body_bytes`: the admin listener
/// holds a whole body in memory while it parses it.
pub const MAX_BODY_CEILING: u64 = 64 * 1024 * 1024;
/// A cap on remembered ids beyond this would let the dedupe set outgrow a small host.
pub const MAX_IDS_CEILING: usize = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateSpec {
    pub window: Duration,
    pub max_clock_skew: Duration,
    pub dedupe_window: Duration,
    pub max_remembered_ids: usize,
    pub max_body_bytes: u64,
    pub max_events: usize,
    pub read_timeout: Duration,
}

impl Default for LateSpec {
    fn default() -> Self {
        // The raw defaults are all within the rules.
        build(&RawLateOutcomes::default()).unwrap_or(LateSpec {
            window: Duration::from_secs(7 * 86_400),
            max_clock_skew: Duration::from_secs(60),
            dedupe_window: Duration::from_secs(7 * 86_400),
            max_remembered_ids: 100_000,
            max_body_bytes: 1024 * 1024,
            max_events: 1000,
            read_timeout: Duration::from_secs(10),
        })
    }
}

fn bad(field: &str, reason: String) -> TableError {
    err(format!("late_outcomes.{field}"), Invalid::Late { reason })
}

pub(super) fn build(raw: &RawLateOutcomes) -> Result<LateSpec, TableError> {
    if !(1..=MAX_IDS_CEILING).contains(&raw.max_remembered_ids) {
        return Err(bad(
            "max_remembered_ids",
            format!(
                "{} is not from 1 to {MAX_IDS_CEILING}",
                raw.max_remembered_ids
            ),
        ));
    }
    if !(256..=MAX_BODY_CEILING).contains(&raw.max_body_bytes) {
        return Err(bad(
            "max_body_bytes",
            format!(
                "{} is not from 256 to {MAX_BODY_CEILING}",
                raw.max_body_bytes
            ),
        ));
    }
    if !(1..=100_000).contains(&raw.max_events) {
        return Err(bad(
            "max_events",
            format!("{} is not from 1 to 100000", raw.max_events),
        ));
    }
    Ok(LateSpec {
        window: raw.window,
        max_clock_skew: raw.max_clock_skew,
        dedupe_window: raw.dedupe_window,
        max_remembered_ids: raw.max_remembered_ids,
        max_body_bytes: raw.max_body_bytes,
        max_events: raw.max_events,
        read_timeout: raw.read_timeout,
    })
}
