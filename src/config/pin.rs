//! The raw serde type of a route's `pin` section: conversation pinning, with its documented
//! defaults.
//!
//! Owns: the section's shape as serde reads and writes it. Must not touch: what makes a pin
//! section valid (exactly one carrier, `max_ttl` at least `idle_ttl`, the secrets' lengths:
//! `routing::table`), the pin format (`routing::pin`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A route's conversation pinning: the first response carries a signed pin, and the requests
/// that present it stay on its cohort until it expires.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPin {
    /// One secret per line, relative to the config file: the first signs, every line verifies.
    pub secret_file: PathBuf,
    /// The pin travels in this cookie (browsers)...
    pub cookie: Option<String>,
    /// ...or in this request and response header (API clients). Exactly one of the two.
    pub header: Option<String>,
    /// A pin unused this long expires; every response slides it.
    #[serde(
        default = "default_idle_ttl",
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub idle_ttl: Duration,
    /// A pin never outlives its first issue by more than this, however busy.
    #[serde(
        default = "default_max_ttl",
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub max_ttl: Duration,
}

fn default_idle_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
