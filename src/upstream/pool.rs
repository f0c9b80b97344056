//! The kept-alive HTTP/1.1 connection pool of one cleartext endpoint: a lock-free queue of idle
//! hyper senders, filled when a response body ends and drained by the next request.
//!
//! Owns: the hyper HTTP/1.1 handshake and connection task on a connection opened by the
//! upstream's `HttpConnector`, and which idle connection serves a request.
//! Must not touch: endpoint choice or in-flight counts (`upstream`), request rewriting
//! (`proxy`), TLS and HTTP/2 upstreams (they go through hyper-util's client in `upstream`).
//!
//! Why not hyper-util's pool: it hashes a (scheme, authority) key under a mutex at checkout
//! and at return, and spawns a task per request to wait for the connection to be idle again.
//! Here an endpoint owns its queue, so checkout is a pop, and the connection comes back when
//! the response body is done, at which point hyper has already made it ready again.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::upstream::body::RequestBody;

pub type Sender = http1::SendRequest<RequestBody>;

/// A connection idle longer than this is closed rather than reused: upstreams close idle
/// keep-alive connections too (nginx after 75 s), and a request written into a connection the
/// server is closing fails after it was sent, where it cannot be retried safely.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Why a request could not be answered on this endpoint.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be opened: resolution, refusal, or `connect_timeout`.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed on an open connection.
    Exchange(hyper::Error),
}

/// One endpoint's idle connections, oldest first, so all of them stay warm.
pub struct Pool {
    authority: Authority,
    host: HeaderValue,
    /// `None` when `max_idle_per_endpoint` is 0: every connection closes after its exchange.
    idle: Option<ArrayQueue<(Sender, Instant)>>,
    connector: HttpConnector,
    /// The endpoint as the connector takes it.
    uri: Uri,
}

impl Pool {
    pub fn new(authority: Authority, max_idle: usize, connector: HttpConnector) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Pool {
            authority,
            host,
            // ArrayQueue has no zero capacity; a pool of none is no queue at all.
            idle: (max_idle > 0).then(|| ArrayQueue::new(max_idle)),
            connector,
            uri,
        }
    }

    /// Sends `req` (origin-form URI) on an idle connection, or a new one. A request that a
    /// reused connection refused before writing a byte (the server had closed it) is sent once
    /// more on a fresh connection; nothing that reached the upstream is ever sent twice.
    ///
    /// A plain fn, not an async one: the request goes into hyper's channel before it returns,
    /// so the future holds hyper's exchange and not also a copy of the request at every level.
    pub fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Sender), PoolError>> + Send + '_ {
        if !req.headers().contains_key(header::HOST) {
            // HTTP/1.0 clients may omit Host; HTTP/1.1 requires one on the upstream leg.
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        match self.checkout() {
            Some(mut sender) => {
                let sent = sender.try_send_request(req);
                Sending::Reused {
                    pool: self,
                    sender: Some(sender),
                    sent,
                }
            }
            None => Sending::Fresh {
                sent: Box::pin(self.fresh(req)),
            },
        }
    }

    /// The exchange on a new connection: rare next to reuse, so its future is boxed, which
    /// keeps it out of the size of every request's future.
    async fn fresh(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Sender), PoolError> {
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(e) => Err(PoolError::Exchange(e)),
        }
    }

    /// Gives a connection back once its response is over. A connection hyper has not yet made
    /// ready again is left to close: waiting for it would put one request behind another's.
    pub fn put(&self, sender: Sender) {
        let Some(idle) = &self.idle else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        // When full, the connection is dropped, which closes it.
        let _ = idle.push((sender, Instant::now()));
    }

    fn checkout(&self) -> Option<Sender> {
        let idle = self.idle.as_ref()?;
        while let Some((mut sender, since)) = idle.pop() {
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
        // The upstream's connector: resolution, connect_timeout, TCP_NODELAY and keep-alive
        // probes, as for the endpoints hyper-util's client serves.
        let io = self
            .connector
            .clone()
            .call(self.uri.clone())
            .await
            .map_err(|e| PoolError::Connect(Box::new(e)))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
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
}

type Fresh<'a> =
    Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Sender), PoolError>> + Send + 'a>>;

pin_project! {
    /// `Pool::send`'s exchange: hyper's on a reused connection, then, if that connection gave
    /// the request back unsent, one on a fresh connection.
    #[project = SendingProj]
    enum Sending<'a, F> {
        Reused {
            pool: &'a Pool,
            // Taken when the response comes, to go with it.
            sender: Option<Sender>,
            #[pin]
            sent: F,
        },
        Fresh {
            sent: Fresh<'a>,
        },
    }
}

impl<F> Future for Sending<'_, F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>>,
{
    type Output = Result<(Response<Incoming>, Sender), PoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (pool, unsent) = match self.as_mut().project() {
            SendingProj::Fresh { sent } => return sent.as_mut().poll(cx),
            SendingProj::Reused { pool, sender, sent } => match ready!(sent.poll(cx)) {
                Ok(resp) => {
                    let sender = sender.take().expect("Sending polled after completion");
                    return Poll::Ready(Ok((resp, sender)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => (*pool, unsent),
                    None => return Poll::Ready(Err(PoolError::Exchange(e.into_error()))),
                },
            },
        };
        self.set(Sending::Fresh {
            sent: Box::pin(pool.fresh(unsent)),
        });
        self.poll(cx)
    }
}
