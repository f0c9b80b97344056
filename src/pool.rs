//! The kept-alive HTTP/1.1 connection pool of one cleartext endpoint: a lock-free queue of idle
//! hyper senders, filled when a response body ends and drained by the next request.
//!
//! Owns: opening upstream TCP connections (resolution, connect timeout, socket options), the
//! hyper HTTP/1.1 handshake and connection task, and which idle connection serves a request.
//! Must not touch: endpoint choice or in-flight counts (`upstream`), request rewriting
//! (`proxy`), TLS and HTTP/2 upstreams (they go through hyper-util's client in `upstream`).
//!
//! Why not hyper-util's pool: it hashes a (scheme, authority) key under a mutex at checkout
//! and at return, and spawns a task per request to wait for the connection to be idle again.
//! Here an endpoint owns its queue, so checkout is a pop, and the connection comes back when
//! the response body is done, at which point hyper has already made it ready again.

use std::io;
use std::task::Poll;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http::uri::Authority;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

pub type Sender = http1::SendRequest<RequestBody>;

/// A connection idle longer than this is closed rather than reused: upstreams close idle
/// keep-alive connections too (nginx after 75 s), and a request written into a connection the
/// server is closing fails after it was sent, where it cannot be retried safely.
const MAX_IDLE: Duration = Duration::from_secs(60);

const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request could not be answered on this endpoint.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be opened: resolution, refusal, or `connect_timeout`.
    Connect(io::Error),
    /// The exchange failed on an open connection.
    Exchange(hyper::Error),
}

/// One endpoint's idle connections, oldest first, so all of them stay warm.
pub struct Pool {
    authority: Authority,
    host: HeaderValue,
    idle: ArrayQueue<(Sender, Instant)>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(authority: Authority, max_idle: usize, connect_timeout: Duration) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Pool {
            authority,
            host,
            idle: ArrayQueue::new(max_idle.max(1)),
            connect_timeout,
        }
    }

    /// Sends `req` (origin-form URI) on an idle connection, or a new one. A request that a
    /// reused connection refused before writing a byte (the server had closed it) is sent once
    /// more on a fresh connection; nothing that reached the upstream is ever sent twice.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Sender), PoolError> {
        if !req.headers().contains_key(header::HOST) {
            // HTTP/1.0 clients may omit Host; HTTP/1.1 requires one on the upstream leg.
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        if let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(e) => Err(PoolError::Exchange(e)),
        }
    }

    /// Gives a connection back once its response is over. A connection hyper has not yet made
    /// ready again is left to close: waiting for it would put one request behind another's.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        // When full, the connection is dropped, which closes it.
        let _ = self.idle.push((sender, Instant::now()));
    }

    fn checkout(&self) -> Option<Sender> {
        while let Some((mut sender, since)) = self.idle.pop() {
            if since.elapsed() > MAX_IDLE {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Not ready yet: give hyper's connection task one look, without waiting.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            if let Poll::Ready(Ok(())) = sender.poll_ready(&mut cx) {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.dial())
            .await
            .map_err(|_| {
                PoolError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {} timed out", self.authority),
                ))
            })?
            .map_err(PoolError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Exchange)?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Resolves the endpoint (a literal address costs no lookup) and tries each address.
    async fn dial(&self) -> io::Result<TcpStream> {
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let mut last = None;
        for addr in tokio::net::lookup_host((host, port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Requests are written whole; Nagle would only hold back their last segment.
                    stream.set_nodelay(true)?;
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolved to no address", self.authority),
            )
        }))
    }
}
