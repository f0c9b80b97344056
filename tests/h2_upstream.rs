//! HTTP/2 upstreams (`protocol: http2`, h2c with prior knowledge): many concurrent requests
//! multiplexed over few connections, and gRPC end to end with trailers, its `grpc-status`
//! counted as an outcome.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn an_h2_upstream_multiplexes_a_hundred_concurrent_requests() {
    // The mock answers only once all 100 wait together: every one is in flight at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mock = MockUpstream::with("backend", Respond::Barrier(barrier)).await;
    let proxy = proxy_to_backend(mock.addr, &["protocol: http2"]).await;

    // HTTP/1.1 clients, so the proxy sees 100 connections and must fold them into few.
    let client = h1_client();
    let requests = (0..100).map(|i| {
        let key = format!("user-{i}");
        let req = get(
            proxy.public,
            &format!("/chat/{i}"),
            &[("x-user-id", key.as_str())],
        );
        fetch(&client, req)
    });
    let replies = within(
        "100 concurrent requests",
        futures_util::future::join_all(requests),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.upstream_saw(),
            ("backend".to_string(), vec!["backend".to_string()])
        );
    }

    let seen = mock.requests();
    assert_eq!(seen.len(), 100);
    let mut targets: Vec<String> = seen.iter().map(|s| s.target.clone()).collect();
    targets.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("/chat/{i}")).collect();
    want.sort();
    assert_eq!(targets, want);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        // No `host` beside :authority (the client's, see tests/authority.rs), so the request
        // is well-formed HTTP/2; the client's host travels in X-Forwarded-Host too.
        assert!(s.all("host").is_empty());
        assert_eq!(s.all("x-forwarded-host"), [proxy.public.to_string()]);
    }
    let connections = mock.connections();
    assert!(
        (1..=4).contains(&connections),
        "100 requests used {connections} upstream connections"
    );
}

const OUTCOMES: [&str; 5] = ["resolved", "escalated", "abandoned", "error", "other"];

/// Every outcome counter of (agent, backend), in `OUTCOMES` order.
async fn outcomes(proxy: &TestProxy) -> Vec<f64> {
    let scrape = proxy.scrape().await;
    OUTCOMES
        .iter()
        .map(|o| {
            scrape.metric(
                "cohort_outcomes_total",
                &[("route", "agent"), ("cohort", "backend"), ("outcome", o)],
            )
        })
        .collect()
}

/// Waits for the outcome counters to read `want` (they are counted when the body ends).
async fn expect_outcomes(proxy: &TestProxy, want: [f64; 5]) {
    for (o, n) in OUTCOMES.iter().zip(want) {
        proxy
            .expect_metric(
                "cohort_outcomes_total",
                &[("route", "agent"), ("cohort", "backend"), ("outcome", o)],
                n,
            )
            .await;
    }
    assert_eq!(outcomes(proxy).await, want);
}

/// A unary gRPC call with the mock's control headers.
fn grpc_call(proxy: &TestProxy, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("POST")
        .uri(format!("http://{}/agent.v1.Agent/Chat", proxy.public))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", "user-1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap()
}

#[tokio::test]
async fn grpc_trailers_cross_h2_end_to_end_and_count_as_outcomes() {
    let mock = MockUpstream::with("backend", Respond::Grpc).await;
    let proxy = proxy_to_backend(mock.addr, &["protocol: http2"]).await;
    let mut h2 = H2c::connect(proxy.public).await;

    // A failure in the trailers: grpc-status 13 is an `error` outcome.
    let r = h2
        .fetch(grpc_call(
            &proxy,
            &[
                ("x-mock-grpc-status", "13"),
                ("x-mock-grpc-message", "boom"),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.all("content-type"), ["application/grpc"]);
    assert_eq!(r.body.as_ref(), GRPC_REPLY);
    let trailers = r.trailers.as_ref().expect("trailers");
    assert_eq!(values(trailers, "grpc-status"), ["13"]);
    assert_eq!(values(trailers, "grpc-message"), ["boom"]);
    assert_eq!(trailers.len(), 2, "{trailers:?}");
    assert!(r.headers.get("grpc-status").is_none());

    let seen = mock.only_request();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/agent.v1.Agent/Chat");
    assert_eq!(seen.all("te"), ["trailers"]);
    assert_eq!(seen.all("content-type"), ["application/grpc"]);
    assert_eq!(seen.body.as_ref(), b"\0\0\0\0\x05hello");
    expect_outcomes(&proxy, [0.0, 0.0, 0.0, 1.0, 0.0]).await;

    // Success with the agent's verdict in the head: counted as that verdict, not error.
    let r = h2
        .fetch(grpc_call(
            &proxy,
            &[
                ("x-mock-grpc-status", "0"),
                ("x-mock-set", "x-agent-outcome: resolved"),
            ],
        ))
        .await;
    assert_eq!(r.body.as_ref(), GRPC_REPLY);
    assert_eq!(values(r.trailers.as_ref().unwrap(), "grpc-status"), ["0"]);
    assert_eq!(r.all("x-agent-outcome"), ["resolved"]);
    expect_outcomes(&proxy, [1.0, 0.0, 0.0, 1.0, 0.0]).await;

    // Trailers-only: the status comes in the head of an empty answer.
    let r = h2
        .fetch(grpc_call(
            &proxy,
            &[
                ("x-mock-grpc-status", "14"),
                ("x-mock-grpc-trailers-only", "1"),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.all("grpc-status"), ["14"]);
    assert!(r.body.is_empty());
    assert!(r.trailers.is_none(), "{:?}", r.trailers);
    expect_outcomes(&proxy, [1.0, 0.0, 0.0, 2.0, 0.0]).await;

    // Success with no verdict: no outcome at all.
    let r = h2.fetch(grpc_call(&proxy, &[])).await;
    assert_eq!(values(r.trailers.as_ref().unwrap(), "grpc-status"), ["0"]);
    expect_outcomes(&proxy, [1.0, 0.0, 0.0, 2.0, 0.0]).await;

    assert_eq!(mock.request_count(), 4);
    assert_eq!(mock.connections(), 1);
    let scrape = proxy.scrape().await;
    let two_xx = [
        ("route", "agent"),
        ("cohort", "backend"),
        ("status_class", "2xx"),
    ];
    assert_eq!(scrape.metric("cohort_requests_total", &two_xx), 4.0);
}

#[tokio::test]
async fn plain_trailers_cross_h2_end_to_end() {
    let mock = MockUpstream::with("backend", Respond::Trailers).await;
    let proxy = proxy_to_backend(mock.addr, &["protocol: http2"]).await;
    let mut h2 = H2c::connect(proxy.public).await;
    let r = h2.fetch(get(proxy.public, "/t", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello world");
    let trailers = r.trailers.expect("trailers");
    assert_eq!(values(&trailers, "x-checksum"), ["abc123"]);
    assert_eq!(mock.only_request().version, Version::HTTP_2);
}
