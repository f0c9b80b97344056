//! Idle HTTP/1.1 connections are taken back from hyper and parked (no buffers held), and
//! resume when the client speaks again: same connection, same answers, upgrades included, and
//! still closed after `keepalive_timeout` and on shutdown.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Comfortably past the proxy's park delay (one second).
const PARKED: Duration = Duration::from_millis(1600);

async fn exchange(tcp: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: cohort.test\r\nx-user-id: u1\r\n\r\n");
    within("write", tcp.write_all(req.as_bytes()))
        .await
        .unwrap();
    read_response(tcp).await
}

#[tokio::test]
async fn a_parked_connection_answers_its_next_requests() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    let first = exchange(&mut tcp, "/before").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(PARKED).await;
    let parked = [("listener", "public")];
    proxy
        .expect_metric("cohort_parked_connections", &parked, 1.0)
        .await;
    for i in 0..3 {
        let r = exchange(&mut tcp, &format!("/after/{i}")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(&format!("\"path\":\"/after/{i}\"")), "{r}");
        assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
    }
    proxy
        .expect_metric("cohort_parked_connections", &parked, 0.0)
        .await;
    // Parked again, then two pipelined requests in one write: both answered, in order.
    tokio::time::sleep(PARKED).await;
    tcp.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: cohort.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
    )
    .await
    .unwrap();
    let p1 = read_response(&mut tcp).await;
    assert!(p1.contains("\"path\":\"/p1\""), "{p1}");
    let p2 = read_response(&mut tcp).await;
    assert!(p2.contains("\"path\":\"/p2\""), "{p2}");
    let seen: Vec<String> = mock.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(
        seen,
        ["/before", "/after/0", "/after/1", "/after/2", "/p1", "/p2"]
    );
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_keepalive_timeout() {
    let mock = MockUpstream::json("backend").await;
    let proxy = Config::new()
        .top("limits: {keepalive_timeout: 2s}")
        .upstream("backend", mock.addr)
        .route(Route::new("agent").single("backend"))
        .start()
        .await;
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    let r = exchange(&mut tcp, "/once").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Parked after 1 s, closed at 2 s: the next read sees the end of the stream.
    let mut buf = [0u8; 64];
    let n = within("the proxy to close the idle connection", tcp.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let mock = MockUpstream::json("backend").await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    let r = exchange(&mut tcp, "/once").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    tokio::time::sleep(PARKED).await;
    let running = proxy.running;
    let stopping = tokio::spawn(async move { running.shutdown().await });
    let mut buf = [0u8; 64];
    let n = within("the parked connection to close", tcp.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    within("shutdown", stopping).await.unwrap();
}
