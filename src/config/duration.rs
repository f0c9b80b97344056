//! Durations as the file writes them (`30s`, `5m`, `2h 30m`): humantime's format, with a cap
//! and, per field, a floor.
//!
//! Owns: how a duration field is read and written. Must not touch: what each duration is for
//! (`table`, `server`, `upstream`).
//!
//! Why a cap: deadlines are computed as `Instant + duration` wherever a timer is armed, and a
//! duration past what an `Instant` can hold would make that addition panic in a connection's
//! task. Refused here, at the field, every such addition is safe.
//!
//! Why a floor: `0s` reads as "off" to a person but is a real value to a timer: a zero poll
//! interval spins, a zero idle timeout cuts every stream (and counts each cut as an upstream
//! failure). Each field names its own floor, in milliseconds, where it is declared:
//!
//! ```ignore
//! #[serde(
//!     default = "default_idle_timeout",
//!     deserialize_with = "super::duration::at_least::<1000, _>",
//!     serialize_with = "super::duration::serialize"
//! )]
//! pub idle_timeout: Duration,
//! ```
//!
//! A field where `0s` is meaningful (it means "off") uses `with = "super::duration"`, which
//! has no floor.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserializer, Serializer};

/// Ten years as humantime counts them (`10y`, years of 365.25 days): longer than any timeout
/// or soak means, far inside what an `Instant` can hold.
pub const MAX: Duration = Duration::from_secs(10 * 31_557_600);

/// Any duration up to [`MAX`], `0s` included: for a field where `0s` means "off".
#[allow(
    dead_code,
    reason = "no such field yet; the mechanism is kept for the next one"
)]
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_least::<0, D>(d)
}

/// A duration of at least `MIN_MS` milliseconds and at most [`MAX`].
pub fn at_least<'de, const MIN_MS: u64, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(Bounded {
        min: Duration::from_millis(MIN_MS),
    })
}

/// humantime's parse, with both bounds checked inside the visitor: an error raised while the
/// YAML scalar is still at hand carries its line and column.
struct Bounded {
    min: Duration,
}

impl Visitor<'_> for Bounded {
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
        if value < self.min {
            return Err(E::custom(format!(
                "{v} is shorter than the shortest this field accepts, {}",
                humantime::format_duration(self.min)
            )));
        }
        Ok(value)
    }
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}
