//! Reading a Prometheus text scrape into cumulative counts per (route, cohort), and the
//! cumulative histograms they keep.
//!
//! Owns: the parsing of the cohort families and the histogram arithmetic. Must not touch:
//! windows or drawing; only `telemetry`'s names and buckets of the crate (and the token
//! families' names below, until `telemetry` defines them).

use std::collections::BTreeMap;

use crate::telemetry::{self, LATENCY_BUCKETS};

/// The token families of the proxy's scrape (labels `route`, `cohort` on all). Absent from a
/// proxy that does not read usage yet: their columns then show `-`.
pub const TTFT: &str = "cohort_time_to_first_token_seconds";
/// Every gap between two consecutive SSE events of an answer.
pub const INTER_TOKEN: &str = "cohort_inter_token_seconds";
pub const OUTPUT_TOKENS: &str = "cohort_answer_output_tokens";
/// Cost per answer, in the price's currency.
pub const COST: &str = "cohort_answer_cost";
/// Counter by `kind`: `input`, `output`, `cached_input`.
pub const TOKENS: &str = "cohort_tokens_total";
/// Counter by `usage`: `reported`, `missing`.
pub const USAGE_ANSWERS: &str = "cohort_usage_answers_total";

/// The histograms read bucket by bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Series {
    Duration,
    Ttfb,
    Ttft,
    InterToken,
}

impl Series {
    fn of_bucket(name: &str) -> Option<Series> {
        let base = name.strip_suffix("_bucket")?;
        [
            (telemetry::DURATION, Series::Duration),
            (telemetry::TTFB, Series::Ttfb),
            (TTFT, Series::Ttft),
            (INTER_TOKEN, Series::InterToken),
        ]
        .into_iter()
        .find_map(|(n, s)| (n == base).then_some(s))
    }

    fn of(self, c: &mut Counts) -> &mut Hist {
        match self {
            Series::Duration => &mut c.duration,
            Series::Ttfb => &mut c.ttfb,
            Series::Ttft => &mut c.ttft,
            Series::InterToken => &mut c.inter_token,
        }
    }
}

/// A histogram read by its `_sum` and `_count` alone, for its mean.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mean {
    pub sum: f64,
    pub count: f64,
}

impl Mean {
    /// The mean of the observations between `older` and `self`; `None` without any.
    pub fn since(&self, older: Option<&Mean>) -> Option<f64> {
        let o = older.copied().unwrap_or_default();
        let n = self.count - o.count;
        (n > 0.0).then(|| (self.sum - o.sum) / n)
    }
}

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
    pub ttft: Hist,
    pub inter_token: Hist,
    pub output_tokens: Mean,
    pub cost: Mean,
    /// Tokens by kind (`input`, `output`, `cached_input`).
    pub tokens: BTreeMap<String, f64>,
    /// Answers by whether they reported usage (`reported`, `missing`).
    pub usage: BTreeMap<String, f64>,
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
        let mut hists: BTreeMap<(String, String, Series), Vec<(f64, f64)>> = BTreeMap::new();
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
                TOKENS | USAGE_ANSWERS => {
                    let c = snap.cohorts.entry(key).or_default();
                    let (map, by) = match name {
                        TOKENS => (&mut c.tokens, "kind"),
                        _ => (&mut c.usage, "usage"),
                    };
                    *map.entry(label(by).unwrap_or_default()).or_default() += value;
                }
                _ => {
                    if let Some(mean) = mean_part(name) {
                        let c = snap.cohorts.entry(key).or_default();
                        let m = if mean.0 == OUTPUT_TOKENS {
                            &mut c.output_tokens
                        } else {
                            &mut c.cost
                        };
                        *(if mean.1 { &mut m.sum } else { &mut m.count }) += value;
                        continue;
                    }
                    let Some(series) = Series::of_bucket(name) else {
                        continue;
                    };
                    let le = match label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::NAN),
                        None => continue,
                    };
                    hists
                        .entry((route, cohort, series))
                        .or_default()
                        .push((le, value));
                }
            }
        }
        for ((route, cohort, series), mut buckets) in hists {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = snap.cohorts.entry((route, cohort)).or_default();
            *series.of(c) = Hist { buckets };
        }
        snap
    }
}

/// `(family, is_sum)` for the `_sum` or `_count` of a histogram read for its mean.
fn mean_part(name: &str) -> Option<(&'static str, bool)> {
    [OUTPUT_TOKENS, COST].into_iter().find_map(|family| {
        let rest = name.strip_prefix(family)?;
        match rest {
            "_sum" => Some((family, true)),
            "_count" => Some((family, false)),
            _ => None,
        }
    })
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
