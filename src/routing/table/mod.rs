//! The validated, immutable routing table: listeners, routes with their matchers, key sources,
//! cohort bands, upstream handles, and the metric handles of every (route, cohort).
//!
//! Owns: the checked domain types and the lookups the request path makes on them.
//! Must not touch: files (see `config`), the swap (see `control::door`), sockets.
//! Built by `TryFrom<TableInput>` in `build.rs`; never mutated once built.

mod build;
#[cfg(test)]
mod duration_tests;
mod edge;
mod index;
#[cfg(test)]
mod index_tests;
pub mod late;
#[cfg(test)]
mod late_tests;
mod pin;
#[cfg(test)]
mod pin_tests;
pub(crate) mod rollout;
#[cfg(test)]
mod rollout_tests;
mod route;
mod secure;
pub mod segment;
#[cfg(test)]
mod segment_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod usage_tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use metrics::Counter;

pub use build::{basis_points, show_percent, Invalid, TableError, TableInput, DEFAULT_OUTCOMES};
pub use edge::{Policy, Underscores};
pub use pin::{PinCarrier, PinSpec};

use crate::routing::bands::{self, Bands};
use crate::routing::key::KeySource;
use crate::telemetry::{CohortMetrics, OutcomeSlot};
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct RoutingTable {
    pub generation: u64,
    pub config_hash: u64,
    pub listeners: Vec<ListenerSpec>,
    /// TLS server config per listener (aligned with `listeners`); new handshakes use the
    /// serving table's, so a reload rotates certificates without touching open connections.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Every file besides the config the table was built from (certificates, keys, CA roots,
    /// the admin token, override secrets), and a hash of their contents: a reload notices a
    /// rotation of any of them, and the watcher watches their directories.
    pub watched_files: Vec<std::path::PathBuf>,
    pub watched_files_hash: u64,
    pub admin_address: SocketAddr,
    /// In config order. Their matchers are indexed when the table is built (`index`): change
    /// weights and cohorts afterwards, never matchers.
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub trusted_cidrs: Vec<IpNet>,
    /// Proxies whose X-Forwarded-For entries are believed when finding the client address.
    pub trusted_proxies: Vec<IpNet>,
    pub limits: ConnLimits,
    pub policy: Policy,
    /// Bearer token for the guarded admin endpoints.
    pub admin_token: Option<String>,
    /// `cohort_rejected_requests_total`, aligned with `failure::Downstream::ALL`.
    pub rejected: [Counter; crate::failure::Downstream::ALL.len()],
    /// `cohort_internal_errors_total`, aligned with `failure::Internal::ALL`.
    pub internal: [Counter; crate::failure::Internal::ALL.len()],
    pub poll_interval: Duration,
    pub watch: bool,
    pub shutdown_timeout: Duration,
    /// Serving on, with `/readyz` at 503, before draining starts.
    pub shutdown_delay: Duration,
    pub unrouted: Counter,
    /// Where rollouts keep their state and audit log (resolved against the config's directory).
    pub state_dir: Option<std::path::PathBuf>,
    /// `routes` by host and path prefix, built with them (see `index.rs`).
    index: Arc<index::RouteIndex>,
    /// `POST /outcomes`: its limits and windows.
    pub late: late::LateSpec,
}

/// Connection-level limits, read by listeners for each new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_min_rate: crate::upstream::body::MinRate,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
}

#[derive(Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub key_sources: Vec<KeySource>,
    pub salt: String,
    pub seed: u64,
    pub bands: Bands,
    pub cohorts: Vec<Arc<CohortTarget>>,
    pub fallback: Fallback,
    pub override_header: Option<HeaderName>,
    pub outcome_header: HeaderName,
    /// Allowed outcome values, aligned with each cohort's `metrics.outcomes`.
    pub outcomes: Vec<String>,
    pub response_cohort_header: bool,
    pub max_body_bytes: u64,
    /// Key for signed overrides in `override_header`.
    pub override_secret: Option<Vec<u8>>,
    /// `cohort_override_rejected_total`, aligned with `signed::Rejection::ALL`.
    pub override_rejected: [Counter; 5],
    /// The route's rollout, as configured; its state lives in `rollout::Rollouts`, which sets
    /// the cohorts' effective weights.
    pub rollout: Option<Arc<rollout::RolloutSpec>>,
    /// Conversation pinning, when the route enables it.
    pub pin: Option<Arc<PinSpec>>,
    /// Where the request path marks the keys it served from their band, for the sample ratio
    /// check: set by `rollout::Rollouts` while the rollout is judged, with its step's epoch.
    pub units: Option<crate::samples::Units>,
    /// The dimension the route's metrics and its rollout's `per_segment` guards are split by.
    pub segment: Option<segment::Segment>,
}

