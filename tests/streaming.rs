//! Bodies move frame by frame: SSE events reach the client before the backend has written the
//! next one, large bodies arrive intact both ways, trailers pass through, and a backend that
//! stalls mid-body is cut by the idle timeout.

mod support;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

async fn sse_mock(gate: &Gate) -> MockUpstream {
    MockUpstream::with("backend", Respond::Sse(gate.clone())).await
}

/// Reads data frames until `want` bytes have arrived (or the body ends or fails).
async fn read_bytes(body: &mut Incoming, want: usize) -> Result<Bytes, hyper::Error> {
    let mut got = BytesMut::new();
    while got.len() < want {
        match within("the next body frame", body.frame()).await {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    got.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(got.freeze())
}

/// Reads event one while the backend holds event two behind the gate (so it can only be here
/// if the proxy passed it on by itself), then opens the gate and reads the rest.
async fn assert_event_one_before_event_two(resp: Response<Incoming>, gate: &Gate) {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = read_bytes(&mut body, SSE_ONE.len()).await.unwrap();
    assert_eq!(first, SSE_ONE);
    gate.release();
    let rest = within("the rest of the stream", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, SSE_TWO);
}

#[tokio::test]
async fn sse_event_reaches_the_client_before_the_backend_sends_the_next() {
    let gate = Gate::new();
    let mock = sse_mock(&gate).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    let req = get(proxy.public, "/stream", &[("accept", "text/event-stream")]);
    let resp = send(&proxy.client, req).await;
    assert_event_one_before_event_two(resp, &gate).await;
}

#[tokio::test]
async fn sse_event_reaches_an_h2c_client_before_the_backend_sends_the_next() {
    let gate = Gate::new();
    let mock = sse_mock(&gate).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    let mut h2 = H2c::connect(proxy.public).await;
    let resp = h2.send(get(proxy.public, "/stream", &[])).await;
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_event_one_before_event_two(resp, &gate).await;
}

#[tokio::test]
async fn idle_timeout_between_frames_cuts_the_stream() {
    // The gate never opens: after event one the backend goes silent.
    let gate = Gate::new();
    let mock = sse_mock(&gate).await;
    let proxy = proxy_to_backend(mock.addr, &["idle_timeout: 1s"]).await;
    let resp = send(&proxy.client, get(proxy.public, "/stream", &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = read_bytes(&mut body, SSE_ONE.len()).await.unwrap();
    assert_eq!(first, SSE_ONE);
    // The proxy gives up on the silent backend: the client sees the body fail, not end.
    let rest = read_bytes(&mut body, SSE_TWO.len()).await;
    assert!(rest.is_err(), "the stream should be cut, got {rest:?}");

    let labels = |reason| {
        [
            ("route", "agent"),
            ("cohort", "backend"),
            ("reason", reason),
        ]
    };
    proxy
        .expect_metric("cohort_upstream_failures_total", &labels("timeout"), 1.0)
        .await;
    let scrape = proxy.scrape().await;
    for other in ["connect", "reset", "tls", "protocol"] {
        let n = scrape.metric("cohort_upstream_failures_total", &labels(other));
        assert_eq!(n, 0.0, "reason {other}");
    }
    let cohort = [("route", "agent"), ("cohort", "backend")];
    proxy
        .expect_metric("cohort_in_flight_requests", &cohort, 0.0)
        .await;
}

/// A deterministic 5 MB body that no off-by-one or reordering leaves intact.
fn big_body() -> Bytes {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..5 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn echo_setup() -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::with("backend", Respond::Echo).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    (proxy, mock)
}

/// The echoed body came back whole, and the upstream received it whole.
fn assert_echoed(reply: &Reply, sent: &Bytes, mock: &MockUpstream) {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), sent.len());
    assert!(
        reply.body == *sent,
        "response body differs from what was sent"
    );
    assert!(
        mock.only_request().body == *sent,
        "upstream got a different body"
    );
}

#[tokio::test]
async fn five_megabyte_bodies_are_intact_both_ways_over_http1() {
    let (proxy, mock) = echo_setup().await;
    let body = big_body();
    let req = request("POST", proxy.public, "/upload", &[], body.clone());
    let reply = proxy.fetch(req).await;
    assert_eq!(reply.version, Version::HTTP_11);
    assert_echoed(&reply, &body, &mock);
}

#[tokio::test]
async fn five_megabyte_bodies_are_intact_both_ways_over_h2c() {
    let (proxy, mock) = echo_setup().await;
    let body = big_body();
    let mut h2 = H2c::connect(proxy.public).await;
    let req = request("POST", proxy.public, "/upload", &[], body.clone());
    let reply = h2.fetch(req).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_echoed(&reply, &body, &mock);
}

async fn trailers_setup() -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::with("backend", Respond::Trailers).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    (proxy, mock)
}

fn assert_trailers(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, Bytes::from_static(b"hello world"));
    let trailers = reply.trailers.as_ref().expect("trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
}

#[tokio::test]
async fn trailers_pass_through_to_an_h2c_client() {
    let (proxy, mock) = trailers_setup().await;
    let mut h2 = H2c::connect(proxy.public).await;
    let reply = h2
        .fetch(get(proxy.public, "/rpc", &[("te", "trailers")]))
        .await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_trailers(&reply);
    // The upstream was told the client accepts trailers.
    assert_eq!(mock.only_request().all("te"), ["trailers"]);
}

#[tokio::test]
async fn trailers_pass_through_to_an_http1_client() {
    let (proxy, _mock) = trailers_setup().await;
    let reply = proxy.get("/rpc", &[("te", "trailers")]).await;
    assert_trailers(&reply);
}
