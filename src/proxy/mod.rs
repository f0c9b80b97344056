//! The request path: one table load, route match, one hash, header rewrite, forward, record.
//!
//! Owns: turning a downstream request into an upstream one and the response back, and mapping
//! failures to status codes. Must not touch: listeners and connection handling (`server`),
//! config validation (`table`), the swap (`reload`). Takes no lock, formats no label and looks
//! up no metric by name: every handle comes from the table.

mod headers;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{Accounting, GrpcVerdict, ObservedBody, ProxyBody, RequestBody};
use crate::edge::hygiene::{self, Reject};
use crate::edge::tunnel::{ClientSide, Handover};
use crate::routing::overrides;
use crate::routing::table::RoutingTable;
use crate::telemetry::FailureReason;
use crate::upstream;
use headers::{
    append_forwarded_for, is_grpc, join_cookie_crumbs, request_host, strip_port, upgrade_protocol,
    X_FORWARDED_HOST, X_FORWARDED_PROTO,
};

pub use headers::{strip_hop_by_hop, Peer, X_COHORT};

/// The shared state of one request path: the swappable table and the listener's scheme.
pub struct Proxy {
    table: Arc<ArcSwap<RoutingTable>>,
    proto: HeaderValue,
    /// Upgraded connections outlive their request: they are tracked with the connections, so
    /// shutdown waits for them and cuts them at `shutdown_timeout`.
    life: crate::lifecycle::Lifecycle,
}

/// The client connection a request came on, as the request path needs it: built once per
/// connection and shared by its requests, behind one `Arc`.
pub struct Downstream {
    pub peer: Peer,
    /// On connections the server takes back from hyper between requests: where the client's
    /// socket is handed over if a request upgrades. `None` where hyper hands it over itself.
    pub handover: Option<Handover>,
    /// On HTTP/1.x connections: which request's head carried both Transfer-Encoding and
    /// Content-Length, which hyper alone would forward as chunked.
    pub framing: Option<Arc<crate::edge::framing::Framing>>,
}

impl Downstream {
    /// A connection hyper hands over itself on upgrade.
    pub fn new(
        addr: std::net::SocketAddr,
        framing: Option<Arc<crate::edge::framing::Framing>>,
    ) -> Self {
        Downstream {
            peer: Peer::new(addr),
            handover: None,
            framing,
        }
    }
}

/// Where a failure came from, which decides the status (pingora's habit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Upstream(FailureReason),
    Downstream,
    Internal,
}

impl Failure {
    fn response(self) -> Response<ProxyBody> {
        let (status, body) = match self {
            Failure::Upstream(FailureReason::Timeout) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
            }
            Failure::Upstream(FailureReason::Connect) => {
                (StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }
            Failure::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream failed\n"),
            Failure::Downstream => (StatusCode::BAD_REQUEST, "bad request\n"),
            Failure::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
        };
        local(status, body)
    }
}

