//! What a mock agent is: its knobs ([`AgentSpec`]: outcomes, errors, latency, token pacing,
//! verbosity, a slow first token), the draws they make, and the frame-by-frame body its
//! streams are sent through ([`ChannelBody`]).
//!
//! Owns: the agent's behaviour as values. Must not touch: connections (`agent`) or the
//! protocols spoken (`agent`'s own paths, `openai`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use tokio::sync::mpsc;

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
    /// Share of replies (0..=1) that fail with 500 and outcome `error`.
    pub error_rate: f64,
    /// Think time before the response headers: each reply waits between this and 1.5 times
    /// this (so it is a floor on time to first byte).
    pub latency: Duration,
    /// When set, the share of turns (0..=1) that end `escalated`; the rest split between
    /// resolved and abandoned in the proportions of `outcomes`.
    pub escalation_rate: Option<f64>,
    /// Completion tokens of an OpenAI reply, drawn per request in this range (inclusive).
    pub completion_tokens: (u32, u32),
    /// Multiplies the completion tokens drawn (1.4: 40% more tokens).
    pub verbosity: f64,
    /// Extra wait after the response head before the first streamed event.
    pub first_token_delay: Duration,
}

impl AgentSpec {
    fn new(name: &str, outcomes: [u32; 3], token_ms: u64, tokens: (u32, u32)) -> Self {
        AgentSpec {
            name: name.into(),
            outcomes,
            token_delay: Duration::from_millis(token_ms),
            error_rate: 0.0,
            latency: Duration::ZERO,
            escalation_rate: None,
            completion_tokens: tokens,
            verbosity: 1.0,
            first_token_delay: Duration::ZERO,
        }
    }
    pub fn stable() -> Self {
        Self::new("stable", [78, 17, 5], 40, (120, 260))
    }
    pub fn canary() -> Self {
        Self::new("canary", [84, 12, 4], 30, (110, 250))
    }
    /// A well-behaved agent called `name` (the stable profile).
    pub fn named(name: &str) -> Self {
        Self::new(name, [78, 17, 5], 40, (120, 260))
    }

    /// This profile with the OpenAI path's knobs applied: `verbosity` multiplies the
    /// completion tokens, `first_token_ms` delays the first streamed event.
    pub fn talking(mut self, verbosity: Option<f64>, first_token_ms: Option<u64>) -> Self {
        if let Some(v) = verbosity {
            self.verbosity = v;
        }
        if let Some(ms) = first_token_ms {
            self.first_token_delay = Duration::from_millis(ms);
        }
        self
    }

    /// This profile with the misbehaviour knobs applied.
    pub fn tuned(
        mut self,
        error_rate: f64,
        latency_ms: u64,
        escalation_rate: Option<f64>,
        token_ms: Option<u64>,
    ) -> Self {
        self.error_rate = error_rate;
        self.latency = Duration::from_millis(latency_ms);
        self.escalation_rate = escalation_rate;
        if let Some(ms) = token_ms {
            self.token_delay = Duration::from_millis(ms);
        }
        self
    }

    pub(super) fn outcome(&self) -> &'static str {
        let [r, e, a] = self.outcomes;
        if let Some(rate) = self.escalation_rate {
            if fastrand::f64() < rate {
                return "escalated";
            }
            let rest = (r + a).max(1);
            return if fastrand::u32(..rest) < r {
                "resolved"
            } else {
                "abandoned"
            };
        }
        let roll = fastrand::u32(..(r + e + a).max(1));
        if roll < r {
            "resolved"
        } else if roll < r + e {
            "escalated"
        } else {
            "abandoned"
        }
    }

    /// Whether this reply fails (the error-rate knob).
    pub(super) fn fails(&self) -> bool {
        self.error_rate > 0.0 && fastrand::f64() < self.error_rate
    }

    /// A response with the agent's headers (`x-agent`, `x-agent-outcome`) around `body`.
    pub(super) fn head<B>(
        &self,
        status: StatusCode,
        outcome: &'static str,
        body: B,
    ) -> Response<B> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert("x-agent-outcome", HeaderValue::from_static(outcome));
        h.insert(
            "x-agent",
            HeaderValue::from_str(&self.name).unwrap_or(HeaderValue::from_static("agent")),
        );
        resp
    }

    /// A whole `application/json` answer.
    pub(super) fn respond(
        &self,
        status: StatusCode,
        outcome: &'static str,
        json: String,
    ) -> Response<ChannelBody> {
        let (tx, body) = ChannelBody::new(1);
        let _ = tx.try_send(Frame::data(Bytes::from(json)));
        let mut resp = self.head(status, outcome, body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    pub(super) fn think_time(&self) -> Duration {
        if self.latency.is_zero() {
            return Duration::ZERO;
        }
        self.latency.mul_f64(1.0 + fastrand::f64() / 2.0)
    }
}
