//! WebSocket through the proxy: the upgrade goes to the key's sticky cohort, messages echo
//! both ways, the request counts once (1xx) and its duration is the tunnel's lifetime, and an
//! idle tunnel is closed after `tunnel_idle_timeout`.

mod support;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SPLIT: [(&str, u32); 2] = [("stable", 5000), ("canary", 5000)];

type Ws = WebSocketStream<TcpStream>;

async fn ws_proxy(options: &[&str]) -> (TestProxy, MockUpstream, MockUpstream) {
    let stable = MockUpstream::with("stable", Respond::WebSocket).await;
    let canary = MockUpstream::with("canary", Respond::WebSocket).await;
    let proxy = Config::new()
        .upstream_with("stable", stable.addr, options)
        .upstream_with("canary", canary.addr, options)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .split(&[("stable", "stable", "50"), ("canary", "canary", "50")]),
        )
        .start()
        .await;
    (proxy, stable, canary)
}

/// The first `user-N` key the contract puts in `cohort`.
fn key_for(cohort: &str) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| contract_cohort("agent", k.as_bytes(), &SPLIT) == cohort)
        .unwrap()
}

/// A WebSocket handshake through the proxy with `x-user-id: key`.
async fn connect(proxy: &TestProxy, key: &str) -> (Ws, http::Response<Option<Vec<u8>>>) {
    let mut req = format!("ws://{}/ws/chat", proxy.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-user-id", key.parse().unwrap());
    let tcp = within("TCP connect", TcpStream::connect(proxy.public))
        .await
        .unwrap();
    within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket handshake through the proxy: {e}"))
}

/// Sends `msg` and expects the same message back.
async fn echo<S>(ws: &mut WebSocketStream<S>, msg: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("sending a message", ws.send(msg.clone()))
        .await
        .unwrap();
    let back = within("the echo", ws.next())
        .await
        .expect("the tunnel stays open")
        .unwrap();
    assert_eq!(back, msg);
}

fn labels<'a>(cohort: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![("route", "agent"), ("cohort", cohort)];
    l.extend_from_slice(extra);
    l
}

/// Once the only tunnel of `cohort` has closed: nothing in flight, one duration recorded.
async fn expect_tunnel_ended(proxy: &TestProxy, cohort: &str) {
    proxy
        .expect_metric("cohort_in_flight_requests", &labels(cohort, &[]), 0.0)
        .await;
    proxy
        .expect_metric(
            "cohort_request_duration_seconds_count",
            &labels(cohort, &[]),
            1.0,
        )
        .await;
}

#[tokio::test]
async fn websocket_echo_follows_the_sticky_cohort() {
    let (proxy, stable, canary) = ws_proxy(&[]).await;
    for (cohort, mock, other) in [("stable", &stable, &canary), ("canary", &canary, &stable)] {
        let key = key_for(cohort);
        let other_before = other.request_count();
        let (mut ws, resp) = connect(&proxy, &key).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let h = resp.headers();
        assert_eq!(values(h, "x-cohort"), [cohort]);
        assert_eq!(values(h, "x-upstream"), [cohort]);
        // The hop-by-hop headers of a 101 are put back: the switch is this hop's too.
        assert_eq!(values(h, "connection"), ["upgrade"]);
        assert_eq!(values(h, "upgrade"), ["websocket"]);

        let seen = mock.only_request();
        assert_eq!(seen.target, "/ws/chat");
        assert_eq!(seen.all("x-cohort"), [cohort]);
        assert_eq!(seen.all("upgrade"), ["websocket"]);
        assert_eq!(seen.all("connection"), ["upgrade"]);
        assert_eq!(
            other.request_count(),
            other_before,
            "{key} only reaches {cohort}"
        );

        // The exchange is in flight for as long as the tunnel is open.
        proxy
            .expect_metric("cohort_in_flight_requests", &labels(cohort, &[]), 1.0)
            .await;
        let open = proxy.scrape().await;
        let duration = "cohort_request_duration_seconds_count";
        assert_eq!(
            open.metric(duration, &labels(cohort, &[])),
            0.0,
            "the duration is recorded when the tunnel ends"
        );
        for i in 0..5 {
            echo(&mut ws, Message::text(format!("{cohort} message {i}"))).await;
            echo(&mut ws, Message::binary(vec![i as u8; 1 + 1000 * i])).await;
        }
        within("the close", ws.close(None)).await.unwrap();
        while let Some(m) = within("the close handshake", ws.next()).await {
            assert!(matches!(m, Ok(Message::Close(_))), "after close: {m:?}");
        }

        expect_tunnel_ended(&proxy, cohort).await;
    }

    let scrape = proxy.scrape().await;
    for cohort in ["stable", "canary"] {
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let want = if class == "1xx" { 1.0 } else { 0.0 };
            let got = scrape.metric(
                "cohort_requests_total",
                &labels(cohort, &[("status_class", class)]),
            );
            assert_eq!(got, want, "{cohort} {class}");
        }
        for reason in ["connect", "timeout", "reset", "tls", "protocol"] {
            let got = scrape.metric(
                "cohort_upstream_failures_total",
                &labels(cohort, &[("reason", reason)]),
            );
            assert_eq!(got, 0.0, "{cohort} failures {reason}");
        }
    }
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    // Long enough for one echo on a loaded machine, short enough for a quick test.
    let (proxy, _stable, _canary) = ws_proxy(&["tunnel_idle_timeout: 1s"]).await;
    let cohort = "canary";
    let (mut ws, resp) = connect(&proxy, &key_for(cohort)).await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    echo(&mut ws, Message::text("still here")).await;

    // Then silence: the proxy closes both sides, which the client sees as the end.
    match within("the proxy to close the idle tunnel", ws.next()).await {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(m)) => panic!("expected the tunnel to close, got {m:?}"),
    }
    expect_tunnel_ended(&proxy, cohort).await;
    let scrape = proxy.scrape().await;
    assert_eq!(
        scrape.metric(
            "cohort_requests_total",
            &labels(cohort, &[("status_class", "1xx")])
        ),
        1.0
    );
}