/// Refuses a request at the edge, counted by reason.
fn reject(table: &RoutingTable, r: Reject) -> Response<ProxyBody> {
    table.rejected[r as usize].increment(1);
    let mut resp = local(r.status(), r.body());
    if matches!(
        r,
        Reject::BodyTooLarge
            | Reject::BodyTimeout
            | Reject::BodyTooSlow
            | Reject::BadBody
            | Reject::TeAndCl
    ) {
        // The rest of the body is unread; the connection cannot be reused.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Proxy {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        tls: bool,
        life: crate::lifecycle::Lifecycle,
    ) -> Self {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        Proxy { table, proto, life }
    }

    pub fn table(&self) -> &ArcSwap<RoutingTable> {
        &self.table
    }

    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &Downstream,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        // A full Arc, not a guard: the request keeps its table to the end, whatever reloads.
        let table = self.table.load_full();
        // Every HTTP/1.x request is counted, in order, before anything can answer it.
        if req.version() < Version::HTTP_2
            && conn.framing.as_ref().is_some_and(|f| f.next_has_both())
        {
            tracing::debug!(peer = %conn.peer.addr, "request head with both Transfer-Encoding and Content-Length refused");
            return reject(&table, Reject::TeAndCl);
        }
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade
            .as_ref()
            .map(|_| ClientSide::of(&mut req, conn.handover.as_ref()));
        let (mut parts, body) = req.into_parts();

        let routed_path = match hygiene::check(&mut parts, &table.policy) {
            Ok(p) => p,
            Err(r) => return reject(&table, r),
        };
        let Ok(host) = request_host(&parts.uri, &parts.headers) else {
            return reject(&table, Reject::BadHost);
        };
        let host_no_port = host
            .as_ref()
            .map_or("", |h| strip_port(h.authority.as_str()));
        let path = routed_path.as_deref().unwrap_or(parts.uri.path());
        let Some(route) = table.find_route(host_no_port, path, &parts.method, &parts.headers)
        else {
            table.unrouted.increment(1);
            return local(StatusCode::NOT_FOUND, "no route\n");
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.max_body_bytes) {
            return reject(&table, Reject::BodyTooLarge);
        }

        if parts.version == Version::HTTP_2 {
            // Only HTTP/2 splits cookies (RFC 9113 §8.2.3); an HTTP/1.1 client sends one line.
            join_cookie_crumbs(&mut parts.headers);
        }
        let client = table.client_ip(conn.peer.addr.ip(), &parts.headers);
        let index = overrides::choose_cohort(route, &table, &parts.headers, &parts.uri, client);
        let target = Arc::clone(&route.cohorts[index]);
        let mut acct = Accounting::start(Arc::clone(&target), start);

        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        if let Some(h) = &route.override_header {
            parts.headers.remove(h);
        }
        parts.headers.insert(&X_COHORT, target.header_value.clone());
        append_forwarded_for(&mut parts.headers, &conn.peer);
        parts.headers.insert(&X_FORWARDED_PROTO, self.proto.clone());
        match host.and_then(|h| h.into_value()) {
            Some(v) => {
                parts.headers.insert(&X_FORWARDED_HOST, v.clone());
                // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
                parts.headers.entry(header::HOST).or_insert(v);
            }
            // An HTTP/1.0 request without Host: there is no host to vouch for, and the client's
            // own X-Forwarded-Host must not pass for cohort's.
            None => {
                parts.headers.remove(&X_FORWARDED_HOST);
            }
        }

        // Host stays the client's here: `send` makes it the authority the upstream sees, as
        // Host or as :authority, by the upstream's `authority` setting.
        let upstream = &target.upstream;
        let (_, mut slot) = upstream.pick();
        // Origin-form on the upstream leg; the endpoint is the connection's, not the URI's.
        parts.uri = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        parts.version = Version::HTTP_11;

        let limits = &table.limits;
        let body = RequestBody::new(
            body,
            route.max_body_bytes,
            limits.body_read_timeout,
            limits.body_min_rate,
        );
        let sent = upstream.send(&mut slot, Request::from_parts(parts, body));
        // Counted from `start` rather than from a second clock read: the routing above, a few
        // microseconds, counts against the response timeout. (The config caps durations, so
        // the addition cannot overflow.)
        let result = tokio::time::timeout_at(start + upstream.spec.response_timeout, sent).await;
        acct.hold_endpoint(slot);
        let resp = match result {
            Err(_elapsed) => {
                return self.fail(&mut acct, Failure::Upstream(FailureReason::Timeout))
            }
            Ok(Err(e)) => {
                if let Some(fault) = crate::body::client_body_fault(e.error()) {
                    acct.refused();
                    return reject(&table, fault);
                }
                let reason = upstream::classify(e.error(), e.connect);
                tracing::debug!(route = %route.name, cohort = %target.name, upstream = %upstream.name(), reason = reason.as_str(), error = %e, "upstream request failed");
                return self.fail(&mut acct, Failure::Upstream(reason));
            }
            Ok(Ok(resp)) => resp,
        };

        let mut resp = resp;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade =
            (switched && client_upgrade.is_some()).then(|| hyper::upgrade::on(&mut resp));
        let (mut rparts, rbody) = resp.into_parts();
        target.metrics.request(rparts.status);
        acct.answered(rparts.status);
        let outcome = rparts
            .headers
            .get(&route.outcome_header)
            .map(|v| route.outcome_slot(v.as_bytes()));
        if is_grpc(&rparts.headers) {
            // Trailers-only answers carry grpc-status in the head.
            let failed = rparts
                .headers
                .get("grpc-status")
                .is_some_and(crate::body::grpc_failed);
            acct.defer_outcome(GrpcVerdict {
                outcome,
                error: route.outcome_slot(b"error"),
                failed,
            });
        } else if let Some(slot) = outcome {
            target.metrics.outcome(slot);
            acct.counted_outcome(slot);
        }
        let switched_to = rparts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut rparts.headers);
        if route.response_cohort_header {
            rparts
                .headers
                .insert(&X_COHORT, target.header_value.clone());
        }
        if let (Some(mut client), Some(up)) = (client_upgrade, upstream_upgrade) {
            client.agreed();
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = switched_to {
                rparts.headers.insert(header::UPGRADE, p);
            }
            self.life.connections.spawn(crate::edge::tunnel::run(
                client,
                up,
                acct,
                upstream.spec.tunnel_idle_timeout,
                self.life.abort.clone(),
            ));
            return Response::from_parts(rparts, ProxyBody::empty());
        }
        let body = ObservedBody::new(rbody, acct, upstream.spec.idle_timeout);
        Response::from_parts(rparts, ProxyBody::Upstream { body })
    }

    fn fail(&self, acct: &mut Accounting, failure: Failure) -> Response<ProxyBody> {
        let target = acct.cohort();
        if let Failure::Upstream(reason) = failure {
            target.metrics.failure(reason);
        }
        let resp = failure.response();
        target.metrics.request(resp.status());
        acct.answered(resp.status());
        resp
    }
}
