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
