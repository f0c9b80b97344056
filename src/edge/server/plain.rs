//! Cleartext connections: telling HTTP/1.1 from h2c by peeking at the first bytes, and serving
//! HTTP/1.1 with hyper only while the connection is in use. A connection idle for
//! `PARK_AFTER` is taken back from hyper and parked: its socket waits for the next request
//! holding no buffers (hyper's read and write buffers, 16 KiB, are most of what an idle
//! connection costs), and a fresh hyper connection takes over when bytes arrive.
//!
//! Owns: protocol detection, the HTTP/1.1 park/resume loop and its timers, handing the socket
//! to a tunnel after an upgrade. Must not touch: the request path (`proxy`), TLS (`super`).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::service::{service, Downstream};
use super::watchdog::{Activity, Verdict};
use crate::edge::framing::Watched;
use crate::edge::tunnel::Handover;
use crate::lifecycle::Lifecycle;
use crate::proxy::{Peer, Proxy};
use crate::routing::table::ConnLimits;

/// An HTTP/1.1 connection idle this long gives its buffers back. Busy connections never wait
/// this long between requests, so they never pay for a resume.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn h1_builder(limits: &ConnLimits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(head_limit(limits));
    b
}

/// hyper's read buffer, and so the largest head it accepts: room for the largest head cohort
/// accepts (cohort itself enforces the exact caps).
pub fn head_limit(limits: &ConnLimits) -> usize {
    (limits.max_header_bytes + limits.max_uri_bytes + 8192).max(8192)
}

/// What the first bytes said, with the bytes detection had to consume (usually none).
pub enum Detected {
    Http1(Prefixed),
    H2c(Prefixed),
    /// Closed, silent past `header_read_timeout`, or shutting down.
    Gone,
}

/// Peeks until the bytes tell HTTP/1.1 from the h2c preface. Bytes that are only the start of
/// the preface are then read rather than peeked: a peek returns at once while unread bytes
/// wait, so it cannot wait for the next ones, and a client that sent `P` would be polled
/// forever and never meet its deadline.
pub async fn detect(mut stream: TcpStream, limits: &ConnLimits, life: &Lifecycle) -> Detected {
    let deadline = Instant::now() + limits.header_read_timeout;
    let mut head = [0u8; H2_PREFACE.len()];
    let (mut reading, mut got) = (false, 0);
    loop {
        let next = async {
            if reading {
                stream.read(&mut head[got..]).await
            } else {
                stream.peek(&mut head).await
            }
        };
        let polled = tokio::select! {
            r = tokio::time::timeout_at(deadline, next) => r,
            _ = life.drain.cancelled() => return Detected::Gone,
        };
        let n = match polled {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Detected::Gone,
        };
        let seen = if reading {
            got += n;
            got
        } else {
            n
        };
        let is_h2 = head[..seen] == H2_PREFACE[..seen];
        if is_h2 && seen < H2_PREFACE.len() {
            reading = true;
            continue;
        }
        let prefix = Bytes::copy_from_slice(&head[..got]);
        return if is_h2 {
            Detected::H2c(Watched::off(stream, prefix))
        } else {
            Detected::Http1(Watched::new(stream, head_limit(limits), prefix))
        };
    }
}

/// Serves HTTP/1.1 on `stream` until the client leaves, a timer ends it, or shutdown.
pub async fn serve_http1(
    stream: Prefixed,
    peer: std::net::SocketAddr,
    proxy: Arc<Proxy>,
    limits: &ConnLimits,
    life: Lifecycle,
    parked: Gauge,
) {
    let activity = Arc::new(Activity::new());
    let handover = Handover::default();
    // Built once: every hyper connection that takes over after a park shares it.
    let client = Arc::new(Downstream {
        peer: Peer::new(peer),
        handover: Some(handover.clone()),
        framing: Some(stream.framing()),
        life: life.clone(),
    });
    let builder = h1_builder(limits);
    let mut io = stream;
    loop {
        let svc = service(
            Arc::clone(&proxy),
            Arc::clone(&client),
            Arc::clone(&activity),
        );
        let mut conn = builder.serve_connection(TokioIo::new(io), svc);
        let (mut closing, mut parking) = (false, false);
        let result = loop {
            let deadline = activity.deadline(limits, Some(PARK_AFTER));
            tokio::select! {
                // In order, with hyper's connection first: no random draw on every wake, and
                // the signals and the timer are looked at only while it is pending.
                biased;
                r = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                _ = life.abort.cancelled() => return,
                _ = life.drain.cancelled(), if !closing => {
                    // Finishes the current response with `Connection: close`.
                    Pin::new(&mut conn).graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep_until(deadline), if !closing => {
                    match activity.verdict(limits, Some(PARK_AFTER)) {
                        Verdict::Silent => {
                            tracing::debug!(%peer, "no request within header_read_timeout; closing");
                            return;
                        }
                        Verdict::Expired => {
                            Pin::new(&mut conn).graceful_shutdown();
                            closing = true;
                        }
                        Verdict::Park => {
                            // An idle connection: hyper stops without touching the socket.
                            Pin::new(&mut conn).graceful_shutdown();
                            (closing, parking) = (true, true);
                        }
                        Verdict::Wait => {}
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
        let parts = conn.into_parts();
        let mut rest = parts.io.into_inner();
        // Bytes hyper read past the last message belong to whatever comes next.
        rest.prepend(parts.read_buf);
        if let Some(tx) = handover.take() {
            // An upgrade was agreed and its 101 written: the socket is the tunnel's now.
            let _ = tx.send(Box::new(rest));
            return;
        }
        if !parking || life.drain.is_cancelled() {
            let _ = rest.shutdown().await;
            return;
        }
        if !rest.has_prefix() {
            let until = activity.keepalive_deadline(limits);
            parked.increment(1.0);
            return_freed_pages_soon();
            let resume = tokio::select! {
                r = rest.get_ref().readable() => r.is_ok(),
                _ = tokio::time::sleep_until(until) => false,
                _ = life.drain.cancelled() => false,
            };
            parked.decrement(1.0);
            if !resume {
                let _ = rest.shutdown().await;
                return;
            }
        }
        io = rest;
    }
}

/// A TCP stream with bytes already read from it put back in front, its requests' framing
/// followed as they are read.
pub type Prefixed = Watched<TcpStream>;

/// Gives freed memory back to the system. The binary sets it, since it chooses the allocator;
/// without it, parking only frees the buffers.
static RELEASE_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`return_freed_pages_soon`] calls (once per process; later calls are ignored).
pub fn release_freed_memory_with(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Parking frees hyper's buffers, but an allocator such as mimalloc returns freed pages to the
/// system only when its heap is next used, and with every connection parked nothing uses it:
/// idle memory would stay at its busy size. So a parking connection has them released a
/// moment later; parks in the meantime share that one release.
fn return_freed_pages_soon() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SCHEDULED: AtomicBool = AtomicBool::new(false);
    let Some(&release) = RELEASE_FREED.get() else {
        return;
    };
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        SCHEDULED.store(false, Ordering::Release);
        release();
        tracing::debug!("returned freed pages to the system");
    });
}
