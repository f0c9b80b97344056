//! The coordination engine as the fleet sees it: one narrow, object-safe trait of
//! compare-and-swap key-value operations and watches, so that NATS JetStream KV (`nats`) is
//! one back end and a Kubernetes Lease or etcd one can follow.
//!
//! Owns: the trait, its error taxonomy and the change a watch yields. Must not touch: any
//! back end's client, the record's or the lease's meaning (callers give bytes and read bytes).
//!
//! Keys are dot-separated tokens of `[A-Za-z0-9_-]` (`lease.judge`, `route.agent`); a watch
//! of prefix `route` sees every key under `route.`. Revisions are the engine's: they grow
//! with every write of the bucket, so a larger revision of a key is always a later value.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

/// The engine's version of a key's value: what a compare-and-swap expects.
pub type Revision = u64;

/// A future the trait returns; boxed so the trait stays object-safe (`dyn Engine`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a watch yields, until the engine goes away (then an `Unavailable` item, and the
/// stream may end: the caller watches again once [`Engine::connected`] says so).
pub type Changes = Pin<Box<dyn Stream<Item = Result<Change, EngineError>> + Send>>;

/// One key's new value, or its deletion (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: Revision,
}

/// Why an operation did not happen. The fleet treats each differently: a conflict is
/// re-read and decided again, an absence starts the `stale_after` clock, anything else is a
/// bug or a misconfiguration and is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The key exists (create) or has moved past the revision expected (update): another
    /// writer won the race.
    #[error("conflict: {key} was written by another writer")]
    Conflict { key: String },
    /// The engine could not be reached or did not answer in time; the write may or may not
    /// have happened (read the key again before deciding).
    #[error("engine unavailable: {reason}")]
    Unavailable { reason: String },
    /// Anything else (an invalid key, a bucket with another configuration).
    #[error("engine error: {reason}")]
    Other { reason: String },
}

impl EngineError {
    pub fn unavailable(reason: impl ToString) -> Self {
        EngineError::Unavailable {
            reason: reason.to_string(),
        }
    }

    pub fn other(reason: impl ToString) -> Self {
        EngineError::Other {
            reason: reason.to_string(),
        }
    }
}

/// A key-value engine with compare-and-swap. Every operation is bounded in time by the back
/// end: none waits for the engine to come back.
pub trait Engine: Send + Sync {
    /// The key's value and revision; `None` when it was never written or was deleted.
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, Revision)>, EngineError>>;

    /// Writes `value` only if the key holds nothing (never written, or deleted);
    /// `Conflict` otherwise.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Revision, EngineError>>;

    /// Writes `value` only if the key's revision is still `expected`; `Conflict` otherwise.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Revision,
    ) -> BoxFuture<'a, Result<Revision, EngineError>>;

    /// First the current value of every key under `prefix`, then every change to them, as
    /// they happen.
    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Changes, EngineError>>;

    /// Deletes the key whatever its revision (a watch sees `value: None`).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Whether the engine is reachable now, as far as the client knows.
    fn connected(&self) -> bool;
}
