//! Failures map to the right status and are counted exactly once with the right reason.

mod support;

use http::StatusCode;
use support::*;

const COHORT: [(&str, &str); 2] = [("route", "agent"), ("cohort", "backend")];

fn with<'a>(extra: (&'a str, &'a str)) -> [(&'a str, &'a str); 3] {
    [COHORT[0], COHORT[1], extra]
}

/// Checks the failure counters of (agent, backend): `reason` is `expected`, the rest 0.
fn assert_failures(scrape: &Scrape, reason: &str, expected: f64) {
    for r in ["connect", "timeout", "reset", "tls", "protocol"] {
        let n = scrape.metric("cohort_upstream_failures_total", &with(("reason", r)));
        let want = if r == reason { expected } else { 0.0 };
        assert_eq!(n, want, "cohort_upstream_failures_total reason={r}");
    }
}

fn assert_status_classes(scrape: &Scrape, class: &str, expected: f64) {
    for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        let n = scrape.metric("cohort_requests_total", &with(("status_class", c)));
        let want = if c == class { expected } else { 0.0 };
        assert_eq!(n, want, "cohort_requests_total status_class={c}");
    }
}

async fn proxy_to(endpoint: impl std::fmt::Display, options: &[&str]) -> TestProxy {
    Config::new()
        .upstream_with("backend", endpoint, options)
        .route(
            Route::new("agent")
                .matching("path_prefix: /v1/")
                .key("header: x-user-id")
                .single("backend"),
        )
        .start()
        .await
}

#[tokio::test]
async fn upstream_down_gives_502_and_one_connect_failure() {
    let proxy = proxy_to(dead_endpoint().await, &[]).await;
    let reply = proxy.get("/v1/chat", &[("x-user-id", "u")]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let scrape = proxy.scrape().await;
    assert_failures(&scrape, "connect", 1.0);
    assert_status_classes(&scrape, "5xx", 1.0);
    assert_eq!(scrape.metric("cohort_unrouted_requests_total", &[]), 0.0);
    proxy
        .expect_metric("cohort_in_flight_requests", &COHORT, 0.0)
        .await;
}

#[tokio::test]
async fn response_header_timeout_gives_504_and_one_timeout_failure() {
    let mock = MockUpstream::with("backend", Respond::Hang).await;
    let proxy = proxy_to(mock.addr, &["response_timeout: 200ms"]).await;
    let reply = proxy.get("/v1/chat", &[("x-user-id", "u")]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    // The request did reach the backend; it just never answered.
    assert_eq!(mock.only_request().target, "/v1/chat");
    let scrape = proxy.scrape().await;
    assert_failures(&scrape, "timeout", 1.0);
    assert_status_classes(&scrape, "5xx", 1.0);
    proxy
        .expect_metric("cohort_in_flight_requests", &COHORT, 0.0)
        .await;
}

#[tokio::test]
async fn unrouted_requests_get_404_and_are_counted_exactly() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to(mock.addr, &[]).await;
    for path in ["/", "/v2/chat", "/v1", "/V1/chat", "/x/v1/chat"] {
        let reply = proxy.get(path, &[("x-user-id", "u")]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.all("x-cohort"), Vec::<&str>::new(), "{path}");
    }
    let routed = proxy.get("/v1/chat", &[("x-user-id", "u")]).await;
    assert_eq!(routed.status, StatusCode::OK);

    let scrape = proxy.scrape().await;
    assert_eq!(scrape.metric("cohort_unrouted_requests_total", &[]), 5.0);
    assert_status_classes(&scrape, "2xx", 1.0);
    assert_eq!(mock.request_count(), 1);
}
