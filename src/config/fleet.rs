//! The raw serde types of the top-level `fleet` section: the NATS servers that coordinate
//! several replicas, how to reach them, the fleet's and this replica's names, and the lease
//! timings, with their documented defaults.
//!
//! Owns: the section's shape as serde reads and writes it. Must not touch: what makes a fleet
//! valid or how it runs (see `control::fleet`), sockets.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The replicas that share one rollout per route, through NATS JetStream key-value. Absent:
/// a single process, as without fleets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`, or `host:4222`); at least one.
    pub servers: Vec<String>,
    /// A NATS `.creds` file (JWT and nkey seed); relative to the config file.
    pub credentials: Option<PathBuf>,
    // Alternatives to `credentials`, shown commented out in the reference config since only
    // one way to authenticate may be set; not serialised when unset for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub tls: Option<RawFleetTls>,
    /// The fleet's name: it names the bucket, so every key of the fleet is under it.
    pub name: String,
    /// This replica's id; the host name (up to its first '.') when absent.
    pub replica: Option<String>,
    /// Copies of the bucket JetStream keeps (1 to 5): 3 on a three-node cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long the judge's lease lasts without a renewal.
    #[serde(
        default = "default_lease",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub lease: Duration,
    /// How often a replica renews its lease and says which version it serves.
    #[serde(
        default = "default_heartbeat",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub heartbeat: Duration,
    /// How long a replica without contact keeps its canary before it sets it to 0%.
    #[serde(
        default = "default_stale_after",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub stale_after: Duration,
    /// How long after its write an advance takes effect, so that every replica has seen it
    /// and all switch at that one moment (rollbacks take effect at once).
    #[serde(
        default = "default_switch_delay",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub switch_delay: Duration,
    /// The most local e-processes one step may see (replicas, plus restarts, which judge
    /// afresh): each replica's own rollbacks spend `alpha / 2 / max_replicas` of the alpha.
    #[serde(default = "default_max_replicas")]
    pub max_replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleetTls {
    /// PEM roots to verify the servers against; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn default_replicas() -> usize {
    1
}
fn default_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(30)
}
fn default_switch_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_replicas() -> usize {
    20
}
