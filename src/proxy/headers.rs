//! What a proxy hop does to headers (RFC 9110 §7.6): removing hop-by-hop fields, appending
//! X-Forwarded-For, reading the host the client addressed and the protocol it asks to upgrade
//! to, and the names of the headers cohort sets.
//!
//! Owns: the header rules that hold for every request and response, whatever the route.
//! Must not touch: routing, the table, upstreams or metrics; which rewrite applies when, and
//! the values cohort sets, are the request path's (`super`).

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Request, Version};

pub static X_COHORT: HeaderName = HeaderName::from_static("x-cohort");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`).
#[inline]
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if asks {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The authority the client addressed, and the Host value it was read from, if it was.
pub(super) struct RequestHost {
    pub authority: Authority,
    host: Option<HeaderValue>,
}

impl RequestHost {
    /// The authority as a header value (X-Forwarded-Host, and Host where it is missing).
    pub fn into_value(self) -> Option<HeaderValue> {
        // Host's own value is the authority's very bytes, already checked: shared, not rebuilt.
        self.host
            .or_else(|| HeaderValue::from_str(self.authority.as_str()).ok())
    }
}

/// The authority the client addressed: the URI's (HTTP/2 or absolute-form) or Host.
/// `Ok(None)` when there is none (HTTP/1.0); `Err` when Host is not a valid authority.
pub(super) fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<RequestHost>, ()> {
    let (authority, host) = match (uri.authority(), headers.get(header::HOST)) {
        (Some(a), _) => (a.clone(), None),
        (None, Some(v)) => (Authority::try_from(v.as_bytes()).map_err(|_| ())?, Some(v)),
        (None, None) => return Ok(None),
    };
    let host = host.cloned();
    Ok(Some(RequestHost { authority, host }))
}

pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Headers that must never be removed because `Connection` names them: cohort sets them.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == X_COHORT || name.as_str().starts_with("x-forwarded-")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those `Connection` names, the fixed list,
/// every `Proxy-*`, and `TE` unless it asks only for trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (standard names compare as small enums) finds which are there;
    // only those are removed, since each removal hashes. Most requests carry none, and most
    // responses only `Connection: keep-alive`.
    let (mut connection, mut keep_alive, mut chunked, mut upgrade, mut proxy, mut te) =
        (false, false, false, false, false, false);
    for k in headers.keys() {
        if k == header::CONNECTION {
            connection = true;
        } else if k == header::TE {
            te = true;
        } else if k == header::TRANSFER_ENCODING {
            chunked = true;
        } else if k == header::UPGRADE {
            upgrade = true;
        } else if k == KEEP_ALIVE {
            keep_alive = true;
        } else if k.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            // The Keep-Alive header, if any, is removed below in any case.
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| !protected(n))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if chunked {
        headers.remove(header::TRANSFER_ENCODING);
        // A message framed by Transfer-Encoding was read by it, whatever Content-Length said
        // (RFC 9112 §6.3); passed on, that length would frame the next hop's message wrongly.
        headers.remove(header::CONTENT_LENGTH);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
    if proxy {
        let proxies: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in proxies {
            headers.remove(n);
        }
    }
    if !te {
        return;
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.split(|&b| b == b';').next().unwrap_or(t);
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// A client connection's address, and its X-Forwarded-For entry, formatted once per connection
/// rather than once per request.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    forwarded: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = crate::routing::table::canonical_ip(addr.ip());
        // An IP address is always a valid header value.
        let forwarded = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer { addr, forwarded }
    }
}

/// Every value of `name` joined by `sep`, then `last` if given, as one field's bytes.
fn joined(headers: &HeaderMap, name: &HeaderName, sep: &[u8], last: Option<&[u8]>) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64);
    let values = headers.get_all(name).iter().map(HeaderValue::as_bytes);
    for v in values.chain(last) {
        if !buf.is_empty() {
            buf.put_slice(sep);
        }
        buf.put_slice(v);
    }
    buf
}

/// Replaces every value of `name` by `buf`, which was built from valid values.
fn replace(headers: &mut HeaderMap, name: &HeaderName, buf: BytesMut) {
    if let Ok(v) = HeaderValue::from_maybe_shared(buf.freeze()) {
        headers.insert(name, v);
    }
}

/// Appends the peer to X-Forwarded-For, folding earlier values into one header.
pub(super) fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(&X_FORWARDED_FOR, peer.forwarded.clone());
        return;
    }
    let buf = joined(
        headers,
        &X_FORWARDED_FOR,
        b", ",
        Some(peer.forwarded.as_bytes()),
    );
    replace(headers, &X_FORWARDED_FOR, buf);
}

/// Joins the `cookie` fields an HTTP/2 client split into crumbs into one, with `; ` (RFC 9113
/// §8.2.3): an HTTP/1.1 upstream must get a single Cookie line, and the cohort key is read
/// from what the upstream gets.
pub(super) fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let buf = joined(headers, &header::COOKIE, b"; ", None);
    replace(headers, &header::COOKIE, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_is_stripped_but_protected_names_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (
                "connection",
                "keep-alive, x-secret, x-cohort, host, X-Forwarded-For",
            ),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate;q=0.5"),
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-keep", "yes"),
            ("content-length", "4"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "host: example.com",
                "te: trailers",
                "x-forwarded-for: 1.2.3.4",
                "x-keep: yes"
            ]
        );

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    /// X-Forwarded-For after a request that carried `earlier` came from `peer`.
    fn forwarded(earlier: &[&'static str], peer: &str) -> Vec<String> {
        let mut h = HeaderMap::new();
        for v in earlier {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        append_forwarded_for(&mut h, &Peer::new(peer.parse().unwrap()));
        let all = h.get_all(&X_FORWARDED_FOR).iter();
        all.map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn forwarded_for_is_the_peer_alone_when_none_came() {
        assert_eq!(forwarded(&[], "[::ffff:10.0.0.1]:5"), ["10.0.0.1"]);
        assert_eq!(forwarded(&[], "[2001:db8::7]:443"), ["2001:db8::7"]);
    }

    #[test]
    fn forwarded_for_appends() {
        assert_eq!(
            forwarded(&["1.1.1.1", "2.2.2.2"], "[::ffff:10.0.0.1]:5"),
            ["1.1.1.1, 2.2.2.2, 10.0.0.1"]
        );
    }

    #[test]
    fn cookie_crumbs_join_into_one_field() {
        let mut h = HeaderMap::new();
        for v in ["a=1", "sid=s-2", "theme=dark"] {
            h.append(header::COOKIE, HeaderValue::from_static(v));
        }
        join_cookie_crumbs(&mut h);
        assert_eq!(
            h.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; sid=s-2; theme=dark"]
        );
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookie_crumbs(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().count(), 1);
    }

    /// The host value the upstream leg gets for a request to `uri` with Host `host`.
    fn host_value(uri: &str, host: Option<&'static str>) -> Result<Option<String>, ()> {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_static(v));
        }
        let found = request_host(&uri.parse().unwrap(), &h)?;
        let value = found.and_then(RequestHost::into_value);
        Ok(value.map(|v| v.to_str().unwrap().to_string()))
    }

    #[test]
    fn the_host_value_is_hosts_own_or_the_uris() {
        let some = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(
            host_value("/", Some("Api.Example.com:8080")),
            some("Api.Example.com:8080")
        );
        assert_eq!(
            host_value("http://a.example:81/x", None),
            some("a.example:81")
        );
        assert_eq!(
            host_value("http://a.example/x", Some("b.example")),
            some("a.example")
        );
        assert_eq!(host_value("/", None), Ok(None));
        assert_eq!(host_value("/", Some("a b")), Err(()));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
