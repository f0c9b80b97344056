//! The fleet harness's processes: one replica ([`Replica`]) and the fleet of them on one NATS
//! cluster ([`Fleet`]), with their config files and logs.

use super::*;

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
        let req = super::super::bearer_request(
            "POST",
            self.admin_addr(),
            &format!("/rollouts/{ROUTE}/{action}"),
            None,
        );
        let reply = super::super::fetch(&self.client, req).await;
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
        .top(&format!(
            "state_dir: {}",
            super::super::yaml_path(state_dir)
        ))
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
