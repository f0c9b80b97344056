//! The response body cohort returns: either the upstream's body, observed frame by frame, or
//! a short local body (404, 502, 504).
//!
//! Owns: per-request accounting that ends with the body (TTFB, duration, in-flight gauges, the
//! idle-between-frames timeout). Must not touch: routing or header rewriting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::routing::table::CohortTarget;
use crate::telemetry::{Abandoned, FailureReason, OutcomeSlot};
use crate::upstream::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The idle timeout fired between two body frames.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// Request accounting that must happen exactly once, however the exchange ends (body done,
/// error, or the client going away and the body being dropped).
pub struct Accounting {
    cohort: Arc<CohortTarget>,
    start: Instant,
    ttfb_done: bool,
    _endpoint: Option<InFlight>,
    grpc: Option<GrpcVerdict>,
    /// For a rollout's guards: the status the client got (0 until answered), whether the body
    /// was cut, the outcome counted, and the time to first byte.
    status: u16,
    cut: bool,
    outcome: Option<OutcomeSlot>,
    ttfb: Option<Duration>,
    /// Where the exchange stands, which decides what the drop records.
    stage: Stage,
}

/// How far an exchange got before its [`Accounting`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No response head yet: a drop here is a client that left before the head (closed,
    /// reset its stream, timed out), unless the request was refused first.
    Waiting,
    /// Refused for the client's own body: counted in `cohort_rejected_requests_total` only.
    Refused,
    /// A head was answered; the body, if any, is the upstream's and has not ended.
    Answered,
    /// The upstream body ended (or failed): the client saw the whole answer.
    Finished,
}

/// A gRPC answer's verdict comes in its trailers (`grpc-status`), so its outcome is counted
/// when the body ends: `error` when the status is not 0, else the outcome header's value.
#[derive(Debug, Clone, Copy)]
pub struct GrpcVerdict {
    pub outcome: Option<OutcomeSlot>,
    pub error: OutcomeSlot,
    pub failed: bool,
}

/// Whether a `grpc-status` value reports a failure (anything but 0).
pub fn grpc_failed(status: &http::HeaderValue) -> bool {
    status.as_bytes().trim_ascii() != b"0"
}

impl Accounting {
    pub fn start(cohort: Arc<CohortTarget>, start: Instant) -> Self {
        cohort.metrics.in_flight.increment(1.0);
        Accounting {
            cohort,
            start,
            ttfb_done: false,
            _endpoint: None,
            grpc: None,
            status: 0,
            cut: false,
            outcome: None,
            ttfb: None,
            stage: Stage::Waiting,
        }
    }

    /// Notes the status the client gets. A local answer (502, 504) is complete at once; an
    /// upstream one when its body ends ([`ObservedBody`]).
    pub fn answered(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
        self.stage = Stage::Finished;
    }

    /// The request was refused for its own body (too large, too slow, malformed): the
    /// client's fault, neither answered nor abandoned, and no sample.
    pub fn refused(&mut self) {
        self.stage = Stage::Refused;
    }

    /// The upstream body ended or failed: a drop from now on is no abandonment.
    fn finished(&mut self) {
        self.stage = Stage::Finished;
    }

    /// Notes the outcome counted from the response head.
    pub fn counted_outcome(&mut self, slot: OutcomeSlot) {
        self.outcome = Some(slot);
    }

    /// Counts the outcome when the body ends instead of now (see [`GrpcVerdict`]).
    pub fn defer_outcome(&mut self, verdict: GrpcVerdict) {
        self.grpc = Some(verdict);
    }

    fn stream_failed(&mut self) {
        self.cut = true;
        if let Some(v) = self.grpc.as_mut() {
            v.failed = true;
        }
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let (Some(v), Some(status)) = (self.grpc.as_mut(), trailers.get("grpc-status")) {
            v.failed |= grpc_failed(status);
        }
    }

    pub fn hold_endpoint(&mut self, slot: InFlight) {
        self._endpoint = Some(slot);
    }

    pub fn cohort(&self) -> &CohortTarget {
        &self.cohort
    }