#[tokio::test]
async fn websocket_over_tls_on_both_hops() {
    use support::tls::{handshake, TestCa};
    let ca = TestCa::new("cohort test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["agent.test"]).write(dir.path(), "listener");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let mock = MockUpstream::builder()
        .name("backend")
        .respond_with(Respond::WebSocket)
        .tls(ca.leaf(&["127.0.0.1"]).server_config(&["http/1.1"], None))
        .start()
        .await;
    let proxy = Config::new()
        .upstream_with(
            "backend",
            format!("https://{}", mock.addr),
            &[&format!("tls: {{ca_file: {}}}", yaml_path(&ca_file))],
        )
        .route(Route::new("agent").single("backend"))
        .certificate(&cert, &key, &[])
        .start()
        .await;

    let tls = handshake(proxy.public, ca.client_config(&["http/1.1"]), "agent.test").await;
    let req = "wss://agent.test/ws".into_client_request().unwrap();
    let (mut ws, resp) = within(
        "the WebSocket handshake over TLS",
        tokio_tungstenite::client_async(req, tls),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        echo(&mut ws, Message::text(format!("secure {i}"))).await;
    }
    within("the close", ws.close(None)).await.unwrap();
    let seen = mock.only_request();
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("upgrade"), ["websocket"]);
    expect_tunnel_ended(&proxy, "backend").await;
}

#[tokio::test]
async fn websocket_upgrade_on_a_kept_alive_connection_after_it_was_parked() {
    let (proxy, stable, _canary) = ws_proxy(&[]).await;
    let key = key_for("stable");
    let mut tcp = TcpStream::connect(proxy.public).await.unwrap();
    let plain = format!("GET /plain HTTP/1.1\r\nHost: cohort.test\r\nx-user-id: {key}\r\n\r\n");
    tcp.write_all(plain.as_bytes()).await.unwrap();
    let first = read_response(&mut tcp).await;
    assert!(first.starts_with("HTTP/1.1 400"), "{first}");
    // Idle past the park delay: the next request finds the connection parked.
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let mut req = format!("ws://{}/ws/chat", proxy.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-user-id", key.parse().unwrap());
    let (mut ws, resp) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket handshake on a parked connection: {e}"));
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    echo(&mut ws, Message::text("after parking")).await;
    echo(&mut ws, Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(stable.request_count(), 2);
}

#[tokio::test]
async fn a_tunnel_whose_client_stops_reading_is_closed_when_idle() {
    let flood = MockUpstream::with("backend", Respond::WebSocketFlood).await;
    let proxy = Config::new()
        .upstream_with("backend", flood.addr, &["tunnel_idle_timeout: 1s"])
        .route(Route::new("agent").single("backend"))
        .start()
        .await;
    let (ws, resp) = connect(&proxy, "reader-gone").await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The client reads nothing more: the flood fills the socket buffers, the proxy's write
    // to the client stays pending, and nothing moves.
    expect_tunnel_ended(&proxy, "backend").await;
    drop(ws);
}