#[derive(Clone)]
pub struct CohortTarget {
    pub name: String,
    /// `x-cohort` value, built once.
    pub header_value: HeaderValue,
    /// Share in basis points (percent x 100) that the bands are built from: the file's, or
    /// the rollout's when the route has one.
    pub weight: u32,
    /// Share in basis points as the file has it.
    pub configured: u32,
    pub upstream: Arc<Upstream>,
    pub metrics: CohortMetrics,
    /// Where the request path records samples for a rollout's guards: set on the canary and
    /// the baseline of a route whose rollout is being judged, absent otherwise.
    pub guard: Option<Arc<crate::samples::Cells>>,
    /// Where the route's answers report token usage.
    pub usage: UsageSource,
    /// What the upstream's tokens cost, when its config says.
    pub price: Option<Price>,
}

/// Where a route's answers report their token usage (`usage:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// OpenAI's and Anthropic's bodies and streams, and cohort's own header.
    Auto,
    OpenAi,
    Anthropic,
    /// Only the `x-agent-usage` header or trailer.
    Header,
    Off,
}

/// Token prices, per million tokens, in the operator's currency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
}

impl Price {
    /// The cost of one answer in millionths of the currency: a price per million tokens is
    /// the price of one token in millionths. `cached` is part of `input`.
    #[inline]
    pub fn micros(&self, input: u64, output: u64, cached: u64) -> f64 {
        let cached = cached.min(input);
        (input - cached) as f64 * self.input
            + cached as f64 * self.cached_input
            + output as f64 * self.output
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A random bucket, so keyless requests follow the split's weights.
    Random,
    Cohort(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-cased host, without port.
    Exact(String),
    /// Lower-cased suffix including the leading dot: `*.example.com` stores `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: HostMatch,
    pub path_prefix: String,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl HostMatch {
    /// `host` is the request's host without port, in any case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

impl RouteMatch {
    pub fn matches(&self, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        path.starts_with(self.path_prefix.as_str())
            && self.host.matches(host)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(n, v)| headers.get_all(n).iter().any(|got| got == v))
    }

    /// Whether every request this matcher takes is also taken by `earlier` (so this route is
    /// shadowed when it comes later). Conservative: only says yes when sure.
    pub fn covered_by(&self, earlier: &RouteMatch) -> bool {
        let host = match (&earlier.host, &self.host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
            (HostMatch::Suffix(a), HostMatch::Exact(b)) => {
                b.len() > a.len() && b.ends_with(a.as_str())
            }
            _ => false,
        };
        let method = earlier.method.is_none() || earlier.method == self.method;
        let headers = earlier.headers.iter().all(|h| self.headers.contains(h));
        host && method && headers && self.path_prefix.starts_with(earlier.path_prefix.as_str())
    }
}

impl RoutingTable {
    /// First matching route, in config order, found through the route index: the cost does
    /// not grow with the number of routes. The same answer as `find_route_linear`.
    #[inline]
    pub fn find_route(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        // The index was built from these routes; a table whose routes were added or removed
        // since (nothing does) is still answered, by the scan.
        if self.index.len() != self.routes.len() {
            return self.find_route_linear(host, path, method, headers);
        }
        let matches = |i: usize| self.routes[i].matcher.matches(host, path, method, headers);
        self.index
            .find(host, path, matches)
            .map(|i| &self.routes[i])
    }

    /// The reference: every route in config order, the first that matches wins.
    fn find_route_linear(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path, method, headers))
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Whether `client` (already resolved through trusted proxies) may force a cohort.
    pub fn is_trusted(&self, client: IpAddr) -> bool {
        let client = canonical_ip(client);
        self.trusted_cidrs.iter().any(|net| net.contains(&client))
    }

    /// The client's address: the socket peer, or, when the peer is a trusted proxy, the
    /// right-most X-Forwarded-For entry that is not itself a trusted proxy (as nginx's
    /// `real_ip_recursive`). A value a client can forge is never believed.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical_ip(peer);
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if self.trusted_proxies.is_empty() || !trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        // Right to left over the fields, then over each field's entries, without collecting.
        let fields = headers.get_all("x-forwarded-for").iter().rev();
        for entry in fields.flat_map(|v| v.as_bytes().rsplit(|&b| b == b',')) {
            let Some(ip) = std::str::from_utf8(entry)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
            else {
                break;
            };
            client = canonical_ip(ip);
            if !trusted(&client) {
                break;
            }
        }
        client
    }

    /// Sets the gauges that describe this table; called once it is the serving table.
    pub fn publish_gauges(&self) {
        for route in &self.routes {
            for c in &route.cohorts {
                c.metrics.split.set(f64::from(c.weight) / 100.0);
            }
        }
    }

    /// Operator warnings that do not stop the config from loading.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            for c in &route.cohorts {
                if c.configured == 0 {
                    out.push(format!(
                        "route {:?}: cohort {:?} is at 0% and receives no keyed traffic",
                        route.name, c.name
                    ));
                }
            }
            if let Some(earlier) = self.routes[..i]
                .iter()
                .find(|e| route.matcher.covered_by(&e.matcher))
            {
                out.push(format!(
                    "route {:?} is shadowed by the earlier route {:?} and never matches",
                    route.name, earlier.name
                ));
            }
            if let Some(w) = pin::shared_cookie(&self.routes[..i], route) {
                out.push(w);
            }
        }
        for name in self.upstreams.keys() {
            let used = self
                .routes
                .iter()
                .any(|r| r.cohorts.iter().any(|c| c.upstream.name() == name));
            if !used {
                out.push(format!("upstream {name:?} is not used by any route"));
            }
        }
        out
    }
}

