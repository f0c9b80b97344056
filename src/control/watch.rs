//! Notices config changes without a signal: a watcher on the config file's directory (and the
//! directories of the other files the table reads: TLS material, the admin token, override
//! secrets), backed by a content-hash poll.
//!
//! Owns: turning file-system events and poll ticks into `Control::reload_if_changed` calls.
//! Must not touch: the table or the swap (see `reload`).
//!
//! Directories, not files, are watched because files are often replaced rather than written:
//! editors save by rename (vim), and a Kubernetes ConfigMap or Secret mount reaches the file
//! through the `..data` symlink, which an update swaps to a new timestamped directory. Events
//! on the file's own inode would stop after the first such swap.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::reload::Control;
use crate::routing::table::RoutingTable;

/// Editors and kubelet make several changes per save; reload once they settle.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The directories being watched, kept in step with the serving table's files.
struct Watched {
    watcher: Option<RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

impl Watched {
    fn new(tx: mpsc::Sender<()>) -> Self {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|ev| !ev.kind.is_access()) {
                // A full channel already holds a pending wake-up; that is enough.
                let _ = tx.try_send(());
            }
        });
        match watcher {
            Ok(w) => Watched {
                watcher: Some(w),
                dirs: HashSet::new(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a file watcher; relying on the poll");
                Watched {
                    watcher: None,
                    dirs: HashSet::new(),
                }
            }
        }
    }

    /// Starts watching the config's directory and those of the table's other files.
    fn sync(&mut self, config: &Path, table: &RoutingTable) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for dir in
            std::iter::once(dir_of(config)).chain(table.watched_files.iter().map(|p| dir_of(p)))
        {
            if self.dirs.contains(&dir) {
                continue;
            }
            match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; relying on the poll")
                }
            }
        }
    }
}

/// Starts watching now (so no change after the initial load is missed) and serves the
/// watcher and the poll on a task until `stop` fires; the task ends once a reload in flight
/// has finished, and starts none after `stop` (shutdown awaits it).
pub fn spawn(control: Arc<Control>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let watched = if control.current().watch {
        let mut w = Watched::new(tx.clone());
        w.sync(control.path(), &control.current());
        Some(w)
    } else {
        None
    };
    // Anything written between the initial load and the watch being set up is caught here.
    let _ = tx.try_send(());
    tokio::spawn(run(control, stop, rx, watched))
}

async fn run(
    control: Arc<Control>,
    stop: CancellationToken,
    mut rx: mpsc::Receiver<()>,
    mut watched: Option<Watched>,
) {
    loop {
        let poll = control.current().poll_interval;
        let trigger = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            Some(()) = rx.recv() => {
                // The debounce too ends at `stop`: a stopped proxy must not reload, since the
                // state directory is the next process's (a reload may start a rollout there).
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
                while rx.try_recv().is_ok() {}
                "watch"
            }
            _ = tokio::time::sleep(poll) => "poll",
        };
        let c = Arc::clone(&control);
        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed(trigger)).await;
        if let Some(w) = watched.as_mut() {
            w.sync(control.path(), &control.current());
        }
    }
}
