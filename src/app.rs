//! Starting and stopping a whole proxy: load the config, bind listeners and the admin port,
//! spawn the serving tasks (on the calling runtime and on `workers` threads), react to
//! signals, and drain on shutdown.
//!
//! Owns: process lifecycle. Must not touch: request handling or table contents. Used by
//! `main` and, in-process, by the integration tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{Control, Outcome};
use crate::server::{self, Lifecycle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {what} on {address}: {source}")]
    Bind {
        what: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start worker thread {index}: {source}")]
    Worker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// A started proxy. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// Bound addresses by listener name (real ports when the config asked for port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_address: SocketAddr,
    pub control: Arc<Control>,
    pub admin: Arc<Admin>,
    life: Lifecycle,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<Worker>,
}

/// A worker thread: `accepting` resolves once its accept loops have stopped; the thread ends
/// once every connection (on any worker) is done.
struct Worker {
    accepting: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

fn bind_error(what: &str, address: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.to_string();
    move |source| StartError::Bind {
        what,
        address,
        source,
    }
}

async fn bind(what: &str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(bind_error(what, address))
}

/// How a proxy is started beyond its config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the rollout judge looks; `None` leaves the judging to the caller (tests drive
    /// `rollout::judge::tick` with a simulated clock).
    pub judge_every: Option<Duration>,
    /// Threads that serve the listeners, each on its own copy of them (`workers`); the calling
    /// runtime's thread is the first. Values below 1 count as 1.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            judge_every: Some(crate::rollout::judge::EVERY),
            workers: 1,
        }
    }
}

/// Loads `config` and starts serving it.
pub async fn start(config: &Path) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// Loads `config` and starts serving it, with `options`.
pub async fn start_with(config: &Path, options: Options) -> Result<Running, StartError> {
    let control = Arc::new(Control::start(config, Metrics::new())?);
    let table = control.current();
    let life = Lifecycle::default();

    let workers = options.workers.max(1);
    let mut bound = Vec::new();
    for l in &table.listeners {
        let what = format!("listener {:?}", l.name);
        let copies =
            crate::workers::bind(l.address, workers).map_err(bind_error(&what, l.address))?;
        bound.push((l.name.clone(), copies));
    }
    let admin_listener = bind("admin", table.admin_address).await?;
    let admin_address = admin_listener.local_addr().unwrap_or(table.admin_address);
    let admin = Arc::new(Admin {
        control: Arc::clone(&control),
        ready: false.into(),
    });

    let mut listeners = Vec::new();
    let mut accept_tasks = Vec::new();
    // Worker w's copy of every listener, for the worker threads (w >= 1).
    let mut per_worker: Vec<Vec<(std::net::TcpListener, server::Listener)>> =
        (1..workers).map(|_| Vec::new()).collect();
    for (index, (name, copies)) in bound.into_iter().enumerate() {
        let address = copies[0].local_addr().unwrap_or(table.admin_address);
        tracing::info!(listener = %name, %address, workers, "listening");
        let tls = table.listeners.get(index).is_some_and(|l| l.tls);
        let proxy = Arc::new(Proxy::new(control.table(), tls, life.clone()));
        let (refused, open_gauge, parked_gauge) = control.metrics.listener(&name);
        let me = server::Listener {
            index,
            proxy,
            open: Arc::new(AtomicUsize::new(0)),
            refused,
            open_gauge,
            parked_gauge,
        };
        let mut copies = copies.into_iter();
        if let Some(first) = copies.next() {
            let first = TcpListener::from_std(first).map_err(bind_error(&name, address))?;
            accept_tasks.push(tokio::spawn(server::serve(first, me.clone(), life.clone())));
        }
        for (slot, copy) in per_worker.iter_mut().zip(copies) {
            slot.push((copy, me.clone()));
        }
        listeners.push((name, address));
    }
    let mut started = Vec::new();
    for (w, mine) in per_worker.into_iter().enumerate() {
        match spawn_worker(w + 1, mine, life.clone()) {
            Ok(worker) => started.push(worker),
            Err(source) => {
                // Whatever started stops, rather than serve on without an owner.
                life.drain.cancel();
                life.abort.cancel();
                life.connections.close();
                return Err(StartError::Worker {
                    index: w + 1,
                    source,
                });
            }
        }
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

    crate::watch::spawn(Arc::clone(&control), life.abort.clone());
    if let Some(every) = options.judge_every {
        tokio::spawn(crate::rollout::judge::run(
            Arc::clone(&control),
            every,
            life.abort.clone(),
        ));
    }

    admin.ready.store(true, Ordering::Release);
    Ok(Running {
        listeners,
        admin_address,
        control,
        admin,
        life,
        accept_tasks,
        workers: started,
    })
}

/// Starts a worker thread serving its copies of the listeners until shutdown has drained.
fn spawn_worker(
    index: usize,
    mine: Vec<(std::net::TcpListener, server::Listener)>,
    life: Lifecycle,
) -> std::io::Result<Worker> {
    let (done, accepting) = tokio::sync::oneshot::channel();
    let thread = crate::workers::spawn(index, move || async move {
        let mut tasks = Vec::new();
        for (listener, me) in mine {
            match TcpListener::from_std(listener) {
                Ok(l) => tasks.push(tokio::spawn(server::serve(l, me, life.clone()))),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot serve a listener copy")
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = done.send(());
        // This runtime drives its connections' tasks: it lives until all have ended.
        life.connections.wait().await;
    })?;
    Ok(Worker { accepting, thread })
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

    /// Stops accepting, turns `/readyz` to 503, lets connections finish their exchanges for up
    /// to `shutdown_timeout`, then cuts what is left. Returns whether everything drained.
    pub async fn shutdown(self) -> bool {
        let timeout = self.control.current().shutdown_timeout;
        self.admin.ready.store(false, Ordering::Release);
        self.life.drain.cancel();
        for t in self.accept_tasks {
            let _ = t.await;
        }
        let mut threads = Vec::new();
        for w in self.workers {
            // An error means the worker's thread is gone: it accepts nothing either way.
            let _ = w.accepting.await;
            threads.push(w.thread);
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
        self.life.connections.wait().await;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let control = Arc::clone(&self.control);
        let _ = tokio::task::spawn_blocking(move || {
            control.rollouts().checkpoint(crate::rollout::Now::real())
        })
        .await;
        drained
    }
}

/// Serves `config` until SIGTERM or SIGINT, reloading on SIGHUP.
pub async fn run(config: &Path, options: Options) -> Result<(), StartError> {
    let running = start_with(config, options).await?;
    wait_for_signals(&running).await;
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
pub async fn wait_for_signals(running: &Running) {
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
            _ = hup.recv() => { running.reload("SIGHUP").await; }
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); return; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); return; }
        }
    }
}

#[cfg(not(unix))]
pub async fn wait_for_signals(_running: &Running) {
    let _ = tokio::signal::ctrl_c().await;
}
