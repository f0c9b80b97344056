//! The record's bytes: JSON out, and back in only when it parses and makes sense.
//!
//! Owns: [`encode`], [`decode`] and what a readable record must satisfy. Must not touch: the
//! transitions (`record`), the engine.

use super::{Record, HISTORY};

/// The largest record [`decode`] reads: a full history of full reasons is about 30 KB.
pub const MAX_BYTES: usize = 256 * 1024;

/// Why bytes under a route's key are not a record this replica can trust. The caller serves
/// the canary at 0% until a record it can read arrives.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Corrupt {
    #[error("record of {0} bytes, more than {MAX_BYTES}")]
    TooLarge(usize),
    #[error("record does not parse: {0}")]
    Parse(String),
    #[error("record does not make sense: {0}")]
    Nonsense(String),
}

pub fn encode(r: &Record) -> Vec<u8> {
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_vec(r).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Record, Corrupt> {
    if bytes.len() > MAX_BYTES {
        return Err(Corrupt::TooLarge(bytes.len()));
    }
    let r: Record = serde_json::from_slice(bytes).map_err(|e| Corrupt::Parse(e.to_string()))?;
    sane(&r).map_err(Corrupt::Nonsense)?;
    Ok(r)
}

/// What a record written by [`propose`] always satisfies.
fn sane(r: &Record) -> Result<(), String> {
    let p = &r.plan;
    if r.format == 0 {
        return Err("format 0".into());
    }
    if p.id.is_empty() || p.steps.is_empty() {
        return Err("no id or no steps".into());
    }
    let bp = crate::routing::bands::BUCKETS;
    if p.steps.windows(2).any(|w| w[0] >= w[1]) || p.steps.iter().any(|s| *s > bp) {
        return Err(format!("steps {:?} are not increasing shares", p.steps));
    }
    if p.promoted > bp || r.percent > bp || r.percent_before > bp {
        return Err("a share above 100%".into());
    }
    if r.step >= p.steps.len() {
        return Err(format!("step {} of {}", r.step, p.steps.len()));
    }
    if r.percent != p.percent(r.phase, r.step) {
        return Err(format!(
            "{} bp at step {} while {}",
            r.percent, r.step, r.phase
        ));
    }
    if !(r.started_version <= r.step_version && r.step_version <= r.version) {
        return Err("versions out of order".into());
    }
    if r.history.len() > HISTORY || r.history.iter().any(|e| e.version > r.version) {
        return Err("a history longer or later than the record".into());
    }
    Ok(())
}
