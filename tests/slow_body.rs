//! The minimum request-body rate (`limits.body_min_rate` over `body_rate_window`): a body
//! trickled a byte at a time, which never falls silent long enough for `body_read_timeout`,
//! is refused with 408 and counted; an upload at any real speed is not.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW: [(&str, &str); 1] = [("reason", "body_too_slow")];

async fn echo_with(limits: &str) -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::with("backend", Respond::Echo).await;
    let proxy = Config::new()
        .top(limits)
        .upstream("backend", mock.addr)
        .route(Route::new("agent").single("backend"))
        .start()
        .await;
    (proxy, mock)
}

/// Sends a head announcing 1,000 body bytes, then one byte every `every` until the proxy
/// answers, and reads until it closes. Returns what came back and when the answer started.
async fn trickle(proxy: &TestProxy, every: Duration) -> (String, Duration) {
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: agent.test\r\nContent-Length: 1000\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if tcp.write_all(b"x").await.is_err() {
            break;
        }
        match tokio::time::timeout(every, tcp.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
        }
    }
    let answered = start.elapsed();
    within(
        "the proxy to close after its answer",
        tcp.read_to_end(&mut got),
    )
    .await
    .unwrap_or(0);
    (String::from_utf8_lossy(&got).into_owned(), answered)
}

#[tokio::test]
async fn a_trickled_body_is_refused_with_408_and_counted() {
    let (proxy, mock) =
        echo_with("limits: {body_min_rate: 100, body_rate_window: 1s, body_read_timeout: 60s}")
            .await;
    let (answer, after) = within(
        "the trickle to be refused",
        trickle(&proxy, Duration::from_millis(200)),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(
        answer.ends_with("request body sent too slowly\n"),
        "{answer:?}"
    );
    // Each silence is far shorter than body_read_timeout: only the rate can end it.
    assert!(after < Duration::from_secs(5), "refused after {after:?}");
    proxy.expect_metric(REJECTED, &SLOW, 1.0).await;
    for seen in mock.requests() {
        assert!(seen.body.len() < 1000, "a whole body reached the upstream");
    }
}

#[tokio::test]
async fn an_upload_at_a_real_speed_passes() {
    let (proxy, mock) = echo_with("limits: {body_min_rate: 100, body_rate_window: 1s}").await;
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = proxy
        .fetch(request("POST", proxy.public, "/upload", &[], body.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.as_ref(), &body[..]);
    assert_eq!(mock.only_request().body.len(), body.len());
    assert_eq!(proxy.scrape().await.get(REJECTED, &SLOW), Some(0.0));
}

#[tokio::test]
async fn by_default_a_byte_every_five_seconds_is_stopped_within_a_minute() {
    let (proxy, _mock) = echo_with("limits: {}").await;
    let (answer, after) = tokio::time::timeout(
        Duration::from_secs(60),
        trickle(&proxy, Duration::from_secs(5)),
    )
    .await
    .expect("the default rate stops the trickle within a minute");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(after < Duration::from_secs(60), "refused after {after:?}");
    proxy.expect_metric(REJECTED, &SLOW, 1.0).await;
}

const REJECTED: &str = "cohort_rejected_requests_total";
