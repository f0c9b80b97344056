//! One posted event as read from the body, and why one is refused: the shape of
//! `POST /outcomes` (one event object, `{"events": [...]}`, or a JSON array of events).
//!
//! Owns: reading events from JSON, the refusal reasons and their labels. Must not touch: the
//! attribution (`super::attribute`), the HTTP exchange (`super::endpoint`).

use serde_json::Value;

/// Longest event id remembered for deduplication.
pub const MAX_ID_BYTES: usize = 256;
/// Longest key (or pin) hashed.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why an event (or a whole body) was refused: the `reason` label of
/// `cohort_late_outcomes_refused_total` and of each refused event in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed = 0,
    UnknownRoute,
    UnknownOutcome,
    TooOld,
    Future,
    /// No split recorded for the route at the start time (before the history began).
    NoHistory,
    /// The cohort the key had then is no longer among the route's.
    CohortGone,
    Duplicate,
    /// A pin was given that is not a genuine pin of the route: malformed, signed with no
    /// secret of its `pin.secret_file`, another route's, or the route does not pin.
    BadPin,
    /// Whole bodies: larger than `max_body_bytes` or with more than `max_events`.
    TooLarge,
    /// Whole bodies: not all there within `read_timeout`.
    ReadTimeout,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Malformed,
        Reason::UnknownRoute,
        Reason::UnknownOutcome,
        Reason::TooOld,
        Reason::Future,
        Reason::NoHistory,
        Reason::CohortGone,
        Reason::Duplicate,
        Reason::BadPin,
        Reason::TooLarge,
        Reason::ReadTimeout,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownRoute => "unknown_route",
            Reason::UnknownOutcome => "unknown_outcome",
            Reason::TooOld => "too_old",
            Reason::Future => "future",
            Reason::NoHistory => "no_history",
            Reason::CohortGone => "cohort_gone",
            Reason::Duplicate => "duplicate",
            Reason::BadPin => "bad_pin",
            Reason::TooLarge => "too_large",
            Reason::ReadTimeout => "read_timeout",
        }
    }
}

/// A refusal with what the sender needs to mend it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

pub fn refuse(reason: Reason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// Whom the outcome is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// The user or conversation id the route hashes.
    Key(String),
    /// A conversation pin value (see `pin_cohort` in `super::attribute`).
    Pin(String),
}

/// An event with every field present and of the right type.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub route: String,
    pub subject: Subject,
    pub outcome: String,
    /// When the conversation started, in ms since the epoch.
    pub started_ms: u64,
}

/// The events of a body, or why the body as a whole is not one.
pub fn events(body: &Value) -> Result<&[Value], String> {
    match body {
        Value::Array(items) => Ok(items),
        Value::Object(map) => match map.get("events") {
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err("`events` must be an array of event objects".into()),
            None => Ok(std::slice::from_ref(body)),
        },
        _ => Err("the body must be an event object, {\"events\": [...]} or an array".into()),
    }
}

