//! A route's `segment`, validated: the header it is read from (the request's, or the
//! response head's) and its allowed values; and the request path's lookup of a value's index.
//!
//! Owns: the segment rules and [`Segment`], and the bound on what `per_segment` guards keep
//! apart ([`histograms_fit`], which `rollout` applies). Must not touch: metrics (the table
//! makes each segment's handles from [`Segment::names`]), the samples, the rest of the
//! rollout's rules (`rollout`, which is given the names).

use http::{HeaderMap, HeaderName};

use super::build::{check_name, err, header_name, Invalid, TableError};
use super::rollout::{Guard, GuardKind, Latency};
use crate::config::RawSegment;

/// The most values a segment may allow: each is a label value of three metric families per
/// cohort, and a pair of tallies in a fleet replica's report.
pub const MAX_SEGMENT_VALUES: usize = 16;

/// The segment of answers whose header is absent or not an allowed value.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentSource {
    /// Known when the request arrives.
    Request(HeaderName),
    /// Known when the response head arrives; until then (a proxy's own 502 or 504, a client
    /// that left first) the answer is `other`.
    Response(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub source: SegmentSource,
    /// Lower-cased, distinct, none of them `other`; index `values.len()` is `other`.
    pub values: Vec<String>,
}

impl Segment {
    /// The index of `other`.
    pub fn other(&self) -> usize {
        self.values.len()
    }

    /// Every segment's name in index order: the values, then `other`.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.values.clone();
        names.push(OTHER.to_string());
        names
    }

    #[inline]
    fn index_of(&self, headers: &HeaderMap, name: &HeaderName) -> usize {
        headers
            .get(name)
            .and_then(|v| {
                let v = v.as_bytes().trim_ascii();
                self.values
                    .iter()
                    .position(|o| o.as_bytes().eq_ignore_ascii_case(v))
            })
            .unwrap_or(self.other())
    }

    /// The segment as far as the request tells: its header's, or `other` until a response
    /// head says (a response-header segment).
    #[inline]
    pub fn of_request(&self, headers: &HeaderMap) -> usize {
        match &self.source {
            SegmentSource::Request(name) => self.index_of(headers, name),
            SegmentSource::Response(_) => self.other(),
        }
    }

    /// The segment a response head gives, for a response-header segment.
    #[inline]
    pub fn of_response(&self, headers: &HeaderMap) -> Option<usize> {
        match &self.source {
            SegmentSource::Request(_) => None,
            SegmentSource::Response(name) => Some(self.index_of(headers, name)),
        }
    }
}

/// Validates `routes[i].segment` at `path`.
pub(super) fn build(path: &str, raw: &RawSegment) -> Result<Segment, TableError> {
    let bad = |at: String, reason: String| Err(err(at, Invalid::Segment { reason }));
    let source = match (&raw.request_header, &raw.response_header) {
        (Some(h), None) => {
            SegmentSource::Request(header_name(&format!("{path}.request_header"), h)?)
        }
        (None, Some(h)) => {
            SegmentSource::Response(header_name(&format!("{path}.response_header"), h)?)
        }
        _ => {
            return bad(
                path.to_string(),
                "set exactly one of request_header and response_header".into(),
            )
        }
    };
    if raw.values.is_empty() || raw.values.len() > MAX_SEGMENT_VALUES {
        return bad(
            format!("{path}.values"),
            format!(
                "{} values: give from 1 to {MAX_SEGMENT_VALUES} (anything else is `{OTHER}`)",
                raw.values.len()
            ),
        );
    }
    let mut values: Vec<String> = Vec::with_capacity(raw.values.len());
    for (j, v) in raw.values.iter().enumerate() {
        let at = format!("{path}.values[{j}]");
        check_name(&at, v)?;
        let v = v.to_ascii_lowercase();
        if v == OTHER {
            return bad(
                at,
                format!("`{OTHER}` is where every value not listed goes: do not list it"),
            );
        }
        if values.contains(&v) {
            return Err(err(
                at,
                Invalid::Duplicate {
                    what: "segment value",
                    name: v,
                },
            ));
        }
        values.push(v);
    }
    Ok(Segment { source, values })
}

/// The most histograms (segments times the histograms each keeps) `per_segment` guards may
/// keep apart: what bounds a fleet replica's report (`control::fleet::pooled`).
pub const MAX_SEGMENT_HISTOGRAMS: usize = 34;

/// How many histograms a segment's counts keep for `guards`: each one read, and the request
/// durations that every other is part of.
fn segment_histograms(guards: &[Guard]) -> usize {
    let mut read: Vec<Latency> = Vec::new();
    for g in guards {
        if let GuardKind::Latency { source, .. } = g.kind {
            let also = (source == Latency::InterToken).then_some(Latency::Ttft);
            for s in std::iter::once(source).chain(also) {
                if !read.contains(&s) {
                    read.push(s);
                }
            }
        }
    }
    if !read.is_empty() && !read.contains(&Latency::Duration) {
        read.push(Latency::Duration);
    }
    read.len()
}

/// Whether `guards` (the `per_segment` ones) over `segments` segments keep few enough
/// histograms apart; the reason when not.
pub(super) fn histograms_fit(guards: &[Guard], segments: usize) -> Result<(), String> {
    let histograms = segment_histograms(guards) * segments;
    if histograms <= MAX_SEGMENT_HISTOGRAMS {
        return Ok(());
    }
    Err(format!(
        "per_segment guards keep {histograms} histograms apart (segments times the histograms they read), more than {MAX_SEGMENT_HISTOGRAMS}: a fleet replica's report would outgrow its limit; use fewer segment values or fewer per_segment latency, token or cost guards"
    ))
}
