//! The per-connection service: what the edge does with each request before and after the
//! proxy. It loads the serving table once for the request, refuses a head with both
//! Transfer-Encoding and Content-Length, checks the head's hygiene, takes the client's side
//! of an upgrade, hands the request to the proxy, and runs the tunnel the proxy's 101 opens.
//!
//! Owns: the order of those steps and the connection each request came on (`Downstream`).
//! Must not touch: routing, header rewriting and upstreams (the proxy's), the connection's
//! timers and parking (`super`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::time::Instant;

use super::watchdog::{Activity, Tracked};
use crate::edge::framing::Framing;
use crate::edge::hygiene;
use crate::edge::tunnel::{self, ClientSide, Handover};
use crate::failure;
use crate::lifecycle::Lifecycle;
use crate::proxy::{self, Admitted, Peer, Proxy, ProxyBody};
use crate::routing::table::RoutingTable;

/// The client connection a request came on: built once per connection and shared by its
/// requests, behind one `Arc`.
pub struct Downstream {
    pub peer: Peer,
    /// On connections the server takes back from hyper between requests: where the client's
    /// socket is handed over if a request upgrades. `None` where hyper hands it over itself.
    pub handover: Option<Handover>,
    /// On HTTP/1.x connections: which request's head carried both Transfer-Encoding and
    /// Content-Length, which hyper alone would forward as chunked.
    pub framing: Option<Arc<Framing>>,
    /// Upgraded connections outlive their request: they are tracked with the connections, so
    /// shutdown waits for them and cuts them at `shutdown_timeout`.
    pub life: Lifecycle,
}

impl Downstream {
    /// A connection hyper hands over itself on upgrade.
    pub fn new(addr: SocketAddr, framing: Option<Arc<Framing>>, life: Lifecycle) -> Self {
        Downstream {
            peer: Peer::new(addr),
            handover: None,
            framing,
            life,
        }
    }
}

type Answer = Response<Tracked<ProxyBody>>;
type Answering = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

/// The per-connection service. The request's future is boxed: `plain` drives hyper with
/// `poll_without_shutdown`, which needs it `Unpin`, and hyper's per-connection slot for it is
/// then a pointer rather than the future (about 3 KB). Every request goes down with the
/// connection's `Downstream`.
pub(super) fn service(
    proxy: Arc<Proxy>,
    conn: Arc<Downstream>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Answer,
    Error = Infallible,
    Future = Answering,
> + Clone {
    service_fn(move |mut req: Request<Incoming>| {
        // Counted at once: the request is active from the moment hyper hands it over.
        let busy = activity.begin();
        let (proxy, conn) = (Arc::clone(&proxy), Arc::clone(&conn));
        Box::pin(async move {
            let h1 = req.version() < Version::HTTP_2;
            // One future deep, as the proxy's own: the checks before it and the tunnel after it
            // are plain calls, so the proxy's future is not moved into another one.
            let mut resp = match admit(&proxy, &conn, &mut req) {
                Err((table, fault)) => proxy::refuse(&table, fault),
                Ok((admitted, client)) => {
                    let answer = proxy.handle(req, admitted, &conn.peer).await;
                    if let (Some(client), Some(tunnel)) = (client, answer.tunnel) {
                        open(&conn, client, *tunnel);
                    }
                    answer.response
                }
            };
            // A request the framing tracker could not follow (after an Upgrade header that
            // did not upgrade, say) is the connection's last: later heads would go unchecked.
            if h1
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
                && conn
                    .framing
                    .as_deref()
                    .is_some_and(Framing::last_was_unchecked)
            {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp.map(|b| Tracked::new(b, busy)))
        }) as Answering
    })
}

/// The edge's checks of one request, before the proxy: the table it is served by, its framing
/// and its head; and the client's side of an upgrade, if it asks for one. `Err` is the fault
/// to refuse the request for, with the table that counts it. The request is checked where it
/// lies, so it moves once, into the proxy's future.
#[inline(always)]
fn admit(
    proxy: &Proxy,
    conn: &Downstream,
    req: &mut Request<Incoming>,
) -> Result<(Admitted, Option<ClientSide>), (Arc<RoutingTable>, failure::Downstream)> {
    let start = Instant::now();
    // A full Arc, not a guard: the request keeps its table to the end, whatever reloads.
    let table = proxy.table().load_full();
    // Every HTTP/1.x request is counted, in order, before anything can answer it.
    if req.version() < Version::HTTP_2 && conn.framing.as_ref().is_some_and(|f| f.next_has_both()) {
        tracing::debug!(peer = %conn.peer.addr, "request head with both Transfer-Encoding and Content-Length refused");
        return Err((table, failure::Downstream::TeAndCl));
    }
    let upgrade = proxy::upgrade_protocol(req);
    let client = upgrade
        .as_ref()
        .map(|_| ClientSide::of(req, conn.handover.as_ref()));
    let routed_path = match hygiene::check(req, &table.policy) {
        Ok(p) => p,
        Err(fault) => return Err((table, fault)),
    };
    let admitted = Admitted {
        start,
        table,
        routed_path,
        upgrade,
    };
    Ok((admitted, client))
}

/// Runs the tunnel of an upgrade the upstream agreed to, tracked with the connections.
fn open(conn: &Downstream, mut client: ClientSide, t: proxy::Tunnel) {
    client.agreed();
    let abort = conn.life.abort.clone();
    conn.life
        .connections
        .spawn(tunnel::run(client, t.upstream, t.acct, t.idle, abort));
}