fn text<'a>(v: &'a Value, field: &str, max: usize) -> Result<&'a str, Refusal> {
    match v.get(field) {
        Some(Value::String(s)) if s.is_empty() => {
            Err(refuse(Reason::Malformed, format!("`{field}` is empty")))
        }
        Some(Value::String(s)) if s.len() > max => Err(refuse(
            Reason::Malformed,
            format!("`{field}` is longer than {max} bytes"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(refuse(
            Reason::Malformed,
            format!("`{field}` must be a string"),
        )),
        None => Err(refuse(Reason::Malformed, format!("`{field}` is missing"))),
    }
}

/// One event of the body; unknown fields are ignored (a sender may carry its own, a CSAT score
/// say), missing or mistyped ones refuse it.
pub fn parse(v: &Value) -> Result<Event, Refusal> {
    if !v.is_object() {
        return Err(refuse(Reason::Malformed, "an event must be a JSON object"));
    }
    let id = text(v, "id", MAX_ID_BYTES)?;
    let route = text(v, "route", MAX_KEY_BYTES)?;
    let subject = match (v.get("key"), v.get("pin")) {
        (Some(_), Some(_)) => {
            return Err(refuse(Reason::Malformed, "give `key` or `pin`, not both"))
        }
        (Some(_), None) => Subject::Key(text(v, "key", MAX_KEY_BYTES)?.to_string()),
        (None, Some(_)) => Subject::Pin(text(v, "pin", MAX_KEY_BYTES)?.to_string()),
        (None, None) => return Err(refuse(Reason::Malformed, "`key` (or `pin`) is missing")),
    };
    let outcome = text(v, "outcome", MAX_KEY_BYTES)?;
    let started_ms = match v.get("started_at") {
        Some(Value::String(s)) => rfc3339_ms(s).ok_or_else(|| {
            refuse(
                Reason::Malformed,
                format!("`started_at` {s:?} is not an RFC 3339 time such as 2026-12-07T09:30:00Z"),
            )
        })?,
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
            .map(|s| (s * 1000.0).round() as u64)
            .ok_or_else(|| {
                refuse(
                    Reason::Malformed,
                    "`started_at` must be unix seconds from 0 to 1e11",
                )
            })?,
        Some(_) => {
            return Err(refuse(
                Reason::Malformed,
                "`started_at` must be an RFC 3339 string or unix seconds",
            ))
        }
        None => return Err(refuse(Reason::Malformed, "`started_at` is missing")),
    };
    Ok(Event {
        id: id.to_string(),
        route: route.to_string(),
        subject,
        outcome: outcome.to_string(),
        started_ms,
    })
}

/// An RFC 3339 time (`Z` or a `+hh:mm`/`-hh:mm` offset, fractions of a second allowed) in ms
/// since the epoch.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    // The date and time are 19 bytes (`YYYY-MM-DDTHH:MM:SS`); an offset, if any, follows them
    // and any fraction.
    let head = s.get(..19)?;
    let rest = &s[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            (&r[..digits], &r[digits..])
        }
        None => ("", rest),
    };
    let offset_s: i64 = match zone {
        "Z" | "z" => 0,
        // ASCII first: the slices below are then on character boundaries.
        z if z.len() == 6
            && z.is_ascii()
            && (z.starts_with('+') || z.starts_with('-'))
            && &z[3..4] == ":" =>
        {
            let h: i64 = z[1..3].parse().ok()?;
            let m: i64 = z[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let base = humantime::parse_rfc3339(&format!("{head}Z")).ok()?;
    let secs = base.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64 - offset_s;
    let mut ms: u64 = 0;
    for (i, d) in fraction.bytes().take(3).enumerate() {
        ms += u64::from(d - b'0') * [100, 10, 1][i];
    }
    u64::try_from(secs).ok()?.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_read_in_both_forms() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.25Z"), Some(1250));
        assert_eq!(rfc3339_ms("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01-00:30"), Some(1_801_000));
        assert_eq!(rfc3339_ms("2026-12-07T09:30:00Z"), Some(1_796_635_800_000));
        for bad in [
            "1970-01-01",
            "1970-01-01T00:00:01",
            "yesterday",
            "1970-01-01T00:00:01.Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
        let e =
            parse(&json!({"id": "e", "route": "r", "key": "k", "outcome": "o", "started_at": 1.5}));
        assert_eq!(e.map(|e| e.started_ms), Ok(1500));
    }

    proptest::proptest! {
        // The sender's text never panics the reader, whatever its bytes.
        #[test]
        fn any_time_text_is_read_or_refused(s in "\\PC{0,40}", tail in "[+-]?.{0,6}") {
            let _ = rfc3339_ms(&s);
            let _ = rfc3339_ms(&format!("2026-12-07T09:30:00{tail}"));
            let _ = parse(&json!({"id": s, "route": "r", "key": "k", "outcome": "o", "started_at": s}));
        }
    }

    #[test]
    fn a_multibyte_offset_is_refused_not_a_panic() {
        assert_eq!(rfc3339_ms("2026-12-07T09:30:00+0\u{e9}:0"), None);
    }

    #[test]
    fn bodies_hold_one_event_or_many() {
        let one = json!({"id": "a"});
        assert_eq!(events(&one).map(<[Value]>::len), Ok(1));
        assert_eq!(
            events(&json!({"events": [1, 2]})).map(<[Value]>::len),
            Ok(2)
        );
        assert_eq!(events(&json!([1, 2, 3])).map(<[Value]>::len), Ok(3));
        assert!(events(&json!({"events": 1})).is_err());
        assert!(events(&json!("x")).is_err());
    }

    #[test]
    fn malformed_events_say_what_is_wrong() {
        let base = json!({"id": "e", "route": "r", "key": "k", "outcome": "o", "started_at": 10});
        let without = |f: &str| {
            let mut v = base.clone();
            v.as_object_mut().map(|m| m.remove(f));
            parse(&v).map_err(|r| (r.reason, r.detail))
        };
        for f in ["id", "route", "key", "outcome", "started_at"] {
            let (reason, detail) = without(f).unwrap_err();
            assert_eq!(reason, Reason::Malformed);
            assert!(detail.contains(f), "{detail}");
        }
        let mut both = base.clone();
        both["pin"] = json!("p");
        assert_eq!(parse(&both).unwrap_err().reason, Reason::Malformed);
        let mut long = base.clone();
        long["id"] = json!("x".repeat(MAX_ID_BYTES + 1));
        assert_eq!(parse(&long).unwrap_err().reason, Reason::Malformed);
        let mut pin = base.clone();
        pin.as_object_mut().map(|m| m.remove("key"));
        pin["pin"] = json!("p");
        assert_eq!(parse(&pin).map(|e| e.subject), Ok(Subject::Pin("p".into())));
    }
}
