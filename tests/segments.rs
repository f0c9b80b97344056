//! Segments end to end: the metrics of a segmented route carry its segments (values and
//! `other`) and nothing else, a route without one keeps its series exactly; and a canary that
//! is worse for one segment alone is rolled back by a `per_segment` guard, named with its
//! numbers in `/rollouts` and the audit log, where the overall guard at the same traffic lets
//! it be.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cohort::control::rollout::{judge, Now};
use serde_json::Value;
use support::sim::{Behaviour, SimBackend};
use support::*;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const OUTCOMES: [&str; 5] = ["resolved", "escalated", "abandoned", "error", "other"];

/// Every label set of `name`'s series whose `route` is `route`, as sorted `k=v` lists.
fn label_sets(s: &Scrape, name: &str, route: &str) -> BTreeSet<Vec<String>> {
    s.series(name)
        .into_iter()
        .filter(|x| x.labels.iter().any(|(k, v)| k == "route" && v == route))
        .map(|x| {
            let mut l: Vec<String> = x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            l
        })
        .collect()
}

fn sets(route: &str, segments: &[&str], key: &str, values: &[&str]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for v in values {
        let l = vec![
            "cohort=only".to_string(),
            format!("route={route}"),
            format!("{key}={v}"),
        ];
        if segments.is_empty() {
            let mut l = l.clone();
            l.sort();
            out.insert(l);
        }
        for s in segments {
            let mut l = l.clone();
            l.push(format!("segment={s}"));
            l.sort();
            out.insert(l);
        }
    }
    out
}

#[tokio::test]
async fn a_segmented_route_has_exactly_its_segments_series_and_others_keep_theirs() {
    let only = MockUpstream::json("only").await;
    let proxy = Config::new()
        .upstream("only", only.addr)
        .route(
            Route::new("chat")
                .matching("path_prefix: /chat/")
                .set("segment: {request_header: x-channel, values: [billing, shipping]}")
                .single("only"),
        )
        .route(
            Route::new("intent")
                .matching("path_prefix: /intent/")
                .set("segment: {response_header: x-agent-intent, values: [refund]}")
                .single("only"),
        )
        .route(
            Route::new("plain")
                .matching("path_prefix: /plain/")
                .single("only"),
        )
        .start()
        .await;
    let sends: [(&str, &[(&str, &str)]); 10] = [
        (
            "/chat/",
            &[
                ("x-channel", "billing"),
                ("x-mock-set", "x-agent-outcome: escalated"),
            ],
        ),
        (
            "/chat/",
            &[("x-channel", "Billing"), ("x-mock-status", "503")],
        ),
        (
            "/chat/",
            &[
                ("x-channel", "shipping"),
                ("x-mock-set", "x-agent-outcome: resolved"),
            ],
        ),
        ("/chat/", &[("x-mock-set", "x-agent-outcome: resolved")]),
        (
            "/chat/",
            &[("x-channel", "fax"), ("x-mock-set", "x-agent-outcome: odd")],
        ),
        ("/intent/", &[("x-mock-set", "x-agent-intent: refund")]),
        ("/intent/", &[("x-mock-set", "x-agent-intent: REFUND")]),
        (
            "/intent/",
            &[
                ("x-mock-set", "x-agent-intent: cancel"),
                ("x-channel", "refund"),
            ],
        ),
        ("/plain/", &[("x-channel", "billing")]),
        ("/plain/", &[("x-mock-set", "x-agent-outcome: resolved")]),
    ];
    for (path, headers) in sends {
        proxy.get(path, headers).await;
    }
    let s = proxy.scrape().await;
    s.assert_well_formed();
    let chat = ["billing", "shipping", "other"];
    assert_eq!(
        label_sets(&s, "cohort_requests_total", "chat"),
        sets("chat", &chat, "status_class", &CLASSES)
    );
    assert_eq!(
        label_sets(&s, "cohort_outcomes_total", "chat"),
        sets("chat", &chat, "outcome", &OUTCOMES)
    );
    let count = "cohort_request_duration_seconds_count";
    let durations: BTreeSet<Vec<String>> = chat
        .iter()
        .map(|seg| {
            vec![
                "cohort=only".into(),
                "route=chat".into(),
                format!("segment={seg}"),
            ]
        })
        .collect();
    assert_eq!(label_sets(&s, count, "chat"), durations);
    let at = |route, seg, k, v| {
        [
            ("route", route),
            ("cohort", "only"),
            ("segment", seg),
            (k, v),
        ]
    };
    let requests = "cohort_requests_total";
    for (seg, class, n) in [
        ("billing", "2xx", 1.0),
        ("billing", "5xx", 1.0),
        ("shipping", "2xx", 1.0),
        ("other", "2xx", 2.0),
        ("shipping", "5xx", 0.0),
    ] {
        assert_eq!(
            s.metric(requests, &at("chat", seg, "status_class", class)),
            n,
            "{seg} {class}"
        );
    }
    for (seg, outcome, n) in [
        ("billing", "escalated", 1.0),
        ("shipping", "resolved", 1.0),
        ("other", "resolved", 1.0),
        ("other", "other", 1.0),
        ("billing", "resolved", 0.0),
    ] {
        assert_eq!(
            s.metric(
                "cohort_outcomes_total",
                &at("chat", seg, "outcome", outcome)
            ),
            n,
            "{seg} {outcome}"
        );
    }
    for (seg, n) in [("billing", 2.0), ("shipping", 1.0), ("other", 2.0)] {
        let labels = [("route", "chat"), ("cohort", "only"), ("segment", seg)];
        assert_eq!(s.metric(count, &labels), n, "{seg}");
    }
    // A response-header segment: the agent's answer says, the request's headers do not.
    assert_eq!(
        s.metric(requests, &at("intent", "refund", "status_class", "2xx")),
        2.0
    );
    assert_eq!(
        s.metric(requests, &at("intent", "other", "status_class", "2xx")),
        1.0
    );
    assert_eq!(
        label_sets(&s, requests, "intent"),
        sets("intent", &["refund", "other"], "status_class", &CLASSES)
    );
    // Without a segment, the contract's series, exactly.
    assert_eq!(
        label_sets(&s, requests, "plain"),
        sets("plain", &[], "status_class", &CLASSES)
    );
    assert_eq!(
        label_sets(&s, "cohort_outcomes_total", "plain"),
        sets("plain", &[], "outcome", &OUTCOMES)
    );
    let plain = [("route", "plain"), ("cohort", "only")];
    assert_eq!(s.metric(count, &plain), 2.0);
    assert_eq!(
        s.metric(requests, &[plain[0], plain[1], ("status_class", "2xx")]),
        2.0
    );
    // The other families carry no segment.
    for (name, value) in [
        ("cohort_time_to_first_byte_seconds_count", 5.0),
        ("cohort_in_flight_requests", 0.0),
        ("cohort_split_percent", 100.0),
    ] {
        assert!(
            s.series(name)
                .iter()
                .all(|x| x.labels.iter().all(|(k, _)| k != "segment")),
            "{name}"
        );
        assert_eq!(
            s.metric(name, &[("route", "chat"), ("cohort", "only")]),
            value,
            "{name}"
        );
    }
}

