//! The demo's live comparison of cohorts: cumulative counts per (route, cohort) taken from the
//! proxy's own scrape (or the load generator's own measurements), differenced over a sliding
//! window, and drawn as a table redrawn in place on a terminal or as plain lines elsewhere.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

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
    fn since(&self, older: Option<&Hist>) -> Hist {
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

/// One cohort over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub route: String,
    pub cohort: String,
    pub split: Option<f64>,
    pub total: f64,
    pub rate: f64,
    pub error_pct: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub ttfb_p50: Option<f64>,
    pub ttfb_p99: Option<f64>,
    /// Share of the window's outcomes, in percent, by outcome.
    pub outcomes: BTreeMap<String, f64>,
}

impl Row {
    pub fn between(key: &(String, String), old: Option<&Counts>, new: &Counts, secs: f64) -> Row {
        let requests = new.requests - old.map_or(0.0, |o| o.requests);
        let errors = new.errors - old.map_or(0.0, |o| o.errors);
        let (duration, ttfb) = (
            new.duration.since(old.map(|o| &o.duration)),
            new.ttfb.since(old.map(|o| &o.ttfb)),
        );
        let outcomes: BTreeMap<String, f64> = new
            .outcomes
            .iter()
            .map(|(k, v)| {
                let before = old.and_then(|o| o.outcomes.get(k)).copied().unwrap_or(0.0);
                (k.clone(), v - before)
            })
            .collect();
        let seen: f64 = outcomes.values().sum();
        Row {
            route: key.0.clone(),
            cohort: key.1.clone(),
            split: new.split,
            total: new.requests,
            rate: if secs > 0.0 { requests / secs } else { 0.0 },
            error_pct: (requests > 0.0).then(|| 100.0 * errors / requests),
            p50: duration.quantile(0.5),
            p99: duration.quantile(0.99),
            ttfb_p50: ttfb.quantile(0.5),
            ttfb_p99: ttfb.quantile(0.99),
            outcomes: outcomes
                .into_iter()
                .filter(|_| seen > 0.0)
                .map(|(k, v)| (k, 100.0 * v / seen))
                .collect(),
        }
    }

    fn outcome(&self, name: &str) -> Option<f64> {
        (!self.outcomes.is_empty()).then(|| self.outcomes.get(name).copied().unwrap_or(0.0))
    }
}

/// The outcome columns shown; any other value is summed into `other`.
const OUTCOMES: [&str; 4] = ["resolved", "escalated", "abandoned", "error"];

/// Snapshots of the last `window`, to difference the newest against the oldest.
pub struct Window {
    window: Duration,
    kept: VecDeque<(Instant, Snapshot)>,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Window {
            window,
            kept: VecDeque::new(),
        }
    }

    /// Adds `snap`, taken at `at`, and returns a row per cohort (in `order` first, then the
    /// rest by name) over the window that ends with it.
    pub fn push(&mut self, at: Instant, snap: Snapshot, order: &[(String, String)]) -> Vec<Row> {
        while self
            .kept
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.window)
        {
            self.kept.pop_front();
        }
        self.kept.push_back((at, snap));
        let (first_at, first) = self.kept.front().expect("just pushed");
        let (_, last) = self.kept.back().expect("just pushed");
        let secs = at.duration_since(*first_at).as_secs_f64();
        let mut keys: Vec<&(String, String)> = order
            .iter()
            .filter(|k| last.cohorts.contains_key(k))
            .collect();
        keys.extend(last.cohorts.keys().filter(|k| !order.contains(k)));
        keys.into_iter()
            .map(|k| {
                let old = (self.kept.len() > 1)
                    .then(|| first.cohorts.get(k))
                    .flatten();
                Row::between(k, old, &last.cohorts[k], secs)
            })
            .collect()
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |p| format!("{p:.1}%"))
}

fn other(row: &Row) -> Option<f64> {
    (!row.outcomes.is_empty()).then(|| {
        row.outcomes
            .iter()
            .filter(|(k, _)| !OUTCOMES.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum()
    })
}

/// The table, one line per cohort under a header, for a terminal.
pub fn render(title: &str, rows: &[Row]) -> Vec<String> {
    let multi_route = rows.iter().any(|r| r.route != rows[0].route);
    let mut lines = vec![title.to_string()];
    let head = [
        "cohort",
        "split",
        "req/s",
        "requests",
        "errors",
        "p50",
        "p99",
        "ttfb p50",
        "ttfb p99",
        "resolved",
        "escalated",
        "abandoned",
        "error",
        "other",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let name = if multi_route {
            format!("{}/{}", r.route, r.cohort)
        } else {
            r.cohort.clone()
        };
        let mut row = vec![
            name,
            r.split.map_or("-".into(), |s| format!("{s}%")),
            format!("{:.1}", r.rate),
            format!("{}", r.total),
            pct(r.error_pct),
            ms(r.p50),
            ms(r.p99),
            ms(r.ttfb_p50),
            ms(r.ttfb_p99),
        ];
        row.extend(OUTCOMES.iter().map(|o| pct(r.outcome(o))));
        row.push(pct(other(r)));
        cells.push(row);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i == 0 {
                let _ = write!(line, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(line, "  {}{cell}", " ".repeat(pad));
            }
        }
        lines.push(line);
    }
    lines
}

/// One `key=value` line per cohort, for logs and pipes.
pub fn plain(elapsed: Duration, rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            let mut line = format!(
                "[{}s] route={} cohort={} split={} requests={} req_per_s={:.1} errors={} p50={} p99={} ttfb_p50={} ttfb_p99={}",
                elapsed.as_secs(),
                r.route,
                r.cohort,
                r.split.map_or("-".into(), |s| format!("{s}%")),
                r.total,
                r.rate,
                pct(r.error_pct),
                ms(r.p50),
                ms(r.p99),
                ms(r.ttfb_p50),
                ms(r.ttfb_p99),
            );
            for o in OUTCOMES {
                let _ = write!(line, " {o}={}", pct(r.outcome(o)));
            }
            let _ = write!(line, " other={}", pct(other(r)));
            line
        })
        .collect()
}

