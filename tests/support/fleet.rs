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

/// One `cohort run` process of the fleet (or a single proxy, without a `fleet` section),
/// which can be killed, stopped and started again on the same state directory.
pub struct Replica {
    pub id: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    yaml: String,
    process: Option<Process>,
    pub public: Shared,
    pub admin: Shared,
    client: H1Client,
}

impl Replica {
    /// A replica (not started) on config `yaml`, its state directory and log where given.
    pub fn new(id: &str, yaml: String, state_dir: PathBuf, log: PathBuf) -> Replica {
        Replica {
            id: id.into(),
            state_dir,
            log,
            yaml,
            process: None,
            public: Arc::default(),
            admin: Arc::default(),
            client: h1_client(),
        }
    }

    /// Starts the process (on new ports, the same state directory), once it listens.
    pub async fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.id);
        let marker = format!("\n===== {} started at {} =====\n", self.id, now_ms());
        append(&self.log, &marker);
        let p = Process::start_logged("run", &self.yaml, &self.log).await;
        *self.public.lock().unwrap() = Some(p.public);
        *self.admin.lock().unwrap() = Some(p.admin);
        self.process = Some(p);
    }

    /// SIGKILL, as a crash: nothing of it runs afterwards.
    pub fn kill(&mut self) {
        *self.public.lock().unwrap() = None;
        *self.admin.lock().unwrap() = None;
        if let Some(p) = self.process.take() {
            p.signal("KILL");
            drop(p);
        }
        append(
            &self.log,
            &format!("\n===== {} killed at {} =====\n", self.id, now_ms()),
        );
    }

    /// SIGTERM, then waits for the exit (up to 15 s; killed after that).
    pub async fn stop(&mut self) {
        *self.public.lock().unwrap() = None;
        *self.admin.lock().unwrap() = None;
        if let Some(mut p) = self.process.take() {
            p.signal("TERM");
            let exited = p.exit_within(Duration::from_secs(15)).await;
            assert!(
                exited.is_some(),
                "{} did not exit within 15 s of SIGTERM",
                self.id
            );
        }
        append(
            &self.log,
            &format!("\n===== {} stopped at {} =====\n", self.id, now_ms()),
        );
    }

    pub fn running(&self) -> bool {
        self.process.is_some()
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.lock().unwrap().expect("the replica is running")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.lock().unwrap().expect("the replica is running")
    }

    /// `GET /rollouts`, which must answer 200 with JSON.
    pub async fn rollouts(&self) -> Value {
        let (status, body) = admin_get(&self.client, self.admin_addr(), "/rollouts")
            .await
            .unwrap_or_else(|| panic!("{}: GET /rollouts did not answer", self.id));
        assert_eq!(status, 200, "{}: GET /rollouts: {body}", self.id);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{}: {e}: {body}", self.id))
    }

    /// `GET /rollouts` when it answers, else None.
    pub async fn try_rollouts(&self) -> Option<Value> {
        let addr = (*self.admin.lock().unwrap())?;
        let (status, body) = admin_get(&self.client, addr, "/rollouts").await?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The route's rollout as this replica runs it (`rollouts[0]`).
    pub async fn rollout(&self) -> Value {
        self.rollouts().await["rollouts"][0].clone()
    }

    /// The `fleet` object of `GET /rollouts`.
    pub async fn fleet(&self) -> Value {
        self.rollouts().await["fleet"].clone()
    }

    /// The route's shared record as this replica last read it.
    pub async fn record(&self) -> Value {
        self.fleet().await["routes"][ROUTE]["record"].clone()
    }

    pub async fn scrape(&self) -> Scrape {
        let (status, body) = admin_get(&self.client, self.admin_addr(), "/metrics")
            .await
            .unwrap_or_else(|| panic!("{}: GET /metrics did not answer", self.id));
        assert_eq!(status, 200, "{}: GET /metrics: {body}", self.id);
        Scrape::parse(&body)
    }

    /// `POST /rollouts/agent/ACTION`: status and body.
    pub async fn act(&self, action: &str) -> (u16, Value) {
        let req = super::bearer_request(
            "POST",
            self.admin_addr(),
            &format!("/rollouts/{ROUTE}/{action}"),
            None,
        );
        let reply = super::fetch(&self.client, req).await;
        let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        (reply.status.as_u16(), body)
    }

    /// One request with `key` through this replica.
    pub async fn ask(&self, key: &str) -> Option<Answer> {
        let addr = (*self.public.lock().unwrap())?;
        ask(&self.client, addr, key, Duration::from_secs(5)).await
    }

    /// The client port of the NATS server the replica last connected to, from its log
    /// (`async_nats` logs `connected successfully server=PORT`).
    pub fn nats_port(&self) -> Option<u16> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("connected successfully"))?;
        let rest = &line[line.find("server=")? + "server=".len()..];
        let port: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        port.parse().ok()
    }

    /// The last `lines` lines of the replica's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The fleet

