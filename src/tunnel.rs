//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): once both sides have
//! switched protocols, bytes are copied both ways until either side closes or the tunnel has
//! been idle for the upstream's `tunnel_idle_timeout`.
//!
//! Owns: the byte pipe and its idle timer. Must not touch: routing or headers (`proxy` decides
//! what gets upgraded); accounting ends when the tunnel does, by dropping `Accounting`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::Accounting;

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

/// Waits for both upgrades, then pipes bytes until one side closes or nothing moves for
/// `idle`. The request's duration (recorded when `acct` drops) is the tunnel's lifetime.
pub async fn run(
    client: ClientSide,
    upstream: OnUpgrade,
    acct: Accounting,
    idle: Duration,
    abort: CancellationToken,
) {
    let upstream = async { upstream.await.map_err(|e| e.to_string()) };
    let (client, upstream) = match tokio::try_join!(client.io(), upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // One loop for both directions so activity either way keeps the tunnel alive.
    loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if uw.write_all(&cbuf[..n]).await.is_err() { break },
            },
            r = ur.read(&mut ubuf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if cw.write_all(&ubuf[..n]).await.is_err() { break },
            },
            _ = abort.cancelled() => break,
            _ = &mut idle_timer => {
                tracing::debug!(idle = ?idle, "closing an idle upgraded connection");
                break;
            }
        }
        idle_timer.as_mut().reset(Instant::now() + idle);
    }
    let _ = uw.shutdown().await;
    let _ = cw.shutdown().await;
    drop(acct);
}
