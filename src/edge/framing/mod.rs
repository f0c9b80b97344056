//! Request framing on an HTTP/1.x downstream connection, followed in the raw bytes as they
//! are read, to find the request heads that carry both Transfer-Encoding and Content-Length.
//! hyper resolves such a head itself (chunked wins, the length is dropped) and the service
//! never learns both were sent, so cohort would forward what nginx and Envoy refuse.
//!
//! Owns: the framing tracker (head ends, the three header names it looks for, body skipping
//! by length or by chunks) and the IO wrapper that feeds it, and the per-connection verdict
//! the request path reads. Must not touch: hyper's parsing (this never changes a byte or
//! refuses anything itself), the answer (`server::service` refuses a flagged head).
//!
//! The tracker mirrors hyper's framing rules only as far as needed to count heads; anything it
//! cannot follow makes it stop for the rest of the connection rather than guess, since hyper
//! refuses such input itself and a stopped tracker never flags a request.

mod tracker;

pub use tracker::Tracker;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No request flagged yet.
const NONE: u64 = u64::MAX;

/// One connection's verdict, shared between its tracker (which writes it as bytes are read)
/// and the request path (which reads it once per request). Both run on the connection's task,
/// so relaxed atomics suffice; they are atomics only to be shared behind an `Arc`.
#[derive(Debug)]
pub struct Framing {
    flagged: AtomicU64,
    /// The first request whose head the tracker may not have followed (it stopped during or
    /// at it: an upgrade, CONNECT, the h2 preface, input hyper refuses): from it on, nothing
    /// is checked, so such a request's answer closes the connection unless it upgraded.
    unfollowed: AtomicU64,
    served: AtomicU64,
}

impl Framing {
    fn new() -> Self {
        Framing {
            flagged: AtomicU64::new(NONE),
            unfollowed: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
        }
    }

    /// Whether the last request [`Framing::next_has_both`] counted came after the tracker
    /// stopped following: hyper serves an HTTP/1.x connection's requests one at a time, so
    /// this is the request being answered.
    pub fn last_was_unchecked(&self) -> bool {
        // `served - 1 >= unfollowed`, written so that nothing served means nothing unchecked.
        self.served.load(Ordering::Relaxed) > self.unfollowed.load(Ordering::Relaxed)
    }

    /// Called once for every HTTP/1.x request the connection hands to the service, in order:
    /// whether this one's head carried both Transfer-Encoding and Content-Length.
    pub fn next_has_both(&self) -> bool {
        let ordinal = self.served.fetch_add(1, Ordering::Relaxed);
        ordinal == self.flagged.load(Ordering::Relaxed)
    }
}

/// A downstream stream whose bytes, as they come off it, go through a [`Tracker`], with bytes
/// already read from it put back in front. The tracker sees each byte once: bytes put back
/// (by protocol detection, or hyper's unread ones after a park) are not shown to it again.
pub struct Watched<I> {
    prefix: Bytes,
    inner: I,
    tracker: Tracker,
    framing: Arc<Framing>,
}

impl<I> Watched<I> {
    /// Watches `inner`, whose first bytes `seen` were already read from it: they are followed
    /// now and read again first.
    pub fn new(inner: I, limit: usize, seen: Bytes) -> Self {
        let mut w = Watched::off(inner, Bytes::new());
        w.tracker = Tracker::new(limit);
        w.saw(&seen);
        w.prefix = seen;
        w
    }

    /// Passes `inner`, after `prefix`, through untouched.
    pub fn off(inner: I, prefix: Bytes) -> Self {
        Watched {
            prefix,
            inner,
            tracker: Tracker::off(),
            framing: Arc::new(Framing::new()),
        }
    }

    pub fn framing(&self) -> Arc<Framing> {
        Arc::clone(&self.framing)
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Whether bytes put back are still to be read.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Puts back, in front of any others, bytes read from this stream and not used.
    pub fn prepend(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            // Even empty, a slice of hyper's read buffer would keep all of it alive.
            return;
        }
        // Copied out, for the same reason: hyper's buffer is to be freed while parked.
        let mut joined = Vec::with_capacity(bytes.len() + self.prefix.len());
        joined.extend_from_slice(&bytes);
        joined.extend_from_slice(&self.prefix);
        self.prefix = joined.into();
    }

    fn saw(&mut self, bytes: &[u8]) {
        if let Some(ordinal) = self.tracker.feed(bytes) {
            self.framing.flagged.store(ordinal, Ordering::Relaxed);
        }
        if !self.tracker.is_following() {
            // Counting the last head begun as unfollowed errs on the side of closing.
            let from = self.tracker.heads().saturating_sub(1);
            self.framing.unfollowed.store(from, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.tracker.is_following() && matches!(polled, Poll::Ready(Ok(()))) {
            self.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
