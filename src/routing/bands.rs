//! Cohort assignment as pure functions: key extraction from a request, the contract's bucket
//! formula, and the band layout that maps a bucket to a cohort.
//!
//! Owns: the hash formula and band arithmetic that users reproduce outside the proxy.
//! Must not touch: sockets, metrics, configuration files or shared state.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, Uri};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of buckets: one bucket is 0.01% of users.
pub const BUCKETS: u32 = 10_000;

/// The per-route seed: `xxh3_64(salt)`. Fixed, so every instance and restart agrees.
pub fn seed_for(salt: &str) -> u64 {
    xxh3_64(salt.as_bytes())
}

/// `xxh3_64_with_seed(key, seed) % 10000`.
pub fn bucket(key: &[u8], seed: u64) -> u32 {
    (xxh3_64_with_seed(key, seed) % u64::from(BUCKETS)) as u32
}

/// One cohort's half-open range of buckets `[start, end)`; empty when the cohort is at 0%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub start: u32,
    pub end: u32,
}

impl Band {
    pub fn contains(&self, bucket: u32) -> bool {
        self.start <= bucket && bucket < self.end
    }
    pub fn width(&self) -> u32 {
        self.end - self.start
    }
}

/// The band layout of one route's split, built once when the table is built.
///
/// The baseline (first cohort) grows from 0 upwards; every later cohort stacks down from the
/// top in list order. With one canary, raising its share only moves buckets from the baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bands {
    bands: Vec<Band>,
}

impl Bands {
    /// `widths` are the cohorts' shares in buckets (percent x 100), in `split` order, summing
    /// to [`BUCKETS`]; the table checks the sum before calling this.
    pub fn new(widths: &[u32]) -> Self {
        let mut bands = Vec::with_capacity(widths.len());
        let mut top = BUCKETS;
        for (i, &w) in widths.iter().enumerate() {
            if i == 0 {
                bands.push(Band {
                    start: 0,
                    end: w.min(BUCKETS),
                });
            } else {
                let start = top.saturating_sub(w);
                bands.push(Band { start, end: top });
                top = start;
            }
        }
        Bands { bands }
    }

    /// The index of the cohort that owns `bucket`. Falls back to the baseline, which only
    /// happens if widths did not sum to [`BUCKETS`].
    #[inline]
    pub fn lookup(&self, bucket: u32) -> usize {
        // Later cohorts are usually few and small: scan them from the top, baseline last.
        for (i, band) in self.bands.iter().enumerate().skip(1) {
            if band.contains(bucket) {
                return i;
            }
        }
        0
    }

    pub fn as_slice(&self) -> &[Band] {
        &self.bands
    }
}

/// Where a cohort key comes from; the route's list is tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

/// The longest text of an IP address (an IPv4-mapped IPv6 address in full), with room to spare.
const IP_TEXT: usize = 48;

/// A cohort key: bytes of the request (a header, a cookie, a query value, decoded when it
/// holds escapes), or the client's address written out, in place, with no allocation.
#[derive(Debug)]
pub enum Key<'a> {
    Request(Cow<'a, [u8]>),
    Ip { text: [u8; IP_TEXT], len: u8 },
}

impl<'a> Key<'a> {
    /// The address as its `Display` text (the bytes users hash to reproduce an assignment).
    fn ip(ip: IpAddr) -> Self {
        use std::io::Write;
        let mut text = [0u8; IP_TEXT];
        let mut rest = &mut text[..];
        match write!(rest, "{ip}") {
            Ok(()) => {
                let len = (IP_TEXT - rest.len()) as u8;
                Key::Ip { text, len }
            }
            // Cannot happen (an address is at most 45 bytes); the same bytes, allocated.
            Err(_) => Key::Request(Cow::Owned(ip.to_string().into_bytes())),
        }
    }
}

impl std::ops::Deref for Key<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Key::Request(k) => k,
            Key::Ip { text, len } => &text[..usize::from(*len)],
        }
    }
}

