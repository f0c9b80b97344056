//! Validation: the raw config becomes a [`RoutingTable`] through `TryFrom<TableInput>`, or a
//! [`TableError`] that names the field path and the broken rule.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use super::{CohortTarget, Fallback, HostMatch, ListenerSpec, Route, RouteMatch, RoutingTable};
use crate::cohort::{self, Bands, KeySource, BUCKETS};
use crate::config::{RawConfig, RawKeySource, RawProtocol, RawRoute};
use crate::metrics::Metrics;
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
}

fn err(path: impl Into<String>, kind: Invalid) -> TableError {
    TableError {
        path: path.into(),
        kind,
    }
}

fn check_name(path: &str, name: &str) -> Result<(), TableError> {
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

fn header_name(path: &str, value: &str) -> Result<HeaderName, TableError> {
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
            Some(p) => Some(read_secret("admin.token_file", &input.base_dir.join(p))?),
            None => None,
        };

        let trusted_cidrs = raw
            .trusted_cidrs
            .iter()
            .enumerate()
            .map(|(i, s)| parse_cidr(&format!("trusted_cidrs[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| parse_cidr(&format!("trusted_proxies[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let (limits, policy) = build_limits(&raw.limits)?;

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
            routes.push(build_route(
                &path,
                r,
                &upstreams,
                input.metrics,
                input.base_dir,
            )?);
        }

        Ok(RoutingTable {
            generation: input.generation,
            config_hash: input.config_hash,
            listeners,
            listener_tls,
            tls_files_hash: crate::tls::files_hash(&tls_files.0),
            tls_files: tls_files.0,
            admin_address,
            routes,
            upstreams,
            trusted_cidrs,
            trusted_proxies,
            limits,
            policy,
            admin_token: admin_token.map(|t| String::from_utf8_lossy(&t).into_owned()),
            rejected: input.metrics.rejected.clone(),
            poll_interval: raw.reload.poll_interval,
            watch: raw.reload.watch,
            shutdown_timeout: raw.shutdown_timeout,
            unrouted: input.metrics.unrouted.clone(),
            state_dir: raw.state_dir.as_ref().map(|d| input.base_dir.join(d)),
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

fn build_match(path: &str, r: &RawRoute) -> Result<RouteMatch, TableError> {
    let m = &r.matcher;
    let host = match m.host.as_deref() {
        None | Some("*") => HostMatch::Any,
        Some(h) => {
            let bad = || {
                err(
                    format!("{path}.match.host"),
                    Invalid::BadHost { value: h.into() },
                )
            };
            let (suffix, name) = match h.strip_prefix('*') {
                Some(rest) if rest.starts_with('.') => (true, rest),
                Some(_) => return Err(bad()),
                None => (false, h),
            };
            let body = name.strip_prefix('.').unwrap_or(name);
            if body.is_empty()
                || !body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(bad());
            }
            let lower = name.to_ascii_lowercase();
            if suffix {
                HostMatch::Suffix(lower)
            } else {
                HostMatch::Exact(lower)
            }
        }
    };
    let path_prefix = m.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') {
        return Err(err(
            format!("{path}.match.path_prefix"),
            Invalid::BadPathPrefix { value: path_prefix },
        ));
    }
    let method = match &m.method {
        None => None,
        Some(s) => {
            let bad = || {
                err(
                    format!("{path}.match.method"),
                    Invalid::BadMethod { value: s.clone() },
                )
            };
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(bad());
            }
            Some(Method::from_bytes(s.as_bytes()).map_err(|_| bad())?)
        }
    };
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        let p = format!("{path}.match.headers.{k}");
        let name = header_name(&p, k)?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| err(&p, Invalid::BadHeaderValue { value: v.clone() }))?;
        headers.push((name, value));
    }
    Ok(RouteMatch {
        host,
        path_prefix,
        method,
        headers,
    })
}

fn key_source(path: &str, k: &RawKeySource) -> Result<KeySource, TableError> {
    let bad = || err(path, Invalid::BadKeySource);
    let set = [
        k.header.is_some(),
        k.cookie.is_some(),
        k.query.is_some(),
        k.client_ip.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(bad());
    }
    let nonempty = |field: &str, v: &String| {
        if v.is_empty() {
            Err(err(format!("{path}.{field}"), Invalid::Empty))
        } else {
            Ok(v.clone())
        }
    };
    Ok(match k {
        RawKeySource {
            header: Some(h), ..
        } => KeySource::Header(header_name(&format!("{path}.header"), h)?),
        RawKeySource {
            cookie: Some(c), ..
        } => KeySource::Cookie(nonempty("cookie", c)?),
        RawKeySource { query: Some(q), .. } => KeySource::Query(nonempty("query", q)?),
        RawKeySource {
            client_ip: Some(true),
            ..
        } => KeySource::ClientIp,
        _ => return Err(bad()),
    })
}

fn build_route(
    path: &str,
    r: &RawRoute,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    metrics: &Metrics,
    base_dir: &std::path::Path,
) -> Result<Route, TableError> {
    let override_secret = match &r.override_secret_file {
        Some(p) => Some(read_secret(
            &format!("{path}.override_secret_file"),
            &base_dir.join(p),
        )?),
        None => None,
    };
    let matcher = build_match(path, r)?;
    let key_sources = r
        .cohort_key
        .iter()
        .enumerate()
        .map(|(j, k)| key_source(&format!("{path}.cohort_key[{j}]"), k))
        .collect::<Result<Vec<_>, _>>()?;
    let outcome_header = header_name(
        &format!("{path}.outcome_header"),
        r.outcome_header
            .as_deref()
            .unwrap_or(DEFAULT_OUTCOME_HEADER),
    )?;
    let override_header = match &r.override_header {
        Some(h) => Some(header_name(&format!("{path}.override_header"), h)?),
        None => None,
    };
    let outcomes: Vec<String> = match &r.outcomes {
        Some(list) => {
            for (j, o) in list.iter().enumerate() {
                check_name(&format!("{path}.outcomes[{j}]"), o)?;
            }
            list.iter().map(|o| o.to_ascii_lowercase()).collect()
        }
        None => DEFAULT_OUTCOMES.iter().map(|s| s.to_string()).collect(),
    };

    if r.split.is_empty() {
        return Err(err(format!("{path}.split"), Invalid::EmptySplit));
    }
    let mut cohorts = Vec::with_capacity(r.split.len());
    let mut total: u32 = 0;
    let mut sum = 0.0;
    for (j, s) in r.split.iter().enumerate() {
        let sp = format!("{path}.split[{j}]");
        check_name(&format!("{sp}.cohort"), &s.cohort)?;
        if cohorts
            .iter()
            .any(|c: &Arc<CohortTarget>| c.name == s.cohort)
        {
            return Err(err(
                format!("{sp}.cohort"),
                Invalid::Duplicate {
                    what: "cohort",
                    name: s.cohort.clone(),
                },
            ));
        }
        let upstream = upstreams.get(&s.upstream).ok_or_else(|| {
            err(
                format!("{sp}.upstream"),
                Invalid::UnknownUpstream {
                    name: s.upstream.clone(),
                },
            )
        })?;
        let weight = basis_points(s.percent).ok_or_else(|| {
            err(
                format!("{sp}.percent"),
                Invalid::BadPercent { value: s.percent },
            )
        })?;
        total += weight;
        sum += s.percent;
        let header_value = HeaderValue::from_str(&s.cohort).map_err(|_| {
            err(
                format!("{sp}.cohort"),
                Invalid::BadHeaderValue {
                    value: s.cohort.clone(),
                },
            )
        })?;
        cohorts.push(Arc::new(CohortTarget {
            name: s.cohort.clone(),
            header_value,
            weight,
            configured: weight,
            upstream: Arc::clone(upstream),
            metrics: metrics.cohort(&r.name, &s.cohort, &outcomes),
            guard: None,
        }));
    }
    if total != BUCKETS {
        return Err(err(
            format!("{path}.split"),
            Invalid::SumNot100 {
                sum: (sum * 100.0).round() / 100.0,
            },
        ));
    }
    let weights: Vec<u32> = cohorts.iter().map(|c| c.weight).collect();
    let fallback = match r.fallback.as_deref() {
        None | Some("random") => Fallback::Random,
        Some(name) => {
            Fallback::Cohort(cohorts.iter().position(|c| c.name == name).ok_or_else(|| {
                err(
                    format!("{path}.fallback"),
                    Invalid::BadFallback { value: name.into() },
                )
            })?)
        }
    };
    let salt = r.salt.clone().unwrap_or_else(|| r.name.clone());
    if salt.is_empty() {
        return Err(err(format!("{path}.salt"), Invalid::Empty));
    }
    let rollout = match &r.rollout {
        Some(raw) => {
            let rp = format!("{path}.rollout");
            check_name(&format!("{rp}.id"), &raw.id)?;
            let split: Vec<(&str, u32)> = cohorts
                .iter()
                .map(|c| (c.name.as_str(), c.weight))
                .collect();
            let named = match fallback {
                Fallback::Cohort(i) => Some(i),
                Fallback::Random => None,
            };
            let spec = crate::rollout::spec::build(raw, &split, &outcomes, named).map_err(|e| {
                let at = if e.field.is_empty() {
                    rp.clone()
                } else {
                    format!("{rp}.{}", e.field)
                };
                err(at, Invalid::Rollout { reason: e.message })
            })?;
            Some(Arc::new(spec))
        }
        None => None,
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        key_sources,
        seed: cohort::seed_for(&salt),
        salt,
        bands: Bands::new(&weights),
        cohorts,
        fallback,
        override_header,
        outcome_header,
        outcomes,
        response_cohort_header: r.response_cohort_header,
        max_body_bytes: r.max_body_bytes,
        override_secret,
        override_rejected: metrics.override_rejected(&r.name),
        rollout,
    })
}

