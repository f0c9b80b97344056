//! The signals every task that serves clients shares: drain, abort, and the tracker shutdown
//! waits on.
//!
//! Owns: the `Lifecycle` handle. Must not touch: anything of the crate; a leaf, so the edge,
//! the admin port and the wiring can all hold it without importing one another.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Signals shared by every listener: `drain` asks connections to finish their current
/// exchange and close; `abort` (after `shutdown_timeout`) cuts whatever is left.
#[derive(Clone, Default)]
pub struct Lifecycle {
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    pub connections: TaskTracker,
}
