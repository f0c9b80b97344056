//! Graceful shutdown: stop accepting, `/readyz` 503, in-flight streams finish, HTTP/2 gets
//! GOAWAY, `shutdown_timeout` cuts what outlives it, and the process exits 0 on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::process::Process;
use support::*;

fn sse_config(upstream: SocketAddr, top: &[&str]) -> Config {
    let mut c = Config::new();
    for t in top {
        c = c.top(t);
    }
    c.upstream("agent", upstream)
        .route(Route::new("chat").single("agent"))
}

/// Reads the next non-empty data frame of a streamed body (HTTP/2 may end a stream with an
/// empty DATA frame).
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        match within("the next body frame", body.frame()).await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => return Some(d),
                _ => continue,
            },
            Some(Err(_)) | None => return None,
        }
    }
}

async fn refuses_connections(addr: SocketAddr) {
    within("the listener to stop accepting", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_streams_finish_refuses_new_connections_and_sends_goaway() {
    let gate = Gate::new();
    let agent = MockUpstream::builder()
        .respond_with(Respond::Sse(gate.clone()))
        .start()
        .await;
    let p = sse_config(agent.addr, &[]).start().await;

    let mut h1 = send(&p.client, get(p.public, "/stream", &[]))
        .await
        .into_body();
    assert_eq!(
        next_data(&mut h1).await.as_deref(),
        Some(SSE_ONE.as_bytes())
    );
    let mut h2 = H2c::connect(p.public).await;
    let mut h2_body = h2.send(get(p.public, "/stream", &[])).await.into_body();
    assert_eq!(
        next_data(&mut h2_body).await.as_deref(),
        Some(SSE_ONE.as_bytes())
    );

    let TestProxy {
        running,
        public,
        admin,
        client,
        dir: _dir,
    } = p;
    let shutdown = tokio::spawn(running.shutdown());
    refuses_connections(public).await;
    let ready = fetch(&client, request("GET", admin, "/readyz", &[], Bytes::new())).await;
    assert_eq!(ready.status, 503, "readyz while draining");

    // The h2 connection got GOAWAY: no new stream is accepted on it.
    within("GOAWAY to refuse a new stream", async {
        loop {
            let r = h2
                .sender_mut()
                .send_request(get(public, "/stream", &[]))
                .await;
            if r.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    gate.release();
    gate.release();
    assert_eq!(
        next_data(&mut h1).await.as_deref(),
        Some(SSE_TWO.as_bytes())
    );
    assert_eq!(
        next_data(&mut h2_body).await.as_deref(),
        Some(SSE_TWO.as_bytes())
    );
    assert_eq!(next_data(&mut h1).await, None);
    assert_eq!(next_data(&mut h2_body).await, None);
    assert!(
        within("shutdown", shutdown).await.unwrap(),
        "everything drained before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_http1_gets_connection_close_after_its_current_response() {
    let gate = Gate::new();
    let agent = MockUpstream::builder()
        .respond_with(Respond::Gated(gate.clone()))
        .start()
        .await;
    let p = sse_config(agent.addr, &[]).start().await;
    // A kept-alive connection (the gate lets one response through), then a request on it
    // that waits for its response headers.
    gate.release();
    let warm = fetch(&p.client, get(p.public, "/", &[])).await;
    assert_eq!(warm.status, 200);
    let pending = {
        let client = p.client.clone();
        let req = get(p.public, "/slow", &[]);
        tokio::spawn(async move { fetch(&client, req).await })
    };
    within("the request to reach the backend", async {
        while agent.request_count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let TestProxy {
        running,
        public,
        dir: _dir,
        ..
    } = p;
    let shutdown = tokio::spawn(running.shutdown());
    refuses_connections(public).await;
    gate.release();
    let reply = within("the in-flight response", pending).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(within("shutdown", shutdown).await.unwrap());
}

#[tokio::test]
async fn shutdown_timeout_cuts_a_stream_that_outlives_it() {
    let gate = Gate::new();
    let agent = MockUpstream::builder()
        .respond_with(Respond::Sse(gate))
        .start()
        .await;
    let p = sse_config(agent.addr, &["shutdown_timeout: 300ms"])
        .start()
        .await;
    let mut body = send(&p.client, get(p.public, "/stream", &[]))
        .await
        .into_body();
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(SSE_ONE.as_bytes())
    );
    let drained = within("shutdown", p.running.shutdown()).await;
    assert!(
        !drained,
        "the stream outlived shutdown_timeout, so the drain is not clean"
    );
    // The second event never comes: the connection was cut.
    assert_eq!(next_data(&mut body).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_stream_in_flight_and_exits_zero() {
    let gate = Gate::new();
    let agent = MockUpstream::builder()
        .respond_with(Respond::Sse(gate.clone()))
        .start()
        .await;
    let mut proc = Process::start("run", &sse_config(agent.addr, &[]).yaml(), None).await;
    let public = proc.public;

    let client = h1_client();
    let mut body = send(&client, get(public, "/stream", &[])).await.into_body();
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(SSE_ONE.as_bytes())
    );

    proc.signal("TERM");
    refuses_connections(public).await;
    assert!(
        proc.exited().is_none(),
        "exited with a stream still in flight"
    );

    gate.release();
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(SSE_TWO.as_bytes())
    );
    assert_eq!(next_data(&mut body).await, None);
    let code = proc.exit_within(WAIT).await.expect("the process to exit");
    assert_eq!(code.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_shutdown_timeout_whatever_the_peers_do() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let flood = MockUpstream::with("agent", Respond::WebSocketFlood).await;
    // A rollout, so that the final checkpoint is there to check for: nothing else writes its
    // state within CHECKPOINT (10s) of the start.
    let rollout = "rollout: {id: r1, canary: canary, steps: [50, 100], soak: 1h, min_samples: 5, \
                   after: promote, guards: [{metric: error_rate, margin: 10}]}";
    let yaml = Config::new()
        .top("shutdown_timeout: 1s")
        .top("state_dir: state")
        .upstream("stable", flood.addr)
        .upstream("canary", flood.addr)
        .route(
            Route::new("chat")
                .set(rollout)
                .split(&[("stable", "stable", "90"), ("canary", "canary", "10")]),
        )
        .yaml();
    let mut proc = Process::start("run", &yaml, None).await;
    let state = proc.dir.path().join("state/rollout-chat.json");
    let soaked = || -> u64 {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .map_or(0, |v| v["state"]["soaked_ms"].as_u64().unwrap_or(0))
    };
    let req = format!("ws://{}/ws", proc.public)
        .into_client_request()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(proc.public).await.unwrap();
    // A client that stops reading once upgraded, with the upstream sending all along: the
    // proxy's writes to it stay pending, and the tunnel's idle timer (300s) is far off.
    let (_ws, resp) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    // A client that sent part of a request head and then nothing, on an HTTP/1.1 connection.
    let mut stalled = tokio::net::TcpStream::connect(proc.public).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET / HTTP/1.1\r\n")
        .await
        .unwrap();
    // The judge's ticks (one a second) soak the rollout; its file still says 0.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(soaked(), 0, "no checkpoint yet");

    proc.signal("TERM");
    // shutdown_timeout, then a fixed grace of at most a second or two; generous here.
    let status = proc.exit_within(Duration::from_secs(1 + 5)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exits by itself, and cleanly, after shutdown_timeout"
    );
    assert!(
        soaked() > 0,
        "the final checkpoint is written after the abort"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_turns_readyz_to_503_and_serves_on_before_draining() {
    let agent = MockUpstream::json("agent").await;
    let p = sse_config(agent.addr, &["shutdown_delay: 2s"])
        .start()
        .await;
    let (public, admin, client) = (p.public, p.admin, p.client.clone());
    let shutdown = tokio::spawn(p.running.shutdown());
    within("readyz to answer 503", async {
        while fetch(&client, get(admin, "/readyz", &[])).await.status != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Not ready, yet still serving, new connections included, until the delay ends.
    let fresh = h1_client();
    assert_eq!(fetch(&fresh, get(public, "/", &[])).await.status, 200);
    assert_eq!(agent.request_count(), 1);
    refuses_connections(public).await;
    assert!(within("shutdown", shutdown).await.unwrap());
}
