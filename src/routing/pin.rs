//! Conversation pins: a value the proxy mints on a response and the client sends back, which
//! keeps a conversation on the cohort that served its first turn, without any shared table
//! (every replica holding the route's secret checks it).
//!
//! Value: `v1~<route>~<cohort>~<rollout id>~<first issue>~<expiry>~<tag>`, times in unix
//! seconds, the rollout id empty when the route has none, and `<tag>` the base64url
//! HMAC-SHA256 of everything before its `~`. Names never hold `~` (see the table's name
//! rule), so the fields split unambiguously, and the value is a valid cookie value and
//! header value as it is.
//! Owns: minting and checking such values (constant-time comparison, every secret of a
//! rotation tried), and the rejection reasons. Must not touch: headers, metrics, config
//! files or the table: callers pass the secrets, the clock, and decide what foreign and
//! inactive mean for their route.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;

use crate::routing::signed::keyed;

/// The format's first field; a later format gets a new one, and old pins are then malformed.
const VERSION: &str = "v1";
/// Longer values are refused before any hashing: a real pin is well under this.
pub const MAX_PIN_BYTES: usize = 1024;
/// An HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// What a pin says: which route's conversation, on which cohort, under which rollout, first
/// issued when, and valid until when (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin<'a> {
    pub route: &'a str,
    pub cohort: &'a str,
    /// The route's rollout id when it was minted; empty when the route had none.
    pub rollout: &'a str,
    /// When the conversation's first pin was issued: re-issues keep it, so `max_ttl` counts
    /// from the conversation's start.
    pub issued: u64,
    pub expires: u64,
}

/// Why a pin was not honoured; the `reason` label of `cohort_pin_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a pin of this format.
    Malformed = 0,
    /// Its tag matches none of the route's secrets.
    Forged = 1,
    /// Past its expiry, or past its first issue plus the route's `max_ttl`.
    Expired = 2,
    /// Correctly signed, but for another route or another rollout of this one.
    Foreign = 3,
    /// Correctly signed for this route and rollout, but its cohort is at 0% or gone: safety
    /// wins over stickiness.
    Inactive = 4,
}

impl Rejection {
    pub const ALL: [Rejection; 5] = [
        Self::Malformed,
        Self::Forged,
        Self::Expired,
        Self::Foreign,
        Self::Inactive,
    ];
    /// The `reason` labels, aligned with [`Rejection::ALL`].
    pub const LABELS: [&'static str; 5] = ["malformed", "forged", "expired", "foreign", "inactive"];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// Mints the value of `pin`, signed with `secret` (a rotation's first line).
pub fn mint(secret: &[u8], pin: &Pin<'_>) -> String {
    let mut value = format!(
        "{VERSION}~{}~{}~{}~{}~{}",
        pin.route, pin.cohort, pin.rollout, pin.issued, pin.expires
    );
    let mut mac = keyed(secret);
    mac.update(value.as_bytes());
    let tag = mac.finalize().into_bytes();
    value.push('~');
    URL_SAFE_NO_PAD.encode_string(tag, &mut value);
    value
}

/// Checks a value against every secret of the route (a rotation's lines, in any order) and
/// its expiry; returns what it says, borrowed from `value`. Never panics and allocates
/// nothing, whatever the input.
pub fn verify<'a, S: AsRef<[u8]>>(
    secrets: &[S],
    value: &'a [u8],
    now: u64,
) -> Result<Pin<'a>, Rejection> {
    let pin = genuine(secrets, value)?;
    if pin.expires <= now {
        return Err(Rejection::Expired);
    }
    Ok(pin)
}

