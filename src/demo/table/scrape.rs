//! Reading a Prometheus text scrape into cumulative counts per (route, cohort), and the
//! cumulative histograms they keep.
//!
//! Owns: the parsing of the cohort families and the histogram arithmetic. Must not touch:
//! windows or drawing; only `telemetry`'s names and buckets of the crate.

use std::collections::BTreeMap;

use crate::telemetry::{self, LATENCY_BUCKETS};

/// A cumulative histogram: `(upper bound, observations at or below it)`, ending with +Inf.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
}

impl Default for Hist {
    /// The proxy's latency buckets, empty.
    fn default() -> Self {
        let mut buckets: Vec<(f64, f64)> = LATENCY_BUCKETS.iter().map(|&le| (le, 0.0)).collect();
        buckets.push((f64::INFINITY, 0.0));
        Hist { buckets }
    }
}

impl Hist {
    pub fn observe(&mut self, seconds: f64) {
        for (le, count) in &mut self.buckets {
            if seconds <= *le {
                *count += 1.0;
            }
        }
    }

    /// Observations between `older` and `self` (bucket by bucket, matched by bound).
    pub(super) fn since(&self, older: Option<&Hist>) -> Hist {
        let before = |le: f64| {
            older
                .and_then(|o| o.buckets.iter().find(|(b, _)| *b == le))
                .map_or(0.0, |(_, c)| *c)
        };
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, (c - before(le)).max(0.0)))
                .collect(),
        }
    }

    /// The `q` quantile, interpolated within its bucket as Prometheus's `histogram_quantile`
    /// does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let width = count - below;
                let into = if width > 0.0 {
                    (rank - below) / width
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * into);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

/// Cumulative counts for one (route, cohort).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    /// Answers with a 5xx status.
    pub errors: f64,
    pub duration: Hist,
    pub ttfb: Hist,
    pub outcomes: BTreeMap<String, f64>,
    /// The configured percent, when known.
    pub split: Option<f64>,
}

/// Counts by (route, cohort) at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cohorts: BTreeMap<(String, String), Counts>,
}

impl Snapshot {
    /// Reads the cohort families of a Prometheus text scrape.
    pub fn from_scrape(text: &str) -> Self {
        let mut snap = Snapshot::default();
        let mut hists: BTreeMap<(String, String, bool), Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (Some(route), Some(cohort)) = (label("route"), label("cohort")) else {
                continue;
            };
            let key = (route.clone(), cohort.clone());
            match name {
                telemetry::REQUESTS => {
                    let c = snap.cohorts.entry(key).or_default();
                    c.requests += value;
                    if label("status_class").as_deref() == Some("5xx") {
                        c.errors += value;
                    }
                }
                telemetry::OUTCOMES => {
                    let c = snap.cohorts.entry(key).or_default();
                    *c.outcomes
                        .entry(label("outcome").unwrap_or_default())
                        .or_default() += value;
                }
                telemetry::SPLIT => snap.cohorts.entry(key).or_default().split = Some(value),
                _ => {
                    let ttfb = name == format!("{}_bucket", telemetry::TTFB);
                    if !ttfb && name != format!("{}_bucket", telemetry::DURATION) {
                        continue;
                    }
                    let le = match label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::NAN),
                        None => continue,
                    };
                    hists
                        .entry((route, cohort, ttfb))
                        .or_default()
                        .push((le, value));
                }
            }
        }
        for ((route, cohort, ttfb), mut buckets) in hists {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = snap.cohorts.entry((route, cohort)).or_default();
            *(if ttfb { &mut c.ttfb } else { &mut c.duration }) = Hist { buckets };
        }
        snap
    }
}

type Labels = Vec<(String, String)>;

/// `name{k="v",...} value` → its parts; `None` for anything else.
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => v.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => v.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_string(), v));
        rest = &after[end + 1..];
    }
    Some((name, labels, value))
}
