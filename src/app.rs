//! Starting and stopping a whole proxy: load the config, bind listeners and the admin port,
//! spawn the serving tasks, react to signals, and drain on shutdown.
//!
//! Owns: process lifecycle. Must not touch: request handling or table contents. Used by
//! `main` and, in-process, by the integration tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::ConfigError;
use crate::control::admin::{self, Admin};
use crate::control::fleet::nats::NatsEngine;
use crate::control::fleet::shared::Fleet;
use crate::control::fleet::spec::FleetSpec;
use crate::control::reload::{Control, Outcome};
use crate::edge::server;
use crate::lifecycle::Lifecycle;
use crate::proxy::Proxy;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the fleet coordinator ({servers}): {reason}")]
    Fleet { servers: String, reason: String },
    #[error("cannot bind {what} on {address}: {source}")]
    Bind {
        what: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long shutdown waits for connections to go once they are told to abort.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);

/// A started proxy. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// Bound addresses by listener name (real ports when the config asked for port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_address: SocketAddr,
    pub control: Arc<Control>,
    pub admin: Arc<Admin>,
    life: Lifecycle,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The watcher and the judge: the tasks that write rollout state unasked, which shutdown
    /// waits for before its final checkpoint.
    control_tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(what: &str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_string(),
            address,
            source,
        })
}

/// How a proxy is started beyond its config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the rollout judge looks; `None` leaves the judging to the caller (tests drive
    /// `rollout::judge::tick` with a simulated clock).
    pub judge_every: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            judge_every: Some(crate::control::rollout::judge::EVERY),
        }
    }
}

/// Connects to the fleet's NATS servers in the background: a replica that starts without
/// contact serves its canaries at 0% and is ready all the same.
async fn start_fleet(spec: &FleetSpec, metrics: &Metrics) -> Result<Fleet, StartError> {
    let engine = NatsEngine::connect(spec)
        .await
        .map_err(|e| StartError::Fleet {
            servers: spec.servers.join(", "),
            reason: e.to_string(),
        })?;
    tracing::info!(fleet = %spec.name, replica = %spec.replica, servers = %spec.servers.join(", "), "fleet: following the shared rollout records");
    Ok(Fleet::new(spec.clone(), Arc::new(engine), metrics))
}

