//! The raw serde type of a route's `segment` section: the one dimension its metrics and its
//! rollout's `per_segment` guards are split by.
//!
//! Owns: the section's shape as serde reads it. Must not touch: what makes a segment valid
//! (`routing::table`'s segment rules) or how answers are counted in it (`proxy`).

use serde::{Deserialize, Serialize};

/// Where a route's segment is read, and the values it may take; any other value, and none,
/// is `other`. Exactly one of `request_header` and `response_header` is set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    /// A header of the client's request (a channel, a language, a tenant).
    pub request_header: Option<String>,
    /// A header of the upstream's response head (the intent the agent classified).
    pub response_header: Option<String>,
    /// The allowed values, matched without regard to ASCII case.
    pub values: Vec<String>,
}