/// Three (or `n`) replicas of route `agent` (stable and canary, keyed on `x-user-id`, salt
/// [`SALT`]) with one rollout, coordinated through a three-node NATS cluster.
pub struct Fleet {
    pub cluster: Cluster,
    pub stable: Upstream,
    pub canary: Upstream,
    pub replicas: Vec<Replica>,
    pub timings: Timings,
    pub rollout: String,
    dir: tempfile::TempDir,
}

/// The config file of one replica: `fleet` is the `fleet` section's lines (none for a
/// single proxy).
pub fn replica_yaml(
    stable: &Upstream,
    canary: &Upstream,
    state_dir: &Path,
    rollout: &str,
    fleet: Option<&str>,
) -> String {
    let mut config = Config::new()
        .top(&format!("state_dir: {}", super::yaml_path(state_dir)))
        .top("reload: {watch: false, poll_interval: 1h}");
    if let Some(fleet) = fleet {
        config = config.top(fleet);
    }
    config
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new(ROUTE)
                .key(&format!("header: {KEY_HEADER}"))
                .set(&format!("salt: {SALT}"))
                .set(&format!("rollout: {rollout}"))
                .split(&[("stable", "stable", "90"), ("canary", "canary", "10")]),
        )
        .yaml()
}

fn duration_yaml(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Fleet {
    /// A NATS cluster of three, the two upstreams (failing at the given rates), and `n`
    /// replicas of `rollout` (the route's `rollout:` value, inline YAML), started together;
    /// None when there is no NATS server and none is required (see `nats.rs`).
    pub async fn start(
        name: &str,
        n: usize,
        rollout: &str,
        stable_errors: f64,
        canary_errors: f64,
    ) -> Option<Fleet> {
        let errors = (stable_errors, canary_errors);
        Self::start_with(name, n, rollout, errors, Timings::default()).await
    }

    /// As [`Fleet::start`], with these timings and (stable, canary) error rates.
    pub async fn start_with(
        name: &str,
        n: usize,
        rollout: &str,
        (stable_errors, canary_errors): (f64, f64),
        timings: Timings,
    ) -> Option<Fleet> {
        let cluster = Cluster::start(3).await?;
        let stable = Upstream::start("stable", stable_errors).await;
        let canary = Upstream::start("canary", canary_errors).await;
        let dir = tempfile::tempdir().unwrap();
        let mut fleet = Fleet {
            cluster,
            stable,
            canary,
            replicas: Vec::new(),
            timings,
            rollout: rollout.into(),
            dir,
        };
        for i in 1..=n {
            let id = format!("r{i}");
            let section = fleet.section(name, &id);
            let replica = fleet.replica(&id, Some(&section));
            fleet.replicas.push(replica);
        }
        fleet.start_all().await;
        Some(fleet)
    }

    /// The `fleet` section of replica `id`.
    fn section(&self, name: &str, id: &str) -> String {
        let servers: Vec<String> = self
            .cluster
            .urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect();
        let t = &self.timings;
        format!(
            "fleet:\n  servers: [{}]\n  name: {name}\n  replica: {id}\n  replicas: 3\n  \
             lease: {}\n  heartbeat: {}\n  stale_after: {}\n  switch_delay: {}",
            servers.join(", "),
            duration_yaml(t.lease),
            duration_yaml(t.heartbeat),
            duration_yaml(t.stale_after),
            duration_yaml(t.switch_delay),
        )
    }

    /// A replica (not started) with its own state directory and log under the fleet's
    /// directory; without `fleet`, a single proxy on the same upstreams and rollout.
    pub fn replica(&self, id: &str, fleet: Option<&str>) -> Replica {
        let state_dir = self.dir.path().join(format!("state-{id}"));
        let log = self.dir.path().join(format!("{id}.log"));
        let yaml = replica_yaml(&self.stable, &self.canary, &state_dir, &self.rollout, fleet);
        Replica::new(id, yaml, state_dir, log)
    }

    /// Starts every replica that is not running, all at once.
    pub async fn start_all(&mut self) {
        let starts = self
            .replicas
            .iter_mut()
            .filter(|r| !r.running())
            .map(|r| r.start());
        futures_util::future::join_all(starts).await;
    }

    pub fn public_addrs(&self) -> Vec<Shared> {
        self.replicas
            .iter()
            .map(|r| Arc::clone(&r.public))
            .collect()
    }

    pub fn admin_addrs(&self) -> Vec<Shared> {
        self.replicas.iter().map(|r| Arc::clone(&r.admin)).collect()
    }

    /// Waits up to `limit` until every running replica has applied the route's record
    /// (`applied_version` equals the record's version, and the record's percent is in force)
    /// and satisfies `pred`; the records then, one per running replica.
    pub async fn until_synced(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let mut records = Vec::new();
            for r in self.replicas.iter().filter(|r| r.running()) {
                let Some(all) = r.try_rollouts().await else {
                    break;
                };
                let route = &all["fleet"]["routes"][ROUTE];
                let record = &route["record"];
                let applied = route["applied_version"] == record["version"] && !record.is_null();
                let in_force = record["effective_at_ms"]
                    .as_u64()
                    .is_some_and(|e| e <= now_ms());
                // In contact, not stale, and serving the record's share.
                let live = all["fleet"]["connected"] == true && all["fleet"]["stale"] != true;
                let serving = all["rollouts"][0]["percent"] == record["percent"];
                if !(applied && in_force && live && serving && pred(record)) {
                    break;
                }
                records.push(record.clone());
            }
            let running = self.replicas.iter().filter(|r| r.running()).count();
            if records.len() == running {
                return records;
            }
            if Instant::now() > deadline {
                let mut states = String::new();
                for r in self.replicas.iter().filter(|r| r.running()) {
                    let f = r.try_rollouts().await.unwrap_or_default();
                    states.push_str(&format!(
                        "{}: serving {}% ({}); {:#}\n",
                        r.id, f["rollouts"][0]["percent"], f["rollouts"][0]["state"], f["fleet"]
                    ));
                }
                panic!("{what}: not reached within {limit:?}\n{states}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replica that holds the judge's lease, by its own account (`judge.this_replica`).
    pub async fn judge(&self) -> Option<usize> {
        for (i, r) in self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.running())
        {
            if let Some(all) = r.try_rollouts().await {
                if all["fleet"]["judge"]["this_replica"] == true {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Every replica's log tail and the NATS servers' logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for r in &self.replicas {
            s.push_str(&format!(
                "--- {} ({})\n{}\n",
                r.id,
                r.log.display(),
                r.log_tail(60)
            ));
        }
        s.push_str(&self.cluster.logs());
        s
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== fleet logs =====\n{}", self.logs());
            if std::env::var_os("COHORT_KEEP_FLEET").is_some() {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
                eprintln!("kept {}", kept.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sampling

/// One request as the test saw it: which replica, which key, when it was sent and answered
/// (Unix µs), and who answered.
#[derive(Debug, Clone)]
pub struct Sample {
    pub replica: usize,
    pub key: String,
    pub sent_us: u64,
    pub recv_us: u64,
    pub status: u16,
    pub canary: bool,
}

/// Which keys a sampler sends.
#[derive(Clone)]
pub enum Keys {
    /// These, in turn (each worker starting elsewhere in the list).
    Cycle(Arc<Vec<String>>),
    /// A new user each request.
    Fresh,
}

/// Requests sent to each replica by `workers` tasks, each pausing `gap` after each
/// answer, until stopped; every answer recorded as a [`Sample`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Sampler {
    pub fn start(targets: &[Shared], keys: Keys, workers: usize, gap: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for (replica, target) in targets.iter().enumerate() {
            for worker in 0..workers {
                let (stop, samples, target, keys) = (
                    Arc::clone(&stop),
                    Arc::clone(&samples),
                    Arc::clone(target),
                    keys.clone(),
                );
                tasks.spawn(async move {
                    let client = h1_client();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = match &keys {
                            Keys::Cycle(list) => {
                                list[(worker * list.len() / workers + n) % list.len()].clone()
                            }
                            Keys::Fresh => format!("fresh-{replica}-{worker}-{n}"),
                        };
                        let Some(addr) = *target.lock().unwrap() else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let sent_us = now_us();
                        let answer = ask(&client, addr, &key, Duration::from_secs(3)).await;
                        let recv_us = now_us();
                        match answer {
                            Some(a) if !a.upstream.is_empty() => {
                                samples.lock().unwrap().push(Sample {
                                    replica,
                                    key,
                                    sent_us,
                                    recv_us,
                                    status: a.status,
                                    canary: a.upstream == "canary",
                                });
                            }
                            // A replica going down, or a proxy's own error answer.
                            _ => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                    }
                });
            }
        }
        Sampler {
            stop,
            samples,
            tasks,
        }
    }

    /// The samples so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops every worker; all samples.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let mut all = std::mem::take(&mut *self.samples.lock().unwrap());
        all.sort_by_key(|s| s.sent_us);
        all
    }
}

// ---------------------------------------------------------------------------------------
// The shared record over time

/// One version of the route's record, as a replica's `/rollouts` last showed it, and when
/// the test first saw it (Unix ms). The view's `percent` is the share in force when read, so
/// a version read before its `effective_at_ms` shows the share before it until read again.
#[derive(Debug, Clone)]
pub struct Seen {
    pub observed_ms: u64,
    pub record: Value,
    /// The share the view showed when asked a second or more after `effective_at_ms` (the
    /// view is refreshed every heartbeat), if it was.
    pub in_force_bp: Option<u32>,
}

impl Seen {
    pub fn version(&self) -> u64 {
        self.record["version"].as_u64().unwrap_or(0)
    }
    pub fn effective_ms(&self) -> u64 {
        self.record["effective_at_ms"].as_u64().unwrap_or(0)
    }
    /// The share this version puts in force at `effective_at_ms`: as its last decision
    /// says (a claim keeps the decision before it), else as read well after it was in
    /// force, else as shown.
    pub fn bp(&self) -> u32 {
        target_bp(&self.record)
            .or(self.in_force_bp)
            .unwrap_or_else(|| bp(self.record["percent"].as_f64().unwrap_or(0.0)))
    }
    pub fn step(&self) -> u64 {
        self.record["step"].as_u64().unwrap_or(0)
    }
    pub fn phase(&self) -> &str {
        phase(&self.record)
    }
}

/// The share the record's latest decision (in its history) moved to, in basis points.
pub fn target_bp(record: &Value) -> Option<u32> {
    let version = record["version"].as_u64()?;
    record["history"]
        .as_array()?
        .iter()
        .filter(|d| d["version"].as_u64().is_some_and(|v| v <= version))
        .max_by_key(|d| d["version"].as_u64())
        .and_then(|d| d["to"]["percent"].as_f64())
        .map(bp)
}

/// A record's phase (`ramping`, `paused`, `rolled_back`, ...), whether the view calls it
/// `phase` or `state`.
pub fn phase(record: &Value) -> &str {
    record["phase"]
        .as_str()
        .or(record["state"].as_str())
        .unwrap_or("")
}

/// Polls the running replicas' `/rollouts` every 25 ms (the first that answers each time)
/// and keeps every new version of the route's record.
pub struct RecordWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWatch {
    pub fn start(admins: &[Shared]) -> RecordWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (s, v, admins) = (Arc::clone(&stop), Arc::clone(&seen), admins.to_vec());
        let task = tokio::spawn(async move {
            let client = h1_client();
            while !s.load(Ordering::Relaxed) {
                for admin in &admins {
                    let Some(addr) = *admin.lock().unwrap() else {
                        continue;
                    };
                    let asked_ms = now_ms();
                    let Some((200, body)) = admin_get(&client, addr, "/rollouts").await else {
                        continue;
                    };
                    let observed_ms = now_ms();
                    let all: Value = serde_json::from_str(&body).unwrap_or_default();
                    let record = all["fleet"]["routes"][ROUTE]["record"].clone();
                    let Some(version) = record["version"].as_u64() else {
                        continue;
                    };
                    // The view's percent is the one in force when it is read.
                    let in_force = record["effective_at_ms"]
                        .as_u64()
                        .filter(|e| e + 1000 <= asked_ms)
                        .and_then(|_| record["percent"].as_f64())
                        .map(bp);
                    let mut seen = v.lock().unwrap();
                    match seen.last_mut() {
                        Some(l) if l.version() > version => {}
                        Some(l) if l.version() == version => {
                            l.record = record;
                            l.in_force_bp = l.in_force_bp.or(in_force);
                        }
                        _ => seen.push(Seen {
                            observed_ms,
                            record,
                            in_force_bp: in_force,
                        }),
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        RecordWatch { stop, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The latest version seen.
    pub fn latest(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    pub fn timeline(&self) -> Timeline {
        Timeline::of(&self.seen())
    }

    /// Waits up to `limit` until the latest version satisfies `pred`; it then.
    pub async fn until(&self, what: &str, limit: Duration, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.latest().filter(|s| pred(s)) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {limit:?}; the record: {:#?}",
                    self.latest()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

/// What the record said the canary's share was, over time: the percent of the highest
/// version whose `effective_at_ms` has come.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// (version, effective ms, basis points), by version.
    pub versions: Vec<(u64, u64, u32)>,
}

/// One change of the canary's share in a [`Timeline`].
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
}

impl Timeline {
    pub fn of(seen: &[Seen]) -> Timeline {
        let mut versions: Vec<_> = seen
            .iter()
            .map(|s| (s.version(), s.effective_ms(), s.bp()))
            .collect();
        versions.sort();
        versions.dedup_by_key(|v| v.0);
        Timeline { versions }
    }

    /// The share in force at `t_ms` (None before the first version's).
    pub fn at(&self, t_ms: u64) -> Option<u32> {
        self.versions
            .iter()
            .filter(|(_, eff, _)| *eff <= t_ms)
            .max_by_key(|(v, _, _)| *v)
            .map(|(_, _, bp)| *bp)
    }

    /// Every change of the share, in time order.
    pub fn changes(&self) -> Vec<Change> {
        let mut points: Vec<u64> = self.versions.iter().map(|v| v.1).collect();
        points.sort();
        points.dedup();
        let mut out = Vec::new();
        let mut last: Option<u32> = None;
        for t in points {
            let now = self.at(t);
            if let (Some(from), Some(to)) = (last, now) {
                if from != to {
                    out.push(Change { at_ms: t, from, to });
                }
            }
            last = now.or(last);
        }
        out
    }

    /// The shares in force at some moment of `[from_us, to_us]`.
    pub fn during(&self, from_us: u64, to_us: u64) -> Vec<u32> {
        let (a, b) = (from_us / 1000, to_us.div_ceil(1000));
        let mut out: Vec<u32> = self.at(a).into_iter().collect();
        for &(_, eff, _) in &self.versions {
            if eff > a && eff <= b {
                out.extend(self.at(eff));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether `s` is what the record said while it was in flight, give or take `slack`.
    pub fn agrees(&self, s: &Sample, slack: Duration) -> bool {
        let slack = slack.as_micros() as u64;
        self.during(s.sent_us.saturating_sub(slack), s.recv_us + slack)
            .iter()
            .any(|&bp| in_canary(&s.key, bp) == s.canary)
    }
}

/// When one replica switched at one change of the share, bracketed by its answers for the
/// keys that move: the last answer by the old share was sent at `last_old_us`, the first by
/// the new one was received at `first_new_us` (so the switch is between them, when they
/// are in that order). `stray` counts answers that agree with neither side's moment (an
/// old answer after a new one).
#[derive(Debug, Clone)]
pub struct Switch {
    pub replica: usize,
    pub last_old_us: Option<u64>,
    pub first_new_us: Option<u64>,
    pub stray: usize,
    pub samples: usize,
}

impl Switch {
    /// The switch's moment, estimated as the middle of its bracket.
    pub fn estimate_us(&self) -> Option<u64> {
        match (self.last_old_us, self.first_new_us) {
            (Some(a), Some(b)) => Some((a + b) / 2),
            (None, Some(b)) => Some(b),
            (Some(a), None) => Some(a),
            (None, None) => None,
        }
    }
}

/// Each replica's switch at `change`, from the samples of the moving keys sent within
/// `around` of it (and, at most, to the middle of the neighbouring changes).
pub fn switches(
    samples: &[Sample],
    replicas: usize,
    change: Change,
    lo_us: u64,
    hi_us: u64,
) -> Vec<Switch> {
    (0..replicas)
        .map(|r| {
            let mut sw = Switch {
                replica: r,
                last_old_us: None,
                first_new_us: None,
                stray: 0,
                samples: 0,
            };
            let moving = samples.iter().filter(|s| {
                s.replica == r
                    && s.sent_us >= lo_us
                    && s.sent_us < hi_us
                    && in_canary(&s.key, change.from) != in_canary(&s.key, change.to)
            });
            let mut ordered: Vec<&Sample> = moving.collect();
            ordered.sort_by_key(|s| s.sent_us);
            for s in ordered {
                sw.samples += 1;
                let new = in_canary(&s.key, change.to) == s.canary;
                if new {
                    sw.first_new_us = Some(sw.first_new_us.map_or(s.recv_us, |f| f.min(s.recv_us)));
                } else {
                    if sw.first_new_us.is_some_and(|f| f < s.sent_us) {
                        sw.stray += 1;
                    }
                    sw.last_old_us = Some(sw.last_old_us.map_or(s.sent_us, |l| l.max(s.sent_us)));
                }
            }
            sw
        })
        .collect()
}
