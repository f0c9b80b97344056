//! Shared harness for the integration tests: mock upstreams on real sockets, config files in a
//! temporary directory, the proxy started in-process, HTTP/1.1 and h2c clients, and a parser
//! for the `/metrics` scrape.
//!
//! Every await that could hang goes through [`within`], so a broken proxy fails a test instead
//! of stalling the suite.

#![allow(dead_code)]

pub mod process;
pub mod sim;
pub mod tls;

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort::demo::ChannelBody;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long any single step may take before the test is declared stuck.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The contract's assignment, derived here from its text rather than from the crate:
/// `bucket = xxh3_64_with_seed(key, xxh3_64(salt)) % 10000`; the first cohort takes
/// `[0, w0)`, each later one stacks down from 10000 in list order. Widths are in buckets.
pub fn contract_cohort<'a>(salt: &str, key: &[u8], split: &[(&'a str, u32)]) -> &'a str {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let bucket = (xxh3_64_with_seed(key, xxh3_64(salt.as_bytes())) % 10_000) as u32;
    let mut top = 10_000;
    for &(name, width) in &split[1..] {
        if bucket < top && bucket >= top - width {
            return name;
        }
        top -= width;
    }
    split[0].0
}

// ---------------------------------------------------------------------------------------------
// Mock upstreams
// ---------------------------------------------------------------------------------------------

/// Lets a test decide when a streaming mock sends its second event.
#[derive(Clone, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }
    /// Lets the waiting (or the next) stream go on.
    pub fn release(&self) {
        self.0.notify_one();
    }
    async fn wait(&self) {
        self.0.notified().await;
    }
}

/// What a mock upstream answers. Every mode except `Hang` also honours two request headers:
/// `x-mock-status: 503` sets the status and each `x-mock-set: name: value` adds a response
/// header.
#[derive(Clone)]
pub enum Respond {
    /// 200 with JSON `{"upstream", "x_cohort": [...], "path"}` and the builder's outcome.
    Json,
    /// 200 with the request body as the response body.
    Echo,
    /// An SSE stream: `data: one\n\n`, then (after the gate opens) `data: two\n\n`.
    Sse(Gate),
    /// `hello world` in two frames, then the trailer `x-checksum: abc123`.
    Trailers,
    /// Records the request and never answers.
    Hang,
    /// Answers like `Json`, but only once the gate opens.
    Gated(Gate),
    /// Answers like `Json` once this many requests (the barrier's size) are waiting together.
    Barrier(Arc<tokio::sync::Barrier>),
    /// A gRPC answer: `content-type: application/grpc`, one message (`GRPC_REPLY`), then the
    /// trailers `grpc-status` (the request's `x-mock-grpc-status`, default 0) and
    /// `grpc-message` (the request's `x-mock-grpc-message`, if any). With a request header
    /// `x-mock-grpc-trailers-only`, both go in the head of an empty response instead.
    Grpc,
    /// Accepts a WebSocket upgrade and echoes every text and binary message back.
    WebSocket,
    /// Accepts a WebSocket upgrade and sends 16 KiB binary messages as fast as the client
    /// takes them, until the connection fails.
    WebSocketFlood,
}

/// The gRPC message `Respond::Grpc` answers with: a 5-byte frame header, then `reply`.
pub const GRPC_REPLY: &[u8] = b"\0\0\0\0\x05reply";

pub const SSE_ONE: &str = "data: one\n\n";
pub const SSE_TWO: &str = "data: two\n\n";

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
}

/// Every value of header `name`, in order (as text; the tests only send text).
pub fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