    fn first_byte(&mut self) {
        if !self.ttfb_done {
            self.ttfb_done = true;
            let ttfb = self.start.elapsed();
            self.ttfb = Some(ttfb);
            self.cohort.metrics.ttfb.record(ttfb.as_secs_f64());
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let m = &self.cohort.metrics;
        if let Some(v) = self.grpc {
            self.outcome = match (v.failed, v.outcome) {
                (true, _) => Some(v.error),
                (false, slot) => slot,
            };
            if let Some(slot) = self.outcome {
                m.outcome(slot);
            }
        }
        m.in_flight.decrement(1.0);
        let guard = self.cohort.guard.as_deref();
        match self.stage {
            Stage::Refused => {}
            Stage::Waiting => {
                // Not answered, so in neither `cohort_requests_total` nor the duration
                // histogram, which stays in step with it.
                m.abandoned[Abandoned::BeforeHead as usize].increment(1);
                if let Some(cells) = guard {
                    cells.record_abandoned();
                }
            }
            Stage::Answered | Stage::Finished => {
                let duration = self.start.elapsed();
                m.duration.record(duration.as_secs_f64());
                let (mut ttfb, mut duration) = (self.ttfb, duration);
                if self.stage == Stage::Answered {
                    m.abandoned[Abandoned::DuringBody as usize].increment(1);
                    // The client waited at least this long and saw no end: for the latency
                    // guards, slower than any threshold.
                    (ttfb, duration) = (ttfb.or(Some(Duration::MAX)), Duration::MAX);
                }
                if let Some(cells) = guard {
                    cells.record(self.status, self.cut, self.outcome, ttfb, duration);
                }
            }
        }
    }
}

/// The upstream's body passed through frame by frame, never buffered. The idle timer is
/// only created once the body actually waits for the upstream, so a response that is already
/// in hand costs no timer.
pub struct ObservedBody {
    inner: Incoming,
    idle: IdleTimer,
    acct: Accounting,
    failed: bool,
}

impl ObservedBody {
    pub fn new(inner: Incoming, mut acct: Accounting, idle_for: Duration) -> Self {
        acct.stage = Stage::Answered;
        ObservedBody {
            inner,
            idle: IdleTimer::new(idle_for),
            acct,
            failed: false,
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match ready!(this.idle.poll_frame(&mut this.inner, cx)) {
            Some(Ok(frame)) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    this.acct.first_byte();
                } else if let Some(t) = frame.trailers_ref() {
                    this.acct.trailers(t);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(stall)) => {
                this.failed = true;
                // A gRPC stream cut before its grpc-status is a failed call.
                this.acct.stream_failed();
                this.acct.finished();
                let (reason, err): (_, BoxError) = match stall {
                    Stall::Failed(e) => (crate::upstream::classify(&e, false), e.into()),
                    Stall::Idle(idle_for) => {
                        (FailureReason::Timeout, Box::new(IdleTimeout(idle_for)))
                    }
                };
                this.acct.cohort.metrics.failure(reason);
                Poll::Ready(Some(Err(err)))
            }
            None => {
                // A body with no bytes still has a first byte time: its end.
                this.acct.first_byte();
                this.acct.finished();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body hyper never polls because it is empty (HEAD, 204, 304) was still delivered.
        if self.inner.is_end_stream() {
            self.acct.first_byte();
            self.acct.finished();
        }
    }
}

pin_project_lite::pin_project! {
    #[project = ProxyBodyProj]
    /// Either an observed upstream body or a short local one.
    pub enum ProxyBody {
        Upstream { #[pin] body: ObservedBody },
        Local { #[pin] body: Full<Bytes> },
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        Self::local("")
    }

    pub fn local(text: &'static str) -> Self {
        ProxyBody::Local {
            body: Full::new(Bytes::from_static(text.as_bytes())),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Upstream { body } => body.poll_frame(cx),
            ProxyBodyProj::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body } => body.is_end_stream(),
            ProxyBody::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body } => body.size_hint(),
            ProxyBody::Local { body } => body.size_hint(),
        }
    }
}

/// The client's request body went over the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The silence allowed between two body frames. The timer is created only once a body first
/// waits, so a body already in hand (most small ones) costs no timer and no clock read.
struct IdleTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    every: Duration,
}

impl IdleTimer {
    fn new(every: Duration) -> Self {
        IdleTimer { sleep: None, every }
    }

