//! Which cohort a request goes to: a forced cohort from the route's `override_header` when it
//! may be honoured, else the key's band, else the route's fallback; and which of these chose
//! it ([`Chosen`]: only the band's choices count for the sample ratio check).
//!
//! Owns: the override rules (plain names from trusted clients; signed values from anyone) and
//! their rejection counts. Must not touch: headers on the wire (the proxy always strips the
//! override header), the hash formula (`cohort`).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Uri};

use crate::routing::key::extract_key;
use crate::routing::signed::{self, Rejection};
use crate::routing::table::{Route, RoutingTable};

/// How a request's cohort was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// Forced by the override header.
    Override,
    /// The key's band; with the key's unit hash (`samples::unit_hash`) when the route counts
    /// units for the sample ratio check.
    Band(Option<u64>),
    /// No key: the route's fallback.
    Fallback,
}

/// The cohort index for this request, and how it was chosen. `client` is the resolved client
/// address (see `RoutingTable::client_ip`).
pub fn choose_cohort(
    route: &Route,
    table: &RoutingTable,
    headers: &HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> (usize, Chosen) {
    if let Some(value) = route.override_header.as_ref().and_then(|h| headers.get(h)) {
        match forced(route, table, value.as_bytes(), client) {
            Ok(i) => return (i, Chosen::Override),
            Err(r) => route.override_rejected[r as usize].increment(1),
        }
    }
    let key = extract_key(&route.key_sources, headers, uri, client);
    let chosen = match &key {
        Some(k) => Chosen::Band(route.units.as_ref().map(|_| crate::samples::unit_hash(k))),
        None => Chosen::Fallback,
    };
    (route.assign(key.as_deref()), chosen)
}

fn forced(
    route: &Route,
    table: &RoutingTable,
    value: &[u8],
    client: IpAddr,
) -> Result<usize, Rejection> {
    if let Some(secret) = &route.override_secret {
        if signed::looks_signed(value) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let name = signed::verify(secret, value, now)?;
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
