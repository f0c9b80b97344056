//! The admin listener answers health, readiness, routes and metrics; the public listener never
//! serves any of them.

mod support;

use http::StatusCode;
use serde_json::json;
use support::*;

fn minimal_like(stable: &MockUpstream, canary: &MockUpstream, prefix: &str) -> Config {
    Config::new()
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new("agent")
                .matching(&format!("path_prefix: {prefix}"))
                .key("header: x-user-id")
                .split(&[("stable", "stable", "95"), ("canary", "canary", "5")]),
        )
}

#[tokio::test]
async fn health_readiness_and_routes() {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let proxy = minimal_like(&stable, &canary, "/").start().await;

    assert_eq!(proxy.admin("GET", "/healthz").await.status, StatusCode::OK);
    assert_eq!(proxy.admin("GET", "/readyz").await.status, StatusCode::OK);
    assert_eq!(
        proxy.admin("GET", "/nope").await.status,
        StatusCode::NOT_FOUND
    );

    let routes = proxy.admin("GET", "/routes").await;
    assert_eq!(routes.status, StatusCode::OK);
    assert!(routes.header("content-type").unwrap().contains("json"));
    let doc = routes.json();
    assert_eq!(doc["generation"], 1);
    let agent = &doc["routes"][0];
    assert_eq!(agent["name"], "agent");
    assert_eq!(agent["salt"], "agent");
    assert_eq!(agent["seed"], json!(11548422540501417285u64));
    assert_eq!(
        agent["cohorts"],
        json!([
            {"cohort": "stable", "upstream": "stable", "percent": 95.0, "configured_percent": 95.0, "buckets": [0, 9500]},
            {"cohort": "canary", "upstream": "canary", "percent": 5.0, "configured_percent": 5.0, "buckets": [9500, 10000]},
        ])
    );
    assert_eq!(agent["rollout"], json!(null));
    assert_eq!(doc["routes"].as_array().unwrap().len(), 1);
    // None of this touched a backend.
    assert_eq!(stable.connections() + canary.connections(), 0);
}

#[tokio::test]
async fn admin_paths_are_not_served_on_the_public_listener() {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;

    // With no route for them, they are unrouted 404s.
    let proxy = minimal_like(&stable, &canary, "/api/").start().await;
    let admin_paths = ["/metrics", "/healthz", "/readyz", "/routes"];
    for path in admin_paths {
        let reply = proxy.get(path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "public {path}");
        assert!(
            !reply.text().contains("cohort_"),
            "public {path} leaked metrics"
        );
    }
    let scrape = proxy.scrape().await;
    assert_eq!(scrape.metric("cohort_unrouted_requests_total", &[]), 4.0);

    // With a catch-all route, they go to the backend like any other path.
    let proxy = minimal_like(&stable, &canary, "/").start().await;
    for path in admin_paths {
        let reply = proxy.get(path, &[("x-user-id", "user-1")]).await;
        assert_eq!(reply.status, StatusCode::OK, "public {path}");
        assert_eq!(reply.json()["path"], path, "public {path} was not proxied");
    }
    assert_eq!(stable.request_count(), admin_paths.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_a_silent_one_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let proxy = minimal_like(&stable, &canary, "/").start().await;

    // A request head begun and never finished, then enough idle connections to fill the cap.
    let mut stalled = TcpStream::connect(proxy.admin).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 1..cohort::control::admin::MAX_CONNECTIONS {
        held.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    let over = within("the answer over the cap", async {
        loop {
            let mut tcp = TcpStream::connect(proxy.admin).await.unwrap();
            let answer = read_response(&mut tcp).await;
            // Until the proxy has accepted every held connection, one more may still fit.
            if answer.starts_with("HTTP/1.1 503") {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(over.ends_with("too many connections\n"), "{over}");
    // The public listener is not the admin's: it serves on.
    assert_eq!(proxy.get("/", &[]).await.status, StatusCode::OK);

    // Past the admin's header timeout (5s), the stalled head is closed without an answer...
    let mut rest = Vec::new();
    let read = within(
        "the stalled head to be closed",
        stalled.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    // Once the held connections close, the cap has room again.
    drop(held);
    within("the admin listener to answer again", async {
        while proxy.admin("GET", "/healthz").await.status != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Out of descriptors, accept fails until one is freed: the admin listener pauses between
/// attempts, as the public ones do, rather than spinning a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accept_errors_back_off_instead_of_spinning() {
    use std::time::Duration;
    use support::process::Process;
    use tokio::net::TcpStream;
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let yaml = minimal_like(&stable, &canary, "/")
        .top("limits: {header_read_timeout: 60s}")
        .yaml();
    const LIMIT: usize = 64;
    let proxy = Process::start("run", &yaml, Some(LIMIT as u32)).await;
    // Silent public connections take every descriptor the process may hold (the ones past
    // its limit wait in the backlog, where accept fails on them), then one for the admin.
    let mut held = Vec::new();
    for _ in 0..LIMIT + 16 {
        held.push(TcpStream::connect(proxy.public).await.unwrap());
    }
    within("the process to run out of descriptors", async {
        while proxy.descriptors() < LIMIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    held.push(TcpStream::connect(proxy.admin).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = proxy.cpu_during(Duration::from_secs(1)).await;
    // A spinning accept loop takes a whole core; a 20 ms pause, about nothing.
    eprintln!("accept errors: {spent:?} of CPU in 1 s");
    assert!(
        spent < Duration::from_millis(200),
        "accept errors cost {spent:?} of CPU in 1 s"
    );
}
