//! The upstream connection pool for cleartext HTTP/1.1 endpoints: connections are reused,
//! opened only when all are busy, never reused after the upstream closed them, and requests on
//! the upstream leg are origin-form with a Host.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// An HTTP/1.1 upstream that answers one request per connection, keep-alive implied, and then
/// closes the connection without saying so. Counts the connections it accepted.
async fn one_shot_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Dropping the socket closes it: the proxy's pooled connection is now dead.
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    let (addr, accepted) = one_shot_upstream().await;
    let proxy = proxy_to_backend(addr, &[]).await;
    for i in 0..10 {
        let r = proxy.get(&format!("/once/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
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