/// Loads `config` and starts serving it.
pub async fn start(config: &Path) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// Loads `config` and starts serving it, with `options`.
pub async fn start_with(config: &Path, options: Options) -> Result<Running, StartError> {
    let control = Arc::new(Control::start(config, Metrics::new())?);
    let fleet = match control.fleet() {
        Some(spec) => Some(Arc::new(start_fleet(spec, &control.metrics).await?)),
        None => None,
    };
    let table = control.current();
    let life = Lifecycle::default();

    let mut bound = Vec::new();
    for l in &table.listeners {
        bound.push((
            l.name.clone(),
            bind(&format!("listener {:?}", l.name), l.address).await?,
        ));
    }
    let admin_listener = bind("admin", table.admin_address).await?;
    let admin_address = admin_listener.local_addr().unwrap_or(table.admin_address);
    let admin = Arc::new(Admin {
        control: Arc::clone(&control),
        ready: false.into(),
        fleet: fleet.clone(),
    });

    let mut listeners = Vec::new();
    let mut accept_tasks = Vec::new();
    for (index, (name, listener)) in bound.into_iter().enumerate() {
        let address = listener.local_addr().unwrap_or(table.admin_address);
        tracing::info!(listener = %name, %address, "listening");
        let tls = table.listeners.get(index).is_some_and(|l| l.tls);
        let proxy = Arc::new(Proxy::new(control.table(), tls));
        let (refused, open_gauge, parked_gauge) = control.metrics.listener(&name);
        listeners.push((name, address));
        let me = server::Listener {
            index,
            proxy,
            refused,
            open_gauge,
            parked_gauge,
        };
        accept_tasks.push(tokio::spawn(server::serve(listener, me, life.clone())));
    }
    tracing::info!(address = %admin_address, "admin listening");
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&admin),
        life.clone(),
    ));

    let metrics = control.metrics.clone();
    let abort = life.abort.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = abort.cancelled() => break,
                _ = tick.tick() => metrics.upkeep(),
            }
        }
    });

    let mut control_tasks = vec![crate::control::watch::spawn(
        Arc::clone(&control),
        life.abort.clone(),
    )];
    if let Some(fleet) = fleet {
        control_tasks.push(tokio::spawn(crate::control::fleet::run::run(
            fleet,
            Arc::clone(&control),
            life.abort.clone(),
        )));
    }
    if let Some(every) = options.judge_every {
        control_tasks.push(tokio::spawn(crate::control::rollout::judge::run(
            Arc::clone(&control),
            every,
            life.abort.clone(),
        )));
    }

    admin.ready.store(true, Ordering::Release);
    Ok(Running {
        listeners,
        admin_address,
        control,
        admin,
        life,
        accept_tasks,
        control_tasks,
    })
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Reloads the config file off the async workers.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let control = Arc::clone(&self.control);
        tokio::task::spawn_blocking(move || control.reload(trigger))
            .await
            .unwrap_or_else(|_| Outcome::Rejected("reload task panicked".into()))
    }

    /// Turns `/readyz` to 503 and serves on for `shutdown_delay`, then stops accepting, lets
    /// connections finish their exchanges for up to `shutdown_timeout`, and cuts what is left;
    /// then writes the rollouts' final checkpoint, after which this proxy writes nothing to its
    /// state directory. It ends within the delay, the timeout and [`ABORT_GRACE`] (and a reload
    /// or judge tick in flight), whatever the peers do. Returns whether everything drained.
    pub async fn shutdown(self) -> bool {
        let (timeout, delay) = {
            let table = self.control.current();
            (table.shutdown_timeout, table.shutdown_delay)
        };
        self.admin.ready.store(false, Ordering::Release);
        if !delay.is_zero() {
            tracing::info!(delay = ?delay, "not ready; serving on until the shutdown delay ends");
            tokio::time::sleep(delay).await;
        }
        self.life.drain.cancel();
        for t in self.accept_tasks {
            let _ = t.await;
        }
        self.life.connections.close();
        let open = self.life.connections.len();
        tracing::info!(connections = open, timeout = ?timeout, "draining");
        let drained = tokio::time::timeout(timeout, self.life.connections.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                connections = self.life.connections.len(),
                "shutdown timeout reached; closing remaining connections"
            );
        }
        self.life.abort.cancel();
        // Every task ends at the abort's next poll; a bound all the same, since the final
        // checkpoint must not wait on any one connection.
        let aborted = tokio::time::timeout(ABORT_GRACE, self.life.connections.wait()).await;
        if aborted.is_err() {
            tracing::warn!(
                connections = self.life.connections.len(),
                "connections still open after the abort; exiting without them"
            );
        }
        // A reload or a judge tick in flight ends first, and none starts after the abort: once
        // this returns the state directory is the next process's.
        for t in self.control_tasks {
            let _ = t.await;
        }
        let control = Arc::clone(&self.control);
        let _ = tokio::task::spawn_blocking(move || {
            control
                .rollouts()
                .checkpoint(crate::control::rollout::Now::real())
        })
        .await;
        drained
    }
}

/// Serves `config` until SIGTERM or SIGINT, reloading on SIGHUP.
pub async fn run(config: &Path) -> Result<(), StartError> {
    let running = start(config).await?;
    wait_for_signals(&running, Hangup::Reload).await;
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// What SIGHUP means to a command: a daemon reloads its config; an interactive one stops,
/// since SIGHUP is what its closing terminal sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    Reload,
    Stop,
}

/// Returns on SIGTERM or SIGINT, and on SIGHUP when `hangup` is [`Hangup::Stop`].
#[cfg(unix)]
pub async fn wait_for_signals(running: &Running, hangup: Hangup) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; serving until killed");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match hangup {
                Hangup::Reload => { running.reload("SIGHUP").await; }
                Hangup::Stop => { tracing::info!(signal = "SIGHUP", "shutting down"); return; }
            },
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); return; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); return; }
        }
    }
}

#[cfg(not(unix))]
pub async fn wait_for_signals(_running: &Running, _hangup: Hangup) {
    let _ = tokio::signal::ctrl_c().await;
}
