//! The response body cohort returns: either the upstream's body, observed frame by frame, or
//! a short local body (404, 502, 504, the refusals).
//!
//! Owns: passing the upstream's frames through with the idle timeout between them, and
//! telling the request's [`Accounting`] what they show (through the [`UsageReader`] for
//! tokens and events). Must not touch: routing or header
//! rewriting.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::accounting::Accounting;
use super::usage::UsageReader;
use crate::failure;
use crate::upstream::body::{BoxError, IdleTimer, Stall};

/// The idle timeout fired between two body frames.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// The upstream's body passed through frame by frame, never buffered. The idle timer is
/// only created once the body actually waits for the upstream, so a response that is already
/// in hand costs no timer.
pub struct ObservedBody {
    inner: Incoming,
    idle: IdleTimer,
    acct: Accounting,
    failed: bool,
    /// Absent for answers that are not read (errors, or a route with usage off that is not
    /// a stream).
    usage: Option<UsageReader>,
}

impl ObservedBody {
    pub fn new(
        inner: Incoming,
        mut acct: Accounting,
        idle_for: Duration,
        usage: Option<UsageReader>,
    ) -> Self {
        acct.streaming();
        ObservedBody {
            inner,
            idle: IdleTimer::new(idle_for),
            acct,
            failed: false,
            usage,
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
                if let Some(d) = frame.data_ref().filter(|d| !d.is_empty()) {
                    this.acct.first_byte();
                    if let Some(u) = this.usage.as_mut() {
                        u.data(d, &mut this.acct);
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    this.acct.trailers(t);
                    if let Some(mut u) = this.usage.take() {
                        u.trailers(t, &mut this.acct);
                        u.end(&mut this.acct);
                    }
                    // Trailers end a body: the client may not poll again before dropping it.
                    this.acct.finished();
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
                        (failure::Upstream::Timeout, Box::new(IdleTimeout(idle_for)))
                    }
                };
                this.acct.cohort().metrics.failure(reason as usize);
                Poll::Ready(Some(Err(err)))
            }
            None => {
                // A body with no bytes still has a first byte time: its end.
                this.acct.first_byte();
                if let Some(mut u) = this.usage.take() {
                    u.end(&mut this.acct);
                }
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
        // A body hyper never polls because it is empty (HEAD, 204, 304) was still delivered;
        // and one whose length said it was complete is not polled for its end either.
        if self.inner.is_end_stream() && !self.failed {
            self.acct.first_byte();
            if let Some(mut u) = self.usage.take() {
                u.end(&mut self.acct);
            }
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
        Self::from("")
    }
}

/// A local answer's text ([`crate::failure::Failure::response`] builds them).
impl From<&'static str> for ProxyBody {
    fn from(text: &'static str) -> Self {
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
