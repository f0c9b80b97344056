//! Drawing the window's rows: an aligned table redrawn in place for a terminal, or one
//! `key=value` line per cohort for logs and pipes.
//!
//! Owns: the columns and their formats. Must not touch: how rows are counted (`super`).

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