/// What a value says when one of `secrets` signed it, whatever its expiry: a late outcome
/// (`control::late`) may name a conversation by a pin that stopped routing long ago, and
/// its signature still proves which cohort served that conversation. Never panics and
/// allocates nothing.
pub fn genuine<'a, S: AsRef<[u8]>>(secrets: &[S], value: &'a [u8]) -> Result<Pin<'a>, Rejection> {
    if value.len() > MAX_PIN_BYTES {
        return Err(Rejection::Malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| Rejection::Malformed)?;
    let (signed, tag) = value.rsplit_once('~').ok_or(Rejection::Malformed)?;
    let mut fields = signed.split('~');
    let mut next = || fields.next().ok_or(Rejection::Malformed);
    let (version, route, cohort, rollout) = (next()?, next()?, next()?, next()?);
    let (issued, expires) = (number(next()?)?, number(next()?)?);
    if fields.next().is_some() || version != VERSION || route.is_empty() || cohort.is_empty() {
        return Err(Rejection::Malformed);
    }
    let mut decoded = [0u8; TAG_BYTES + 3];
    let len = URL_SAFE_NO_PAD
        .decode_slice(tag, &mut decoded)
        .map_err(|_| Rejection::Malformed)?;
    if len != TAG_BYTES {
        return Err(Rejection::Malformed);
    }
    // The tag is checked before the times so a forger learns nothing from the clock.
    let signed_by_one = secrets.iter().any(|s| {
        let mut mac = keyed(s.as_ref());
        mac.update(signed.as_bytes());
        mac.verify_slice(&decoded[..TAG_BYTES]).is_ok()
    });
    if !signed_by_one {
        return Err(Rejection::Forged);
    }
    Ok(Pin {
        route,
        cohort,
        rollout,
        issued,
        expires,
    })
}

