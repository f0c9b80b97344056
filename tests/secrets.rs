//! Rotated secret files are picked up like rotated certificates: the admin token and a route's
//! override secret are watched and fingerprinted, so a leaked value stops working once the file
//! holding it is replaced, with no signal and no change to the config file.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use support::*;

const OLD: &str = "the-old-override-secret-0123456789";
const NEW: &str = "the-new-override-secret-9876543210";

/// Replaces `path` as a secret manager does: a new file renamed over the old one.
fn rotate(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn signed(secret: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    cohort::routing::signed::sign(secret.as_bytes(), "canary", now.as_secs() + 3600)
}

#[tokio::test]
async fn a_value_signed_with_a_rotated_override_secret_is_refused_within_the_poll_interval() {
    let (stable, canary) = (
        MockUpstream::json("stable").await,
        MockUpstream::json("canary").await,
    );
    // The secret lives apart from the config, and only the poll looks: no watcher, no signal.
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("override-secret");
    rotate(&secret, OLD);
    let poll = Duration::from_millis(300);
    let proxy = Config::new()
        .top("trusted_cidrs: []")
        .top("reload: {watch: false, poll_interval: 300ms}")
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .set("override_header: x-cohort-override")
                .set(&format!("override_secret_file: {}", yaml_path(&secret)))
                .split(&[("stable", "stable", "100"), ("canary", "canary", "0")]),
        )
        .start()
        .await;
    let leaked = signed(OLD);
    let cohort_for = |value: String| {
        let proxy = &proxy;
        async move {
            let headers = [("x-user-id", "user-1"), ("x-cohort-override", &value)];
            let reply = proxy.get("/", &headers).await;
            assert_eq!(reply.status, StatusCode::OK);
            reply.header("x-cohort").unwrap().to_string()
        }
    };
    assert_eq!(cohort_for(leaked.clone()).await, "canary");

    rotate(&secret, NEW);
    let rotated = Instant::now();
    while cohort_for(leaked.clone()).await == "canary" {
        // A poll tick, the reload it starts, and slack for a loaded machine.
        assert!(
            rotated.elapsed() < poll + Duration::from_secs(3),
            "the old secret still works {:?} after the rotation",
            rotated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cohort_for(leaked).await, "stable");
    assert_eq!(cohort_for(signed(NEW)).await, "canary");
    let forged = [("route", "agent"), ("reason", "forged")];
    assert!(
        proxy
            .scrape()
            .await
            .metric("cohort_override_rejected_total", &forged)
            >= 1.0
    );
    assert_eq!(proxy.running.control.current().generation, 2);
}

#[tokio::test]
async fn a_rotated_admin_token_is_seen_by_the_watcher() {
    let backend = MockUpstream::json("backend").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    let (old, new) = (
        "old-admin-token-0123456789abcdef",
        "new-admin-token-fedcba9876543210",
    );
    rotate(&token_file, old);
    // An hour's poll: only the watcher on the token's own directory can see the rotation.
    let proxy = Config::new()
        .top("reload: {poll_interval: 1h}")
        .admin(&format!("token_file: {}", yaml_path(&token_file)))
        .upstream("backend", backend.addr)
        .route(Route::new("agent").single("backend"))
        .start()
        .await;
    let routes = |token: &'static str| {
        let proxy = &proxy;
        async move {
            let req = bearer_request("GET", proxy.admin, "/routes", Some(token));
            proxy.fetch(req).await.status
        }
    };
    assert_eq!(routes(old).await, StatusCode::OK);

    rotate(&token_file, new);
    within("the old token to be refused", async {
        while routes(old).await == StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(routes(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(routes(new).await, StatusCode::OK);
}
