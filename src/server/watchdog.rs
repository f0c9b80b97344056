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

use crate::table::ConnLimits;

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

    /// When to look again.
    pub fn deadline(&self, limits: &ConnLimits) -> Instant {
        if self.requests() == 0 {
            return self.start + limits.header_read_timeout;
        }
        if self.active.load(Ordering::Acquire) > 0 {
            return Instant::now() + limits.keepalive_timeout;
        }
        self.keepalive_deadline(limits)
    }

    /// How long the connection has been idle; `None` while a request is active or before the
    /// first.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.requests() == 0 || self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(Instant::now().saturating_duration_since(self.idle_since()))
    }

    /// When an idle connection should be parked: `after` past its last request, looked at
    /// again every `after` until then (nothing wakes the timer when a request starts or ends).
    pub fn park_at(&self, after: Duration) -> Instant {
        if self.requests() == 0 || self.active.load(Ordering::Acquire) > 0 {
            return Instant::now() + after;
        }
        self.idle_since() + after
    }

    /// When an idle connection is closed: `keepalive_timeout` after its last request.
    pub fn keepalive_deadline(&self, limits: &ConnLimits) -> Instant {
        self.idle_since() + limits.keepalive_timeout
    }

    fn idle_since(&self) -> Instant {
        self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    pub fn expired(&self, limits: &ConnLimits) -> bool {
        let now = Instant::now();
        if self.requests() == 0 {
            return now >= self.start + limits.header_read_timeout;
        }
        self.active.load(Ordering::Acquire) == 0 && now >= self.deadline(limits)
    }
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
