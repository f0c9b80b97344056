//! The scrape counts exactly what happened: requests per cohort and status class, outcomes by
//! value, histogram counts, in-flight gauges back at zero, split gauges, and a well-formed
//! exposition.

mod support;

use std::collections::BTreeMap;

use http::StatusCode;
use support::*;

const SPLIT: [(&str, u32); 2] = [("stable", 7025), ("canary", 2975)];
const OUTCOMES: [&str; 5] = ["resolved", "escalated", "abandoned", "error", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

async fn metrics_proxy() -> (TestProxy, [MockUpstream; 3]) {
    let mocks = [
        MockUpstream::json("stable").await,
        MockUpstream::json("canary").await,
        MockUpstream::json("only").await,
    ];
    let mut config = Config::new();
    for m in &mocks {
        config = config.upstream(&m.name, m.addr);
    }
    let proxy = config
        .route(
            Route::new("agent")
                .matching("path_prefix: /agent/")
                .key("header: x-user-id")
                .split(&[("stable", "stable", "70.25"), ("canary", "canary", "29.75")]),
        )
        .route(
            Route::new("custom")
                .matching("path_prefix: /custom/")
                .set("outcome_header: x-result")
                .set("outcomes: [ok, fail]")
                .single("only"),
        )
        .start()
        .await;
    (proxy, mocks)
}

#[derive(Default)]
struct Expected {
    requests: BTreeMap<(&'static str, &'static str), f64>,
    outcomes: BTreeMap<(&'static str, &'static str), f64>,
    total: BTreeMap<&'static str, f64>,
}

#[tokio::test]
async fn counts_are_exact() {
    let (proxy, _mocks) = metrics_proxy().await;
    let mut want = Expected::default();
    let outcome_values = [
        Some("resolved"),
        Some("escalated"),
        Some("abandoned"),
        Some("error"),
        Some("surprised"),
        None,
    ];
    for i in 0..90 {
        let key = format!("user-{i}");
        let cohort = contract_cohort("agent", key.as_bytes(), &SPLIT);
        let mut headers = vec![("x-user-id", key.as_str())];
        let (status, class) = match i % 10 {
            7 => ("404", "4xx"),
            9 => ("503", "5xx"),
            _ => ("200", "2xx"),
        };
        headers.push(("x-mock-status", status));
        let outcome = outcome_values[i % outcome_values.len()];
        let set;
        if let Some(o) = outcome {
            set = format!("x-agent-outcome: {o}");
            headers.push(("x-mock-set", &set));
            let counted = if OUTCOMES.contains(&o) { o } else { "other" };
            *want.outcomes.entry((cohort, counted)).or_default() += 1.0;
        }
        let reply = proxy.get("/agent/chat", &headers).await;
        assert_eq!(reply.status.as_str(), status);
        assert_eq!(reply.all("x-cohort"), [cohort]);
        *want.requests.entry((cohort, class)).or_default() += 1.0;
        *want.total.entry(cohort).or_default() += 1.0;
    }
    assert_eq!(want.total.len(), 2, "both cohorts must get traffic");

    // The custom route names its own header and values; anything else is `other`, and the
    // default header means nothing there.
    for (header, times) in [
        ("x-result: ok", 3),
        ("x-result: fail", 2),
        ("x-result: resolved", 1),
        ("x-agent-outcome: ok", 1),
    ] {
        for _ in 0..times {
            let reply = proxy.get("/custom/run", &[("x-mock-set", header)]).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    }

    let scrape = proxy.scrape().await;
    for (cohort, _) in SPLIT {
        let labels = |k, v| [("route", "agent"), ("cohort", cohort), (k, v)];
        for class in CLASSES {
            let expected = want.requests.get(&(cohort, class)).copied().unwrap_or(0.0);
            let got = scrape.metric("cohort_requests_total", &labels("status_class", class));
            assert_eq!(got, expected, "{cohort} {class}");
        }
        for outcome in OUTCOMES {
            let expected = want
                .outcomes
                .get(&(cohort, outcome))
                .copied()
                .unwrap_or(0.0);
            let got = scrape.metric("cohort_outcomes_total", &labels("outcome", outcome));
            assert_eq!(got, expected, "{cohort} outcome {outcome}");
        }
        assert_eq!(
            scrape.get("cohort_outcomes_total", &labels("outcome", "surprised")),
            None,
            "unknown outcomes are never a label value"
        );
    }

    let custom = |v| [("route", "custom"), ("cohort", "only"), ("outcome", v)];
    assert_eq!(scrape.metric("cohort_outcomes_total", &custom("ok")), 3.0);
    assert_eq!(scrape.metric("cohort_outcomes_total", &custom("fail")), 2.0);
    assert_eq!(
        scrape.metric("cohort_outcomes_total", &custom("other")),
        1.0
    );
    assert_eq!(
        scrape.get("cohort_outcomes_total", &custom("resolved")),
        None
    );
    let custom_2xx = [
        ("route", "custom"),
        ("cohort", "only"),
        ("status_class", "2xx"),
    ];
    assert_eq!(scrape.metric("cohort_requests_total", &custom_2xx), 7.0);
    assert_eq!(scrape.metric("cohort_unrouted_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn histograms_and_gauges_settle_exactly() {
    let (proxy, _mocks) = metrics_proxy().await;
    let mut total: BTreeMap<&str, f64> = BTreeMap::new();
    for i in 0..40 {
        let key = format!("key-{i}");
        let reply = proxy.get("/agent/chat", &[("x-user-id", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        *total
            .entry(contract_cohort("agent", key.as_bytes(), &SPLIT))
            .or_default() += 1.0;
    }
    for (cohort, _) in SPLIT {
        let labels = [("route", "agent"), ("cohort", cohort)];
        let n = total.get(cohort).copied().unwrap_or(0.0);
        // Duration ends when the body is dropped, just after the client's last byte.
        for name in [
            "cohort_request_duration_seconds_count",
            "cohort_time_to_first_byte_seconds_count",
        ] {
            proxy.expect_metric(name, &labels, n).await;
        }
        proxy
            .expect_metric("cohort_in_flight_requests", &labels, 0.0)
            .await;
    }

    let scrape = proxy.scrape().await;
    let split = |route, cohort| {
        scrape.metric(
            "cohort_split_percent",
            &[("route", route), ("cohort", cohort)],
        )
    };
    assert_eq!(split("agent", "stable"), 70.25);
    assert_eq!(split("agent", "canary"), 29.75);
    assert_eq!(split("custom", "only"), 100.0);
    assert_eq!(scrape.metric("cohort_config_generation", &[]), 1.0);
    for result in ["success", "failure"] {
        let n = scrape.metric("cohort_config_reloads_total", &[("result", result)]);
        assert_eq!(n, 0.0, "reloads {result}");
    }
    // Bucket counts are cumulative and end at the total.
    for (cohort, _) in SPLIT {
        let mut buckets: Vec<(f64, f64)> = scrape
            .series("cohort_request_duration_seconds_bucket")
            .into_iter()
            .filter(|s| s.labels.iter().any(|(k, v)| k == "cohort" && v == cohort))
            .map(|s| {
                let le = &s.labels.iter().find(|(k, _)| k == "le").unwrap().1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, total[cohort]));
    }
}

#[tokio::test]
async fn scrape_is_well_formed_and_bounded() {
    let (proxy, _mocks) = metrics_proxy().await;
    for i in 0..5 {
        let key = format!("user-{i}");
        proxy.get("/agent/chat", &[("x-user-id", &key)]).await;
    }
    proxy.get("/custom/run", &[]).await;
    proxy.get("/nowhere", &[]).await;

    let reply = proxy.admin("GET", "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        reply.header("content-type")
    );
    let scrape = Scrape::parse(&reply.text());
    scrape.assert_well_formed();
    for name in [
        "cohort_requests_total",
        "cohort_request_duration_seconds",
        "cohort_time_to_first_byte_seconds",
        "cohort_upstream_failures_total",
        "cohort_outcomes_total",
        "cohort_in_flight_requests",
        "cohort_split_percent",
        "cohort_unrouted_requests_total",
        "cohort_config_reloads_total",
        "cohort_config_generation",
    ] {
        assert!(
            scrape.text.contains(&format!("# TYPE {name} ")),
            "{name} missing from the scrape"
        );
    }
    assert!(scrape
        .text
        .contains("# TYPE cohort_request_duration_seconds histogram"));
    // No label ever holds a user id or a path.
    for s in &scrape.samples {
        for (k, v) in &s.labels {
            assert!(
                !v.contains("user-") && !v.contains('/'),
                "unbounded label {k}={v:?} on {}",
                s.name
            );
        }
    }
    assert_eq!(scrape.metric("cohort_unrouted_requests_total", &[]), 1.0);
    // cohort's own faults are counted from the start, at zero while there are none.
    assert_eq!(
        scrape.metric("cohort_internal_errors_total", &[("reason", "request")]),
        0.0
    );
}

/// Route `agent` with stable at 90% and the canary `canary` (on upstream `canary`) at 10%.
fn renamed_canary(stable: &MockUpstream, canary: &MockUpstream, name: &str) -> String {
    Config::new()
        .top("reload: {watch: false, poll_interval: 1h}")
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .split(&[("stable", "stable", "90"), (name, "canary", "10")]),
        )
        .yaml()
}

#[tokio::test]
async fn removed_cohorts_lose_their_gauges_at_once_and_their_counts_after_the_grace() {
    let (stable, canary) = (
        MockUpstream::json("stable").await,
        MockUpstream::json("canary").await,
    );
    let proxy = TestProxy::start(&renamed_canary(&stable, &canary, "canary-0")).await;
    let path = proxy.dir.path().join("cohort.yaml");
    // user-3 (bucket 9955) is in the canary at 10%, alice (2871) in stable.
    let both = || async {
        for user in ["user-3", "alice"] {
            let reply = proxy.get("/", &[("x-user-id", user)]).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    };
    both().await;
    let lines = |s: &Scrape| s.samples.len();
    let serving = lines(&proxy.scrape().await);
    let of = |s: &Scrape, name: &str, cohort: &str| {
        s.series(name)
            .into_iter()
            .filter(|x| x.labels.iter().any(|(k, v)| k == "cohort" && v == cohort))
            .count()
    };

    for n in 1..=50 {
        std::fs::write(
            &path,
            renamed_canary(&stable, &canary, &format!("canary-{n}")),
        )
        .unwrap();
        let outcome = proxy.running.reload("test").await;
        assert!(
            matches!(outcome, cohort::control::reload::Outcome::Applied { .. }),
            "{outcome:?}"
        );
        both().await;
        let s = proxy.scrape().await;
        let was = format!("canary-{}", n - 1);
        for gauge in ["cohort_split_percent", "cohort_in_flight_requests"] {
            assert_eq!(of(&s, gauge, &was), 0, "{gauge} of {was} after reload {n}");
            assert_eq!(s.series(gauge).len(), 2, "{gauge} after reload {n}");
        }
        let sum: f64 = s
            .series("cohort_split_percent")
            .iter()
            .map(|x| x.value)
            .sum();
        assert_eq!(sum, 100.0, "after reload {n}");
        // Counters stay for a last scrape.
        let two = [
            ("route", "agent"),
            ("cohort", was.as_str()),
            ("status_class", "2xx"),
        ];
        assert_eq!(
            s.metric("cohort_requests_total", &two),
            1.0,
            "after reload {n}"
        );
    }
    assert!(
        lines(&proxy.scrape().await) > serving,
        "nothing kept for a last scrape"
    );

    // A refused file names a cohort that no table serves: it leaves nothing behind.
    let refused = renamed_canary(&stable, &canary, "canary-refused").replace("\"10\"", "11");
    let refused = refused.replace("percent: 10\n", "percent: 11\n");
    std::fs::write(&path, refused).unwrap();
    let outcome = proxy.running.reload("test").await;
    assert!(
        matches!(outcome, cohort::control::reload::Outcome::Rejected(_)),
        "{outcome:?}"
    );
    let s = proxy.scrape().await;
    for gauge in ["cohort_split_percent", "cohort_in_flight_requests"] {
        assert_eq!(of(&s, gauge, "canary-refused"), 0, "{gauge}");
    }

    // A cohort back within the grace keeps its series and counts on from where it was.
    std::fs::write(&path, renamed_canary(&stable, &canary, "canary-49")).unwrap();
    proxy.running.reload("test").await;
    both().await;
    let metrics = &proxy.running.control.metrics;
    metrics.upkeep_at(std::time::Instant::now() + cohort::telemetry::RETIRED_GRACE);
    let s = proxy.scrape().await;
    s.assert_well_formed();
    assert_eq!(
        lines(&s),
        serving,
        "the scrape grew with the releases:\n{}",
        s.text
    );
    let back = [
        ("route", "agent"),
        ("cohort", "canary-49"),
        ("status_class", "2xx"),
    ];
    assert_eq!(s.metric("cohort_requests_total", &back), 2.0);
    let stable_2xx = [
        ("route", "agent"),
        ("cohort", "stable"),
        ("status_class", "2xx"),
    ];
    assert_eq!(s.metric("cohort_requests_total", &stable_2xx), 52.0);
    assert!(!s.text.contains("canary-refused"), "{}", s.text);
    for n in (0..=50).filter(|n| *n != 49) {
        let name = format!("canary-{n}");
        assert!(
            !s.text.contains(&format!("cohort=\"{name}\"")),
            "{name} still shows"
        );
    }
}
