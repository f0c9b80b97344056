//! Validation: the raw config becomes a [`RoutingTable`] through `TryFrom<TableInput>`, or a
//! [`TableError`] that names the field path and the broken rule. Listeners, admin and
//! upstreams are checked here; each route in `route.rs`; CIDRs, secrets and limits in
//! `edge.rs`; TLS material in `secure.rs`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderName;

use super::{ListenerSpec, RoutingTable};
use crate::config::{RawConfig, RawProtocol};
use crate::telemetry::Metrics;
use crate::upstream::{parse_endpoint, Protocol, Upstream, UpstreamSpec};

pub const DEFAULT_OUTCOME_HEADER: &str = "x-agent-outcome";
pub const DEFAULT_OUTCOMES: [&str; 4] = ["resolved", "escalated", "abandoned", "error"];

/// Everything a table is built from. `previous` lets unchanged upstreams keep their pools.
pub struct TableInput<'a> {
    pub raw: &'a RawConfig,
    pub metrics: &'a Metrics,
    pub previous: Option<&'a RoutingTable>,
    pub generation: u64,
    pub config_hash: u64,
    /// Relative TLS file paths are resolved against this (the config file's directory).
    pub base_dir: &'a std::path::Path,
}

/// A broken rule at a field path such as `routes[0].split[1].percent`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct TableError {
    pub path: String,
    #[source]
    pub kind: Invalid,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("at least one listener is required")]
    NoListeners,
    #[error("at least one route is required")]
    NoRoutes,
    #[error("duplicate {what} name {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("{name:?} is not a valid name: use letters, digits, '_', '-', '.' or ':'")]
    BadName { name: String },
    #[error("{value:?} is not an ip:port socket address")]
    BadAddress { value: String },
    #[error("address {address} is also used by listener {listener:?}")]
    AddressInUse {
        address: SocketAddr,
        listener: String,
    },
    #[error("upstream {name:?} is not defined under `upstreams`")]
    UnknownUpstream { name: String },
    #[error("an upstream needs at least one endpoint")]
    NoEndpoints,
    #[error("endpoint {value:?}: {reason}")]
    BadEndpoint { value: String, reason: String },
    #[error("{value} is not a percent between 0 and 100 with at most two decimals")]
    BadPercent { value: f64 },
    #[error("percents sum to {sum}, not exactly 100")]
    SumNot100 { sum: f64 },
    #[error("a route needs at least one cohort in `split`")]
    EmptySplit,
    #[error("set exactly one of header, cookie, query or client_ip: true")]
    BadKeySource,
    #[error("{value:?} is not a valid header name")]
    BadHeaderName { value: String },
    #[error("{value:?} is not a valid header value")]
    BadHeaderValue { value: String },
    #[error("{value:?} is not an HTTP method")]
    BadMethod { value: String },
    #[error("{value:?} is not a host: use a name such as api.example.com or *.example.com")]
    BadHost { value: String },
    #[error("{value:?} must start with '/'")]
    BadPathPrefix { value: String },
    #[error("fallback {value:?} is neither `random` nor a cohort of this route")]
    BadFallback { value: String },
    #[error("{value:?} is not a CIDR such as 10.0.0.0/8 or an IP address")]
    BadCidr { value: String },
    #[error("must not be empty")]
    Empty,
    #[error("{reason}")]
    Tls { reason: String },
    #[error("{path}: {reason}")]
    Secret { path: String, reason: String },
    #[error("must be at least {min}")]
    TooSmall { min: u64 },
    #[error("{reason}")]
    Rollout { reason: String },
    #[error("a rollout keeps its state in the top-level `state_dir`, which is not set")]
    NoStateDir,
    #[error("{value} is not a price per million tokens from 0 to {max}")]
    BadPrice { value: f64, max: f64 },
    #[error("{reason}")]
    Pin { reason: String },
    #[error("{reason}")]
    Segment { reason: String },
    #[error("{reason}")]
    Late { reason: String },
}

