//! Which cohort a request goes to: a forced cohort from the route's `override_header` when it
//! may be honoured, else the cohort of a valid conversation pin, else the key's band, else the
//! route's fallback; what the response must do about the pin; and which of these chose the
//! cohort ([`Chosen`]: only the band's choices count for the sample ratio check).
//!
//! Owns: the override rules (plain names from trusted clients; signed values from anyone),
//! the pin rules (same route, same rollout, cohort still serving, within `max_ttl`), and the
//! rejection counts of both. Must not touch: headers on the wire (the proxy strips the
//! override header and a header pin, and sets the next pin), the hash formula (`cohort`), the
//! pin format (`pin`).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Uri};

use crate::routing::key::{cookie_value, extract_key};
use crate::routing::pin::{self, Rejection as PinRejection};
use crate::routing::signed::{self, Rejection};
use crate::routing::table::{PinCarrier, PinSpec, Route, RoutingTable};

/// The cohort a request goes to, and what its response does about the conversation's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub pin: NextPin,
    pub chosen: Chosen,
}

/// How a request's cohort was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// Forced by the override header.
    Override,
    /// A conversation pin.
    Pin,
    /// The key's band; with the key's unit hash (`samples::unit_hash`) when the route counts
    /// units for the sample ratio check.
    Band(Option<u64>),
    /// No key: the route's fallback.
    Fallback,
}

/// The pin a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextPin {
    /// No pin on the response, so the client keeps whatever it holds: the route does not
    /// pin, or an override forced the cohort (a tester's forced cohort must not stick to the
    /// conversation once the override is gone).
    Keep,
    /// A new conversation's pin (or the replacement of a refused one), first issued now.
    Fresh,
    /// The honoured pin again with a new expiry, keeping its first issue time (unix seconds).
    Refresh { issued: u64 },
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cohort for this request. `client` is the resolved client address (see
/// `RoutingTable::client_ip`).
pub fn choose_cohort(
    route: &Route,
    table: &RoutingTable,
    headers: &HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> Choice {
    if let Some(value) = route.override_header.as_ref().and_then(|h| headers.get(h)) {
        match forced(route, table, value.as_bytes(), client) {
            Ok(index) => {
                return Choice {
                    index,
                    pin: NextPin::Keep,
                    chosen: Chosen::Override,
                }
            }
            Err(r) => route.override_rejected[r as usize].increment(1),
        }
    }
    let mut next = NextPin::Keep;
    if let Some(spec) = &route.pin {
        next = NextPin::Fresh;
        if let Some(value) = presented(spec, headers) {
            match pinned(route, spec, value, unix_now()) {
                Ok((index, issued)) => {
                    if let Some(c) = spec.counters.honoured.get(index) {
                        c.increment(1);
                    }
                    return Choice {
                        index,
                        pin: NextPin::Refresh { issued },
                        chosen: Chosen::Pin,
                    };
                }
                Err(r) => spec.counters.rejected[r as usize].increment(1),
            }
        }
    }
    let key = extract_key(&route.key_sources, headers, uri, client);
    let chosen = match &key {
        Some(k) => Chosen::Band(route.units.as_ref().map(|_| crate::samples::unit_hash(k))),
        None => Chosen::Fallback,
    };
    Choice {
        index: route.assign(key.as_deref()),
        pin: next,
        chosen,
    }
}

/// The pin the request presents, if any.
fn presented<'a>(spec: &PinSpec, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match &spec.carrier {
        PinCarrier::Cookie(name) => cookie_value(headers, name),
        PinCarrier::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
    }
}

/// The cohort index a pin holds and its first issue time, when it may be honoured: genuine,
/// unexpired (idle and absolute), this route's and this rollout's, and on a cohort that
/// still has a share of the current table (safety wins: a rollback or a promotion that put
/// the cohort at 0% overrides its pins at once).
fn pinned(
    route: &Route,
    spec: &PinSpec,
    value: &[u8],
    now: u64,
) -> Result<(usize, u64), PinRejection> {
    let pin = pin::verify(&spec.secrets, value, now)?;
    if pin.issued.saturating_add(spec.max_ttl) <= now {
        return Err(PinRejection::Expired);
    }
    let rollout = route.rollout.as_ref().map_or("", |r| r.id.as_str());
    if pin.route != route.name || pin.rollout != rollout {
        return Err(PinRejection::Foreign);
    }
    match route.cohort_index(pin.cohort.as_bytes()) {
        Some(i) if route.cohorts[i].weight > 0 => Ok((i, pin.issued)),
        _ => Err(PinRejection::Inactive),
    }
}

fn forced(
    route: &Route,
    table: &RoutingTable,
    value: &[u8],
    client: IpAddr,
) -> Result<usize, Rejection> {
    if let Some(secret) = &route.override_secret {
        if signed::looks_signed(value) {
            let name = signed::verify(secret, value, unix_now())?;
            return route
                .cohort_index(name.as_bytes())
                .ok_or(Rejection::UnknownCohort);
        }
    }
    if !table.is_trusted(client) {
        return Err(if route.override_secret.is_some() {
            Rejection::Malformed
        } else {
            Rejection::Untrusted
        });
    }
    route.cohort_index(value).ok_or(Rejection::UnknownCohort)
}
