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
        ("/chat/", &[("x-channel", "billing"), ("x-mock-set", "x-agent-outcome: escalated")]),
        ("/chat/", &[("x-channel", "Billing"), ("x-mock-status", "503")]),
        ("/chat/", &[("x-channel", "shipping"), ("x-mock-set", "x-agent-outcome: resolved")]),
        ("/chat/", &[("x-mock-set", "x-agent-outcome: resolved")]),
        ("/chat/", &[("x-channel", "fax"), ("x-mock-set", "x-agent-outcome: odd")]),
        ("/intent/", &[("x-mock-set", "x-agent-intent: refund")]),
        ("/intent/", &[("x-mock-set", "x-agent-intent: REFUND")]),
        ("/intent/", &[("x-mock-set", "x-agent-intent: cancel"), ("x-channel", "refund")]),
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
        .map(|seg| vec!["cohort=only".into(), "route=chat".into(), format!("segment={seg}")])
        .collect();
    assert_eq!(label_sets(&s, count, "chat"), durations);
    let at = |route, seg, k, v| [("route", route), ("cohort", "only"), ("segment", seg), (k, v)];
    let requests = "cohort_requests_total";
    for (seg, class, n) in [
        ("billing", "2xx", 1.0),
        ("billing", "5xx", 1.0),
        ("shipping", "2xx", 1.0),
        ("other", "2xx", 2.0),
        ("shipping", "5xx", 0.0),
    ] {
        assert_eq!(s.metric(requests, &at("chat", seg, "status_class", class)), n, "{seg} {class}");
    }
    for (seg, outcome, n) in [
        ("billing", "escalated", 1.0),
        ("shipping", "resolved", 1.0),
        ("other", "resolved", 1.0),
        ("other", "other", 1.0),
        ("billing", "resolved", 0.0),
    ] {
        assert_eq!(s.metric("cohort_outcomes_total", &at("chat", seg, "outcome", outcome)), n, "{seg} {outcome}");
    }
    for (seg, n) in [("billing", 2.0), ("shipping", 1.0), ("other", 2.0)] {
        let labels = [("route", "chat"), ("cohort", "only"), ("segment", seg)];
        assert_eq!(s.metric(count, &labels), n, "{seg}");
    }
    // A response-header segment: the agent's answer says, the request's headers do not.
    assert_eq!(s.metric(requests, &at("intent", "refund", "status_class", "2xx")), 2.0);
    assert_eq!(s.metric(requests, &at("intent", "other", "status_class", "2xx")), 1.0);
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
    assert_eq!(s.metric(requests, &[plain[0], plain[1], ("status_class", "2xx")]), 2.0);
    // The other families carry no segment.
    for name in ["cohort_time_to_first_byte_seconds_count", "cohort_in_flight_requests", "cohort_split_percent"] {
        assert!(
            s.series(name).iter().all(|x| x.labels.iter().all(|(k, _)| k != "segment")),
            "{name}"
        );
        assert_eq!(s.metric(name, &[("route", "chat"), ("cohort", "only")]).is_finite(), true);
    }
}
