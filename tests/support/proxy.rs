//! The proxy under test, started in-process on a config file in its own temporary directory,
//! with a client and the admin and metrics calls most tests make.
//!
//! Owns: `TestProxy`. Must not touch: writing configs (`config.rs`) or the binary run as a
//! process (`process.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{fetch, get, h1_client, request, within, H1Client, Reply, Scrape, WAIT};

/// A proxy started in-process on a config file in its own temporary directory. Its tasks end
/// with the test's runtime.
pub struct TestProxy {
    pub running: cohort::app::Running,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub client: H1Client,
    pub dir: tempfile::TempDir,
}

/// The proxy on the config file at `path`, with the rollout judge left to the test (it ticks
/// `rollout::judge::tick` on a simulated clock).
pub async fn start_unjudged(path: &std::path::Path) -> cohort::app::Running {
    let options = cohort::app::Options { judge_every: None };
    match within("start", cohort::app::start_with(path, options)).await {
        Ok(r) => r,
        Err(e) => panic!("proxy did not start: {e}"),
    }
}

impl TestProxy {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.yaml");
        std::fs::write(&path, yaml).unwrap();
        let running = match within("the proxy to start", cohort::app::start(&path)).await {
            Ok(r) => r,
            Err(e) => panic!("proxy did not start: {e}\n--- config ---\n{yaml}"),
        };
        let public = running
            .listener("public")
            .expect("a listener called public");
        let admin = running.admin_address;
        TestProxy {
            running,
            public,
            admin,
            client: h1_client(),
            dir,
        }
    }

    /// A GET to the public listener, read to the end.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.fetch(get(self.public, path, headers)).await
    }

    /// Sends `req` over the shared HTTP/1.1 client and reads the whole response.
    pub async fn fetch(&self, req: Request<Full<Bytes>>) -> Reply {
        fetch(&self.client, req).await
    }

    /// A request to the admin listener.
    pub async fn admin(&self, method: &str, path: &str) -> Reply {
        let req = request(method, self.admin, path, &[], Bytes::new());
        fetch(&self.client, req).await
    }

    pub async fn scrape(&self) -> Scrape {
        let r = self.admin("GET", "/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "GET /metrics");
        Scrape::parse(&r.text())
    }

    /// Scrapes until `name{labels}` equals `expected` (values recorded when a response body
    /// is dropped may land just after the client has read the last byte), then fails with
    /// the last value seen.
    pub async fn expect_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.scrape().await.get(name, labels);
            if got == Some(expected) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{name}{labels:?} is {got:?}, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