/// A proxy on a config file of its own directory, with the judge left to the test.
struct Rig {
    running: cohort::app::Running,
    public: SocketAddr,
    admin: SocketAddr,
    client: H1Client,
    now: Now,
    next_user: u64,
}

/// The route `agent` (stable 50, canary 50) segmented by `x-channel`, judged by `guards`.
fn write_config(dir: &Path, stable: &SimBackend, canary: &SimBackend, guards: &str) -> PathBuf {
    let rollout = format!(
        "rollout: {{id: v2, canary: canary, steps: [50], soak: 1h, min_samples: 100, guards: {guards}}}"
    );
    let route = Route::new("agent")
        .key("header: x-user-id")
        .set("segment: {request_header: x-channel, values: [billing, shipping, returns]}")
        .set(&rollout)
        .split(&[("stable", "stable", "50"), ("canary", "canary", "50")]);
    let yaml = Config::new()
        .top("state_dir: state")
        .top("reload: {watch: false, poll_interval: 1h}")
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(route)
        .yaml();
    let path = dir.join("cohort.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Billing is a tenth of the traffic, shipping 45%, returns 40%, and 5% send no channel.
fn channel(i: u64) -> Option<&'static str> {
    match i % 20 {
        0 | 1 => Some("billing"),
        2..=10 => Some("shipping"),
        11..=18 => Some("returns"),
        _ => None,
    }
}

impl Rig {
    async fn start(path: &Path) -> Rig {
        let running = support::start_unjudged(path).await;
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            next_user: 0,
        }
    }

    /// `n` requests from new users, 16 at a time, then a judge tick a simulated second on.
    async fn send_and_tick(&mut self, n: u64) {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            self.next_user += 1;
            let user = format!("user-{}", self.next_user);
            let mut headers = vec![("x-user-id", user.as_str())];
            if let Some(c) = channel(self.next_user) {
                headers.push(("x-channel", c));
            }
            let req = get(self.public, "/", &headers);
            let (client, gate) = (self.client.clone(), Arc::clone(&gate));
            set.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                fetch(&client, req).await.status
            });
        }
        while let Some(r) = within("a batch of requests", set.join_next()).await {
            r.unwrap();
        }
        self.now = self.now.later(Duration::from_secs(1));
        judge::tick(&self.running.control, self.now);
    }

    async fn rollout(&self) -> Value {
        let req = bearer_request("GET", self.admin, "/rollouts", None);
        let r = fetch(&self.client, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["rollouts"][0].clone()
    }

    /// Up to `ticks` ticks of `per_tick` requests while the rollout ramps; the ticks sent.
    async fn run_while_ramping(&mut self, per_tick: u64, ticks: u64) -> u64 {
        for t in 1..=ticks {
            self.send_and_tick(per_tick).await;
            if self.rollout().await["state"] != "ramping" {
                return t;
            }
        }
        ticks
    }
}

