//! The raw `late_outcomes` section: how `POST /outcomes` on the admin listener takes outcomes
//! that other systems post after the turn (reopens, CSAT scores, refunds).
//!
//! Owns: the section's shape and defaults. Must not touch: validation (`routing::table::late`),
//! the endpoint (`control::late`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLateOutcomes {
    /// Events whose conversation started longer ago than this are refused (`too_old`); the
    /// percent history is kept this far back, and no further.
    #[serde(
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub window: Duration,
    /// How far ahead of this clock a start time may be (the sender's clock skew) before it is
    /// refused (`future`); such an event is attributed at this clock's now.
    #[serde(with = "super::duration")]
    pub max_clock_skew: Duration,
    /// A replayed event id counts once within this long after it was first accepted.
    #[serde(
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub dedupe_window: Duration,
    /// Event ids remembered at most; when full, the oldest is forgotten first.
    pub max_remembered_ids: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: u64,
    /// Most events in one request (413 beyond).
    pub max_events: usize,
    /// The whole body must arrive within this (408 otherwise).
    #[serde(
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub read_timeout: Duration,
}

impl Default for RawLateOutcomes {
    fn default() -> Self {
        RawLateOutcomes {
            window: Duration::from_secs(7 * 86_400),
            max_clock_skew: Duration::from_secs(60),
            dedupe_window: Duration::from_secs(7 * 86_400),
            max_remembered_ids: 100_000,
            max_body_bytes: 1024 * 1024,
            max_events: 1000,
            read_timeout: Duration::from_secs(10),
        }
    }
}
