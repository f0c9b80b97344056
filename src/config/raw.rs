//! The raw serde types of the configuration file: one struct or enum per YAML mapping, each
//! `deny_unknown_fields`, with the documented defaults.
//!
//! Owns: the file's shape (field names, types, defaults) as serde reads and writes it.
//! Must not touch: reading files or locating errors (`super`), validation rules (see `routing::table`),
//! sockets, metrics or the serving table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fleet::RawFleet;
use super::late::RawLateOutcomes;
use super::rollout::RawRollout;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Peers allowed to force a cohort with a route's `override_header`.
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    #[serde(default)]
    pub reload: RawReload,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(
        default = "default_shutdown_timeout",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub shutdown_timeout: Duration,
    /// How long, after SIGTERM/SIGINT, `/readyz` answers 503 while everything is still served,
    /// before draining starts: a load balancer's time to stop sending. 0s (the default): none.
    #[serde(default, with = "super::duration")]
    pub shutdown_delay: Duration,
    /// Proxies (CIDRs) whose X-Forwarded-For is believed when finding the client's address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    /// Where rollouts keep their state and audit log; relative to the config file's directory.
    pub state_dir: Option<PathBuf>,
    /// Replicas that run each rollout together, through NATS. Default: none (one process).
    pub fleet: Option<RawFleet>,
    /// `POST /outcomes`: outcomes posted after the turn (see `late`).
    #[serde(default)]
    pub late_outcomes: RawLateOutcomes,
}

/// Edge limits and request hygiene; defaults follow Envoy's edge guidance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    pub max_uri_bytes: usize,
    #[serde(
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub header_read_timeout: Duration,
    #[serde(
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub body_read_timeout: Duration,
    /// Slowest request body accepted, bytes per second averaged over `body_rate_window`;
    /// 0 turns the check off.
    pub body_min_rate: u64,
    // At least 1s: shorter windows would judge a healthy upload by the luck of one round trip.
    #[serde(
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub body_rate_window: Duration,
    #[serde(
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub underscore_headers: RawUnderscores,
    pub normalize_path: bool,
    pub reject_encoded_slashes: bool,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            max_uri_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            body_min_rate: 256,
            body_rate_window: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            http2_max_concurrent_streams: 100,
            underscore_headers: RawUnderscores::Reject,
            normalize_path: false,
            reject_encoded_slashes: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawUnderscores {
    #[default]
    Reject,
    Drop,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    /// Terminate TLS on this listener.
    pub tls: Option<RawListenerTls>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Chosen by SNI; the first without `server_names` is the default.
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM certificate chain, leaf first. Relative paths are relative to the config file.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names (exact or `*.suffix`) this certificate answers for.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM roots to verify the upstream against; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// SNI and verification name; the endpoint's host when absent.
    pub server_name: Option<String>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// File holding the bearer token that guards the admin endpoints (all but /metrics,
    /// /healthz and /readyz); required when the address is not loopback.
    pub token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin_address(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// Content-hash poll that backs up the file watcher.
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub poll_interval: Duration,
    /// Watch the config file's directory for changes; the poll runs either way.
    #[serde(default = "yes")]
    pub watch: bool,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            poll_interval: default_poll_interval(),
            watch: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub endpoints: Vec<String>,
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub connect_timeout: Duration,
    /// From the request being sent to the response headers arriving.
    #[serde(
        default = "default_response_timeout",
        deserialize_with = "super::duration::at_least::<100, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub response_timeout: Duration,
    /// Longest silence between two response body frames.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub idle_timeout: Duration,
    /// Idle kept-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// `http1`, `http2` (h2c prior knowledge, or ALPN h2 over TLS) or `auto` (ALPN over TLS,
    /// HTTP/1.1 in cleartext).
    #[serde(default)]
    pub protocol: RawProtocol,
    /// Settings for `https://` endpoints.
    pub tls: Option<RawUpstreamTls>,
    /// Longest silence on an upgraded (WebSocket) connection before it is closed.
    #[serde(
        default = "default_tunnel_idle_timeout",
        deserialize_with = "super::duration::at_least::<1000, _>",
        serialize_with = "super::duration::serialize"
    )]
    pub tunnel_idle_timeout: Duration,
    /// The authority the upstream sees (Host, or :authority on HTTP/2): `client` or `endpoint`.
    #[serde(default)]
    pub authority: RawAuthority,
    /// What this upstream's tokens cost, per million, for the cost metrics and guards.
    pub price: Option<RawPrice>,
}

/// Token prices per million tokens, in one currency of the operator's choice (cohort only
/// multiplies). Cached input defaults to the input price.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
    pub cached_input_per_million: Option<f64>,
}

/// Where a route's answers report their token usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawUsage {
    /// Every dialect below, told apart by content type and body shape.
    #[default]
    Auto,
    /// OpenAI Chat Completions and Responses bodies and streams.
    Openai,
    /// Anthropic Messages bodies and streams.
    Anthropic,
    /// Only cohort's own `x-agent-usage` header or trailer.
    Header,
    /// No scanning.
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawAuthority {
    #[default]
    Client,
    Endpoint,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    #[default]
    Http1,
    Http2,
    Auto,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    #[serde(default)]
    pub cohort_key: Vec<RawKeySource>,
    pub salt: Option<String>,
    pub split: Vec<RawSplit>,
    /// `random` (weighted by percent) or the name of a cohort, for requests without a key.
    pub fallback: Option<String>,
    pub override_header: Option<String>,
    pub outcome_header: Option<String>,
    pub outcomes: Option<Vec<String>>,
    /// Whether the response carries `x-cohort` too.
    #[serde(default = "yes")]
    pub response_cohort_header: bool,
    /// Largest request body accepted, in bytes (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Secret for signed overrides in `override_header` (see `cohort sign-override`).
    pub override_secret_file: Option<PathBuf>,
    /// Progressive delivery of one of the split's cohorts.
    pub rollout: Option<RawRollout>,
    /// Where answers report token usage: `auto`, `openai`, `anthropic`, `header` or `off`.
    #[serde(default)]
    pub usage: RawUsage,
    /// Conversation pinning: a signed pin keeps a conversation on its cohort through a ramp.
    pub pin: Option<super::pin::RawPin>,
    /// The one dimension (a request or response header) the route's metrics and its
    /// rollout's `per_segment` guards are split by.
    pub segment: Option<super::RawSegment>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One key source; exactly one field is set (checked by the table).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeySource {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub client_ip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub cohort: String,
    pub upstream: String,
    pub percent: f64,
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_idle() -> usize {
    256
}
fn yes() -> bool {
    true
}
