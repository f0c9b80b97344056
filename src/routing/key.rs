//! Reading a request's cohort key: the route's sources (a header, a cookie, a query value, the
//! client's address) tried in order, without allocating where the bytes can be borrowed.
//!
//! Owns: which bytes of a request are its key. Must not touch: what the key hashes to
//! ([`super::bands`]), sockets, metrics or shared state.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, Uri};

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
}
