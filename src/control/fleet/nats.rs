//! The [`Engine`] on NATS JetStream key-value: one bucket per fleet (`cohort_<name>`), a
//! client that reconnects forever in the background, and every operation bounded in time.
//!
//! Owns: the NATS connection (servers, credentials, TLS with the ring provider), the bucket
//! and the mapping of async-nats' errors onto [`EngineError`]. Must not touch: what the keys
//! mean (`lease`, the record), the serving table, metrics.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{watch, OnceCell};

use super::engine::{BoxFuture, Change, Changes, Engine, EngineError, Revision};
use super::spec::{Auth, FleetSpec};

/// The longest any one operation waits for an answer; past it the engine is `Unavailable`.
/// Short next to the heartbeat's multiples that matter (lease, stale_after), long next to a
/// JetStream round trip on a healthy cluster (a few ms) or a leader election (about 2 s for
/// a stream, hence not less).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one connection attempt to one server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// NATS JetStream KV as the fleet's engine.
pub struct NatsEngine {
    /// Its connection state is the truth for [`Engine::connected`]; `connected` below only
    /// wakes whoever waits for a change.
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Made on first use, so a replica that starts while NATS is away starts all the same.
    store: OnceCell<kv::Store>,
    bucket: kv::Config,
    connected: watch::Receiver<bool>,
    timeout: Duration,
}

/// The connect options the spec asks for; reconnection is forever and starts at once.
async fn options(
    spec: &FleetSpec,
    connected: Arc<watch::Sender<bool>>,
) -> Result<async_nats::ConnectOptions, EngineError> {
    let options = match &spec.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::Credentials(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| EngineError::other(format!("{}: {e}", path.display())))?,
        Auth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
    };
    let options = match &spec.tls {
        Some(tls) => options
            .require_tls(true)
            .tls_client_config(tls.config.clone()),
        // For `tls://` servers without a `tls` section: the system roots, still with ring
        // (async-nats would otherwise build its own config from rustls' process default).
        None => match crate::upstream::tls::client_config(None, None) {
            Ok(config) => options.tls_client_config(config),
            Err(e) => return Err(EngineError::other(e)),
        },
    };
    let replica = spec.replica.clone();
    Ok(options
        .name(format!("cohort-{}", spec.replica))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(OPERATION_TIMEOUT))
        .event_callback(move |event| {
            let connected = Arc::clone(&connected);
            let replica = replica.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.send_replace(true);
                        tracing::info!(replica = %replica, "fleet: connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        connected.send_replace(false);
                        tracing::warn!(replica = %replica, "fleet: disconnected from NATS");
                    }
                    other => {
                        tracing::debug!(replica = %replica, event = %other, "fleet: NATS event")
                    }
                }
            }
        }))
}

