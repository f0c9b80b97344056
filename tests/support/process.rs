//! The `cohort` binary run as an operator runs it, for what only a real process shows: signals,
//! its exit, and its own CPU time (read from /proc, so the test's work is not counted).
//!
//! Owns: spawning the binary on a config with real ports, signalling it, and killing it when
//! the test ends; and running it once to its exit, as a user runs a subcommand ([`cohort`]). Must not touch: the in-process proxy (`TestProxy`).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::within;

/// A port free a moment ago: the binary needs real ports in its config, since a test cannot
/// ask a separate process which port 0 became.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kernel ticks per second in /proc/PID/stat (USER_HZ, 100 on every Linux architecture).
const USER_HZ: u64 = 100;

/// A running `cohort` process; killed when dropped, so a failing test leaves nothing behind.
pub struct Process {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Process {
    /// `cohort SUBCOMMAND --config FILE` on `yaml` (written with its first two `127.0.0.1:0`,
    /// the public listener's and the admin's, replaced by free ports), once both listen.
    /// With `fd_limit`, the process may hold at most that many descriptors.
    pub async fn start(subcommand: &str, yaml: &str, fd_limit: Option<u32>) -> Process {
        Self::spawn(subcommand, yaml, fd_limit, None).await
    }

    /// As [`Process::start`], with the process's stdout and stderr appended to `log` (and
    /// `RUST_LOG` taken from `COHORT_TEST_LOG` when that is set), for tests that show a
    /// process's log when they fail.
    pub async fn start_logged(subcommand: &str, yaml: &str, log: &std::path::Path) -> Process {
        Self::spawn(subcommand, yaml, None, Some(log)).await
    }

    async fn spawn(
        subcommand: &str,
        yaml: &str,
        fd_limit: Option<u32>,
        log: Option<&std::path::Path>,
    ) -> Process {
        let (port, admin_port) = (free_port(), free_port());
        let yaml = yaml
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1)
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{admin_port}"), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.yaml");
        std::fs::write(&path, yaml).unwrap();
        let bin = env!("CARGO_BIN_EXE_cohort");
        let mut command = match fd_limit {
            // The shell execs the binary, so the child is cohort itself.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .args([subcommand, "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
                command
                    .stdout(Stdio::from(file.try_clone().unwrap()))
                    .stderr(Stdio::from(file));
                if let Some(filter) = std::env::var_os("COHORT_TEST_LOG") {
                    command.env("RUST_LOG", filter);
                }
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().unwrap();
        let p = Process {
            child,
            public: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            dir,
        };
        within("the process to listen", async {
            for addr in [p.public, p.admin] {
                while tokio::net::TcpStream::connect(addr).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await;
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) as `kill -SIGNAL` would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// User and system CPU time the process has used so far, all its threads together.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces; utime
        // and stime are the stat file's 14th and 15th fields.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: u64 = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|f| f.parse::<u64>().unwrap())
            .sum();
        Duration::from_millis(ticks * 1000 / USER_HZ)
    }

    /// The CPU time the process spends during the next `window`.
    pub async fn cpu_during(&self, window: Duration) -> Duration {
        let before = self.cpu_time();
        tokio::time::sleep(window).await;
        self.cpu_time() - before
    }

    /// How many descriptors the process holds.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Whether the process has exited (and reaped it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `bound` for the process to exit by itself.
    pub async fn exit_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        let waited = tokio::time::timeout(bound, async {
            loop {
                if let Some(status) = self.exited() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        waited.await.ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `cohort` binary in `dir` with `args`, as a user would, and waits for it.
pub fn cohort(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the cohort binary")
}