/// The first present, non-empty key among `sources`. Borrowed from the request except for
/// percent-decoded query values; a client address is written out in place.
pub fn extract_key<'a>(
    sources: &[KeySource],
    headers: &'a HeaderMap,
    uri: &'a Uri,
    client: IpAddr,
) -> Option<Key<'a>> {
    for source in sources {
        let found = match source {
            KeySource::Header(name) => headers
                .get(name)
                .map(|v| Cow::Borrowed(v.as_bytes()))
                .filter(|v| !v.is_empty()),
            KeySource::Cookie(name) => cookie_value(headers, name).map(Cow::Borrowed),
            KeySource::Query(name) => uri.query().and_then(|q| query_value(q, name)),
            KeySource::ClientIp => return Some(Key::ip(client)),
        };
        if let Some(k) = found {
            return Some(Key::Request(k));
        }
    }
    None
}

/// The first non-empty value of cookie `name` across all `Cookie` headers (RFC 6265 syntax,
/// optional surrounding double quotes removed; no percent-decoding, as browsers send it).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) != name.as_bytes() {
                continue;
            }
            let mut value = trim(&pair[eq + 1..]);
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
    None
}

/// The first non-empty value of parameter `name` in a query string. Names and values are
/// percent-decoded; `+` is kept as is (it is only a space in HTML forms).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_encoding::percent_decode_str(k).eq(name.bytes()) && !v.is_empty() {
            let decoded: Cow<'a, [u8]> = percent_encoding::percent_decode_str(v).into();
            if !decoded.is_empty() {
                return Some(decoded);
            }
        }
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_vectors() {
        let cases = [
            ("agent", "user-1", 11548422540501417285u64, 9341u32),
            ("agent", "user-2", 11548422540501417285, 8756),
            ("agent", "user-3", 11548422540501417285, 9955),
            ("agent", "alice", 11548422540501417285, 2871),
            ("support-2026-11", "alice", 14391869356304411198, 8932),
            ("agent", "séance-☃", 11548422540501417285, 2289),
        ];
        for (salt, key, seed, expected) in cases {
            assert_eq!(seed_for(salt), seed, "seed of {salt}");
            assert_eq!(bucket(key.as_bytes(), seed), expected, "bucket of {key}");
        }
    }

    #[test]
    fn minimal_split_puts_user3_in_canary() {
        let bands = Bands::new(&[9500, 500]);
        assert_eq!(
            bands.as_slice(),
            &[
                Band {
                    start: 0,
                    end: 9500
                },
                Band {
                    start: 9500,
                    end: 10000
                }
            ]
        );
        let seed = seed_for("agent");
        let names = ["stable", "canary"];
        let got: Vec<_> = ["user-1", "user-2", "user-3", "alice"]
            .iter()
            .map(|k| names[bands.lookup(bucket(k.as_bytes(), seed))])
            .collect();
        assert_eq!(got, ["stable", "stable", "canary", "stable"]);
    }

    #[test]
    fn three_cohorts_stack_down_from_the_top() {
        let bands = Bands::new(&[9000, 700, 300]);
        assert_eq!(
            bands.as_slice(),
            &[
                Band {
                    start: 0,
                    end: 9000
                },
                Band {
                    start: 9300,
                    end: 10000
                },
                Band {
                    start: 9000,
                    end: 9300
                },
            ]
        );
        assert_eq!(bands.lookup(0), 0);
        assert_eq!(bands.lookup(8999), 0);
        assert_eq!(bands.lookup(9000), 2);
        assert_eq!(bands.lookup(9299), 2);
        assert_eq!(bands.lookup(9300), 1);
        assert_eq!(bands.lookup(9999), 1);
    }

    #[test]
    fn zero_percent_cohort_has_no_buckets() {
        let bands = Bands::new(&[10000, 0]);
        assert_eq!(bands.as_slice()[1].width(), 0);
        assert!((0..BUCKETS).all(|b| bands.lookup(b) == 0));
        let all_canary = Bands::new(&[0, 10000]);
        assert!((0..BUCKETS).all(|b| all_canary.lookup(b) == 1));
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; sid=\"xyz\" ; empty=".parse().unwrap());
        h.append(COOKIE, "empty=later".parse().unwrap());
        assert_eq!(cookie_value(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(&h, "empty"), Some(&b"later"[..]));
        assert_eq!(cookie_value(&h, "missing"), None);
        assert_eq!(cookie_value(&h, "si"), None);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            query_value("a=1&user=al%40ce&x", "user").as_deref(),
            Some(&b"al@ce"[..])
        );
        assert_eq!(
            query_value("user=&user=bob", "user").as_deref(),
            Some(&b"bob"[..])
        );
        assert_eq!(
            query_value("u%73er=c+d", "user").as_deref(),
            Some(&b"c+d"[..])
        );
        assert_eq!(query_value("username=x", "user"), None);
        assert_eq!(query_value("user", "user"), None);
    }

    #[test]
    fn sources_are_tried_in_order_and_empty_values_skipped() {
        let sources = vec![
            KeySource::Header(HeaderName::from_static("x-user-id")),
            KeySource::Cookie("sid".into()),
            KeySource::Query("u".into()),
            KeySource::ClientIp,
        ];
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = HeaderMap::new();
        let uri: Uri = "/chat?u=q".parse().unwrap();
        h.insert("x-user-id", "".parse().unwrap());
        h.insert(COOKIE, "sid=c".parse().unwrap());
        assert_eq!(
            extract_key(&sources, &h, &uri, ip).as_deref(),
            Some(&b"c"[..])
        );
        h.insert("x-user-id", "h".parse().unwrap());
        assert_eq!(
            extract_key(&sources, &h, &uri, ip).as_deref(),
            Some(&b"h"[..])
        );
        let bare: Uri = "/chat".parse().unwrap();
        assert_eq!(
            extract_key(&sources, &HeaderMap::new(), &bare, ip).as_deref(),
            Some(&b"10.1.2.3"[..])
        );
        assert!(extract_key(&sources[..3], &HeaderMap::new(), &bare, ip).is_none());
    }

    #[test]
    fn client_ip_keys_are_the_address_text() {
        let sources = [KeySource::ClientIp];
        let (h, uri) = (HeaderMap::new(), Uri::from_static("/"));
        for ip in [
            "10.1.2.3",
            "255.255.255.255",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            let key = extract_key(&sources, &h, &uri, addr).unwrap();
            assert_eq!(&*key, addr.to_string().as_bytes());
            assert!(matches!(key, Key::Ip { .. }), "{ip} was allocated");
        }
    }

    proptest! {
        /// Raising the canary's share never moves a user out of it (whatever a third cohort
        /// holds); with one canary it only moves users in from the baseline.
        #[test]
        fn raising_canary_is_monotonic(key in ".{0,40}", salt in "[a-z0-9-]{1,20}",
                                       other in 0u32..2000, lo in 0u32..8000, step in 0u32..8000) {
            // Half the cases have no third cohort, where the stronger property holds.
            let other = if other < 1000 { 0 } else { other };
            let hi = (lo + step).min(BUCKETS - other);
            let lo = lo.min(hi);
            let before = Bands::new(&[BUCKETS - other - lo, lo, other]);
            let after = Bands::new(&[BUCKETS - other - hi, hi, other]);
            let b = bucket(key.as_bytes(), seed_for(&salt));
            let (was, now) = (before.lookup(b), after.lookup(b));
            if was == 1 { prop_assert_eq!(now, 1); }
            if other == 0 && now != was { prop_assert_eq!((was, now), (0, 1)); }
        }

        #[test]
        fn bands_partition_every_bucket(widths in proptest::collection::vec(0u32..3000, 1..6)) {
            let rest: u32 = widths.iter().sum::<u32>().min(BUCKETS);
            let mut w = vec![BUCKETS - rest];
            let mut left = rest;
            for x in widths { let x = x.min(left); w.push(x); left -= x; }
            let bands = Bands::new(&w);
            let mut counts = vec![0u32; w.len()];
            for b in 0..BUCKETS { counts[bands.lookup(b)] += 1; }
            prop_assert_eq!(counts, w);
        }
    }
}