    /// The next frame of `inner`: each frame starts the silence over, and a wait for one that
    /// lasts `every` is a stall.
    fn poll_frame(
        &mut self,
        inner: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Stall>>> {
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(s) = self.sleep.as_mut() {
                    s.as_mut().reset(Instant::now() + self.every);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Stall::Failed(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let every = self.every;
                ready!(self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)))
                    .as_mut()
                    .poll(cx));
                Poll::Ready(Some(Err(Stall::Idle(every))))
            }
        }
    }
}

/// Why a body stopped before its end.
enum Stall {
    /// Its stream broke.
    Failed(hyper::Error),
    /// No frame came for this long.
    Idle(Duration),
}

/// The client stopped sending its request body for longer than `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for longer than {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Reading the client's request body failed: bad chunked framing, or the client went away
/// part way. The client's fault, never the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("request body unreadable: {0}")]
pub struct BadBody(#[source] pub hyper::Error);

/// The client sent its request body slower than `body_min_rate` over a `body_rate_window`.
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {} bytes/s over {:?}", .0.bytes_per_sec, .0.window)]
pub struct BodyTooSlow(pub MinRate);

/// The slowest request body accepted: on average `bytes_per_sec` over each `window`, as
/// Apache's `mod_reqtimeout` `MinRate`. A body trickled a byte at a time never trips the
/// silence timer between frames, so it is this that ends it. Off when `bytes_per_sec` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

/// The window of [`MinRate`] a body is in. It opens when the body first waits for the client,
/// so a body already in hand (most small ones) reads no clock; from then on each frame
/// checks, which a trickle provides.
struct RateWindow {
    rule: MinRate,
    /// Start of the window and the bytes seen by then; `None` until the body first waits.
    open: Option<(Instant, u64)>,
}

impl RateWindow {
    fn waiting(&mut self, seen: u64) {
        if self.open.is_none() && self.rule.bytes_per_sec > 0 {
            self.open = Some((Instant::now(), seen));
        }
    }

    /// Whether the window that just closed held too few bytes; a window that held enough
    /// gives way to the next.
    fn too_slow(&mut self, seen: u64) -> bool {
        let Some((since, at_start)) = self.open else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(since) < self.rule.window {
            return false;
        }
        let needed = self.rule.window.as_secs_f64() * self.rule.bytes_per_sec as f64;
        if ((seen - at_start) as f64) < needed {
            return true;
        }
        self.open = Some((now, seen));
        false
    }
}

/// The client's request body on its way upstream, frame by frame, with the route's size cap,
/// the slow-POST timer between frames and the minimum rate. The timer is only created once the
/// body actually waits, so bodiless requests pay nothing for it.
pub struct RequestBody {
    inner: Incoming,
    idle: IdleTimer,
    rate: RateWindow,
    limit: u64,
    seen: u64,
    done: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, idle_for: Duration, min_rate: MinRate) -> Self {
        RequestBody {
            inner,
            idle: IdleTimer::new(idle_for),
            rate: RateWindow {
                rule: min_rate,
                open: None,
            },
            limit,
            seen: 0,
            done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let Poll::Ready(polled) = this.idle.poll_frame(&mut this.inner, cx) else {
            this.rate.waiting(this.seen);
            return Poll::Pending;
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    if this.rate.too_slow(this.seen) {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow(this.rate.rule)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(stall)) => {
                this.done = true;
                let err: BoxError = match stall {
                    Stall::Failed(e) => Box::new(BadBody(e)),
                    Stall::Idle(idle_for) => Box::new(BodyTimeout(idle_for)),
                };
                Poll::Ready(Some(Err(err)))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an upstream error was really the client's body: too large, too slow or malformed.
pub fn client_body_fault(
    err: &(dyn std::error::Error + 'static),
) -> Option<crate::edge::hygiene::Reject> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return Some(crate::edge::hygiene::Reject::BodyTooLarge);
        }
        if e.is::<BodyTimeout>() {
            return Some(crate::edge::hygiene::Reject::BodyTimeout);
        }
        if e.is::<BodyTooSlow>() {
            return Some(crate::edge::hygiene::Reject::BodyTooSlow);
        }
        if e.is::<BadBody>() {
            return Some(crate::edge::hygiene::Reject::BadBody);
        }
        cur = e.source();
    }
    None
}
