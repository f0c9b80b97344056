//! Hostile and malformed HTTP/1.1 input, written as raw bytes on a TCP connection. Each row
//! states the bytes sent, the answer (a status, a status and then the connection closed with
//! nothing more, or the connection closed without any answer), what the backends may have
//! seen, and the counter that must have moved by exactly one. After every row, a normal
//! request on a new connection must still succeed.
//!
//! Also here: the admin listener's bearer token, and admin paths on the public listener.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HOST: &str = "cohort.test";
const MAX_HEADER_BYTES: usize = 1024;
const MAX_HEADERS: usize = 12;
const MAX_URI: usize = 256;
const MAX_BODY: usize = 100;
/// The test client, outside `trusted_cidrs` and `trusted_proxies`.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// A peer listed in `trusted_proxies`.
const PROXY_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The only address in `trusted_cidrs`; only ever a forwarded address, never a socket peer.
const TRUSTED_CLIENT: &str = "10.9.9.9";
const SECRET: &[u8] = b"hostile-test-override-secret-0123";
/// A request hidden in a body.
const SMUGGLED: &str = "GET /public/smuggled HTTP/1.1\r\nHost: cohort.test\r\n\r\n";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// The table's vocabulary
// ---------------------------------------------------------------------------------------------

/// Which proxy a row is sent to; all share the same backends.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Setup {
    /// Small limits, 300ms header and body timers, underscores rejected, path as received.
    Strict,
    /// As `Strict`, with `underscore_headers: drop`.
    Drop,
    /// As `Strict`, with `normalize_path: true`.
    Normalize,
    /// `max_connections: 2`, default timers.
    Cap,
}

const SETUPS: [Setup; 4] = [Setup::Strict, Setup::Drop, Setup::Normalize, Setup::Cap];

/// How the row's bytes go out.
enum Input {
    /// Written at once; then the answer is read.
    Bytes(Vec<u8>),
    /// Written one byte every 50ms until the proxy closes the connection (slowloris).
    Trickle(Vec<u8>),
    /// Nothing at all: connect and wait.
    Silent,
    /// Opens this many idle connections first and holds them, then writes the bytes on one
    /// more connection.
    Crowd(usize, Vec<u8>),
}

/// What the client gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// This status (the connection may stay open).
    Status(u16),
    /// This status, then the connection closes with not a byte more (no second response to
    /// smuggled bytes).
    StatusThenEof(u16),
    /// The connection is closed without any response.
    Closed,
}

/// The requests a row made each backend receive (the probe after it excluded).
struct Saw {
    backend: Vec<Seen>,
    canary: Vec<Seen>,
    secret: Vec<Seen>,
}

impl Saw {
    fn all(&self) -> Vec<&Seen> {
        self.backend
            .iter()
            .chain(&self.canary)
            .chain(&self.secret)
            .collect()
    }
    /// The one request `backend` saw, and that nobody else saw anything.
    fn only_backend(&self) -> &Seen {
        assert_eq!(self.canary.len() + self.secret.len(), 0, "{:?}", self.all());
        assert_eq!(self.backend.len(), 1, "{:?}", self.backend);
        &self.backend[0]
    }
}

/// Backend expectations.
fn nothing(s: &Saw) {
    assert!(s.all().is_empty(), "no backend may see this: {:?}", s.all());
}

/// At most one request whose body never arrived whole (the mock records an aborted body as
/// empty): a streamed body refused part way.
fn aborted(s: &Saw) {
    let all = s.all();
    assert!(all.len() <= 1, "{all:?}");
    for seen in all {
        assert!(
            seen.body.is_empty(),
            "an aborted body reached a backend: {seen:?}"
        );
    }
}

/// One ordinary request on `backend`, with no smuggled follow-up anywhere.
fn one_plain(s: &Saw) {
    let seen = s.only_backend();
    assert!(!seen.target.contains("smuggled"), "{seen:?}");
}

/// Header names no backend may ever see with an underscore.
fn no_underscores(s: &Saw) {
    let seen = s.only_backend();
    for name in seen.headers.keys() {
        assert!(!name.as_str().contains('_'), "{name} reached the backend");
    }
    assert_eq!(seen.header("x-cohort"), Some("stable"));
}

fn stripped_override(s: &Saw) {
    let seen = s.only_backend();
    assert_eq!(seen.header("x-cohort-override"), None, "{seen:?}");
    assert_eq!(seen.all("x-cohort"), ["stable"]);
}

fn canary_only(s: &Saw) {
    assert_eq!(s.backend.len() + s.secret.len(), 0, "{:?}", s.all());
    assert_eq!(s.canary.len(), 1, "{:?}", s.canary);
    assert_eq!(s.canary[0].header("x-cohort-override"), None);
    assert_eq!(s.canary[0].all("x-cohort"), ["canary"]);
}

