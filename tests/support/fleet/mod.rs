//! The multi-process fleet tests' harness (issue 16): several `cohort run` processes, one per
//! replica (`r1`, `r2`, ...), each with its own state directory and log, in front of two
//! mock upstreams (`stable` and `canary`, each naming itself in its answer and failing at a
//! chosen rate), coordinated through a real NATS cluster (`nats.rs`).
//!
//! Owns: the replicas' config files, starting, killing, stopping and restarting them on the
//! same state directory, reading their admin endpoints, sampling their routing from the
//! client's side with per-request timestamps, following the fleet's shared record
//! ([`RecordWatch`]) and comparing what was served with what the record said
//! ([`Timeline`], [`switches`]). Must not touch: the crate's internals (everything here is
//! HTTP, processes and files).
//!
//! Timestamps are Unix microseconds, so they compare with the record's `effective_at_ms`
//! (every process runs on this machine's clock).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

use super::nats::Cluster;
use super::process::Process;
use super::{contract_cohort, get, h1_client, Config, H1Client, Route, Scrape};

/// The route every fleet test runs, its cohort key header and its salt.
pub const ROUTE: &str = "agent";
pub const KEY_HEADER: &str = "x-user-id";
pub const SALT: &str = "fleet-test";

/// The fleet timings the tests run with: fast, so that a takeover or a stale replica shows
/// within seconds.
#[derive(Debug, Clone)]
pub struct Timings {
    pub heartbeat: Duration,
    pub lease: Duration,
    pub stale_after: Duration,
    pub switch_delay: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_millis(200),
            lease: Duration::from_secs(2),
            stale_after: Duration::from_secs(4),
            switch_delay: Duration::from_millis(500),
        }
    }
}

/// Now, in Unix microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Milliseconds as a readable signed figure, for the printed measurements.
pub fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------
// Upstreams

/// A mock upstream that names itself: every answer carries `x-upstream: NAME` and the body
/// `{"upstream":"NAME"}`, and a share of them (the error rate) is a 500.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    error_rate: Arc<Mutex<f64>>,
    served: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str, error_rate: f64) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(Mutex::new(error_rate));
        let served = Arc::new(AtomicU64::new(0));
        let (r, n, label) = (Arc::clone(&rate), Arc::clone(&served), name.to_string());
        let accept = tokio::spawn(async move {
            let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
                TokioExecutor::new(),
            ));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, n, label, builder) = (
                    Arc::clone(&r),
                    Arc::clone(&n),
                    label.clone(),
                    Arc::clone(&builder),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        n.fetch_add(1, Ordering::Relaxed);
                        let fails = fastrand::f64() < *r.lock().unwrap();
                        let body = format!("{{\"upstream\":\"{label}\"}}");
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        if fails {
                            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        resp.headers_mut()
                            .insert("x-upstream", label.parse().unwrap());
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Upstream {
            name: name.into(),
            addr,
            error_rate: rate,
            served,
            accept,
        }
    }

    pub fn set_error_rate(&self, rate: f64) {
        *self.error_rate.lock().unwrap() = rate;
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// Keys and their buckets

/// Whether `key` is in the canary when the canary has `bp` basis points (the contract's
/// assignment with the route's salt: the canary, last in the split, takes the top `bp`).
pub fn in_canary(key: &str, bp: u32) -> bool {
    contract_cohort(
        SALT,
        key.as_bytes(),
        &[("stable", 10_000 - bp), ("canary", bp)],
    ) == "canary"
}

/// A percent as the admin endpoints show it, in basis points.
pub fn bp(percent: f64) -> u32 {
    (percent * 100.0).round() as u32
}

/// `n` fixed user keys.
pub fn fixed_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Keys whose cohort differs between `from` and `to` basis points (the band that moves).
pub fn band(keys: &[String], from: u32, to: u32) -> Vec<String> {
    keys.iter()
        .filter(|k| in_canary(k, from) != in_canary(k, to))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// Replicas

/// Where a replica's process listens while it runs (None while it does not).
pub type Shared = Arc<Mutex<Option<SocketAddr>>>;

/// What a replica's admin and public listeners answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The upstream that answered (`x-upstream`), empty when the proxy answered itself.
    pub upstream: String,
}

/// One request through `addr` with `key`, within `limit`; None when it fails.
pub async fn ask(
    client: &H1Client,
    addr: SocketAddr,
    key: &str,
    limit: Duration,
) -> Option<Answer> {
    let req = get(addr, "/", &[(KEY_HEADER, key)]);
    let exchange = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        resp.into_body().collect().await.ok()?;
        Some(Answer { status, upstream })
    };
    tokio::time::timeout(limit, exchange).await.ok().flatten()
}

/// A GET on an admin listener: status and body as JSON (Null when not JSON), or None when
/// the listener did not answer within 2 s.
pub async fn admin_get(client: &H1Client, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let req = get(addr, path, &[]);
    let exchange = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

mod observe;
mod replica;
// Not every test binary reaches both halves.
#[allow(unused_imports)]
pub use observe::*;
#[allow(unused_imports)]
pub use replica::*;
