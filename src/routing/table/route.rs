//! Validation of one route: its matcher, key sources, split (cohorts, weights, bands), fallback,
//! override and outcome settings, and the metric handles of each (route, cohort).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use super::build::{
    basis_points, check_name, err, header_name, Invalid, TableError, DEFAULT_OUTCOMES,
    DEFAULT_OUTCOME_HEADER,
};
use super::edge::read_secret;
use super::{CohortTarget, Fallback, HostMatch, Price, Route, RouteMatch, UsageSource};
use crate::config::{RawKeySource, RawPrice, RawRoute, RawUpstream, RawUsage};
use crate::failure;
use crate::routing::bands::{self, Bands, BUCKETS};
use crate::routing::key::KeySource;
use crate::routing::signed::Rejection;
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

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

pub(super) fn build_route(
    path: &str,
    r: &RawRoute,
    (upstreams, raw_upstreams): (
        &BTreeMap<String, Arc<Upstream>>,
        &BTreeMap<String, RawUpstream>,
    ),
    metrics: &Metrics,
    base_dir: &std::path::Path,
    files: &mut super::secure::TlsFiles,
) -> Result<Route, TableError> {
    let override_secret = match &r.override_secret_file {
        Some(p) => Some(read_secret(
            &format!("{path}.override_secret_file"),
            base_dir,
            p,
            files,
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

    let usage = match r.usage {
        RawUsage::Auto => UsageSource::Auto,
        RawUsage::Openai => UsageSource::OpenAi,
        RawUsage::Anthropic => UsageSource::Anthropic,
        RawUsage::Header => UsageSource::Header,
        RawUsage::Off => UsageSource::Off,
    };
    let segment = match &r.segment {
        Some(raw) => Some(super::segment::build(&format!("{path}.segment"), raw)?),
        None => None,
    };
    let segment_names = segment.as_ref().map(|s| s.names()).unwrap_or_default();
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
            metrics: metrics.cohort_segmented(
                &r.name,
                &s.cohort,
                &outcomes,
                &failure::Upstream::LABELS,
                &segment_names,
            ),
            guard: None,
            usage,
            price: match raw_upstreams.get(&s.upstream).and_then(|u| u.price) {
                Some(p) => Some(price(&format!("upstreams.{}.price", s.upstream), p)?),
                None => None,
            },
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
            let segments = segment.as_ref().map(|_| segment_names.as_slice());
            let spec = super::rollout::build(raw, &split, &outcomes, named, segments);
            let spec = spec.map_err(|e| {
                let at = if e.field.is_empty() {
                    rp.clone()
                } else {
                    format!("{rp}.{}", e.field)
                };
                err(at, Invalid::Rollout { reason: e.message })
            })?;
            needs_usage(&rp, &spec, usage, &cohorts)?;
            Some(Arc::new(spec))
        }
        None => None,
    };
    let pin = match &r.pin {
        Some(raw) => {
            let names: Vec<&str> = cohorts.iter().map(|c| c.name.as_str()).collect();
            let on = (r.name.as_str(), names.as_slice(), override_header.as_ref());
            let spec =
                super::pin::build_pin(&format!("{path}.pin"), raw, on, metrics, base_dir, files)?;
            Some(Arc::new(spec))
        }
        None => None,
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        key_sources,
        seed: bands::seed_for(&salt),
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
        override_rejected: metrics.override_rejected(&r.name, Rejection::LABELS),
        rollout,
        pin,
        units: None,
        segment,
    })
}

/// The most a million tokens may cost: well past any model's price, and small enough that no
/// answer's cost overflows.
const MAX_PRICE: f64 = 1_000_000.0;

fn price(path: &str, p: RawPrice) -> Result<Price, TableError> {
    let check = |field: &str, v: f64| {
        if v.is_finite() && (0.0..=MAX_PRICE).contains(&v) {
            Ok(v)
        } else {
            Err(err(
                format!("{path}.{field}"),
                Invalid::BadPrice {
                    value: v,
                    max: MAX_PRICE,
                },
            ))
        }
    };
    let input = check("input_per_million", p.input_per_million)?;
    Ok(Price {
        input,
        output: check("output_per_million", p.output_per_million)?,
        cached_input: match p.cached_input_per_million {
            Some(c) => check("cached_input_per_million", c)?,
            None => input,
        },
    })
}

/// A guard on tokens or cost would wait forever on a route that reads no usage, and a cost
/// guard on a cohort whose upstream has no price: refused when loaded instead.
fn needs_usage(
    path: &str,
    spec: &super::rollout::RolloutSpec,
    usage: UsageSource,
    cohorts: &[Arc<CohortTarget>],
) -> Result<(), TableError> {
    use super::rollout::{GuardKind, Latency};
    for (j, g) in spec.guards.iter().enumerate() {
        let GuardKind::Latency { source, .. } = g.kind else {
            continue;
        };
        let at = format!("{path}.guards[{j}].metric");
        let reason = match source {
            Latency::OutputTokens | Latency::Cost if usage == UsageSource::Off => {
                format!("a {} guard needs the route's usage, which is `off`", g.name)
            }
            Latency::Cost => {
                let unpriced = cohorts
                    .iter()
                    .filter(|c| c.name == spec.canary || c.name == spec.baseline)
                    .find(|c| c.price.is_none());
                match unpriced {
                    Some(c) => format!(
                        "a cost guard needs a price on upstream {:?} (cohort {:?}): set upstreams.{}.price",
                        c.upstream.spec.name, c.name, c.upstream.spec.name
                    ),
                    None => continue,
                }
            }
            _ => continue,
        };
        return Err(err(at, Invalid::Rollout { reason }));
    }
    Ok(())
}