/// Unix seconds as the format writes them: ASCII digits only (no sign, no spaces).
fn number(field: &str) -> Result<u64, Rejection> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    field.parse().map_err(|_| Rejection::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OLD: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn an_expired_pin_is_still_genuine_and_a_forged_one_is_not() {
        let v = mint(OLD, &pin());
        assert_eq!(verify(&[OLD], v.as_bytes(), 5_000), Err(Rejection::Expired));
        assert_eq!(genuine(&[NEW, OLD], v.as_bytes()), Ok(pin()));
        assert_eq!(genuine(&[NEW], v.as_bytes()), Err(Rejection::Forged));
        assert_eq!(genuine(&[OLD], b"v1~x"), Err(Rejection::Malformed));
    }

    fn pin() -> Pin<'static> {
        Pin {
            route: "agent",
            cohort: "canary.v2",
            rollout: "canary-2026-12",
            issued: 1_000,
            expires: 2_000,
        }
    }

    #[test]
    fn round_trip() {
        let v = mint(OLD, &pin());
        assert!(
            v.starts_with("v1~agent~canary.v2~canary-2026-12~1000~2000~"),
            "{v}"
        );
        assert_eq!(
            v.len(),
            "v1~agent~canary.v2~canary-2026-12~1000~2000~".len() + 43
        );
        assert_eq!(verify(&[OLD], v.as_bytes(), 1_999), Ok(pin()));
        let none = Pin {
            rollout: "",
            ..pin()
        };
        let v = mint(OLD, &none);
        assert!(v.contains("~canary.v2~~1000~"), "{v}");
        assert_eq!(verify(&[OLD], v.as_bytes(), 1_000), Ok(none));
    }

    #[test]
    fn expired_at_its_expiry() {
        let v = mint(OLD, &pin());
        assert_eq!(verify(&[OLD], v.as_bytes(), 2_000), Err(Rejection::Expired));
        assert_eq!(verify(&[OLD], v.as_bytes(), 9_000), Err(Rejection::Expired));
    }

    #[test]
    fn forged_when_any_signed_field_changes() {
        let v = mint(OLD, &pin());
        assert_eq!(verify(&[NEW], v.as_bytes(), 1_500), Err(Rejection::Forged));
        for (from, to) in [
            ("~canary.v2~", "~stable~"),
            ("~agent~", "~other~"),
            ("~canary-2026-12~", "~~"),
            ("~1000~", "~1001~"),
            ("~2000~", "~9000~"),
        ] {
            let changed = v.replacen(from, to, 1);
            assert_ne!(changed, v);
            assert_eq!(
                verify(&[OLD], changed.as_bytes(), 1_500),
                Err(Rejection::Forged),
                "{changed}"
            );
        }
        // The forger's clock trick fails too: an expired, forged pin reads as forged.
        assert_eq!(verify(&[NEW], v.as_bytes(), 5_000), Err(Rejection::Forged));
    }

    #[test]
    fn rotation_verifies_with_every_line() {
        let by_old = mint(OLD, &pin());
        let by_new = mint(NEW, &pin());
        // During a rotation the file holds the new secret on top, the old below.
        let rotating: [&[u8]; 2] = [NEW, OLD];
        assert_eq!(verify(&rotating, by_old.as_bytes(), 1_500), Ok(pin()));
        assert_eq!(verify(&rotating, by_new.as_bytes(), 1_500), Ok(pin()));
        // Once the old one is dropped, its pins are forged.
        assert_eq!(
            verify(&[NEW], by_old.as_bytes(), 1_500),
            Err(Rejection::Forged)
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(
            verify(&none, by_new.as_bytes(), 1_500),
            Err(Rejection::Forged)
        );
    }

    #[test]
    fn malformed_values() {
        let good = mint(OLD, &pin());
        let tag = good.rsplit_once('~').unwrap().1;
        let long = "x".repeat(MAX_PIN_BYTES + 1);
        for bad in [
            "",
            "canary",
            "canary.1.AAAA",
            "v1~agent~canary~~1000~2000",
            &format!("v2~agent~canary~~1000~2000~{tag}"),
            &format!("v1~~canary~~1000~2000~{tag}"),
            &format!("v1~agent~~~1000~2000~{tag}"),
            &format!("v1~agent~canary~~-1~2000~{tag}"),
            &format!("v1~agent~canary~~1000~+2000~{tag}"),
            &format!("v1~agent~canary~~1000~99999999999999999999999~{tag}"),
            &format!("v1~agent~canary~x~y~1000~2000~{tag}"),
            &format!("v1~agent~canary~~1000~2000~{tag}AA"),
            &format!("v1~agent~canary~~1000~2000~{}", &tag[..40]),
            "v1~agent~canary~~1000~2000~!!!!",
            long.as_str(),
        ] {
            assert_eq!(
                verify(&[OLD], bad.as_bytes(), 0),
                Err(Rejection::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(&[OLD], b"v1~agent~\xff~~1~2~AAAA", 0),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn labels_align() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(r.as_str(), Rejection::LABELS[i]);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_verifies_and_never_panics(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(verify(&[OLD, NEW], &value, 0).is_err());
        }

        #[test]
        fn pin_shaped_garbage_never_verifies(
            route in "[a-z][a-z0-9.:_-]{0,12}",
            cohort in "[a-z][a-z0-9.:_-]{0,12}",
            rollout in "[a-z0-9.:_-]{0,12}",
            issued in any::<u64>(),
            expires in any::<u64>(),
            tag in "[A-Za-z0-9_-]{43}",
        ) {
            let value = format!("v1~{route}~{cohort}~{rollout}~{issued}~{expires}~{tag}");
            prop_assert!(verify(&[OLD, NEW], value.as_bytes(), 0).is_err());
        }

        #[test]
        fn any_single_byte_change_is_refused(at in 0usize..200, byte in any::<u8>()) {
            let v = mint(OLD, &Pin { expires: u64::MAX, ..pin() }).into_bytes();
            let mut w = v.clone();
            let i = at % w.len();
            prop_assume!(w[i] != byte);
            w[i] = byte;
            prop_assert!(verify(&[OLD], &w, 0).is_err());
        }
    }
}
