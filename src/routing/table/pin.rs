//! Validation of a route's `pin` section into the [`PinSpec`] the request path reads: the
//! secrets of a rotation, where the pin travels, its two lifetimes, and its counters.
//!
//! Owns: the section's rules (exactly one of cookie and header, `max_ttl` at least
//! `idle_ttl`, every secret line at least 16 bytes). Must not touch: the pin format
//! (`routing::pin`), headers on the wire (`proxy`).

use http::HeaderName;

use super::build::{err, header_name, Invalid, TableError};
use super::edge::read_secret;
use crate::config::RawPin;
use crate::routing::pin::Rejection;
use crate::routing::signed::MIN_SECRET_BYTES;
use crate::telemetry::{Metrics, PinCounters};

/// A route's conversation pinning, as validated.
#[derive(Clone)]
pub struct PinSpec {
    /// Every line of the secret file: the first signs, all of them verify.
    pub secrets: Vec<Vec<u8>>,
    pub carrier: PinCarrier,
    /// Seconds a pin lives after the response that issued or refreshed it.
    pub idle_ttl: u64,
    /// Seconds a conversation's pins live at most after its first was issued.
    pub max_ttl: u64,
    /// Aligned with the route's cohorts, and with `pin::Rejection::ALL`.
    pub counters: PinCounters<{ Rejection::ALL.len() }>,
}

/// Where a pin travels, both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCarrier {
    /// Sent back by browsers; set with `Set-Cookie` on the response.
    Cookie(String),
    /// A request header the client copies from the same response header (API clients); the
    /// proxy strips it from the upstream request.
    Header(HeaderName),
}

impl PinSpec {
    /// What `GET /routes` shows of it: where the pin travels, its lifetimes, and how many
    /// secrets verify (never the secrets).
    pub fn summary(&self) -> serde_json::Value {
        let (kind, name) = match &self.carrier {
            PinCarrier::Cookie(c) => ("cookie", c.as_str()),
            PinCarrier::Header(h) => ("header", h.as_str()),
        };
        serde_json::json!({
            kind: name,
            "idle_ttl_seconds": self.idle_ttl,
            "max_ttl_seconds": self.max_ttl,
            "secrets": self.secrets.len(),
        })
    }
}

/// Cookie names are RFC 6265 tokens: visible ASCII without separators.
fn cookie_name(path: &str, name: &str) -> Result<String, TableError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(err(
            path,
            Invalid::Pin {
                reason: format!(
                    "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            },
        ));
    }
    Ok(name.to_string())
}

/// The secret file's lines, each trimmed, blank lines skipped.
fn secrets(
    path: &str,
    raw: &RawPin,
    base: &std::path::Path,
    files: &mut super::secure::TlsFiles,
) -> Result<Vec<Vec<u8>>, TableError> {
    let at = format!("{path}.secret_file");
    let whole = read_secret(&at, base, &raw.secret_file, files)?;
    let mut out = Vec::new();
    for (n, line) in whole.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if line.len() < MIN_SECRET_BYTES {
            return Err(err(
                &at,
                Invalid::Secret {
                    path: base.join(&raw.secret_file).display().to_string(),
                    reason: format!(
                        "line {}: must hold at least {MIN_SECRET_BYTES} bytes",
                        n + 1
                    ),
                },
            ));
        }
        out.push(line.to_vec());
    }
    Ok(out)
}

pub(super) fn build_pin(
    path: &str,
    raw: &RawPin,
    (route, cohorts, override_header): (&str, &[&str], Option<&HeaderName>),
    metrics: &Metrics,
    base: &std::path::Path,
    files: &mut super::secure::TlsFiles,
) -> Result<PinSpec, TableError> {
    let carrier = match (&raw.cookie, &raw.header) {
        (Some(c), None) => PinCarrier::Cookie(cookie_name(&format!("{path}.cookie"), c)?),
        (None, Some(h)) => {
            let at = format!("{path}.header");
            let name = header_name(&at, h)?;
            if override_header == Some(&name) || name == "x-cohort" {
                return Err(err(
                    at,
                    Invalid::Pin {
                        reason: format!("{h:?} is taken by the override or the x-cohort header"),
                    },
                ));
            }
            PinCarrier::Header(name)
        }
        _ => {
            return Err(err(
                path,
                Invalid::Pin {
                    reason: "set exactly one of cookie and header".into(),
                },
            ))
        }
    };
    if raw.max_ttl < raw.idle_ttl {
        return Err(err(
            format!("{path}.max_ttl"),
            Invalid::Pin {
                reason: "must be at least idle_ttl".into(),
            },
        ));
    }
    Ok(PinSpec {
        secrets: secrets(path, raw, base, files)?,
        carrier,
        idle_ttl: raw.idle_ttl.as_secs(),
        max_ttl: raw.max_ttl.as_secs(),
        counters: metrics.pins(route, cohorts, Rejection::LABELS),
    })
}

/// A warning when `route` keeps its pins in the same cookie as an earlier route: set with
/// `Path=/`, one route's pin replaces the other's, and each reads the other's as foreign
/// (harmless only when the two never share a host).
pub(super) fn shared_cookie(earlier: &[super::Route], route: &super::Route) -> Option<String> {
    let cookie = |r: &super::Route| match r.pin.as_ref().map(|p| &p.carrier) {
        Some(PinCarrier::Cookie(c)) => Some(c.clone()),
        _ => None,
    };
    let name = cookie(route)?;
    let other = earlier.iter().find(|e| cookie(e).as_ref() == Some(&name))?;
    Some(format!(
        "routes {:?} and {:?} both keep their pins in cookie {name:?}: on one host each \
         replaces the other's pin",
        other.name, route.name
    ))
}
