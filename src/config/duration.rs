//! Durations as the file writes them (`30s`, `5m`, `2h 30m`): humantime's format, with a cap.
//!
//! Owns: how a duration field is read and written. Must not touch: what each duration is for
//! (`table`, `server`, `upstream`).
//!
//! Why a cap: deadlines are computed as `Instant + duration` wherever a timer is armed, and a
//! duration past what an `Instant` can hold would make that addition panic in a connection's
//! task. Refused here, at the field, every such addition is safe.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserializer, Serializer};

/// Ten years as humantime counts them (`10y`, years of 365.25 days): longer than any timeout
/// or soak means, far inside what an `Instant` can hold.
pub const MAX: Duration = Duration::from_secs(10 * 31_557_600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(Capped)
}

/// humantime's parse, with the cap checked inside the visitor: an error raised while the YAML
/// scalar is still at hand carries its line and column.
struct Capped;

impl Visitor<'_> for Capped {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let value = humantime::parse_duration(v)
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))?;
        if value > MAX {
            return Err(E::custom(format!(
                "{v} is longer than the longest duration accepted, 10 years"
            )));
        }
        Ok(value)
    }
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}
