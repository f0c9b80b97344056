//! The fleet's keys in its bucket: what each holds, and how a route's name becomes one key
//! token whatever characters it has.
//!
//! Owns: the key layout. Must not touch: the values (each has its own module), the engine.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `lease.judge` | the judge's lease (`lease`) | the judge, and whoever takes over |
//! | `route.<route>` | the route's rollout record (`record`) | anyone, by compare-and-swap |
//! | `beat.<replica>` | the replica's heartbeat ([`super::run::Beat`]) | that replica |
//! | `report.<route>.<replica>` | its counts for the step (`pooled::Report`) | that replica |
//! | `judge.<route>` | the judge's progress in the step, for a successor | the judge |
//! | `history.<route>` | the route's percent history as the fleet put it in force (`history`) | anyone, by compare-and-swap |

/// The one lease: one judge per fleet.
pub const LEASE: &str = "lease.judge";

/// A route's name as one key token: `r_<name>` when the name is letters, digits, '_' and
/// '-' only, else `h_<hex of its bytes>`, so no two names share a token.
pub fn token(route: &str) -> String {
    let plain = !route.is_empty()
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if plain {
        format!("r_{route}")
    } else {
        let mut s = String::with_capacity(2 + 2 * route.len());
        s.push_str("h_");
        for b in route.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The route a [`token`] was made from.
pub fn route_of(token: &str) -> Option<String> {
    if let Some(name) = token.strip_prefix("r_") {
        return Some(name.to_string());
    }
    let hex = token.strip_prefix("h_")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

pub fn route(name: &str) -> String {
    format!("route.{}", token(name))
}

pub fn beat(replica: &str) -> String {
    format!("beat.{replica}")
}

pub fn report(route: &str, replica: &str) -> String {
    format!("report.{}.{replica}", token(route))
}

pub fn judge(route: &str) -> String {
    format!("judge.{}", token(route))
}

pub fn history(route: &str) -> String {
    format!("history.{}", token(route))
}

/// What a key is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Lease,
    Route(String),
    Beat(String),
    Report { route: String, replica: String },
    Judge(String),
    History(String),
}

/// The meaning of a key of the bucket; `None` for a key cohort does not write.
pub fn parse(key: &str) -> Option<Key> {
    if key == LEASE {
        return Some(Key::Lease);
    }
    let mut parts = key.split('.');
    let (kind, a, b) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    match (kind, b) {
        ("route", None) => route_of(a).map(Key::Route),
        ("judge", None) => route_of(a).map(Key::Judge),
        ("history", None) => route_of(a).map(Key::History),
        ("beat", None) => Some(Key::Beat(a.to_string())),
        ("report", Some(replica)) => Some(Key::Report {
            route: route_of(a)?,
            replica: replica.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_one_token_and_comes_back() {
        for name in [
            "agent",
            "a-b_c",
            "with.dot",
            "with space",
            "ünï",
            "r_x",
            "h_41",
            "",
        ] {
            let t = token(name);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')));
            assert_eq!(route_of(&t).as_deref(), Some(name), "{name:?} -> {t}");
        }
        assert_ne!(token("h_41"), token("A"));
        assert_eq!(token("with.dot"), "h_776974682e646f74");
    }

    #[test]
    fn keys_parse_back_to_what_they_mean() {
        assert_eq!(parse(LEASE), Some(Key::Lease));
        assert_eq!(parse(&route("a.b")), Some(Key::Route("a.b".into())));
        assert_eq!(parse(&judge("agent")), Some(Key::Judge("agent".into())));
        assert_eq!(parse(&history("a b")), Some(Key::History("a b".into())));
        assert_eq!(parse(&beat("r1")), Some(Key::Beat("r1".into())));
        assert_eq!(
            parse(&report("agent", "r2")),
            Some(Key::Report {
                route: "agent".into(),
                replica: "r2".into()
            })
        );
        for other in [
            "lease.other",
            "route",
            "route.x_1",
            "report.r_a",
            "beat.a.b",
            "x.y",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