pub(super) fn err(path: impl Into<String>, kind: Invalid) -> TableError {
    TableError {
        path: path.into(),
        kind,
    }
}

pub(super) fn check_name(path: &str, name: &str) -> Result<(), TableError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(err(path, Invalid::BadName { name: name.into() }))
    }
}

fn parse_addr(path: &str, value: &str) -> Result<SocketAddr, TableError> {
    value.parse().map_err(|_| {
        err(
            path,
            Invalid::BadAddress {
                value: value.into(),
            },
        )
    })
}

/// Port 0 asks the kernel for a fresh port, so it never clashes (tests rely on this).
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn header_name(path: &str, value: &str) -> Result<HeaderName, TableError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| {
        err(
            path,
            Invalid::BadHeaderName {
                value: value.into(),
            },
        )
    })
}

/// Percent to basis points, refusing anything finer than 0.01.
pub fn basis_points(percent: f64) -> Option<u32> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let scaled = percent * 100.0;
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-6).then_some(rounded as u32)
}

/// Basis points as the file writes a percent (`20`, `2.5`, `2.25`).
pub fn show_percent(weight: u32) -> String {
    let whole = weight / 100;
    match weight % 100 {
        0 => whole.to_string(),
        frac if frac % 10 == 0 => format!("{whole}.{}", frac / 10),
        frac => format!("{whole}.{frac:02}"),
    }
}