const PER_TICK: u64 = 300;
const MAX_TICKS: u64 = 25;

/// A stable backend failing 2% everywhere, and a canary failing 2% but 25% for billing:
/// 4.3% overall, inside a 3-point margin; billing far outside it.
async fn backends() -> (SimBackend, SimBackend) {
    let errors = |rate| Behaviour {
        error_rate: rate,
        ..Behaviour::default()
    };
    let stable = SimBackend::start(errors(0.02)).await;
    let by = Arc::new(vec![("billing", errors(0.25))]);
    let canary = SimBackend::start_by_channel(errors(0.02), by).await;
    (stable, canary)
}

#[tokio::test]
async fn a_canary_worse_for_billing_alone_is_rolled_back_by_its_per_segment_guard() {
    let (stable, canary) = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let both =
        "[{metric: error_rate, margin: 3}, {metric: error_rate, margin: 3, per_segment: true}]";
    let path = write_config(dir.path(), &stable, &canary, both);
    let mut rig = Rig::start(&path).await;
    let ticks = rig.run_while_ramping(PER_TICK, MAX_TICKS).await;
    let r = rig.rollout().await;
    assert_eq!(r["state"], "rolled_back", "after {ticks} ticks: {r:#}");
    let d = &r["history"][1];
    assert_eq!(
        (&d["decision"], &d["trigger"]),
        (&"rollback".into(), &"judge".into())
    );
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("guard failed: error_rate in segment billing: canary "),
        "{reason}"
    );
    let failed: Vec<&Value> = d["guards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{d:#}");
    let g = failed[0];
    assert_eq!(
        (&g["guard"], &g["segment"]),
        (&"error_rate".into(), &"billing".into())
    );
    let (c, b, limit) = (
        g["canary"].as_f64().unwrap(),
        g["baseline"].as_f64().unwrap(),
        g["limit"].as_f64().unwrap(),
    );
    assert!(c > limit && (limit - b - 0.03).abs() < 1e-9, "{g:#}");
    assert!(g["canary_samples"].as_u64() >= Some(100), "{g:#}");
    assert!(g["statistic"].as_f64() >= g["threshold"].as_f64(), "{g:#}");
    // The overall guard, over the same answers, had not failed; and every segment is read.
    let segments: Vec<&Value> = d["guards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| &g["segment"])
        .collect();
    assert_eq!(
        segments,
        [
            &Value::Null,
            &"billing".into(),
            &"shipping".into(),
            &"returns".into(),
            &"other".into()
        ]
    );
    assert_ne!(d["guards"][0]["status"], "fail", "{d:#}");
    assert_eq!(r["guards"], d["guards"]);
    let names = serde_json::json!(["billing", "shipping", "returns", "other"]);
    assert_eq!(r["segments"], names);

    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["decision"], "rollback");
    assert_eq!(last["reason"], d["reason"]);
    assert_eq!(last["guards"][1]["segment"], "billing");
    assert_eq!(last["guards"][1]["canary"], g["canary"]);
    rig.running.shutdown().await;

    // The overall guard alone, at the same traffic: billing's regression hides in the mean.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &stable,
        &canary,
        "[{metric: error_rate, margin: 3}]",
    );
    let mut rig = Rig::start(&path).await;
    let sent = rig.run_while_ramping(PER_TICK, MAX_TICKS).await;
    let r = rig.rollout().await;
    assert_eq!(r["state"], "ramping", "after {sent} ticks: {r:#}");
    let g = &r["guards"][0];
    assert_eq!(g["status"], "pass", "{g:#}");
    assert!(g.get("segment").is_none(), "{g:#}");
    rig.running.shutdown().await;
}
