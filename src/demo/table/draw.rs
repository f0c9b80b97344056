//! Drawing the window's rows: an aligned table redrawn in place for a terminal, or one
//! `key=value` line per cohort for logs and pipes.
//!
//! Owns: the columns and their formats (the request table and the token table). Must not touch: how rows are counted (`super`).

use std::fmt::Write as _;
use std::time::Duration;

use super::Row;

/// The outcome columns shown; any other value is summed into `other`.
const OUTCOMES: [&str; 4] = ["resolved", "escalated", "abandoned", "error"];

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
        let mut row = vec![
            cohort_name(rows, r),
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
    lines.extend(aligned(&cells));
    lines
}

/// `cells` (a header row first) as lines: the first column left-aligned, the rest right.
fn aligned(cells: &[Vec<String>]) -> Vec<String> {
    let columns = cells.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i == 0 {
                    let _ = write!(line, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(line, "  {}{cell}", " ".repeat(pad));
                }
            }
            line
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |n| format!("{n:.0}"))
}

/// A cost with the digits that matter at its size (the currency is the price's).
fn money(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(c) if c >= 100.0 => format!("{c:.0}"),
        Some(c) if c >= 1.0 => format!("{c:.2}"),
        Some(c) => format!("{c:.4}"),
    }
}

fn rate(row: &Row, kind: &str) -> Option<f64> {
    row.token_rates.get(kind).copied()
}

/// Share of input tokens served from the provider's cache over the window, in percent.
fn cached_pct(row: &Row) -> Option<f64> {
    let input = rate(row, "input").filter(|i| *i > 0.0)?;
    Some(100.0 * rate(row, "cached_input").unwrap_or(0.0) / input)
}

fn cohort_name(rows: &[Row], r: &Row) -> String {
    if rows.iter().any(|o| o.route != rows[0].route) {
        format!("{}/{}", r.route, r.cohort)
    } else {
        r.cohort.clone()
    }
}

/// A row's token columns, each with its key in the plain lines.
fn token_cells(r: &Row) -> [(&'static str, String); 9] {
    [
        ("ttft_p50", ms(r.ttft_p50)),
        ("ttft_p99", ms(r.ttft_p99)),
        ("itl_p99", ms(r.inter_token_p99)),
        ("out_tokens", num(r.output_tokens)),
        ("cost_per_1k", money(r.cost_per_1k)),
        ("in_tok_per_s", num(rate(r, "input"))),
        ("out_tok_per_s", num(rate(r, "output"))),
        ("cached", pct(cached_pct(r))),
        ("no_usage", pct(r.usage_missing_pct)),
    ]
}

/// The token table, one line per cohort under its own header: time to first token,
/// inter-token gaps, output tokens and cost per answer, token rates and missing usage.
pub fn tokens(rows: &[Row]) -> Vec<String> {
    let head = [
        "cohort",
        "ttft p50",
        "ttft p99",
        "itl p99",
        "out tok/answer",
        "cost/1k answers",
        "in tok/s",
        "out tok/s",
        "cached",
        "no usage",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut row = vec![cohort_name(rows, r)];
        row.extend(token_cells(r).into_iter().map(|(_, v)| v));
        cells.push(row);
    }
    aligned(&cells)
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
            for (key, value) in token_cells(r) {
                let _ = write!(line, " {key}={value}");
            }
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
