//! The upstream connection pool for cleartext HTTP/1.1 endpoints: connections are reused,
//! opened only when all are busy, never reused after the upstream closed them, and requests on
//! the upstream leg are origin-form with a Host.

mod support;

use std::sync::Arc;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    for i in 0..20 {
        let r = proxy.get(&format!("/seq/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(mock.request_count(), 20);
    assert_eq!(mock.connections(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_one_connection_each_then_reuse_them() {
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mock = MockUpstream::with("backend", Respond::Barrier(barrier)).await;
    let proxy = Arc::new(proxy_to_backend(mock.addr, &[]).await);
    for _round in 0..3 {
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let p = Arc::clone(&proxy);
            waiting.push(tokio::spawn(async move { p.get("/together", &[]).await }));
        }
        for w in waiting {
            assert_eq!(w.await.unwrap().status, StatusCode::OK);
        }
    }
    assert_eq!(mock.request_count(), 12);
    // Four at once need four connections; the later rounds find them idle in the pool.
    assert_eq!(mock.connections(), 4);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    // One request per connection, keep-alive implied, then closed without saying so.
    let (addr, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy_to_backend(addr, &[]).await;
    for i in 0..10 {
        let r = proxy.get(&format!("/once/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(
        heads.lock().unwrap().len(),
        10,
        "one connection per request"
    );
    proxy
        .expect_metric(
            "cohort_requests_total",
            &[
                ("route", "agent"),
                ("cohort", "backend"),
                ("status_class", "2xx"),
            ],
            10.0,
        )
        .await;
}

#[tokio::test]
async fn upstream_requests_are_origin_form_with_a_host() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    let absolute = raw_exchange(
        proxy.public,
        "GET http://agents.example/v1/chat?x=1 HTTP/1.1\r\nHost: agents.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let old = raw_exchange(proxy.public, "GET /v1/old HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v1/chat?x=1");
    assert_eq!(seen[0].header("host"), Some("agents.example"));
    assert_eq!(seen[1].target, "/v1/old");
    // No Host from the client: the upstream leg names the endpoint, as HTTP/1.1 requires.
    assert_eq!(seen[1].header("host"), Some(mock.addr.to_string().as_str()));
}

#[tokio::test]
async fn a_response_the_client_abandoned_does_not_poison_the_pool() {
    let gate = Gate::new();
    let mock = MockUpstream::with("backend", Respond::Sse(gate.clone())).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    // Read the head and first event of a stream, then hang up mid-body.
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: cohort.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(SSE_ONE) {
        let n = within("first event", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    drop(tcp);
    gate.release();
    // The stream's upstream connection is never handed to another request half-read.
    for i in 0..5 {
        gate.release();
        let r = proxy.get(&format!("/after/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().contains(SSE_ONE) && r.text().contains(SSE_TWO));
    }
}

#[tokio::test]
async fn max_idle_per_endpoint_zero_pools_nothing() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to_backend(mock.addr, &["max_idle_per_endpoint: 0"]).await;
    for i in 0..3 {
        let r = proxy.get(&format!("/unpooled/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(mock.request_count(), 3);
    // Each exchange had its own connection: none was kept for the next.
    assert_eq!(mock.connections(), 3);
}
