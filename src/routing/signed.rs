//! Signed cohort overrides: a tester outside the trusted networks can force a cohort with a
//! value only someone holding the route's secret can mint, valid until it expires.
//!
//! Value: `<cohort>.<expiry unix seconds>.<base64url HMAC-SHA256 of "<cohort>.<expiry>">`.
//! Owns: minting and checking such values (constant-time comparison). Must not touch: headers,
//! metrics or config files; callers pass the secret and the clock.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why an override was not honoured; the `reason` label of
/// `cohort_override_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A plain cohort name from a peer outside `trusted_cidrs`.
    Untrusted = 0,
    /// Not `<cohort>.<expiry>.<signature>`, or no secret configured for the route.
    Malformed = 1,
    /// The signature does not match.
    Forged = 2,
    Expired = 3,
    /// Correctly signed, but this route has no such cohort.
    UnknownCohort = 4,
}

impl Rejection {
    pub const ALL: [Rejection; 5] = [
        Self::Untrusted,
        Self::Malformed,
        Self::Forged,
        Self::Expired,
        Self::UnknownCohort,
    ];
    /// The `reason` labels, aligned with [`Rejection::ALL`].
    pub const LABELS: [&'static str; 5] = [
        "untrusted",
        "malformed",
        "forged",
        "expired",
        "unknown_cohort",
    ];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// An HMAC-SHA256 keyed with `secret`, for overrides here and for conversation pins.
pub(crate) fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn mac(secret: &[u8], cohort: &str, expires: u64) -> HmacSha256 {
    let mut m = keyed(secret);
    m.update(cohort.as_bytes());
    m.update(b".");
    m.update(expires.to_string().as_bytes());
    m
}

/// Mints an override for `cohort` valid until `expires` (unix seconds).
pub fn sign(secret: &[u8], cohort: &str, expires: u64) -> String {
    let tag = mac(secret, cohort, expires).finalize().into_bytes();
    format!("{cohort}.{expires}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks a header value; returns the cohort it names. Never panics on any input.
pub fn verify<'a>(secret: &[u8], value: &'a [u8], now: u64) -> Result<&'a str, Rejection> {
    let value = std::str::from_utf8(value).map_err(|_| Rejection::Malformed)?;
    // Cohort names may hold dots, so split from the right.
    let mut parts = value.rsplitn(3, '.');
    let (Some(sig), Some(expiry), Some(cohort)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Rejection::Malformed);
    };
    if cohort.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    let expires: u64 = expiry.parse().map_err(|_| Rejection::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| Rejection::Malformed)?;
    // The signature is checked before the expiry so a forger learns nothing from the clock.
    mac(secret, cohort, expires)
        .verify_slice(&tag)
        .map_err(|_| Rejection::Forged)?;
    if expires <= now {
        return Err(Rejection::Expired);
    }
    Ok(cohort)
}

/// Whether a value has the shape of a signed override (rather than a plain cohort name).
pub fn looks_signed(value: &[u8]) -> bool {
    value.iter().filter(|&&b| b == b'.').count() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_rejections() {
        let v = sign(SECRET, "canary", 2_000);
        assert_eq!(verify(SECRET, v.as_bytes(), 1_999), Ok("canary"));
        assert_eq!(verify(SECRET, v.as_bytes(), 2_000), Err(Rejection::Expired));
        assert_eq!(
            verify(b"another secret, just as long....", v.as_bytes(), 1_000),
            Err(Rejection::Forged)
        );
        let retargeted = v.replacen("canary", "stable", 1);
        assert_eq!(
            verify(SECRET, retargeted.as_bytes(), 1_000),
            Err(Rejection::Forged)
        );
        let extended = v.replacen("2000", "9000", 1);
        assert_eq!(
            verify(SECRET, extended.as_bytes(), 1_000),
            Err(Rejection::Forged)
        );
        for bad in [
            "canary",
            "canary.123",
            ".1.x",
            "canary.12a.AAAA",
            "canary.1.!!",
            "canary..AAAA",
        ] {
            assert_eq!(
                verify(SECRET, bad.as_bytes(), 0),
                Err(Rejection::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn dotted_cohort_names_work() {
        let v = sign(SECRET, "canary.v2", 50);
        assert_eq!(verify(SECRET, v.as_bytes(), 10), Ok("canary.v2"));
        assert!(looks_signed(v.as_bytes()));
        assert!(!looks_signed(b"canary"));
    }

    proptest! {
        #[test]
        fn never_panics_and_never_accepts_garbage(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = verify(SECRET, &value, 0);
            prop_assert!(r.is_err());
        }

        #[test]
        fn any_single_byte_change_is_refused(cohort in "[a-z][a-z0-9.-]{0,20}", at in 0usize..200, byte in any::<u8>()) {
            let v = sign(SECRET, &cohort, u64::MAX / 2).into_bytes();
            let mut w = v.clone();
            let i = at % w.len();
            prop_assume!(w[i] != byte);
            w[i] = byte;
            prop_assert!(verify(SECRET, &w, 0).is_err());
        }
    }
}
