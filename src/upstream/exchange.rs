//! `Upstream::send`'s exchange: the future that waits for the response through the endpoint's
//! pool or hyper-util's client, and maps their errors to [`SendError`].
//!
//! Why a hand-written future: `send` hands the request over before it returns, so this future
//! holds only the pool's or the client's exchange, not another copy of the request.
//! Must not touch: endpoint choice, the pool's connections (it only gives the slot the one the
//! response came on).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use hyper::body::Incoming;
use hyper_util::client::legacy::ResponseFuture;
use pin_project_lite::pin_project;

use super::{InFlight, SendError};
use crate::upstream::pool::{self, PoolError};

pin_project! {
    /// `Upstream::send`'s exchange, through the endpoint's pool or hyper-util's client.
    #[project = SendingProj]
    pub(super) enum Sending<'a, P> {
        Pooled {
            // Gets the connection the response came on, which goes back to the pool with it.
            slot: &'a mut InFlight,
            #[pin]
            sent: P,
        },
        Client {
            #[pin]
            sent: ResponseFuture,
        },
        Failed {
            error: Option<SendError>,
        },
    }
}

impl<P> Future for Sending<'_, P>
where
    P: Future<Output = Result<(Response<Incoming>, pool::Sender), PoolError>>,
{
    type Output = Result<Response<Incoming>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SendingProj::Pooled { slot, sent } => Poll::Ready(match ready!(sent.poll(cx)) {
                Ok((resp, conn)) => {
                    slot.conn = Some(conn);
                    Ok(resp)
                }
                Err(PoolError::Connect(e)) => Err(SendError {
                    connect: true,
                    source: e,
                }),
                Err(PoolError::Exchange(e)) => Err(SendError {
                    connect: false,
                    source: Box::new(e),
                }),
            }),
            SendingProj::Client { sent } => {
                Poll::Ready(ready!(sent.poll(cx)).map_err(|e| SendError {
                    connect: e.is_connect(),
                    source: Box::new(e),
                }))
            }
            SendingProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("Sending polled after completion")))
            }
        }
    }
}
