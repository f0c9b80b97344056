//! The client's request body on its way upstream: the route's size cap, the silence allowed
//! between frames, the minimum rate, and the fault the body records when it ends the
//! exchange, which the request path reads after the send fails. Also the silence timer the
//! response body shares.
//!
//! Owns: reading the request body frame by frame. Must not touch: the response body and its
//! accounting (`proxy`), routing, the edge.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::failure::Downstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body went over the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The silence allowed between two body frames. The timer is created only once a body first
/// waits, so a body already in hand (most small ones) costs no timer and no clock read.
pub struct IdleTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    every: Duration,
}

impl IdleTimer {
    pub fn new(every: Duration) -> Self {
        IdleTimer { sleep: None, every }
    }

    /// The next frame of `inner`: each frame starts the silence over, and a wait for one that
    /// lasts `every` is a stall.
    pub fn poll_frame(
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
pub enum Stall {
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
    faults: Faults,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, idle_for: Duration, min_rate: MinRate) -> Self {
        RequestBody {
            faults: Faults::for_body(&inner),
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

    /// Where this body leaves the fault that ends it, read after the send fails.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Ends the body with the client's `fault`, recorded for the request path.
    fn fault(
        &mut self,
        fault: Downstream,
        err: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.faults.record(fault);
        Poll::Ready(Some(Err(err)))
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
                        let err = Box::new(BodyTooLarge(this.limit));
                        return this.fault(Downstream::BodyTooLarge, err);
                    }
                    if this.rate.too_slow(this.seen) {
                        let err = Box::new(BodyTooSlow(this.rate.rule));
                        return this.fault(Downstream::BodyTooSlow, err);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(Stall::Failed(e))) => this.fault(Downstream::BadBody, Box::new(BadBody(e))),
            Some(Err(Stall::Idle(idle_for))) => {
                this.fault(Downstream::BodyTimeout, Box::new(BodyTimeout(idle_for)))
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

/// Where a request body leaves the client fault that ended it, for the request path to read
/// once the send has failed: hyper hands back its own error, not the body's.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<AtomicU8>>);

/// No fault recorded.
const NO_FAULT: u8 = u8::MAX;

impl Faults {
    /// A slot for a body that can still fault. A body already at its end (GET and most others)
    /// never reads a frame, so it gets none and costs no allocation.
    fn for_body(inner: &Incoming) -> Self {
        if inner.is_end_stream() {
            return Faults(None);
        }
        Faults(Some(Arc::new(AtomicU8::new(NO_FAULT))))
    }

    fn record(&self, fault: Downstream) {
        if let Some(slot) = &self.0 {
            slot.store(fault as u8, Ordering::Relaxed);
        }
    }

    /// The client fault that ended the body, if one did.
    pub fn get(&self) -> Option<Downstream> {
        let v = self.0.as_ref()?.load(Ordering::Relaxed);
        Downstream::ALL.get(usize::from(v)).copied()
    }
}