pub struct MockBuilder {
    name: String,
    respond: Respond,
    outcome_header: String,
    outcome: Option<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

struct MockState {
    name: String,
    respond: Respond,
    outcome_header: HeaderName,
    outcome: Option<HeaderValue>,
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    tls_failures: AtomicUsize,
}

/// A backend on `127.0.0.1:<random port>` serving HTTP/1.1 and h2c, or (with
/// [`MockBuilder::tls`]) HTTP/1.1 and HTTP/2 over TLS.
pub struct MockUpstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<MockState>,
    accept: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    pub fn builder() -> MockBuilder {
        MockBuilder {
            name: "mock".into(),
            respond: Respond::Json,
            outcome_header: "x-agent-outcome".into(),
            outcome: None,
            tls: None,
        }
    }

    /// A JSON mock called `name`.
    pub async fn json(name: &str) -> Self {
        Self::builder().name(name).start().await
    }

    /// A mock called `name` that answers as `respond` says.
    pub async fn with(name: &str, respond: Respond) -> Self {
        Self::builder()
            .name(name)
            .respond_with(respond)
            .start()
            .await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// The only request received; fails the test if there were none or several.
    pub fn only_request(&self) -> Seen {
        let seen = self.requests();
        assert_eq!(
            seen.len(),
            1,
            "{} should have seen exactly one request",
            self.name
        );
        seen.into_iter().next().unwrap()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (a TLS mock only).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MockBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    pub fn respond_with(mut self, respond: Respond) -> Self {
        self.respond = respond;
        self
    }
    /// The outcome every reply carries (unless a request's `x-mock-set` says otherwise).
    pub fn outcome(mut self, value: &str) -> Self {
        self.outcome = Some(value.into());
        self
    }
    pub fn outcome_header(mut self, name: &str) -> Self {
        self.outcome_header = name.into();
        self
    }
    /// Serves over TLS with this config (see `tls::Leaf::server_config`).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    pub async fn start(self) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            name: self.name.clone(),
            respond: self.respond,
            outcome_header: HeaderName::from_bytes(self.outcome_header.as_bytes()).unwrap(),
            outcome: self.outcome.map(|o| HeaderValue::from_str(&o).unwrap()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            tls_failures: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(mock_accept(listener, Arc::clone(&state), self.tls));
        MockUpstream {
            name: self.name,
            addr,
            state,
            accept,
        }
    }
}

async fn mock_accept(
    listener: TcpListener,
    state: Arc<MockState>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (state, builder, tls) = (Arc::clone(&state), Arc::clone(&builder), tls.clone());
        tokio::spawn(async move {
            let failures = Arc::clone(&state);
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(mock_reply(&state, req).await) }
            });
            match tls {
                None => {
                    let io = TokioIo::new(stream);
                    let _ = builder.serve_connection_with_upgrades(io, svc).await;
                }
                Some(config) => {
                    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                        Ok(stream) => {
                            let io = TokioIo::new(stream);
                            let _ = builder.serve_connection_with_upgrades(io, svc).await;
                        }
                        Err(_) => {
                            failures.tls_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
    }
}

type MockBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into()).boxed()
}

async fn mock_reply(state: &MockState, req: Request<Incoming>) -> Response<MockBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    let seen = Seen {
        method: parts.method.clone(),
        target: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
    };
    state.seen.lock().unwrap().push(seen.clone());

