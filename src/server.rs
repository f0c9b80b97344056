//! Public listeners: accepting connections, serving HTTP/1.1 and HTTP/2 (prior knowledge) on
//! each, and draining them on shutdown.
//!
//! Owns: sockets and connection lifecycles. Must not touch: request rewriting (`proxy`), the
//! admin endpoints (`admin`), or the table (it only hands the `Proxy` its shared handle).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::Proxy;

/// Signals shared by every listener: `drain` asks connections to finish their current
/// exchange and close; `abort` (after `shutdown_timeout`) cuts whatever is left.
#[derive(Clone, Default)]
pub struct Lifecycle {
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    pub connections: TaskTracker,
}

pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    builder
}

/// A client that opens a TCP connection and never finishes the handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` (the table's listener number `index`) until `life.drain` fires,
/// serving each connection on its own task. TLS listeners take the serving table's
/// certificates at each handshake, so rotation needs no restart and spares open connections.
pub async fn serve(listener: TcpListener, index: usize, proxy: Arc<Proxy>, life: Lifecycle) {
    let builder = Arc::new(http_builder());
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = life.drain.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a peer reset before accept: keep serving the others.
                tracing::warn!(listener = ?local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = proxy
            .table()
            .load()
            .listener_tls
            .get(index)
            .cloned()
            .flatten();
        let (proxy, builder, life2) = (Arc::clone(&proxy), Arc::clone(&builder), life.clone());
        life.connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, proxy, &builder, life2).await,
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, proxy, &builder, life2).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::debug!(listener = ?local, "stopped accepting");
}

async fn serve_connection<I>(
    stream: I,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    life: Lifecycle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = life.drain.cancelled() => {
            // HTTP/1: finish the current response with `Connection: close`; HTTP/2: GOAWAY.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = life.abort.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