impl TryFrom<TableInput<'_>> for RoutingTable {
    type Error = TableError;

    fn try_from(input: TableInput<'_>) -> Result<Self, TableError> {
        let raw = input.raw;
        if raw.listeners.is_empty() {
            return Err(err("listeners", Invalid::NoListeners));
        }
        let mut listeners: Vec<ListenerSpec> = Vec::new();
        let mut listener_tls = Vec::new();
        let mut tls_files = super::secure::TlsFiles::default();
        for (i, l) in raw.listeners.iter().enumerate() {
            check_name(&format!("listeners[{i}].name"), &l.name)?;
            if listeners.iter().any(|x| x.name == l.name) {
                return Err(err(
                    format!("listeners[{i}].name"),
                    Invalid::Duplicate {
                        what: "listener",
                        name: l.name.clone(),
                    },
                ));
            }
            let path = format!("listeners[{i}].address");
            let address = parse_addr(&path, &l.address)?;
            if let Some(other) = listeners.iter().find(|x| clashes(x.address, address)) {
                return Err(err(
                    path,
                    Invalid::AddressInUse {
                        address,
                        listener: other.name.clone(),
                    },
                ));
            }
            listener_tls.push(match &l.tls {
                Some(t) => Some(super::secure::listener_config(
                    &format!("listeners[{i}].tls"),
                    t,
                    input.base_dir,
                    &mut tls_files,
                )?),
                None => None,
            });
            listeners.push(ListenerSpec {
                name: l.name.clone(),
                address,
                tls: l.tls.is_some(),
            });
        }
        let admin_address = parse_addr("admin.address", &raw.admin.address)?;

        if let Some(l) = listeners.iter().find(|l| clashes(l.address, admin_address)) {
            return Err(err(
                "admin.address",
                Invalid::AddressInUse {
                    address: admin_address,
                    listener: l.name.clone(),
                },
            ));
        }
        let admin_token = match &raw.admin.token_file {
            Some(p) => Some(super::edge::read_secret(
                "admin.token_file",
                input.base_dir,
                p,
                &mut tls_files,
            )?),
            None => None,
        };

        let trusted_cidrs = raw
            .trusted_cidrs
            .iter()
            .enumerate()
            .map(|(i, s)| super::edge::parse_cidr(&format!("trusted_cidrs[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| super::edge::parse_cidr(&format!("trusted_proxies[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let (limits, policy) = super::edge::build_limits(&raw.limits)?;

        let upstreams = build_upstreams(&input, &mut tls_files)?;

        if raw.routes.is_empty() {
            return Err(err("routes", Invalid::NoRoutes));
        }
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            check_name(&format!("{path}.name"), &r.name)?;
            if !names.insert(r.name.as_str()) {
                return Err(err(
                    format!("{path}.name"),
                    Invalid::Duplicate {
                        what: "route",
                        name: r.name.clone(),
                    },
                ));
            }
            if r.rollout.is_some() && raw.state_dir.is_none() {
                return Err(err(format!("{path}.rollout"), Invalid::NoStateDir));
            }
            routes.push(super::route::build_route(
                &path,
                r,
                (&upstreams, &raw.upstreams),
                input.metrics,
                input.base_dir,
                &mut tls_files,
            )?);
        }

        Ok(RoutingTable {
            generation: input.generation,
            config_hash: input.config_hash,
            listeners,
            listener_tls,
            watched_files_hash: crate::tls::files_hash(&tls_files.0),
            watched_files: tls_files.0,
            admin_address,
            upstreams,
            trusted_cidrs,
            trusted_proxies,
            limits,
            policy,
            admin_token: admin_token.map(|t| String::from_utf8_lossy(&t).into_owned()),
            rejected: input.metrics.rejected(crate::failure::Downstream::LABELS),
            internal: input.metrics.internal(crate::failure::Internal::LABELS),
            poll_interval: raw.reload.poll_interval,
            watch: raw.reload.watch,
            shutdown_timeout: raw.shutdown_timeout,
            shutdown_delay: raw.shutdown_delay,
            unrouted: input.metrics.unrouted.clone(),
            state_dir: raw.state_dir.as_ref().map(|d| input.base_dir.join(d)),
            index: Arc::new(super::index::RouteIndex::new(
                routes.iter().map(|r| &r.matcher),
            )),
            routes,
            late: super::late::build(&raw.late_outcomes)?,
        })
    }
}

fn build_upstreams(
    input: &TableInput<'_>,
    files: &mut super::secure::TlsFiles,
) -> Result<BTreeMap<String, Arc<Upstream>>, TableError> {
    let mut out = BTreeMap::new();
    for (name, u) in &input.raw.upstreams {
        let path = format!("upstreams.{name}");
        check_name(&path, name)?;
        if u.endpoints.is_empty() {
            return Err(err(format!("{path}.endpoints"), Invalid::NoEndpoints));
        }
        let endpoints = u
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, e)| {
                parse_endpoint(e).map_err(|reason| {
                    err(
                        format!("{path}.endpoints[{j}]"),
                        Invalid::BadEndpoint {
                            value: e.clone(),
                            reason,
                        },
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = super::secure::upstream_tls(
            &format!("{path}.tls"),
            u.tls.as_ref(),
            input.base_dir,
            files,
        )?;
        let protocol = match u.protocol {
            RawProtocol::Http1 => Protocol::Http1,
            RawProtocol::Http2 => Protocol::Http2,
            RawProtocol::Auto => Protocol::Auto,
        };
        let spec = UpstreamSpec {
            name: name.clone(),
            endpoints,
            protocol,
            tls,
            connect_timeout: u.connect_timeout,
            response_timeout: u.response_timeout,
            idle_timeout: u.idle_timeout,
            tunnel_idle_timeout: u.tunnel_idle_timeout,
            max_idle_per_endpoint: u.max_idle_per_endpoint,
            authority: match u.authority {
                crate::config::RawAuthority::Client => crate::upstream::AuthorityFrom::Client,
                crate::config::RawAuthority::Endpoint => crate::upstream::AuthorityFrom::Endpoint,
            },
        };
        let reused = input
            .previous
            .and_then(|t| t.upstreams.get(name))
            .filter(|old| old.spec == spec)
            .cloned();
        let upstream = match reused {
            Some(u) => u,
            None => Arc::new(Upstream::new(spec).map_err(|e| {
                err(
                    format!("{path}.tls"),
                    Invalid::Tls {
                        reason: e.to_string(),
                    },
                )
            })?),
        };
        out.insert(name.clone(), upstream);
    }
    Ok(out)
}
