//! The late-outcome tests' rig: a proxy with route `agent` (stable, canary), an admin token,
//! a state directory and the judge left to the test, with `POST /outcomes` and the events it
//! takes.
//!
//! Owns: `late::Rig` and its event helpers. Must not touch: the other harness files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cohort::control::rollout::{judge, Now};
use serde_json::{json, Value};

use super::{
    fetch, get, h1_client, request, within, Config, H1Client, MockUpstream, Reply, Route, Scrape,
};

pub const TOKEN: &str = "a-late-outcomes-token-of-enough-bytes";

pub struct Rig {
    pub running: cohort::app::Running,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub client: H1Client,
    pub now: Now,
    pub path: PathBuf,
    pub next_user: u64,
    pub _dir: tempfile::TempDir,
    pub _backends: (MockUpstream, MockUpstream),
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `ms` since the epoch as RFC 3339 with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Rig {
    /// The route `agent` (stable, canary) with `rollout` when not empty, `late` lines under
    /// `late_outcomes:`, the admin token, and the judge left to the test.
    pub async fn start(rollout: &str, late: &[&str]) -> Rig {
        Rig::with_route(rollout, late, &[], &[]).await
    }

    /// The same, with `route` lines added to the route, and `files` (name, contents) written
    /// beside the config first.
    pub async fn with_route(
        rollout: &str,
        late: &[&str],
        route_lines: &[&str],
        files: &[(&str, &str)],
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let stable = MockUpstream::json("stable").await;
        let canary = MockUpstream::json("canary").await;
        let mut route = Route::new("agent").key("header: x-user-id");
        for l in route_lines {
            route = route.set(l);
        }
        if !rollout.is_empty() {
            route = route.set(&format!("rollout: {rollout}"));
        }
        let mut config = Config::new()
            .admin("token_file: token")
            .top("state_dir: state")
            .top("reload: {watch: false, poll_interval: 1h}")
            .upstream("stable", stable.addr)
            .upstream("canary", canary.addr)
            .route(route.split(&[("stable", "stable", "90"), ("canary", "canary", "10")]));
        if !late.is_empty() {
            config = config.top("late_outcomes:");
            for l in late {
                config = config.top(&format!("  {l}"));
            }
        }
        let path = dir.path().join("cohort.yaml");
        std::fs::write(&path, config.yaml()).unwrap();
        let running = super::start_unjudged(&path).await;
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            path,
            next_user: 0,
            _dir: dir,
            _backends: (stable, canary),
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let req = request(method, self.admin, path, &[("authorization", &auth)], body);
        fetch(&self.client, req).await
    }

    pub async fn post(&self, body: &Value) -> Reply {
        self.admin("POST", "/outcomes", body.to_string()).await
    }

    pub async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.admin("GET", "/metrics", "").await.text())
    }

    pub async fn send(&mut self, n: u64) {
        for _ in 0..n {
            self.next_user += 1;
            let user = format!("user-{}", self.next_user);
            let r = fetch(&self.client, get(self.public, "/", &[("x-user-id", &user)])).await;
            assert_eq!(r.status, 200);
        }
    }

    /// The canary's effective percent, from `GET /routes`.
    pub async fn canary_percent(&self) -> f64 {
        let routes = self.admin("GET", "/routes", "").await.json();
        routes["routes"][0]["cohorts"][1]["percent"]
            .as_f64()
            .unwrap()
    }

    /// A judge tick `secs` simulated seconds after the last.
    pub fn tick(&mut self, secs: u64) -> bool {
        self.now = self.now.later(Duration::from_secs(secs));
        judge::tick(&self.running.control, self.now)
    }
}

pub fn event(id: &str, key: &str, outcome: &str, started_ms: u64) -> Value {
    json!({"id": id, "route": "agent", "key": key, "outcome": outcome, "started_at": rfc3339(started_ms)})
}

/// curl with `args`, off the runtime's thread (the proxy under test runs on it).
pub async fn curl(args: Vec<String>) -> std::process::Output {
    let run = move || {
        std::process::Command::new("curl")
            .args(["--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl")
    };
    within("curl", tokio::task::spawn_blocking(run))
        .await
        .unwrap()
}
