//! The conversation pin on the response: minted for the cohort that served, with the next
//! expiry (the idle ttl from now, capped by the first issue plus the max ttl), as a cookie or
//! as the route's pin header.
//!
//! Owns: writing the pin onto a response head. Must not touch: which cohort a pin sends a
//! request to (`routing::overrides`), the format (`routing::pin`).

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use crate::routing::overrides::NextPin;
use crate::routing::pin::{self, Pin};
use crate::routing::table::{PinCarrier, Route};

/// Sets the pin `next` asks for on a response served by cohort `index` of `route`. `secure`
/// marks the cookie `Secure` (the client reached a TLS listener).
pub(super) fn stamp(
    headers: &mut HeaderMap,
    route: &Route,
    index: usize,
    next: NextPin,
    secure: bool,
) {
    let (Some(spec), Some(cohort)) = (&route.pin, route.cohorts.get(index)) else {
        return;
    };
    let Some(secret) = spec.secrets.first() else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let issued = match next {
        NextPin::Keep => return,
        NextPin::Fresh => {
            if let Some(c) = spec.counters.issued.get(index) {
                c.increment(1);
            }
            now
        }
        NextPin::Refresh { issued } => issued,
    };
    let expires = now
        .saturating_add(spec.idle_ttl)
        .min(issued.saturating_add(spec.max_ttl));
    let value = pin::mint(
        secret,
        &Pin {
            route: &route.name,
            cohort: &cohort.name,
            rollout: route.rollout.as_ref().map_or("", |r| r.id.as_str()),
            issued,
            expires,
        },
    );
    match &spec.carrier {
        PinCarrier::Header(name) => {
            // Names and digits only: always a valid header value.
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name.clone(), v);
            }
        }
        PinCarrier::Cookie(name) => {
            let secure = if secure { "; Secure" } else { "" };
            let cookie = format!(
                "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                expires.saturating_sub(now)
            );
            if let Ok(v) = HeaderValue::try_from(cookie) {
                headers.append(SET_COOKIE, v);
            }
        }
    }
}
