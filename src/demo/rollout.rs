//! `cohort demo --rollout`'s screen: the admin's `GET /rollouts` JSON, fetched every second,
//! drawn as the rollout's position, each guard's reading against its threshold, and the
//! decision history as it grows (or, off a terminal, one line a second and each decision once).
//!
//! Owns: reading that JSON and drawing it. Must not touch: the rollout itself; it reads the
//! admin endpoint as any client would, so it shows what an operator's curl shows.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Decisions shown on a terminal, newest last.
const HISTORY_SHOWN: usize = 8;
const BAR: usize = 20;

type AdminClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Reads `GET {url}` (the admin's `/rollouts`) as JSON.
pub struct Source {
    client: AdminClient,
    url: String,
}

impl Source {
    pub fn new(url: String) -> Self {
        Source {
            client: Client::builder(TokioExecutor::new()).build_http(),
            url,
        }
    }

    /// The report, or `None` when the admin does not answer within a second.
    pub async fn fetch(&self) -> Option<Value> {
        let req = Request::get(&self.url).body(Empty::new()).ok()?;
        let exchange = async {
            let resp = self.client.request(req).await.ok()?;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&body).ok()
        };
        tokio::time::timeout(Duration::from_secs(1), exchange)
            .await
            .ok()
            .flatten()
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A guard's value in its unit: a share for rates, a time for latencies, else a number.
fn value(guard: &str, v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    if guard.contains("rate") {
        format!("{:.2}%", 100.0 * v)
    } else if ["latency", "ttfb", "ttft", "inter_token"]
        .iter()
        .any(|p| guard.starts_with(p))
    {
        if v < 1.0 {
            format!("{:.0}ms", v * 1000.0)
        } else {
            format!("{v:.2}s")
        }
    } else {
        format!("{v:.1}")
    }
}

/// How far a guard's evidence is towards failing it: statistic over threshold (ln e-values),
/// as a ratio and a bar that is full when the guard fails.
fn progress(statistic: Option<f64>, threshold: Option<f64>) -> String {
    let (Some(s), Some(t)) = (statistic, threshold) else {
        return "-".into();
    };
    let ratio = if t > 0.0 { s / t } else { 0.0 };
    let filled = (ratio.clamp(0.0, 1.0) * BAR as f64).round() as usize;
    format!(
        "{s:>6.2} / {t:.2}  [{}{}] {:>4.0}%",
        "#".repeat(filled),
        " ".repeat(BAR - filled),
        100.0 * ratio.max(0.0)
    )
}

fn position(p: Option<&Value>) -> String {
    match p.filter(|p| !p.is_null()) {
        Some(p) => format!(
            "{} step {} at {}%",
            text(p, "state"),
            p.get("step").and_then(Value::as_u64).map_or(0, |s| s + 1),
            num(p, "percent").unwrap_or(0.0)
        ),
        None => "-".into(),
    }
}

/// One decision: its time of day, kind, where it went from and to, and why.
fn decision(d: &Value) -> String {
    let at = text(d, "at");
    let clock = at.get(11..19).unwrap_or(at);
    format!(
        "{clock}  {:<8}  {} -> {}  {}",
        text(d, "decision"),
        position(d.get("from")),
        position(d.get("to")),
        text(d, "reason")
    )
}

/// Where a rollout stands, read once for both ways of drawing it.
struct At<'a> {
    id: &'a str,
    canary: &'a str,
    route: &'a str,
    state: &'a str,
    /// Counted from 1, as a person counts steps (the JSON counts from 0).
    step: u64,
    steps: usize,
    percent: f64,
    soaked: f64,
    soak: f64,
    canary_samples: f64,
    baseline_samples: f64,
    min_samples: f64,
}

impl<'a> At<'a> {
    fn of(r: &'a Value) -> Self {
        let samples = r.get("samples").unwrap_or(&Value::Null);
        At {
            id: text(r, "id"),
            canary: text(r, "canary"),
            route: text(r, "route"),
            state: text(r, "state"),
            step: r.get("step").and_then(Value::as_u64).map_or(0, |s| s + 1),
            steps: list(r, "steps").len(),
            percent: num(r, "percent").unwrap_or(0.0),
            soaked: num(r, "soaked_seconds").unwrap_or(0.0),
            soak: num(r, "soak_seconds").unwrap_or(0.0),
            canary_samples: num(samples, "canary").unwrap_or(0.0),
            baseline_samples: num(samples, "baseline").unwrap_or(0.0),
            min_samples: num(r, "min_samples").unwrap_or(0.0),
        }
    }
}

/// The array at `key`, or none.
fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The screen's lines for a `GET /rollouts` report.
pub fn render(report: Option<&Value>) -> Vec<String> {
    let Some(report) = report else {
        return vec!["rollout: the admin's /rollouts does not answer".into()];
    };
    let mut lines = Vec::new();
    for r in list(report, "rollouts") {
        let at = At::of(r);
        lines.push(format!(
            "rollout {} of {} on route {}: {}, step {}/{} at {}%, soaked {:.0}s of {:.0}s",
            at.id, at.canary, at.route, at.state, at.step, at.steps, at.percent, at.soaked, at.soak
        ));
        lines.push(format!(
            "samples: canary {} / baseline {} (each needs {})",
            at.canary_samples, at.baseline_samples, at.min_samples
        ));
        lines.push(format!(
            "  {:<16} {:>9} {:>9} {:>9}  {:<8}  ln e-value / threshold",
            "guard", "canary", "baseline", "limit", "status"
        ));
        for g in list(r, "guards") {
            let name = text(g, "guard");
            let mut l = format!(
                "  {name:<16} {:>9} {:>9} {:>9}  {:<8}  {}",
                value(name, num(g, "canary")),
                value(name, num(g, "baseline")),
                value(name, num(g, "limit")),
                text(g, "status"),
                progress(num(g, "statistic"), num(g, "threshold")),
            );
            if let Some(note) = g.get("note").and_then(Value::as_str) {
                let _ = write!(l, "  ({note})");
            }
            lines.push(l);
        }
        if let Some(problem) = r.get("problem").and_then(Value::as_str) {
            lines.push(format!("problem: {problem}"));
        }
        let history = list(r, "history");
        lines.push(format!("decisions ({}):", history.len()));
        let from = history.len().saturating_sub(HISTORY_SHOWN);
        lines.extend(history[from..].iter().map(|d| format!("  {}", decision(d))));
    }
    if lines.is_empty() {
        lines.push("rollout: none running (does the config have one?)".into());
    }
    lines
}

/// Off a terminal: one `key=value` line per rollout, then each decision not printed before.
pub fn plain(
    elapsed: Duration,
    report: Option<&Value>,
    printed: &mut HashSet<String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for r in report.map_or(&[][..], |r| list(r, "rollouts")) {
        let at = At::of(r);
        let mut l = format!(
            "[{}s] rollout={} route={} state={} step={} percent={} soaked={:.0}s/{:.0}s canary_samples={} baseline_samples={}",
            elapsed.as_secs(),
            at.id, at.route, at.state, at.step, at.percent, at.soaked, at.soak, at.canary_samples, at.baseline_samples
        );
        for g in list(r, "guards") {
            let _ = write!(
                l,
                " guard[{}]={}:{:.2}/{:.2}",
                text(g, "guard"),
                text(g, "status"),
                num(g, "statistic").unwrap_or(f64::NAN),
                num(g, "threshold").unwrap_or(f64::NAN)
            );
        }
        lines.push(l);
        for d in list(r, "history") {
            let key = format!(
                "{}|{}|{}",
                text(r, "route"),
                d.get("at_unix_ms").unwrap_or(&Value::Null),
                text(d, "decision")
            );
            if printed.insert(key) {
                lines.push(format!(
                    "decision route={} {}",
                    text(r, "route"),
                    decision(d)
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"state_dir":"/tmp/x","rollouts":[{"route":"support-agent","id":"demo-rollout","canary":"canary","baseline":"stable","state":"rolled_back","step":0,"steps":[5.0,25.0,50.0,100.0],"percent":0.0,"soak_seconds":15.0,"soaked_seconds":4.0,"min_samples":200,"samples":{"canary":210,"baseline":4000},
      "guards":[{"guard":"error_rate","status":"fail","canary":0.1,"baseline":0.0,"limit":0.02,"canary_samples":210,"baseline_samples":4000,"statistic":6.5,"threshold":5.0},
                {"guard":"latency p90","status":"waiting","canary":0.2,"baseline":0.25,"limit":0.3,"canary_samples":200,"baseline_samples":3900,"statistic":-1.0,"threshold":5.0}],
      "history":[{"at":"2026-12-06T21:58:03.120Z","at_unix_ms":1,"decision":"start","to":{"state":"ramping","step":0,"percent":5.0},"reason":"started"},
                 {"at":"2026-12-06T21:58:40.000Z","at_unix_ms":2,"decision":"rollback","from":{"state":"ramping","step":0,"percent":5.0},"to":{"state":"rolled_back","step":0,"percent":0.0},"reason":"guard failed: error_rate"}]}]}"#;

    #[test]
    fn draws_position_guards_and_history() {
        let report: Value = serde_json::from_str(REPORT).unwrap();
        let lines = render(Some(&report));
        assert!(
            lines[0].contains("rolled_back, step 1/4 at 0%, soaked 4s of 15s"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("canary 210 / baseline 4000 (each needs 200)"));
        let err = lines.iter().find(|l| l.contains("error_rate")).unwrap();
        assert!(
            err.contains("10.00%") && err.contains("2.00%") && err.contains("fail"),
            "{err}"
        );
        assert!(
            err.contains("6.50 / 5.00") && err.contains(&format!("[{}]", "#".repeat(BAR))),
            "{err}"
        );
        let lat = lines.iter().find(|l| l.contains("latency p90")).unwrap();
        assert!(
            lat.contains("200ms") && lat.contains("300ms") && lat.contains("[  "),
            "{lat}"
        );
        let last = lines.last().unwrap();
        assert!(
            last.contains("21:58:40  rollback")
                && last.contains("ramping step 1 at 5% -> rolled_back step 1 at 0%"),
            "{last}"
        );
        assert_eq!(render(None).len(), 1);
        assert!(render(Some(&serde_json::json!({"rollouts": []})))[0].contains("none"));
    }

    #[test]
    fn plain_prints_each_decision_once() {
        let report: Value = serde_json::from_str(REPORT).unwrap();
        let mut printed = HashSet::new();
        let first = plain(Duration::from_secs(3), Some(&report), &mut printed);
        assert!(first[0]
            .starts_with("[3s] rollout=demo-rollout route=support-agent state=rolled_back step=1"));
        assert!(
            first[0].contains("guard[error_rate]=fail:6.50/5.00"),
            "{}",
            first[0]
        );
        assert_eq!(
            first.iter().filter(|l| l.starts_with("decision ")).count(),
            2
        );
        let again = plain(Duration::from_secs(4), Some(&report), &mut printed);
        assert_eq!(again.len(), 1, "decisions are printed once");
    }
}