    let mut resp = match &state.respond {
        Respond::Hang => return std::future::pending().await,
        Respond::Gated(gate) => {
            gate.wait().await;
            let json =
                serde_json::json!({"upstream": state.name, "x_cohort": seen.all("x-cohort")});
            Response::new(full(json.to_string()))
        }
        Respond::Json => {
            let json = serde_json::json!({
                "upstream": state.name,
                "x_cohort": seen.all("x-cohort"),
                "path": seen.target,
            });
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            if let Some(o) = &state.outcome {
                r.headers_mut().insert(&state.outcome_header, o.clone());
            }
            r
        }
        Respond::Echo => Response::new(full(body)),
        Respond::Sse(gate) => {
            let (tx, body) = ChannelBody::new(4);
            let gate = gate.clone();
            tokio::spawn(async move {
                if tx.send(Frame::data(Bytes::from(SSE_ONE))).await.is_err() {
                    return;
                }
                gate.wait().await;
                let _ = tx.send(Frame::data(Bytes::from(SSE_TWO))).await;
            });
            let mut r = Response::new(body.boxed());
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        Respond::Trailers => {
            let (tx, body) = ChannelBody::new(4);
            tokio::spawn(async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
                for frame in [
                    Frame::data(Bytes::from_static(b"hello ")),
                    Frame::data(Bytes::from_static(b"world")),
                    Frame::trailers(trailers),
                ] {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(body.boxed());
            // An HTTP/1.1 server only sends the trailer fields it announced.
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-checksum"));
            r
        }
        Respond::Barrier(barrier) => {
            barrier.wait().await;
            let json =
                serde_json::json!({"upstream": state.name, "x_cohort": seen.all("x-cohort")});
            Response::new(full(json.to_string()))
        }
        Respond::Grpc => grpc_reply(&seen),
        Respond::WebSocket => websocket_reply(&seen, upgrade, false),
        Respond::WebSocketFlood => websocket_reply(&seen, upgrade, true),
    };
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_str(&state.name).unwrap());
    if let Some(status) = seen.header("x-mock-status") {
        *resp.status_mut() = StatusCode::from_bytes(status.as_bytes()).unwrap();
    }
    for set in seen.all("x-mock-set") {
        let (name, value) = set.split_once(':').expect("x-mock-set: name: value");
        resp.headers_mut().append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    resp
}

fn grpc_reply(seen: &Seen) -> Response<MockBody> {
    let status = seen.header("x-mock-grpc-status").unwrap_or("0").to_string();
    let mut status_fields = HeaderMap::new();
    status_fields.insert("grpc-status", HeaderValue::from_str(&status).unwrap());
    if let Some(m) = seen.header("x-mock-grpc-message") {
        status_fields.insert("grpc-message", HeaderValue::from_str(m).unwrap());
    }
    let mut r = if seen.header("x-mock-grpc-trailers-only").is_some() {
        let mut r = Response::new(full(Bytes::new()));
        r.headers_mut().extend(status_fields);
        r
    } else {
        let (tx, body) = ChannelBody::new(4);
        tokio::spawn(async move {
            for frame in [
                Frame::data(Bytes::from_static(GRPC_REPLY)),
                Frame::trailers(status_fields),
            ] {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Response::new(body.boxed())
    };
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

fn websocket_reply(
    seen: &Seen,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    flood: bool,
) -> Response<MockBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;

    let (Some(key), Some(upgrade)) = (seen.header("sec-websocket-key"), upgrade) else {
        let mut r = Response::new(full("not a websocket request\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if flood {
            let chunk = Message::binary(vec![7u8; 16 * 1024]);
            while ws.send(chunk.clone()).await.is_ok() {}
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).unwrap(),
    );
    r
}

/// Reads one response with a Content-Length body from `tcp`.
pub async fn read_response(tcp: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8(got).unwrap();
            }
        }
        let n = within("a response", tcp.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `raw` on a fresh connection and reads until the proxy closes it.
pub async fn raw_exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("write", tcp.write_all(raw.as_bytes()))
        .await
        .unwrap();
    let mut out = Vec::new();
    within("response to EOF", tcp.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// An HTTP/1.1 upstream written in raw bytes: on each connection it reads one request head
/// and answers `reply` as it is, then closes. Returns its address and the heads it read.
pub async fn raw_upstream(reply: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = tcp.write_all(reply).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, heads)
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_endpoint() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A config file: listener and admin on port 0, then upstreams and routes as added.
#[derive(Default)]
pub struct Config {
    top: Vec<String>,
    /// Lines under `admin:` after its address.
    admin: Vec<String>,
    upstreams: Vec<String>,
    routes: Vec<Route>,
    /// `listeners[0].tls.certificates` entries, already in YAML.
    certificates: Vec<String>,
}

/// A path as a double-quoted YAML scalar.
pub fn yaml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// A top-level line such as `trusted_cidrs: ["127.0.0.1/32"]`.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    /// A line under `admin:` such as `token_file: /run/secrets/token`.
    pub fn admin(mut self, line: &str) -> Self {
        self.admin.push(line.into());
        self
    }

    pub fn upstream(self, name: &str, endpoint: impl Display) -> Self {
        self.upstream_with(name, endpoint, &[])
    }

    /// An upstream with extra option lines such as `response_timeout: 200ms`.
    pub fn upstream_with(mut self, name: &str, endpoint: impl Display, options: &[&str]) -> Self {
        let mut s = format!("  {name}:\n    endpoints: [\"{endpoint}\"]\n");
        for o in options {
            s.push_str(&format!("    {o}\n"));
        }
        self.upstreams.push(s);
        self
    }

    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Terminates TLS on the public listener with this certificate, for `server_names` (none
    /// for a default certificate). Certificates are listed in the order added.
    pub fn certificate(mut self, cert: &Path, key: &Path, server_names: &[&str]) -> Self {
        let names: Vec<String> = server_names.iter().map(|n| format!("{n:?}")).collect();
        self.certificates.push(format!(
            "        - cert: {}\n          key: {}\n          server_names: [{}]\n",
            yaml_path(cert),
            yaml_path(key),
            names.join(", ")
        ));
        self
    }

    pub fn yaml(&self) -> String {
        let mut s = String::from("listeners:\n  - name: public\n    address: 127.0.0.1:0\n");
        if !self.certificates.is_empty() {
            s.push_str("    tls:\n      certificates:\n");
            for c in &self.certificates {
                s.push_str(c);
            }
        }
        s.push_str("admin:\n  address: 127.0.0.1:0\n");
        for a in &self.admin {
            s.push_str(&format!("  {a}\n"));
        }
        for t in &self.top {
            s.push_str(t);
            s.push('\n');
        }
        s.push_str("upstreams:\n");
        for u in &self.upstreams {
            s.push_str(u);
        }
        s.push_str("routes:\n");
        for r in &self.routes {
            s.push_str(&r.yaml());
        }
        s
    }

    pub async fn start(&self) -> TestProxy {
        TestProxy::start(&self.yaml()).await
    }
}

/// One route of a [`Config`].
pub struct Route {
    name: String,
    matcher: Vec<String>,
    keys: Vec<String>,
    options: Vec<String>,
    split: Vec<(String, String, String)>,
}

impl Route {
    pub fn new(name: &str) -> Self {
        Route {
            name: name.into(),
            matcher: Vec::new(),
            keys: Vec::new(),
            options: Vec::new(),
            split: Vec::new(),
        }
    }

    /// A `match` line such as `path_prefix: /v1/` or `headers: {x-tenant: acme}`.
    pub fn matching(mut self, line: &str) -> Self {
        self.matcher.push(line.into());
        self
    }

    /// A `cohort_key` source such as `header: x-user-id` or `client_ip: true`.
    pub fn key(mut self, source: &str) -> Self {
        self.keys.push(source.into());
        self
    }

    /// A route option line such as `salt: s` or `fallback: canary`.
    pub fn set(mut self, line: &str) -> Self {
        self.options.push(line.into());
        self
    }

    /// `(cohort, upstream, percent)` in split order; percent is written as given.
    pub fn split(mut self, cohorts: &[(&str, &str, &str)]) -> Self {
        self.split = cohorts
            .iter()
            .map(|(c, u, p)| (c.to_string(), u.to_string(), p.to_string()))
            .collect();
        self
    }

    /// A route that sends everything to one cohort named like its upstream.
    pub fn single(self, upstream: &str) -> Self {
        self.split(&[(upstream, upstream, "100")])
    }

    fn yaml(&self) -> String {
        let mut s = format!("  - name: {}\n", self.name);
        if !self.matcher.is_empty() {
            s.push_str("    match:\n");
            for m in &self.matcher {
                s.push_str(&format!("      {m}\n"));
            }
        }
        if !self.keys.is_empty() {
            s.push_str("    cohort_key:\n");
            for k in &self.keys {
                s.push_str(&format!("      - {k}\n"));
            }
        }
        for o in &self.options {
            s.push_str(&format!("    {o}\n"));
        }
        s.push_str("    split:\n");
        for (c, u, p) in &self.split {
            s.push_str(&format!(
                "      - cohort: {c}\n        upstream: {u}\n        percent: {p}\n"
            ));
        }
        s
    }
}

/// The most common setup: route `agent` (every path, keyed on `x-user-id`) sends everything
/// to cohort `backend` on upstream `backend` at `endpoint`, with extra upstream `options`.
pub async fn proxy_to_backend(endpoint: impl Display, options: &[&str]) -> TestProxy {
    Config::new()
        .upstream_with("backend", endpoint, options)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .single("backend"),
        )
        .start()
        .await
}

/// Upstreams `stable` and `canary` and route `agent`, keyed on `x-user-id`, that puts every
/// user in `stable` (canary at 0%): only the override header `x-cohort-override` reaches the
/// canary. `trusted` is the `trusted_cidrs` list; `options` are extra route lines.
pub async fn override_proxy(
    trusted: &str,
    options: &[&str],
) -> (TestProxy, MockUpstream, MockUpstream) {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let mut route = Route::new("agent")
        .key("header: x-user-id")
        .set("override_header: x-cohort-override");
    for line in options {
        route = route.set(line);
    }
    let proxy = Config::new()
        .top(&format!("trusted_cidrs: {trusted}"))
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(route.split(&[("stable", "stable", "100"), ("canary", "canary", "0")]))
        .start()
        .await;
    (proxy, stable, canary)
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// A proxy started in-process on a config file in its own temporary directory. Its tasks end
/// with the test's runtime.
pub struct TestProxy {
    pub running: cohort::app::Running,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub client: H1Client,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.yaml");
        std::fs::write(&path, yaml).unwrap();
        let running = match within("the proxy to start", cohort::app::start(&path)).await {
            Ok(r) => r,
            Err(e) => panic!("proxy did not start: {e}\n--- config ---\n{yaml}"),
        };
        let public = running
            .listener("public")
            .expect("a listener called public");
        let admin = running.admin_address;
        TestProxy {
            running,
            public,
            admin,
            client: h1_client(),
            dir,
        }
    }

    /// A GET to the public listener, read to the end.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.fetch(get(self.public, path, headers)).await
    }

    /// Sends `req` over the shared HTTP/1.1 client and reads the whole response.
    pub async fn fetch(&self, req: Request<Full<Bytes>>) -> Reply {
        fetch(&self.client, req).await
    }

    /// A request to the admin listener.
    pub async fn admin(&self, method: &str, path: &str) -> Reply {
        let req = request(method, self.admin, path, &[], Bytes::new());
        fetch(&self.client, req).await
    }

    pub async fn scrape(&self) -> Scrape {
        let r = self.admin("GET", "/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "GET /metrics");
        Scrape::parse(&r.text())
    }

    /// Scrapes until `name{labels}` equals `expected` (values recorded when a response body
    /// is dropped may land just after the client has read the last byte), then fails with
    /// the last value seen.
    pub async fn expect_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.scrape().await.get(name, labels);
            if got == Some(expected) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{name}{labels:?} is {got:?}, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

pub type H1Client = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/1.1 client whose connections come from `ip` (any 127.0.0.0/8 address works on
/// loopback), for tests keyed on the client address.
pub fn h1_client_from(ip: IpAddr) -> H1Client {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(connector)
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request("GET", addr, path, headers, Bytes::new())
}

/// A request with no body, carrying `Authorization: Bearer <token>` when there is a token.
pub fn bearer_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    request(method, addr, path, &headers, Bytes::new())
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    /// The mock's JSON reply: which upstream answered and the x-cohort values it received.
    pub fn upstream_saw(&self) -> (String, Vec<String>) {
        let j = self.json();
        let cohorts = j["x_cohort"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        (j["upstream"].as_str().unwrap().to_string(), cohorts)
    }
}

pub async fn send(client: &H1Client, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let what = format!("response headers for {} {}", req.method(), req.uri());
    within(&what, client.request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

pub async fn fetch(client: &H1Client, req: Request<Full<Bytes>>) -> Reply {
    read_all(send(client, req).await).await
}

/// Reads a response to its end (data and trailers), failing on a body error.
pub async fn read_all(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let collected = within("the response body", body.collect())
        .await
        .expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// An HTTP/2 client with prior knowledge (h2c) on one connection.
pub struct H2c {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2c {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("h2c connect", TcpStream::connect(addr))
            .await
            .unwrap();
        let (sender, conn) = within(
            "h2c handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        H2c { sender }
    }

    /// The raw sender, for tests that expect a request to be refused (after GOAWAY, say).
    pub fn sender_mut(&mut self) -> &mut hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        &mut self.sender
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        within("h2c ready", self.sender.ready()).await.unwrap();
        within("h2c response headers", self.sender.send_request(req))
            .await
            .unwrap()
    }

    pub async fn fetch(&mut self, req: Request<Full<Bytes>>) -> Reply {
        read_all(self.send(req).await).await
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed Prometheus text scrape.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("bad sample line {l:?}")))
            .collect();
        Scrape {
            text: text.into(),
            samples,
        }
    }

    /// The value of the series with exactly these labels (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], failing the test (and listing the series of `name`) when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let known: Vec<_> = self.samples.iter().filter(|s| s.name == name).collect();
            panic!("no series {name}{labels:?}; series of that name: {known:#?}")
        })
    }

    /// Basic exposition-format sanity: every sample belongs to a family announced by exactly
    /// one `# HELP` and one `# TYPE` line, which come before its samples.
    pub fn assert_well_formed(&self) {
        use std::collections::HashMap;
        let mut help: HashMap<&str, usize> = HashMap::new();
        let mut kind: HashMap<&str, &str> = HashMap::new();
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                *help.entry(name).or_default() += 1;
                assert!(
                    rest.len() > name.len() + 1,
                    "empty help text for {name}: {line:?}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').expect("# TYPE name type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "unknown type in {line:?}"
                );
                assert!(kind.insert(name, t).is_none(), "second # TYPE for {name}");
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let sample = parse_sample(line).unwrap();
                let family = family_of(&sample.name, &kind);
                assert!(
                    kind.contains_key(family),
                    "sample {line:?} comes before (or without) a # TYPE for {family}"
                );
                assert_eq!(
                    help.get(family),
                    Some(&1),
                    "family {family} needs exactly one # HELP before its samples"
                );
            }
        }
        assert!(!kind.is_empty(), "no metric families in the scrape");
    }

    /// Every series of `name`, for checks over all label sets.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some(Sample {
                name: n.into(),
                labels: Vec::new(),
                value: parse_value(v)?,
            });
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            let value = rest[start + 1..].trim();
            return Some(Sample {
                name: name.into(),
                labels,
                value: parse_value(value)?,
            });
        }
        if c == ',' {
            continue;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim().to_string();
        while chars.peek()?.0 <= eq {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key, value));
    }
}

/// The family a sample belongs to: histogram and summary samples carry a suffix.
fn family_of<'a>(name: &'a str, kinds: &std::collections::HashMap<&str, &str>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(kinds.get(base), Some(&"histogram") | Some(&"summary")) {
                return base;
            }
        }
    }
    name
}

fn parse_value(v: &str) -> Option<f64> {
    let v = v.split_whitespace().next()?;
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// Runs the `cohort` binary in `dir` with `args`, as a user would, and waits for it.
pub fn cohort(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the cohort binary")
}
