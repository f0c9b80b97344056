//! A simulated agent backend for the rollout tests: each reply fails with a chosen
//! probability (500, outcome `error`), waits a chosen latency, and reports `escalated` or
//! `resolved` in chosen proportions. The behaviour can be changed while it serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Share of replies that are 500 with outcome `error`.
    pub error_rate: f64,
    /// Wait before the response head.
    pub latency: Duration,
    /// Share of successful replies that end `escalated` (the rest `resolved`).
    pub escalated: f64,
    /// When set, successful replies are OpenAI chat completions (JSON) whose usage reports
    /// about this many output tokens (uniform within 25% either side).
    pub output_tokens: u64,
}

pub struct SimBackend {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Behaviours that replace the backend's for requests whose `x-channel` header has the
/// given value (a segment that answers worse than the rest).
pub type ByChannel = Arc<Vec<(&'static str, Behaviour)>>;

impl Drop for SimBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl SimBackend {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_by_channel(behaviour, ByChannel::default()).await
    }

    /// As [`SimBackend::start`], answering the requests of the channels in `by` as they say.
    pub async fn start_by_channel(behaviour: Behaviour, by: ByChannel) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(behaviour));
        let b = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
                TokioExecutor::new(),
            ));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (b, builder, by) = (Arc::clone(&b), Arc::clone(&builder), Arc::clone(&by));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let channel = req.headers().get("x-channel").map(|v| v.as_bytes());
                        let special = by.iter().find(|(c, _)| Some(c.as_bytes()) == channel);
                        let now = special.map_or_else(|| *b.lock().unwrap(), |(_, b)| *b);
                        async move { Ok::<_, Infallible>(reply(now).await) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        SimBackend {
            addr,
            behaviour: shared,
            accept,
        }
    }

    /// Changes how later requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }
}

async fn reply(b: Behaviour) -> Response<Full<Bytes>> {
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let (status, outcome) = if fastrand::f64() < b.error_rate {
        (StatusCode::INTERNAL_SERVER_ERROR, "error")
    } else if fastrand::f64() < b.escalated {
        (StatusCode::OK, "escalated")
    } else {
        (StatusCode::OK, "resolved")
    };
    let body = if b.output_tokens > 0 && status == StatusCode::OK {
        let spread = b.output_tokens / 4;
        let output = fastrand::u64(b.output_tokens - spread..=b.output_tokens + spread);
        Bytes::from(format!(
            "{{\"object\":\"chat.completion\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"ok\"}}}}],\
             \"usage\":{{\"prompt_tokens\":120,\"completion_tokens\":{output},\"total_tokens\":{}}}}}",
            120 + output
        ))
    } else {
        Bytes::from_static(b"{\"reply\":\"ok\"}")
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-agent-outcome", outcome.parse().unwrap());
    r
}
