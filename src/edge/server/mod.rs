//! Public listeners: accepting connections, serving HTTP/1.1 and HTTP/2 (prior knowledge) on
//! each, with TLS where configured, the connection limits, and draining on shutdown.
//!
//! Owns: sockets and connection lifecycles (connection cap, first-request and keep-alive
//! timers, TLS handshakes). Must not touch: request rewriting (`proxy`), the admin endpoints
//! (`admin`), or the table beyond reading its listener settings.

mod plain;
mod service;
mod watchdog;

pub use plain::release_freed_memory_with;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::edge::framing::Watched;
use crate::lifecycle::Lifecycle;
use crate::proxy::Proxy;
use crate::routing::table::ConnLimits;
use service::{service, Downstream};
use watchdog::{Activity, Verdict};

/// A client that opens a TCP connection and never finishes the handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a connection over the listener's `max_connections`.
const AT_CAPACITY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// One listener's handles: what it serves through, and its connection accounting.
pub struct Listener {
    pub index: usize,
    pub proxy: Arc<Proxy>,
    pub refused: Counter,
    pub open_gauge: Gauge,
    pub parked_gauge: Gauge,
}

pub fn http_builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(plain::head_limit(limits));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size((limits.max_header_bytes + limits.max_uri_bytes) as u32)
        // Keep h2's defaults against rapid reset (CVE-2023-44487) explicit.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    builder
}

/// Accepts on `listener` until `life.drain` fires, serving each connection on its own task.
/// Limits and TLS certificates come from the serving table at each accept, so a reload
/// changes them for new connections and spares open ones.
pub async fn serve(listener: TcpListener, me: Listener, life: Lifecycle) {
    let local = listener.local_addr().ok();
    let open = Arc::new(AtomicUsize::new(0));
    let mut cached: Option<(u64, Arc<auto::Builder<TokioExecutor>>)> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = life.drain.cancelled() => break,
            a = accept(&listener, local) => a,
        };
        let Some((stream, peer)) = accepted else {
            continue;
        };
        let table = me.proxy.table().load_full();
        if open.load(Ordering::Relaxed) >= table.limits.max_connections {
            me.refused.increment(1);
            tokio::spawn(refuse(stream));
            continue;
        }
        let builder = match &cached {
            Some((generation, b)) if *generation == table.generation => Arc::clone(b),
            _ => {
                let b = Arc::new(http_builder(&table.limits));
                cached = Some((table.generation, Arc::clone(&b)));
                b
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = OpenGuard::new(&open, &me.open_gauge);
        let tls = table.listener_tls.get(me.index).cloned().flatten();
        let (proxy, limits, life2) = (Arc::clone(&me.proxy), table.limits.clone(), life.clone());
        // Two kinds of task, so a cleartext connection's does not carry the TLS state's size.
        match tls {
            None => {
                let parked = me.parked_gauge.clone();
                life.connections.spawn(async move {
                    let _guard = guard;
                    match plain::detect(stream, &limits, &life2).await {
                        plain::Detected::Http1(io) => {
                            plain::serve_http1(io, peer, proxy, &limits, life2, parked).await
                        }
                        plain::Detected::H2c(io) => {
                            let conn = Downstream::new(peer, None, life2.clone());
                            serve_connection(io, conn, proxy, &builder, &limits, life2).await
                        }
                        plain::Detected::Gone => {}
                    }
                })
            }
            Some(config) => life.connections.spawn(async move {
                let _guard = guard;
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                let handshake = tokio::select! {
                    h = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept) => h,
                    _ = life2.abort.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        // HTTP/1.1 over TLS is watched too; the h2 preface stops the tracker.
                        let tls = Watched::new(tls, plain::head_limit(&limits), Default::default());
                        let conn = Downstream::new(peer, Some(tls.framing()), life2.clone());
                        serve_connection(tls, conn, proxy, &builder, &limits, life2).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
        };
    }
    tracing::debug!(listener = ?local, "stopped accepting");
}

/// The next connection on `listener`, or `None` after an accept error and a short pause. Out
/// of descriptors (EMFILE) the error repeats until one is freed, and accepting again at once
/// would spin a core; a peer reset before accept is harmless either way.
pub(crate) async fn accept(
    listener: &TcpListener,
    local: Option<SocketAddr>,
) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(listener = ?local, error = %e, "accept failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// How long a listener waits after an accept error before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Answers a connection over its listener's cap with a 503 and closes it.
pub(crate) async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(AT_CAPACITY)).await;
    let _ = stream.shutdown().await;
}

/// Counts a connection as open for the listener's cap and gauge until dropped.
pub(crate) struct OpenGuard {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl OpenGuard {
    pub(crate) fn new(open: &Arc<AtomicUsize>, gauge: &Gauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.increment(1.0);
        OpenGuard {
            open: Arc::clone(open),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

async fn serve_connection<I>(
    stream: I,
    client: Downstream,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    limits: &ConnLimits,
    life: Lifecycle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.peer.addr;
    let activity = Arc::new(Activity::new());
    let svc = service(proxy, Arc::new(client), Arc::clone(&activity));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        let deadline = activity.deadline(limits, None);
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = life.abort.cancelled() => break Ok(()),
            _ = life.drain.cancelled(), if !closing => {
                // HTTP/1: finish the current response with `Connection: close`; HTTP/2: GOAWAY.
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                match activity.verdict(limits, None) {
                    Verdict::Silent => {
                        tracing::debug!(%peer, "no request within header_read_timeout; closing");
                        break Ok(());
                    }
                    Verdict::Expired => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Verdict::Park | Verdict::Wait => {}
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