fn parse_cidr(path: &str, s: &str) -> Result<IpNet, TableError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            err(
                path,
                Invalid::BadCidr {
                    value: s.to_string(),
                },
            )
        })
}

/// A secret or token file: its contents without the trailing newline editors add.
fn read_secret(path: &str, file: &std::path::Path) -> Result<Vec<u8>, TableError> {
    let fail = |reason: String| {
        err(
            path,
            Invalid::Secret {
                path: file.display().to_string(),
                reason,
            },
        )
    };
    let mut bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.len() < crate::signed::MIN_SECRET_BYTES {
        return Err(fail(format!(
            "must hold at least {} bytes",
            crate::signed::MIN_SECRET_BYTES
        )));
    }
    Ok(bytes)
}

fn build_limits(
    l: &crate::config::RawLimits,
) -> Result<(super::ConnLimits, crate::hygiene::Policy), TableError> {
    let at_least = |field: &str, value: u64, min: u64| {
        if value < min {
            Err(err(format!("limits.{field}"), Invalid::TooSmall { min }))
        } else {
            Ok(())
        }
    };
    at_least(
        "max_request_header_bytes",
        l.max_request_header_bytes as u64,
        1024,
    )?;
    at_least("max_request_headers", l.max_request_headers as u64, 1)?;
    at_least("max_uri_bytes", l.max_uri_bytes as u64, 64)?;
    at_least("max_connections", l.max_connections as u64, 1)?;
    at_least(
        "http2_max_concurrent_streams",
        u64::from(l.http2_max_concurrent_streams),
        1,
    )?;
    let limits = super::ConnLimits {
        header_read_timeout: l.header_read_timeout,
        body_read_timeout: l.body_read_timeout,
        keepalive_timeout: l.keepalive_timeout,
        max_connections: l.max_connections,
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        max_header_bytes: l.max_request_header_bytes,
        max_headers: l.max_request_headers,
        max_uri_bytes: l.max_uri_bytes,
    };
    let policy = crate::hygiene::Policy {
        max_header_bytes: l.max_request_header_bytes,
        max_headers: l.max_request_headers,
        max_uri_bytes: l.max_uri_bytes,
        underscores: match l.underscore_headers {
            crate::config::RawUnderscores::Reject => crate::hygiene::Underscores::Reject,
            crate::config::RawUnderscores::Drop => crate::hygiene::Underscores::Drop,
            crate::config::RawUnderscores::Allow => crate::hygiene::Underscores::Allow,
        },
        normalize_path: l.normalize_path,
        reject_encoded_slashes: l.reject_encoded_slashes,
    };
    Ok((limits, policy))
}