impl NatsEngine {
    /// Starts connecting to the spec's servers and returns at once: the client connects and
    /// reconnects in the background, forever. Fails only on a configuration the client
    /// refuses (a credentials file gone since `cohort check`).
    pub async fn connect(spec: &FleetSpec) -> Result<Self, EngineError> {
        let (tx, rx) = watch::channel(false);
        let options = options(spec, Arc::new(tx)).await?;
        let client = options
            .connect(spec.servers.clone())
            .await
            .map_err(|e| EngineError::other(format!("NATS client: {e}")))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(OPERATION_TIMEOUT);
        Ok(NatsEngine {
            client,
            jetstream,
            store: OnceCell::new(),
            bucket: kv::Config {
                bucket: spec.bucket(),
                description: format!("cohort fleet {}", spec.name),
                // Compare-and-swap needs only the latest value of each key.
                history: 1,
                num_replicas: spec.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
            connected: rx,
            timeout: OPERATION_TIMEOUT,
        })
    }

    /// Changes of [`Engine::connected`], for a task that waits for contact to return.
    pub fn connection(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The fleet's bucket, created on first use (or opened, when another replica made it).
    async fn store(&self) -> Result<&kv::Store, EngineError> {
        if !self.connected() {
            return Err(EngineError::unavailable("not connected to NATS"));
        }
        self.store
            .get_or_try_init(|| async {
                let created = self.jetstream.create_key_value(self.bucket.clone()).await;
                match created {
                    Ok(store) => Ok(store),
                    // Made by another replica with other settings (replicas, say): use it.
                    Err(create) => match self.jetstream.get_key_value(&self.bucket.bucket).await {
                        Ok(store) => {
                            tracing::debug!(bucket = %self.bucket.bucket, error = %create, "fleet: opened the existing bucket");
                            Ok(store)
                        }
                        Err(_) => Err(EngineError::unavailable(format!(
                            "bucket {}: {create}",
                            self.bucket.bucket
                        ))),
                    },
                }
            })
            .await
    }

    /// Runs `op` on the bucket within the operation timeout.
    async fn bounded<T, F>(&self, op: impl FnOnce(kv::Store) -> F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, EngineError>>,
    {
        let work = async { op(self.store().await?.clone()).await };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::unavailable(format!(
                "no answer from NATS within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Lost races are conflicts, bad keys are ours; the rest is NATS being away or overloaded
/// (no responders while a stream elects its leader, timeouts), which a retry may cure.
fn update_error(key: &str, e: kv::UpdateError) -> EngineError {
    match e.kind() {
        kv::UpdateErrorKind::WrongLastRevision => EngineError::Conflict { key: key.into() },
        _ if lost_race(&e) => EngineError::Conflict { key: key.into() },
        kv::UpdateErrorKind::InvalidKey => EngineError::other(format!("{key}: {e}")),
        _ => EngineError::unavailable(format!("{key}: {e}")),
    }
}

/// JetStream refused the write for the subject's last sequence (error 10071): another writer
/// got there first. The client reports it as such only on some paths: `create` that races
/// another `create` reads the key back to tell, and the read may come from a copy that has
/// not yet received the winner's write (a direct get), so the refusal arrives wrapped.
fn lost_race(e: &dyn std::error::Error) -> bool {
    e.to_string().contains("wrong last sequence")
}

fn create_error(key: &str, e: kv::CreateError) -> EngineError {
    match e.kind() {
        kv::CreateErrorKind::AlreadyExists => EngineError::Conflict { key: key.into() },
        _ if lost_race(&e) => EngineError::Conflict { key: key.into() },
        kv::CreateErrorKind::InvalidKey => EngineError::other(format!("{key}: {e}")),
        _ => EngineError::unavailable(format!("{key}: {e}")),
    }
}

/// A watch entry as a [`Change`]: deletes and purges carry no value.
fn change(entry: kv::Entry) -> Change {
    let value = match entry.operation {
        kv::Operation::Put => Some(entry.value),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    Change {
        key: entry.key,
        value,
        revision: entry.revision,
    }
}

impl Engine for NatsEngine {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, Revision)>, EngineError>> {
        Box::pin(self.bounded(move |store| async move {
            match store.entry(key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    Ok(Some((entry.value, entry.revision)))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == kv::EntryErrorKind::InvalidKey => {
                    Err(EngineError::other(format!("{key}: {e}")))
                }
                Err(e) => Err(EngineError::unavailable(format!("{key}: {e}"))),
            }
        }))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Revision, EngineError>> {
        Box::pin(self.bounded(move |store| async move {
            store
                .create(key, value)
                .await
                .map_err(|e| create_error(key, e))
        }))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Revision,
    ) -> BoxFuture<'a, Result<Revision, EngineError>> {
        Box::pin(self.bounded(move |store| async move {
            store
                .update(key, value, expected)
                .await
                .map_err(|e| update_error(key, e))
        }))
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Changes, EngineError>> {
        Box::pin(self.bounded(move |store| async move {
            let subject = if prefix.is_empty() {
                ">".to_string()
            } else {
                format!("{prefix}.>")
            };
            let entries = store
                .watch_with_history(&subject)
                .await
                .map_err(|e| match e.kind() {
                    kv::WatchErrorKind::InvalidKey => EngineError::other(format!("{subject}: {e}")),
                    _ => EngineError::unavailable(format!("{subject}: {e}")),
                })?;
            let changes = entries.map(|entry| {
                entry
                    .map(change)
                    .map_err(|e| EngineError::unavailable(format!("watch: {e}")))
            });
            Ok(Box::pin(changes) as Changes)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.bounded(move |store| async move {
            store.delete(key).await.map_err(|e| update_error(key, e))
        }))
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
