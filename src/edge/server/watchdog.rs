//! Per-connection activity, for the two connection timers: the first request must arrive
//! within `header_read_timeout` (covering protocol detection and TLS-less slowloris, which
//! hyper's own header timer does not see), and an idle connection is closed after
//! `keepalive_timeout` (HTTP/2 GOAWAY; HTTP/1.1 connections are parked after a second idle and
//! closed when the keep-alive time is up, see `plain`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Duration, Instant};

use crate::routing::table::ConnLimits;

pub struct Activity {
    start: Instant,
    active: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `start` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// A request arrived; it is active until the returned guard (held by its response body)
    /// drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// When to look again; `park_after` for connections that can be parked.
    pub fn deadline(&self, limits: &ConnLimits, park_after: Option<Duration>) -> Instant {
        let close = if self.requests() == 0 {
            self.start + limits.header_read_timeout
        } else if self.active.load(Ordering::Acquire) > 0 {
            Instant::now() + limits.keepalive_timeout
        } else {
            self.keepalive_deadline(limits)
        };
        match park_after {
            // Looked at every `after` until idle, since nothing wakes the timer when a request
            // starts or ends.
            Some(after) if self.requests() == 0 || self.active.load(Ordering::Acquire) > 0 => {
                close.min(Instant::now() + after)
            }
            Some(after) => close.min(self.idle_since() + after),
            None => close,
        }
    }

    /// What the connection's timer means now.
    pub fn verdict(&self, limits: &ConnLimits, park_after: Option<Duration>) -> Verdict {
        let now = Instant::now();
        if self.requests() == 0 {
            if now >= self.start + limits.header_read_timeout {
                return Verdict::Silent;
            }
            return Verdict::Wait;
        }
        if self.active.load(Ordering::Acquire) > 0 {
            return Verdict::Wait;
        }
        let idle_since = self.idle_since();
        if now >= idle_since + limits.keepalive_timeout {
            Verdict::Expired
        } else if park_after.is_some_and(|after| now >= idle_since + after) {
            Verdict::Park
        } else {
            Verdict::Wait
        }
    }

    /// When an idle connection is closed: `keepalive_timeout` after its last request.
    pub fn keepalive_deadline(&self, limits: &ConnLimits) -> Instant {
        self.idle_since() + limits.keepalive_timeout
    }

    fn idle_since(&self) -> Instant {
        self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// What a connection's timer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No request within `header_read_timeout` (or its head never finished): dropped unanswered.
    Silent,
    /// Idle past `keepalive_timeout`: closed gracefully.
    Expired,
    /// Idle past the park delay: hyper hands the socket back.
    Park,
    Wait,
}

/// Marks a request active until dropped.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.start.elapsed().as_millis() as u64, Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as active until it is done.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        busy: Option<Busy>,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, busy: Busy) -> Self {
        Tracked {
            body,
            busy: Some(busy),
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.busy.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
