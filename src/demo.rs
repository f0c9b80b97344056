//! `cohort demo`: two built-in mock agents (stable and canary) and the proxy in front of them.
//!
//! Owns: the mock agent (JSON replies and SSE token streams with an `x-agent-outcome`
//! header) and the demo's printed guide. Must not touch: the proxy's own modules beyond
//! starting it through `app`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The demo configuration, built in so `cohort demo` works from any directory.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// A body fed frame by frame from a channel: each `send` reaches the client as one frame.
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// How a mock agent behaves.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    /// Outcome weights: resolved, escalated, abandoned (percent).
    pub outcomes: [u32; 3],
    /// Delay between streamed tokens.
    pub token_delay: Duration,
}

impl AgentSpec {
    pub fn stable() -> Self {
        AgentSpec {
            name: "stable".into(),
            outcomes: [78, 17, 5],
            token_delay: Duration::from_millis(40),
        }
    }
    pub fn canary() -> Self {
        AgentSpec {
            name: "canary".into(),
            outcomes: [84, 12, 4],
            token_delay: Duration::from_millis(30),
        }
    }
    fn outcome(&self) -> &'static str {
        let roll = fastrand::u32(..100);
        let [r, e, _] = self.outcomes;
        if roll < r {
            "resolved"
        } else if roll < r + e {
            "escalated"
        } else {
            "abandoned"
        }
    }
}

/// Serves a mock agent on `listener` forever (HTTP/1.1 and h2c).
pub async fn serve_agent(listener: TcpListener, spec: AgentSpec) {
    let builder = std::sync::Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (spec, builder) = (spec.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let spec = spec.clone();
                async move { Ok::<_, Infallible>(agent_reply(&spec, req)) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

const TOKENS: &[&str] = &[
    "Thanks ",
    "for ",
    "reaching ",
    "out. ",
    "I ",
    "have ",
    "reset ",
    "your ",
    "password; ",
    "check ",
    "your ",
    "inbox.",
];

fn agent_reply(spec: &AgentSpec, req: Request<Incoming>) -> Response<ChannelBody> {
    let outcome = spec.outcome();
    let wants_stream = req.uri().path().ends_with("/stream")
        || req
            .headers()
            .get(header::ACCEPT)
            .is_some_and(|a| a.as_bytes().starts_with(b"text/event-stream"));
    let cohort = req
        .headers()
        .get("x-cohort")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let (tx, body) = ChannelBody::new(4);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert("x-agent-outcome", HeaderValue::from_static(outcome));
    h.insert(
        "x-agent",
        HeaderValue::from_str(&spec.name).unwrap_or(HeaderValue::from_static("agent")),
    );
    if wants_stream {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let (delay, name) = (spec.token_delay, spec.name.clone());
        tokio::spawn(async move {
            for t in TOKENS {
                let ev = format!("data: {{\"agent\":\"{name}\",\"token\":\"{t}\"}}\n\n");
                if tx.send(Frame::data(Bytes::from(ev))).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
            let _ = tx
                .send(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
                .await;
        });
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let json = serde_json::json!({
            "agent": spec.name,
            "cohort_header": cohort,
            "reply": TOKENS.concat(),
            "outcome": outcome,
        });
        let _ = tx.try_send(Frame::data(Bytes::from(format!("{json}\n"))));
    }
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Runs the demo: the mock agents on the upstream addresses of `config` (stable and canary),
/// then the proxy, until SIGTERM/SIGINT.
pub async fn run(config: &Path) -> Result<(), DemoError> {
    let loaded = crate::config::load(config)?;
    for (name, spec) in [
        ("stable", AgentSpec::stable()),
        ("canary", AgentSpec::canary()),
    ] {
        let Some(up) = loaded.raw.upstreams.get(name) else {
            return Err(DemoError::Missing(name));
        };
        for ep in &up.endpoints {
            let authority =
                crate::upstream::parse_endpoint(ep).map_err(|e| DemoError::Agent(ep.clone(), e))?;
            let addr: SocketAddr = authority
                .authority
                .as_str()
                .parse()
                .map_err(|_| DemoError::Agent(ep.clone(), "not an ip:port".into()))?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| DemoError::Agent(ep.clone(), e.to_string()))?;
            tokio::spawn(serve_agent(listener, spec.clone()));
        }
    }
    let running = crate::app::start(config).await?;
    print_guide(&running);
    crate::app::wait_for_signals(&running).await;
    running.shutdown().await;
    Ok(())
}

fn print_guide(running: &crate::app::Running) {
    let public = running
        .listeners
        .first()
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    let admin = running.admin_address;
    println!(
        "\ncohort demo is serving on http://{public} (admin on http://{admin})\n\
         stable and canary mock agents are running; the split is in config/demo.yaml.\n\n\
         Try:\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-user-id: alice'          # sticky: alice always gets the same cohort\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-user-id: user-3'\n\
         \x20 curl -sN http://{public}/v1/chat/stream -H 'x-user-id: bob'     # an SSE token stream\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-cohort-override: canary' # forced cohort (trusted peers only)\n\
         \x20 cargo run --release -- assign --config config/demo.yaml --route support-agent alice bob\n\
         \x20 curl -s http://{admin}/routes\n\
         \x20 curl -s http://{admin}/metrics | grep ^cohort_\n\n\
         Press Ctrl-C to stop.\n"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error("the demo config needs an upstream called {0:?}")]
    Missing(&'static str),
    #[error("cannot start the mock agent on {0}: {1}")]
    Agent(String, String),
}
