//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): once both sides have
//! switched protocols, bytes are copied both ways until either side closes or the tunnel has
//! been idle for the upstream's `tunnel_idle_timeout`.
//!
//! The idle timer runs beside the copies, so a side that stops reading cannot hold a tunnel
//! (and its upstream connection) open by leaving a write pending, and shutdown's abort ends
//! it wherever it is.
//!
//! Owns: the byte pipe and its idle timer. Must not touch: routing or headers (`proxy` decides
//! what gets upgraded); accounting ends when the tunnel does, by dropping `Accounting`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::Accounting;

/// The client's side of a tunnel, whatever carries it.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// Where the client's upgraded connection comes from. hyper hands it over itself on the
/// connections it drives to the end; on a connection the server takes back from hyper between
/// requests (to park it while idle), the server passes the connection's `Handover` down with
/// each request, and gives the socket through it once the 101 is written.
pub enum ClientSide {
    Hyper(OnUpgrade),
    Server {
        handover: Handover,
        tx: Option<GiveSocket>,
        rx: oneshot::Receiver<Box<dyn ClientIo>>,
    },
}

/// Per-connection slot, passed down with each request by the server, in which the proxy leaves
/// the sender for the client's socket once an upgrade is agreed. Its lock is taken only on
/// upgrades.
#[derive(Clone, Default)]
pub struct Handover(Arc<Mutex<Option<GiveSocket>>>);

type GiveSocket = oneshot::Sender<Box<dyn ClientIo>>;

impl Handover {
    /// The server's side: the sender the proxy left, if an upgrade was agreed.
    pub fn take(&self) -> Option<GiveSocket> {
        self.0.lock().ok()?.take()
    }
}

impl ClientSide {
    /// Call before the request is taken apart, with the connection's `Handover` if the server
    /// takes the connection back from hyper.
    pub fn of<B>(req: &mut Request<B>, handover: Option<&Handover>) -> Self {
        match handover {
            Some(h) => {
                let (tx, rx) = oneshot::channel();
                ClientSide::Server {
                    handover: h.clone(),
                    tx: Some(tx),
                    rx,
                }
            }
            None => ClientSide::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The upstream switched protocols: the server is to hand the client's socket over once
    /// the 101 is written.
    pub fn agreed(&mut self) {
        if let ClientSide::Server { handover, tx, .. } = self {
            if let (Some(tx), Ok(mut slot)) = (tx.take(), handover.0.lock()) {
                *slot = Some(tx);
            }
        }
    }

    async fn io(self) -> Result<Box<dyn ClientIo>, String> {
        match self {
            ClientSide::Hyper(on) => match on.await {
                Ok(up) => Ok(Box::new(TokioIo::new(up))),
                Err(e) => Err(e.to_string()),
            },
            ClientSide::Server { rx, .. } => rx
                .await
                .map_err(|_| "the client connection closed before the switch".to_string()),
        }
    }
}

/// Each direction's copy buffer.
const BUFFER: usize = 16 * 1024;

/// Waits for both upgrades, then pipes bytes until one side closes or nothing moves for
/// `idle`; `abort` ends it at any point. The request's duration (recorded when `acct` drops)
/// is the tunnel's lifetime.
pub async fn run(
    client: ClientSide,
    upstream: OnUpgrade,
    acct: Accounting,
    idle: Duration,
    abort: CancellationToken,
) {
    tokio::select! {
        _ = pipe(client, upstream, idle) => {}
        _ = abort.cancelled() => tracing::debug!("shutdown timeout: closing an upgraded connection"),
    }
    drop(acct);
}

async fn pipe(client: ClientSide, upstream: OnUpgrade, idle: Duration) {
    let upstream = async { upstream.await.map_err(|e| e.to_string()) };
    let (client, upstream) = match tokio::try_join!(client.io(), upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let progress = Progress::new();
    let (cr, mut cw) = tokio::io::split(Moving::new(client, &progress));
    let (ur, mut uw) = tokio::io::split(Moving::new(TokioIo::new(upstream), &progress));
    let (mut cr, mut ur) = (
        BufReader::with_capacity(BUFFER, cr),
        BufReader::with_capacity(BUFFER, ur),
    );
    let copy = async {
        // Either side's end is the tunnel's: a WebSocket is never half-closed.
        let ended = tokio::select! {
            r = tokio::io::copy_buf(&mut cr, &mut uw) => r,
            r = tokio::io::copy_buf(&mut ur, &mut cw) => r,
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upgraded connection failed");
        }
        let _ = uw.shutdown().await;
        let _ = cw.shutdown().await;
    };
    // The timer runs beside the copies rather than between their steps, so a write that
    // never completes (a peer that stopped reading) is idle time like any other.
    tokio::select! {
        _ = copy => {}
        _ = progress.quiet_for(idle) => {
            tracing::debug!(idle = ?idle, "closing an idle upgraded connection");
        }
    }
}

/// When bytes last moved through the tunnel, either way.
struct Progress {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `idle`.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One side of the tunnel, noting in `Progress` every write that moved bytes.
struct Moving<'a, T> {
    io: T,
    progress: &'a Progress,
}

impl<'a, T> Moving<'a, T> {
    fn new(io: T, progress: &'a Progress) -> Self {
        Moving { io, progress }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Moving<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Moving<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.moved();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
