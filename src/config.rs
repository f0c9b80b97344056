//! The configuration file as written: raw serde types (`deny_unknown_fields`) and loading.
//!
//! Owns: YAML parsing, and turning any error (syntax, type, or a later validation error that
//! carries a field path) into a [`ConfigError`] that names file, line, column and field.
//! Must not touch: validation rules (see `table`), sockets, metrics or the serving table.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::locate;

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
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Proxies (CIDRs) whose X-Forwarded-For is believed when finding the client's address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    /// Where rollouts keep their state and audit log; relative to the config file's directory.
    pub state_dir: Option<PathBuf>,
}

/// Edge limits and request hygiene; defaults follow Envoy's edge guidance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    pub max_uri_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
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
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
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
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From the request being sent to the response headers arriving.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest silence between two response body frames.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
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
    #[serde(default = "default_tunnel_idle_timeout", with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
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
}

/// A route's rollout: the canary's steps, how long and on how many samples each is judged,
/// and the guards that judge it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// A new id starts a new rollout; the same id keeps its state across reloads and restarts.
    pub id: String,
    /// The cohort being rolled out (the split's last); the split's first is the baseline.
    pub canary: String,
    /// The canary's percents, increasing.
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// The least time spent at each step.
    #[serde(default = "default_soak", with = "humantime_serde")]
    pub soak: Duration,
    /// Samples each cohort needs in a step before it is judged.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// After the last step: `hold` there, or `promote` (the canary takes the baseline's share).
    #[serde(default)]
    pub after: RawAfter,
    /// The chance of rolling back a canary as good as the baseline, over the whole rollout.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_guards")]
    pub guards: Vec<RawGuard>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawAfter {
    #[default]
    Hold,
    Promote,
}

/// One guard: a metric compared between canary and baseline within the current step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub metric: RawGuardMetric,
    /// Rate guards: how many percentage points worse the canary may be.
    pub margin: Option<f64>,
    /// How much worse, relative to the baseline, the canary may be (0.1 = 10%).
    pub relative_margin: Option<f64>,
    /// Latency guards: the quantile compared (0.5 to 0.999).
    pub quantile: Option<f64>,
    /// Outcome guards: the outcome value counted.
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawGuardMetric {
    ErrorRate,
    EscalationRate,
    ResolutionRate,
    Latency,
    Ttfb,
}

fn default_steps() -> Vec<f64> {
    vec![1.0, 5.0, 25.0, 50.0, 100.0]
}
fn default_soak() -> Duration {
    Duration::from_secs(600)
}
fn default_min_samples() -> u64 {
    500
}
fn default_alpha() -> f64 {
    0.05
}
fn default_guards() -> Vec<RawGuard> {
    vec![RawGuard {
        metric: RawGuardMetric::ErrorRate,
        margin: None,
        relative_margin: None,
        quantile: None,
        outcome: None,
    }]
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

/// A config error located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (it could not be read).
    pub line: usize,
    pub column: usize,
    /// Field path such as `routes[0].split[1].percent`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A parsed file, with its text kept so later validation errors can be located.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub text: String,
    pub raw: RawConfig,
}

impl Loaded {
    /// A [`ConfigError`] for `field`, placed at that field's position in the file (or its
    /// nearest present ancestor's).
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = locate::field_position(&self.text, field).unwrap_or((0, 0));
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// A stable hash of the file's contents, for audit lines and no-op reload detection.
    pub fn content_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.text.as_bytes())
    }
}

/// Reads and parses `file`. Never panics on any input.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(file, text)
}

/// serde_yaml's own recursion limit; no config comes near it.
const MAX_NESTING: usize = 128;

/// Parses `text` as if read from `file`.
pub fn parse(file: &Path, text: String) -> Result<Loaded, ConfigError> {
    // YAML forbids duplicate keys, but a typed map (such as `upstreams`) would keep the last.
    if let Some(dup) = locate::duplicate_key(&text) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: dup.line,
            column: dup.column,
            field: dup.field,
            message: format!("duplicate key {:?}", dup.key),
        });
    }
    // serde_yaml refuses deeper nesting anyway, but only after libyaml has spent time
    // quadratic in the depth on it: a few deep brackets would stall a reload for minutes.
    if let Some((line, column)) = locate::too_deep(&text, MAX_NESTING) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            field: String::new(),
            message: format!("recursion limit exceeded: nested deeper than {MAX_NESTING} levels"),
        });
    }
    let de = serde_yaml::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(raw) => Ok(Loaded {
            file: file.to_path_buf(),
            text,
            raw,
        }),
        Err(e) => {
            // The typed pass stops at the first semantic error in the events that precede a
            // syntax error, which would then be reported in its place: syntax comes first.
            if let Err(syntax) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
                let (line, column) = syntax.location().map_or((0, 0), |l| (l.line(), l.column()));
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line,
                    column,
                    field: String::new(),
                    message: strip_location(&syntax.to_string()),
                });
            }
            let field = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let (line, column) = match inner.location() {
                Some(loc) => (loc.line(), loc.column()),
                None => locate::field_position(&text, &field).unwrap_or((0, 0)),
            };
            let message = strip_path(&strip_location(&inner.to_string()), &field);
            Err(ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field,
                message,
            })
        }
    }
}

/// serde_path_to_error writes `.` for the root; an empty path reads better.
fn clean_path(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

/// serde_yaml writes " at line L column C" after a message (and after its context, for syntax
/// errors); the location is printed once, up front.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = digits(after);
        let located = after[n..]
            .strip_prefix(" column ")
            .filter(|c| n > 0 && digits(c) > 0);
        match located {
            Some(c) => rest = &c[digits(c)..],
            None => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// serde_yaml starts a message with the path of the enclosing value (`routes[0]: unknown
/// field ...`); the field path is printed once, up front.
fn strip_path(message: &str, field: &str) -> String {
    match message.split_once(": ") {
        Some((head, tail))
            if !head.is_empty()
                && field.starts_with(head)
                && matches!(field[head.len()..].chars().next(), None | Some('.' | '[')) =>
        {
            tail.to_string()
        }
        _ => message.to_string(),
    }
}