/// One row of the table.
struct Row {
    name: String,
    setup: Setup,
    from: IpAddr,
    send: Input,
    answer: Answer,
    backend: fn(&Saw),
    /// The `x-cohort` the response must carry.
    cohort: Option<String>,
    /// A series that must have grown by exactly one: (name, labels).
    counted: Option<(&'static str, Vec<(&'static str, &'static str)>)>,
}

fn row(name: impl Into<String>, send: Input, answer: Answer, backend: fn(&Saw)) -> Row {
    Row {
        name: name.into(),
        setup: Setup::Strict,
        from: CLIENT,
        send,
        answer,
        backend,
        cohort: None,
        counted: None,
    }
}

/// Bytes refused before they are a request: 400 and the connection closed, nothing forwarded,
/// no rejection counted.
fn unparsable(name: &str, bytes: &str) -> Row {
    row(name, b(bytes), Answer::StatusThenEof(400), nothing)
}

/// A request refused by cohort itself: nothing forwarded, one rejection for `reason`.
fn refused(
    name: impl Into<String>,
    bytes: impl Into<String>,
    answer: Answer,
    reason: &'static str,
) -> Row {
    row(name, b(bytes), answer, nothing).rejected(reason)
}

/// An override refused on `route` for `reason`: served by `stable` as if it were absent,
/// stripped before the backend.
fn override_refused(name: &str, send: Input, route: &'static str, reason: &'static str) -> Row {
    row(name, send, Answer::Status(200), stripped_override)
        .cohort("stable")
        .override_rejected(route, reason)
}

impl Row {
    fn on(mut self, setup: Setup) -> Self {
        self.setup = setup;
        self
    }
    fn from(mut self, ip: IpAddr) -> Self {
        self.from = ip;
        self
    }
    fn cohort(mut self, c: &str) -> Self {
        self.cohort = Some(c.into());
        self
    }
    /// `cohort_rejected_requests_total{reason}` grows by one.
    fn rejected(mut self, reason: &'static str) -> Self {
        self.counted = Some((REJECTED, vec![("reason", reason)]));
        self
    }
    /// `cohort_override_rejected_total{route, reason}` grows by one.
    fn override_rejected(mut self, route: &'static str, reason: &'static str) -> Self {
        self.counted = Some((
            OVERRIDE_REJECTED,
            vec![("route", route), ("reason", reason)],
        ));
        self
    }
    fn counts(mut self, name: &'static str, labels: Vec<(&'static str, &'static str)>) -> Self {
        self.counted = Some((name, labels));
        self
    }
}

const REJECTED: &str = "cohort_rejected_requests_total";
const OVERRIDE_REJECTED: &str = "cohort_override_rejected_total";

/// Bytes, as written.
fn b(s: impl Into<String>) -> Input {
    Input::Bytes(s.into().into_bytes())
}

/// `GET <target>` with Host and the given extra header lines (each without CRLF).
fn get_req(target: &str, headers: &[&str]) -> String {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Header block size as cohort counts it: `name: value\r\n` per field.
fn field_bytes(name: &str, value: &str) -> usize {
    name.len() + value.len() + 4
}

/// A GET whose header block is exactly `total` bytes as cohort counts them (Host plus one
/// padding header).
fn get_with_header_bytes(total: usize) -> String {
    let fixed = field_bytes("Host", HOST) + field_bytes("X-Pad", "");
    get_req(
        "/public/pad",
        &[&format!("X-Pad: {}", "p".repeat(total - fixed))],
    )
}

/// A GET with exactly `n` header fields (Host included).
fn get_with_headers(n: usize) -> String {
    let extra: Vec<String> = (1..n).map(|i| format!("X-H{i}: {i}")).collect();
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    get_req("/public/count", &refs)
}

/// A GET whose request target is exactly `len` bytes.
fn get_with_uri(len: usize) -> String {
    let base = "/public/uri?q=";
    get_req(&format!("{base}{}", "u".repeat(len - base.len())), &[])
}

fn rows() -> Vec<Row> {
    use Answer::*;
    let split = [("stable", 5000), ("canary", 5000)];
    let cohort_of = |key: &str| contract_cohort("byip", key.as_bytes(), &split).to_string();
    // A forwarded address that hashes to the other cohort than the socket peer does.
    let forged_ip = (1..=255)
        .map(|i| format!("10.0.0.{i}"))
        .find(|ip| cohort_of(ip) != cohort_of("127.0.0.1"))
        .unwrap();
    let in_an_hour = now() + 3600;
    let signed = cohort::routing::signed::sign(SECRET, "canary", in_an_hour);
    let expired = cohort::routing::signed::sign(SECRET, "canary", now() - 60);
    let forged =
        cohort::routing::signed::sign(b"not-the-route-secret-0123456789", "canary", in_an_hour);
    let unknown = cohort::routing::signed::sign(SECRET, "nightly", in_an_hour);
    let chunk64 = format!("40\r\n{}\r\n", "c".repeat(64));

    #[rustfmt::skip]
    let rows = vec![
        // --- Request smuggling: a head with both Transfer-Encoding and Content-Length is
        // refused with 400 and the connection closed (as nginx and Envoy do), so neither the
        // request nor the bytes after it ever reach a backend.
        refused("CL.TE: Content-Length 6 + chunked, a request hidden after the 0 chunk",
            "POST /public/clte HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            StatusThenEof(400), "te_and_cl"),
        refused("TE.CL: chunked + Content-Length 4, a request inside the chunk",
            format!("POST /public/tecl HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            StatusThenEof(400), "te_and_cl"),
        unparsable("TE.TE: Transfer-Encoding that is not chunked last (xchunked) with Content-Length",
            "POST /public/tete HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello"),
        unparsable("Transfer-Encoding: chunked, identity (chunked not last)",
            "POST /public/te HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        unparsable("Transfer-Encoding on HTTP/1.0",
            "POST /public/te10 HTTP/1.0\r\nHost: cohort.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        unparsable("whitespace before the colon: 'Transfer-Encoding : chunked'",
            "POST /public/ws HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"),
        unparsable("duplicate Content-Length with different values",
            "POST /public/dupcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        unparsable("Content-Length list with different values: '5, 6'",
            "POST /public/dupcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        row("duplicate Content-Length with the same value is one length",
            b("POST /public/samecl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            Status(200),
            |s| {
                let seen = s.only_backend();
                assert_eq!(&seen.body[..], b"hello");
                assert_eq!(seen.all("content-length"), ["5"]);
            }),
        unparsable("Content-Length not a number",
            "POST /public/badcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 5a\r\n\r\nhello"),
        unparsable("Content-Length with a sign: '+5'",
            "POST /public/badcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: +5\r\n\r\nhello"),
        unparsable("Content-Length negative",
            "POST /public/badcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: -1\r\n\r\n"),
        unparsable("Content-Length beyond u64",
            "POST /public/badcl HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 99999999999999999999999\r\n\r\n"),

        // --- Malformed header lines.
        unparsable("obs-fold: a header value continued on the next line",
            "GET /public/fold HTTP/1.1\r\nHost: cohort.test\r\nX-Folded: one\r\n two\r\n\r\n"),
        unparsable("bare CR inside a header value",
            "GET /public/cr HTTP/1.1\r\nHost: cohort.test\r\nX-Evil: a\rX-Injected: 1\r\n\r\n"),
        unparsable("NUL inside a header value",
            "GET /public/nul HTTP/1.1\r\nHost: cohort.test\r\nX-Evil: a\0b\r\n\r\n"),
        unparsable("NUL inside a header name",
            "GET /public/nul HTTP/1.1\r\nHost: cohort.test\r\nX-E\0vil: a\r\n\r\n"),
        unparsable("header line without a colon",
            "GET /public/nocolon HTTP/1.1\r\nHost: cohort.test\r\nX-No-Colon\r\n\r\n"),
        unparsable("space inside a header name",
            "GET /public/space HTTP/1.1\r\nHost: cohort.test\r\nX Evil: 1\r\n\r\n"),
        unparsable("request line with an extra field",
            "GET /public/extra HTTP/1.1 junk\r\nHost: cohort.test\r\n\r\n"),
        unparsable("control character in the method",
            "G\x01T /public/method HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),

        // --- Chunked bodies with bad sizes: refused as the client's fault, never forwarded
        // whole.
        row("chunk size beyond u64",
            b("POST /public/chunk HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
            StatusThenEof(400), aborted).rejected("bad_body"),
        row("chunk size not hex",
            b("POST /public/chunk HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
            StatusThenEof(400), aborted).rejected("bad_body"),

        // --- Limits, each exactly at the cap (served) and one past it (refused).
        row(format!("header block of exactly {MAX_HEADER_BYTES} bytes"),
            b(get_with_header_bytes(MAX_HEADER_BYTES)),
            Status(200), one_plain),
        refused(format!("header block of {} bytes", MAX_HEADER_BYTES + 1),
            get_with_header_bytes(MAX_HEADER_BYTES + 1),
            Status(431), "headers_too_large"),
        row(format!("exactly {MAX_HEADERS} header fields"),
            b(get_with_headers(MAX_HEADERS)),
            Status(200), one_plain),
        row(format!("{} header fields", MAX_HEADERS + 1),
            b(get_with_headers(MAX_HEADERS + 1)),
            StatusThenEof(431), nothing),
        row(format!("request target of exactly {MAX_URI} bytes"),
            b(get_with_uri(MAX_URI)),
            Status(200), one_plain),
        refused(format!("request target of {} bytes", MAX_URI + 1),
            get_with_uri(MAX_URI + 1),
            Status(414), "uri_too_long"),
        row(format!("body of exactly max_body_bytes ({MAX_BODY}) by Content-Length"),
            b(format!("POST /public/body HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: {MAX_BODY}\r\n\r\n{}", "b".repeat(MAX_BODY))),
            Status(200),
            |s| assert_eq!(s.only_backend().body.len(), MAX_BODY)),
        refused("Content-Length one past max_body_bytes (body not sent)",
            format!("POST /public/body HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1),
            StatusThenEof(413), "body_too_large"),
        refused("Content-Length past max_body_bytes with Expect: 100-continue gets 413, not 100",
            format!("POST /public/body HTTP/1.1\r\nHost: cohort.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1),
            StatusThenEof(413), "body_too_large"),
        row("chunked body streaming past max_body_bytes",
            b(format!("POST /public/body HTTP/1.1\r\nHost: cohort.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunk64}{chunk64}")),
            StatusThenEof(413), aborted).rejected("body_too_large"),
        row("slowloris: the head trickled slower than header_read_timeout (300ms)",
            Input::Trickle(format!("GET /public/slow HTTP/1.1\r\nHost: cohort.test\r\nX-Slow: {}\r\n\r\n", "s".repeat(200)).into_bytes()),
            Closed, nothing),
        row("a connection that sends nothing",
            Input::Silent, Closed, nothing),
        row("slow POST: 5 of 10 body bytes, then silence past body_read_timeout (300ms)",
            b("POST /public/slowpost HTTP/1.1\r\nHost: cohort.test\r\nContent-Length: 10\r\n\r\nhello"),
            StatusThenEof(408), aborted).rejected("body_timeout"),
        row("max_connections 2: a third connection while two are open",
            Input::Crowd(2, get_req("/public/crowd", &[]).into_bytes()),
            StatusThenEof(503), nothing)
            .on(Setup::Cap)
            .counts("cohort_connections_refused_total", vec![("listener", "public")]),

        // --- Host confusion.
        refused("HTTP/1.1 without Host",
            "GET /public/nohost HTTP/1.1\r\n\r\n",
            Status(400), "bad_host"),
        refused("duplicate Host",
            "GET /public/twohosts HTTP/1.1\r\nHost: cohort.test\r\nHost: evil.test\r\n\r\n",
            Status(400), "bad_host"),
        refused("absolute-form authority disagreeing with Host",
            "GET http://evil.test/public/abs HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            Status(400), "bad_host"),
        row("absolute-form authority agreeing with Host",
            b("GET http://cohort.test/public/abs HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(200),
            |s| assert_eq!(s.only_backend().header("x-forwarded-host"), Some("cohort.test"))),
        refused("userinfo in Host",
            "GET /public/userinfo HTTP/1.1\r\nHost: admin@cohort.test\r\n\r\n",
            Status(400), "bad_host"),
        refused("userinfo in an absolute-form authority",
            "GET http://admin:pw@cohort.test/public/userinfo HTTP/1.1\r\nHost: admin:pw@cohort.test\r\n\r\n",
            Status(400), "bad_host"),
        refused("empty Host",
            "GET /public/emptyhost HTTP/1.1\r\nHost: \r\n\r\n",
            Status(400), "bad_host"),
        refused("Host that is not an authority",
            "GET /public/badhost HTTP/1.1\r\nHost: cohort.test:80:80\r\n\r\n",
            Status(400), "bad_host"),
        row("HTTP/1.0 without Host is served",
            b("GET /public/old HTTP/1.0\r\n\r\n"),
            Status(200), one_plain),

        // --- Hop-by-hop abuse: Connection cannot strip what cohort sets.
        row("Connection naming x-cohort, x-forwarded-*, host",
            b("GET /public/hop HTTP/1.1\r\nHost: cohort.test\r\nConnection: x-cohort, x-forwarded-for, x-forwarded-proto, x-forwarded-host, host\r\nX-Cohort: forged\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"),
            Status(200),
            |s| {
                let seen = s.only_backend();
                assert_eq!(seen.all("x-cohort"), ["stable"]);
                assert_eq!(seen.all("x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
                assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
                assert_eq!(seen.all("x-forwarded-host"), ["cohort.test"]);
                assert_eq!(seen.all("host"), ["cohort.test"]);
                assert_eq!(seen.header("connection"), None);
            }).cohort("stable"),
        row("Connection naming an ordinary header, plus the fixed hop-by-hop list",
            b("GET /public/hop2 HTTP/1.1\r\nHost: cohort.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\nTE: gzip\r\nX-Kept: yes\r\n\r\n"),
            Status(200),
            |s| {
                let seen = s.only_backend();
                for gone in ["x-secret", "keep-alive", "proxy-authorization", "te", "connection"] {
                    assert_eq!(seen.header(gone), None, "{gone} reached the backend");
                }
                assert_eq!(seen.header("x-kept"), Some("yes"));
            }),

        // --- Underscore header names.
        refused("underscore header, policy reject",
            "GET /public/underscore HTTP/1.1\r\nHost: cohort.test\r\nX_Cohort_Override: canary\r\n\r\n",
            Status(400), "underscore_header"),
        row("underscore headers, policy drop: forwarded without them",
            b("GET /public/underscore HTTP/1.1\r\nHost: cohort.test\r\nX_Cohort_Override: canary\r\nX_Forwarded_For: 6.6.6.6\r\nX-Kept: yes\r\n\r\n"),
            Status(200),
            |s| {
                no_underscores(s);
                assert_eq!(s.backend[0].header("x-kept"), Some("yes"));
                assert_eq!(s.backend[0].all("x-forwarded-for"), ["127.0.0.1"]);
            })
            .on(Setup::Drop).cohort("stable"),

        // --- Path traversal. /public/ goes to `backend`, /secret/ to `secret`; routes match
        // the normalised path, and the upstream gets the path as received unless
        // normalize_path is on.
        row("/public/../secret/x is routed as /secret/x, forwarded as received",
            b("GET /public/../secret/x HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(200),
            |s| {
                assert!(s.backend.is_empty() && s.canary.is_empty(), "{:?}", s.all());
                assert_eq!(s.secret.len(), 1);
                assert_eq!(s.secret[0].target, "/public/../secret/x");
            }).cohort("secret"),
        row("/public/../secret/x with normalize_path: forwarded normalised",
            b("GET /public/../secret/x?q=1 HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(200),
            |s| {
                assert_eq!(s.secret.len(), 1, "{:?}", s.all());
                assert_eq!(s.secret[0].target, "/secret/x?q=1");
            }).on(Setup::Normalize).cohort("secret"),
        row("/public/%2e%2e/nowhere normalises to /nowhere: no route",
            b("GET /public/%2e%2e/nowhere HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(404), nothing).counts("cohort_unrouted_requests_total", vec![]),
        row("/public//.//a/../b is /public/b, forwarded as received",
            b("GET /public//.//a/../b HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(200),
            |s| assert_eq!(s.only_backend().target, "/public//.//a/../b")),
        row("/public//.//a/../b with normalize_path is forwarded as /public/b",
            b("GET /public//.//a/../b HTTP/1.1\r\nHost: cohort.test\r\n\r\n"),
            Status(200),
            |s| assert_eq!(s.only_backend().target, "/public/b")).on(Setup::Normalize),
        refused("climbing above the root: /public/../../etc/passwd",
            "GET /public/../../etc/passwd HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            Status(400), "bad_path"),
        refused("climbing above the root, encoded: /public/%2E%2e/%2e%2E/etc/passwd",
            "GET /public/%2E%2e/%2e%2E/etc/passwd HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            Status(400), "bad_path"),
        refused("encoded slash: /public/..%2Fsecret/x",
            "GET /public/..%2Fsecret/x HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            Status(400), "bad_path"),
        refused("encoded backslash: /public/..%5csecret/x",
            "GET /public/..%5csecret/x HTTP/1.1\r\nHost: cohort.test\r\n\r\n",
            Status(400), "bad_path"),

        // --- Overrides: a plain name only from trusted_cidrs (judged on the socket peer, or
        // on X-Forwarded-For only when the peer is a trusted proxy); signed values from
        // anyone. Refused overrides are stripped and counted.
        override_refused("plain override from an untrusted peer",
            b(get_req("/public/override", &["x-user-id: u1", "x-cohort-override: canary"])),
            "public", "untrusted"),
        override_refused("plain override with a forged X-Forwarded-For from an untrusted peer",
            b(get_req("/public/override", &["x-user-id: u1", "x-cohort-override: canary", &format!("X-Forwarded-For: {TRUSTED_CLIENT}")])),
            "public", "untrusted"),
        row("plain override relayed by a trusted proxy for a trusted client",
            b(get_req("/public/override", &["x-user-id: u1", "x-cohort-override: canary", &format!("X-Forwarded-For: {TRUSTED_CLIENT}")])),
            Status(200), canary_only).from(PROXY_PEER).cohort("canary"),
        override_refused("trusted proxy: the right-most untrusted X-Forwarded-For entry is the client",
            b(get_req("/public/override", &["x-user-id: u1", "x-cohort-override: canary", &format!("X-Forwarded-For: {TRUSTED_CLIENT}, 6.6.6.6")])),
            "public", "untrusted").from(PROXY_PEER),
        row("signed override from an untrusted peer",
            b(get_req("/signed/x", &["x-user-id: u1", &format!("x-cohort-override: {signed}")])),
            Status(200), canary_only).cohort("canary"),
        override_refused("expired signed override",
            b(get_req("/signed/x", &["x-user-id: u1", &format!("x-cohort-override: {expired}")])),
            "signed", "expired"),
        override_refused("signed override minted with another secret",
            b(get_req("/signed/x", &["x-user-id: u1", &format!("x-cohort-override: {forged}")])),
            "signed", "forged"),
        override_refused("signed override for a cohort the route lacks",
            b(get_req("/signed/x", &["x-user-id: u1", &format!("x-cohort-override: {unknown}")])),
            "signed", "unknown_cohort"),
        override_refused("malformed signed override",
            b(get_req("/signed/x", &["x-user-id: u1", "x-cohort-override: canary.soon.AAAA"])),
            "signed", "malformed"),

        // --- client_ip keys use the resolved client address.
        row("client_ip key ignores X-Forwarded-For from an untrusted peer",
            b(get_req("/byip/x", &[&format!("X-Forwarded-For: {forged_ip}")])),
            Status(200), |s| assert_eq!(s.all().len(), 1)).cohort(&cohort_of("127.0.0.1")),
        row("client_ip key uses X-Forwarded-For from a trusted proxy",
            b(get_req("/byip/x", &[&format!("X-Forwarded-For: {forged_ip}")])),
            Status(200), |s| assert_eq!(s.all().len(), 1)).from(PROXY_PEER).cohort(&cohort_of(&forged_ip)),
    ];
    rows
}

// ---------------------------------------------------------------------------------------------
// Running the table
// ---------------------------------------------------------------------------------------------

struct Env {
    backend: MockUpstream,
    canary: MockUpstream,
    secret: MockUpstream,
    proxies: HashMap<Setup, TestProxy>,
    _files: tempfile::TempDir,
}

fn config(setup: Setup, env_files: &std::path::Path, mocks: [SocketAddr; 3]) -> Config {
    let secret_file = env_files.join("override-secret");
    let limits = match setup {
        Setup::Cap => "limits: {max_connections: 2}".to_string(),
        _ => format!(
            "limits: {{max_request_header_bytes: {MAX_HEADER_BYTES}, max_request_headers: {MAX_HEADERS}, \
             max_uri_bytes: {MAX_URI}, header_read_timeout: 300ms, body_read_timeout: 300ms, \
             underscore_headers: {}, normalize_path: {}}}",
            if setup == Setup::Drop { "drop" } else { "reject" },
            setup == Setup::Normalize
        ),
    };
    let split = [("stable", "backend", "100"), ("canary", "canary", "0")];
    Config::new()
        .top(&format!("trusted_cidrs: [\"{TRUSTED_CLIENT}/32\"]"))
        .top(&format!("trusted_proxies: [\"{PROXY_PEER}/32\"]"))
        .top(&limits)
        .upstream("backend", mocks[0])
        .upstream("canary", mocks[1])
        .upstream("secret", mocks[2])
        .route(
            Route::new("public")
                .matching("path_prefix: /public/")
                .key("header: x-user-id")
                .set("override_header: x-cohort-override")
                .set(&format!("max_body_bytes: {MAX_BODY}"))
                .split(&split),
        )
        .route(
            Route::new("signed")
                .matching("path_prefix: /signed/")
                .key("header: x-user-id")
                .set("override_header: x-cohort-override")
                .set(&format!(
                    "override_secret_file: {}",
                    yaml_path(&secret_file)
                ))
                .split(&split),
        )
        .route(
            Route::new("byip")
                .matching("path_prefix: /byip/")
                .key("client_ip: true")
                .split(&[("stable", "backend", "50"), ("canary", "canary", "50")]),
        )
        .route(
            Route::new("secret")
                .matching("path_prefix: /secret/")
                .single("secret"),
        )
}

impl Env {
    async fn start() -> Env {
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("override-secret"), SECRET).unwrap();
        let backend = MockUpstream::json("backend").await;
        let canary = MockUpstream::json("canary").await;
        let secret = MockUpstream::json("secret").await;
        let mocks = [backend.addr, canary.addr, secret.addr];
        let mut proxies = HashMap::new();
        for setup in SETUPS {
            proxies.insert(setup, config(setup, files.path(), mocks).start().await);
        }
        Env {
            backend,
            canary,
            secret,
            proxies,
            _files: files,
        }
    }

    fn counts(&self) -> [usize; 3] {
        [
            self.backend.request_count(),
            self.canary.request_count(),
            self.secret.request_count(),
        ]
    }

    /// What each backend received since `before`, without the probes.
    fn saw_since(&self, before: [usize; 3]) -> Saw {
        let since = |m: &MockUpstream, n: usize| -> Vec<Seen> {
            m.requests()[n..]
                .iter()
                .filter(|s| !s.target.starts_with("/public/probe"))
                .cloned()
                .collect()
        };
        Saw {
            backend: since(&self.backend, before[0]),
            canary: since(&self.canary, before[1]),
            secret: since(&self.secret, before[2]),
        }
    }
}

async fn connect_from(addr: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    within("connect to the proxy", socket.connect(addr))
        .await
        .unwrap()
}

/// A response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads more bytes; 0 means closed (a reset counts as closed too).
async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// Reads one response (head and body by Content-Length or chunked), or `None` when the
/// connection closes before any byte. Leaves bytes past the response in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Wire> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if read_some(s, buf).await == 0 {
            assert!(
                buf.is_empty(),
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(buf)
            );
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {head:?}"));
    let mut wire = Wire {
        status,
        head,
        body: Vec::new(),
    };
    buf.drain(..head_end);
    if let Some(len) = wire.header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            assert!(read_some(s, buf).await > 0, "closed mid-body: {wire:?}");
        }
        wire.body = buf.drain(..len).collect();
    } else if wire.header("transfer-encoding").is_some() {
        while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
            assert!(read_some(s, buf).await > 0, "closed mid-body: {wire:?}");
        }
        let end = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
        wire.body = buf.drain(..end).collect();
    }
    Some(wire)
}

/// Sends a row's bytes and reads what comes back; returns the stream for further reads.
async fn exchange(
    addr: SocketAddr,
    from: IpAddr,
    send: &Input,
) -> (Option<Wire>, TcpStream, Vec<u8>) {
    let mut buf = Vec::new();
    match send {
        Input::Bytes(bytes) => {
            let mut s = connect_from(addr, from).await;
            s.write_all(bytes).await.unwrap();
            let wire = within("the answer", read_response(&mut s, &mut buf)).await;
            (wire, s, buf)
        }
        Input::Silent => {
            let mut s = connect_from(addr, from).await;
            let wire = within("the answer", read_response(&mut s, &mut buf)).await;
            (wire, s, buf)
        }
        Input::Trickle(bytes) => {
            let mut s = connect_from(addr, from).await;
            let wire = within("the proxy to give up on a trickled head", async {
                for &byte in bytes.iter().cycle() {
                    if s.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(
                        Duration::from_millis(50),
                        read_some(&mut s, &mut buf),
                    )
                    .await
                    {
                        Err(_) => continue,
                        Ok(0) => break,
                        Ok(_) => break,
                    }
                }
                if buf.is_empty() {
                    None
                } else {
                    read_response(&mut s, &mut buf).await
                }
            })
            .await;
            (wire, s, buf)
        }
        Input::Crowd(..) => unreachable!("handled by run_row"),
    }
}

async fn run_row(env: &Env, i: usize, row: &Row) {
    let proxy = &env.proxies[&row.setup];
    let before = env.counts();
    let scrape_before = proxy.scrape().await;
    let mut crowd = Vec::new();
    let send = match &row.send {
        Input::Crowd(n, bytes) => {
            for _ in 0..*n {
                crowd.push(connect_from(proxy.public, row.from).await);
            }
            proxy
                .expect_metric(
                    "cohort_open_connections",
                    &[("listener", "public")],
                    *n as f64,
                )
                .await;
            Input::Bytes(bytes.clone())
        }
        Input::Bytes(b) => Input::Bytes(b.clone()),
        Input::Trickle(b) => Input::Trickle(b.clone()),
        Input::Silent => Input::Silent,
    };
    let (wire, mut stream, mut rest) = exchange(proxy.public, row.from, &send).await;
    match (row.answer, &wire) {
        (Answer::Closed, None) => {}
        (Answer::Status(want) | Answer::StatusThenEof(want), Some(w)) => {
            assert_eq!(w.status, want, "{w:?}");
        }
        (want, got) => panic!("expected {want:?}, got {got:?}"),
    }
    if matches!(row.answer, Answer::StatusThenEof(_)) {
        let more = within("the proxy to close after its answer", async {
            while read_some(&mut stream, &mut rest).await > 0 {}
            rest
        })
        .await;
        assert!(
            more.is_empty(),
            "more bytes after the answer: {:?}",
            String::from_utf8_lossy(&more)
        );
    }
    if let (Some(want), Some(w)) = (&row.cohort, &wire) {
        assert_eq!(w.header("x-cohort"), Some(want.as_str()), "{w:?}");
    }
    drop(stream);
    if !crowd.is_empty() {
        drop(crowd);
        proxy
            .expect_metric("cohort_open_connections", &[("listener", "public")], 0.0)
            .await;
    }

    // The probe: a normal request on a new connection.
    let mut probe = connect_from(proxy.public, CLIENT).await;
    let probe_req = get_req(&format!("/public/probe?row={i}"), &["x-user-id: probe"]);
    probe.write_all(probe_req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = within("the probe's answer", read_response(&mut probe, &mut buf))
        .await
        .expect("the probe got an answer");
    assert_eq!(answer.status, 200, "probe after the row: {answer:?}");
    assert_eq!(answer.header("x-cohort"), Some("stable"));
    let last = env.backend.requests().pop().unwrap();
    assert_eq!(last.target, format!("/public/probe?row={i}"));

    (row.backend)(&env.saw_since(before));

    let scrape = proxy.scrape().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        scrape.get(name, labels).unwrap_or(0.0) - scrape_before.get(name, labels).unwrap_or(0.0)
    };
    let rejected = |s: &Scrape| s.series(REJECTED).iter().map(|s| s.value).sum::<f64>();
    let rejected_total = rejected(&scrape) - rejected(&scrape_before);
    match &row.counted {
        Some((name, labels)) => {
            assert_eq!(delta(name, labels), 1.0, "{name}{labels:?}");
            if *name != REJECTED {
                assert_eq!(rejected_total, 0.0, "no edge rejection expected");
            }
        }
        None => assert_eq!(rejected_total, 0.0, "no edge rejection expected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_precise_answers_and_the_proxy_keeps_serving() {
    let env = Env::start().await;
    let rows = rows();
    assert!(rows.len() >= 30, "the table needs at least 30 rows");
    for (i, row) in rows.iter().enumerate() {
        eprintln!(
            "row {i}: {} [{:?}] -> {:?}",
            row.name, row.setup, row.answer
        );
        run_row(&env, i, row).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Admin safety
// ---------------------------------------------------------------------------------------------

async fn admin_call(proxy: &TestProxy, method: &str, path: &str, token: Option<&str>) -> Reply {
    proxy
        .fetch(bearer_request(method, proxy.admin, path, token))
        .await
}

#[tokio::test]
async fn admin_token_guards_routes_and_reload_but_not_metrics_or_health() {
    let backend = MockUpstream::json("backend").await;
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let yaml = Config::new()
        .upstream("backend", backend.addr)
        .route(
            Route::new("agent")
                .matching("path_prefix: /api/")
                .single("backend"),
        )
        .admin(&format!("token_file: {}", yaml_path(&token_file)))
        .yaml();
    assert!(yaml.contains("token_file"));
    let proxy = TestProxy::start(&yaml).await;

    let prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    for (method, path) in [("GET", "/routes"), ("POST", "/reload")] {
        for (token, what) in [
            (None, "without a token"),
            (Some("wrong-token-0123456789abcdef"), "with a wrong token"),
            (Some(prefix), "with a token prefix"),
        ] {
            let r = admin_call(&proxy, method, path, token).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path} {what}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        }
        let r = admin_call(&proxy, method, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{method} {path} with the token: {}",
            r.text()
        );
    }
    let basic = proxy
        .fetch(request(
            "GET",
            proxy.admin,
            "/routes",
            &[("authorization", &format!("Basic {ADMIN_TOKEN}"))],
            Bytes::new(),
        ))
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED, "not a bearer token");

    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = admin_call(&proxy, "GET", path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path} stays open");
    }

    // The public listener never serves admin paths, token or not: with no route for them
    // they are unrouted, and the backend sees nothing.
    for (method, path) in [
        ("GET", "/routes"),
        ("POST", "/reload"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ] {
        for token in [None, Some(ADMIN_TOKEN)] {
            let r = proxy
                .fetch(bearer_request(method, proxy.public, path, token))
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "public {method} {path}");
            assert!(
                !r.text().contains("cohort_"),
                "public {path} leaked metrics"
            );
            assert!(
                !r.text().contains("generation"),
                "public {path} leaked routes"
            );
        }
    }
    assert_eq!(backend.request_count(), 0);
    assert_eq!(
        proxy
            .scrape()
            .await
            .metric("cohort_unrouted_requests_total", &[]),
        10.0
    );
}
