//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): once both sides have
//! switched protocols, bytes are copied both ways until either side closes or the tunnel has
//! been idle for the upstream's `tunnel_idle_timeout`.
//!
//! Owns: the byte pipe and its idle timer. Must not touch: routing or headers (`proxy` decides
//! what gets upgraded); accounting ends when the tunnel does, by dropping `Accounting`.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::Accounting;

/// Waits for both upgrades, then pipes bytes until one side closes or nothing moves for
/// `idle`. The request's duration (recorded when `acct` drops) is the tunnel's lifetime.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    acct: Accounting,
    idle: Duration,
    abort: CancellationToken,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
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
