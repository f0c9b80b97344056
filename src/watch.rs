//! Notices config changes without a signal: a watcher on the config file's directory, backed
//! by a content-hash poll.
//!
//! Owns: turning file-system events and poll ticks into `Control::reload_if_changed` calls.
//! Must not touch: the table or the swap (see `reload`).
//!
//! The directory, not the file, is watched because the file is often replaced rather than
//! written: editors save by rename (vim), and a Kubernetes ConfigMap mount reaches the file
//! through the `..data` symlink, which an update swaps to a new timestamped directory. Events
//! on the file's own inode would stop after the first such swap.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reload::Control;

/// Editors and kubelet make several changes per save; reload once they settle.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Starts watching now (so no change after the initial load is missed) and serves the
/// watcher and the poll on a task until `stop` fires. A watcher that cannot be set up is
/// logged; the poll still runs.
pub fn spawn(control: Arc<Control>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let watcher = if control.current().watch {
        directory_watcher(&control, tx.clone())
    } else {
        None
    };
    // Anything written between the initial load and the watch being set up is caught here.
    let _ = tx.try_send(());
    tokio::spawn(run(control, stop, rx, watcher))
}

fn directory_watcher(control: &Control, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let dir = control
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|ev| !ev.kind.is_access()) {
            // A full channel already holds a pending wake-up; that is enough.
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; relying on the poll");
            None
        }
    }
}

async fn run(
    control: Arc<Control>,
    stop: CancellationToken,
    mut rx: mpsc::Receiver<()>,
    _watcher: Option<RecommendedWatcher>,
) {
    loop {
        let poll = control.current().poll_interval;
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                "watch"
            }
            _ = tokio::time::sleep(poll) => "poll",
        };
        let c = Arc::clone(&control);
        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed(trigger)).await;
    }
}
