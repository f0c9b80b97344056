//! Mock upstreams: a backend on a random loopback port that answers as its [`Respond`] mode
//! says, over HTTP/1.1 and h2c or over TLS, and records every request it received.
//!
//! Owns: the modes, the builder, accepting connections and what a mock saw (`Seen`). The
//! answers themselves are in `reply.rs`. Must not touch: the proxy under test.

mod reply;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::values;

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
    /// A body sent as exactly these frames (each its own write), with this content type,
    /// `gap` between frames, and then these trailers (announced in `trailer`).
    Frames(Arc<Frames>),
}

/// What [`Respond::Frames`] sends.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    pub content_type: &'static str,
    pub frames: Vec<Bytes>,
    pub gap: std::time::Duration,
    pub trailers: Vec<(&'static str, String)>,
}

impl Frames {
    /// `body` cut at `cuts` (byte offsets, increasing).
    pub fn cut(content_type: &'static str, body: &[u8], cuts: &[usize]) -> Frames {
        let mut frames = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&body.len())) {
            if c > from {
                frames.push(Bytes::copy_from_slice(&body[from..c]));
                from = c;
            }
        }
        Frames {
            content_type,
            frames,
            ..Frames::default()
        }
    }
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
                async move { Ok::<_, Infallible>(reply::mock_reply(&state, req).await) }
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