/// Redraws `lines` in place of the `previous` count of lines drawn before.
pub fn redraw(previous: usize, lines: &[String]) -> String {
    let mut out = String::new();
    if previous > 0 {
        let _ = write!(out, "\x1b[{previous}A");
    }
    for l in lines {
        let _ = writeln!(out, "\x1b[2K{l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP cohort_requests_total Requests answered.
# TYPE cohort_requests_total counter
cohort_requests_total{route="r",cohort="stable",status_class="2xx"} 90
cohort_requests_total{route="r",cohort="stable",status_class="5xx"} 10
cohort_requests_total{route="r",cohort="canary",status_class="2xx"} 4
cohort_outcomes_total{route="r",cohort="stable",outcome="resolved"} 60
cohort_outcomes_total{route="r",cohort="stable",outcome="escalated"} 30
cohort_outcomes_total{route="r",cohort="stable",outcome="handed_off"} 10
cohort_split_percent{route="r",cohort="stable"} 80
cohort_split_percent{route="r",cohort="canary"} 20
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="0.1"} 50
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="0.2"} 100
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="+Inf"} 100
cohort_time_to_first_byte_seconds_sum{route="r",cohort="stable"} 9
cohort_config_generation 3
"#;

    #[test]
    fn reads_the_cohort_families_of_a_scrape() {
        let snap = Snapshot::from_scrape(SCRAPE);
        let stable = &snap.cohorts[&("r".to_string(), "stable".to_string())];
        assert_eq!(
            (stable.requests, stable.errors, stable.split),
            (100.0, 10.0, Some(80.0))
        );
        assert_eq!(stable.outcomes["escalated"], 30.0);
        assert_eq!(stable.ttfb.buckets.len(), 3);
        assert_eq!(stable.ttfb.buckets[2], (f64::INFINITY, 100.0));
        let canary = &snap.cohorts[&("r".to_string(), "canary".to_string())];
        assert_eq!((canary.requests, canary.errors), (4.0, 0.0));
        assert_eq!(snap.cohorts.len(), 2);
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let h = Hist {
            buckets: vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)],
        };
        assert_eq!(h.quantile(0.5), Some(0.1));
        assert!((h.quantile(0.25).unwrap() - 0.05).abs() < 1e-12);
        assert!((h.quantile(0.75).unwrap() - 0.15).abs() < 1e-12);
        let mut tail = h.clone();
        tail.buckets[2].1 = 200.0;
        assert_eq!(
            tail.quantile(0.99),
            Some(0.2),
            "the +Inf bucket reports its lower bound"
        );
        assert_eq!(Hist::default().quantile(0.5), None);
    }

    #[test]
    fn observe_fills_cumulative_buckets() {
        let mut h = Hist::default();
        h.observe(0.3);
        h.observe(500.0);
        assert_eq!(h.buckets.iter().find(|b| b.0 == 0.25).unwrap().1, 0.0);
        assert_eq!(h.buckets.iter().find(|b| b.0 == 0.5).unwrap().1, 1.0);
        assert_eq!(h.buckets.last().unwrap().1, 2.0);
        assert!(h.quantile(0.25).unwrap() > 0.25 && h.quantile(0.25).unwrap() <= 0.5);
    }

    #[test]
    fn window_differences_newest_against_oldest() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        let order = vec![
            ("r".to_string(), "stable".to_string()),
            ("r".to_string(), "canary".to_string()),
        ];
        let first = w.push(t0, Snapshot::from_scrape(SCRAPE), &order);
        assert_eq!(first[0].cohort, "stable", "rows follow the given order");
        assert_eq!(first[0].rate, 0.0);
        let later = SCRAPE
            .replace("\"5xx\"} 10", "\"5xx\"} 30")
            .replace("\"2xx\"} 90", "\"2xx\"} 170");
        let rows = w.push(
            t0 + Duration::from_secs(5),
            Snapshot::from_scrape(&later),
            &order,
        );
        let stable = &rows[0];
        assert_eq!(stable.total, 200.0);
        assert_eq!(stable.rate, 20.0);
        assert_eq!(stable.error_pct, Some(20.0));
        assert_eq!(stable.p50, None, "no new TTFB observations in the window");
        let dropped = w.push(
            t0 + Duration::from_secs(16),
            Snapshot::from_scrape(&later),
            &order,
        );
        assert_eq!(dropped[0].rate, 0.0, "the first snapshot left the window");
    }

    #[test]
    fn renders_aligned_columns_and_plain_lines() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        let rows = w.push(t0, Snapshot::from_scrape(SCRAPE), &[]);
        let table = render("title", &rows);
        assert_eq!(table.len(), 4, "title, head, two cohorts");
        assert!(table[1].starts_with("cohort"));
        let widths: Vec<usize> = table[1..].iter().map(|l| l.len()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{table:#?}");
        assert!(
            table[3].contains("60.0%") && table[3].contains("10.0%"),
            "{}",
            table[3]
        );
        let lines = plain(Duration::from_secs(3), &rows);
        assert!(lines[1].starts_with("[3s] route=r cohort=stable split=80% requests=100"));
        assert!(lines[1].contains(" errors=10.0% ") && lines[1].contains(" other=10.0%"));
        assert!(redraw(3, &table).starts_with("\x1b[3A"));
    }
}