impl Route {
    /// The cohort index for a key, or the fallback when there is none.
    #[inline]
    pub fn assign(&self, key: Option<&[u8]>) -> usize {
        match (key, self.fallback) {
            (Some(k), _) => self.bands.lookup(bands::bucket(k, self.seed)),
            (None, Fallback::Random) => self.bands.lookup(fastrand::u32(..bands::BUCKETS)),
            (None, Fallback::Cohort(i)) => i,
        }
    }

    pub fn cohort_index(&self, name: &[u8]) -> Option<usize> {
        self.cohorts.iter().position(|c| c.name.as_bytes() == name)
    }

    /// The outcome counter for a backend's verdict; values outside the allowed list are
    /// `other`, so a backend can never mint a new label value.
    #[inline]
    pub fn outcome_slot(&self, value: &[u8]) -> OutcomeSlot {
        match self
            .outcomes
            .iter()
            .position(|o| o.as_bytes().eq_ignore_ascii_case(value))
        {
            Some(i) => OutcomeSlot::Allowed(i),
            None => OutcomeSlot::Other,
        }
    }
}

/// IPv4-mapped IPv6 peers (from dual-stack sockets) are checked as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Validates a loaded file into a table, placing any rule violation at its line and column.
pub fn from_loaded(
    loaded: &crate::config::Loaded,
    metrics: &crate::telemetry::Metrics,
    previous: Option<&RoutingTable>,
    generation: u64,
) -> Result<RoutingTable, crate::config::ConfigError> {
    let input = TableInput {
        raw: &loaded.raw,
        metrics,
        previous,
        generation,
        config_hash: loaded.content_hash(),
        base_dir: loaded.base_dir(),
    };
    RoutingTable::try_from(input).map_err(|e| loaded.error_at(&e.path, e.kind.to_string()))
}
