//! The request path: route match, one hash, header rewrite, forward, record.
//!
//! Owns: turning a request the edge admitted into an upstream one and the response back,
//! mapping failures to their answers (`crate::failure`), and the response accounting
//! (`accounting`, `body`). Must not touch: listeners, connections, request hygiene, the
//! framing check and tunnels (`edge`, which loads the table once per request and hands it
//! down), config validation (`routing::table`), the swap (`reload`). Takes no lock, formats no
//! label and looks up no metric by name: every handle comes from the table.

mod accounting;
mod body;
mod headers;
mod pin;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::failure::{self, Failure};
use crate::routing::overrides;
use crate::routing::table::{PinCarrier, RoutingTable};
use crate::upstream;
use crate::upstream::body::RequestBody;
use headers::{
    append_forwarded_for, is_grpc, join_cookie_crumbs, request_host, strip_port, X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
};

pub use accounting::{grpc_failed, Accounting, GrpcVerdict};
pub use body::{ObservedBody, ProxyBody};
pub use headers::{strip_hop_by_hop, upgrade_protocol, Peer, X_COHORT};

/// The shared state of one request path: the swappable table and the listener's scheme.
pub struct Proxy {
    table: Arc<ArcSwap<RoutingTable>>,
    proto: HeaderValue,
}

/// What the edge learnt admitting a request (its framing and head checked against the table
/// it loaded for it, which the request keeps to the end, whatever reloads). The request itself
/// goes to `Proxy::handle` whole, beside this: moved once, into the proxy's future.
pub struct Admitted {
    /// When the edge took the request, which the response timeout and the duration count from.
    pub start: Instant,
    pub table: Arc<RoutingTable>,
    /// The normalised path to route by, when it differs from the URI's (`hygiene::check`).
    pub routed_path: Option<String>,
    /// The protocol the client asks to switch to, when the edge took its side of an upgrade.
    pub upgrade: Option<HeaderValue>,
}

/// The proxy's answer, and with a 101 what the edge needs to run the tunnel.
pub struct Answer {
    pub response: Response<ProxyBody>,
    /// Boxed: only upgrades carry one, and every other answer moves it around.
    pub tunnel: Option<Box<Tunnel>>,
}

/// An upgrade the upstream agreed to: its side of the connection, the request's accounting,
/// which ends with the tunnel, and the upstream's `tunnel_idle_timeout`.
pub struct Tunnel {
    pub upstream: OnUpgrade,
    pub acct: Accounting,
    pub idle: Duration,
}

impl From<Response<ProxyBody>> for Answer {
    fn from(response: Response<ProxyBody>) -> Self {
        Answer {
            response,
            tunnel: None,
        }
    }
}

/// Refuses the client's request, counted by reason.
pub fn refuse(table: &RoutingTable, fault: failure::Downstream) -> Response<ProxyBody> {
    table.rejected[fault as usize].increment(1);
    Failure::Downstream(fault).response()
}

impl Proxy {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, tls: bool) -> Self {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        Proxy { table, proto }
    }

    /// Whether clients reach this proxy over TLS.
    fn secure(&self) -> bool {
        self.proto.as_bytes() == b"https"
    }

    pub fn table(&self) -> &ArcSwap<RoutingTable> {
        &self.table
    }

    pub async fn handle(&self, req: Request<Incoming>, admitted: Admitted, peer: &Peer) -> Answer {
        let Admitted {
            start,
            table,
            upgrade,
            ..
        } = admitted;
        // What the exchange needs after its await is declared out here and set in the block;
        // the rest (the request's parts, its host, the routed path) ends with the block, so the
        // future keeps none of it across the await.
        let (route, target, mut acct, mut slot, faults, choice);
        let exchange = {
            let routed_path = admitted.routed_path;
            let (mut parts, body) = req.into_parts();
            let Ok(host) = request_host(&parts.uri, &parts.headers) else {
                return refuse(&table, failure::Downstream::BadHost).into();
            };
            let host_no_port = host
                .as_ref()
                .map_or("", |h| strip_port(h.authority.as_str()));
            let path = routed_path.as_deref().unwrap_or(parts.uri.path());
            let Some(found) = table.find_route(host_no_port, path, &parts.method, &parts.headers)
            else {
                table.unrouted.increment(1);
                return Failure::Unrouted.response().into();
            };
            route = found;
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > route.max_body_bytes) {
                return refuse(&table, failure::Downstream::BodyTooLarge).into();
            }

            if parts.version == Version::HTTP_2 {
                // Only HTTP/2 splits cookies (RFC 9113 §8.2.3); an HTTP/1.1 client sends one line.
                join_cookie_crumbs(&mut parts.headers);
            }
            let client = table.client_ip(peer.addr.ip(), &parts.headers);
            choice = overrides::choose_cohort(route, &table, &parts.headers, &parts.uri, client);
            target = Arc::clone(&route.cohorts[choice.index]);
            // Only the band's choices are the split's: an override, a keyless fallback or a
            // pin says nothing about whether the split holds.
            if let (overrides::Chosen::Band(Some(unit)), Some(units), Some(cells)) =
                (choice.chosen, &route.units, &target.guard)
            {
                units.record(unit, cells);
            }
            acct = Accounting::start(Arc::clone(&target), start);
            if let Some(segment) = &route.segment {
                acct.in_segment(segment.of_request(&parts.headers));
            }

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
            // A header pin is the proxy's, like the override; a cookie pin stays in `Cookie`
            // (README, "Conversation pinning").
            if let Some(PinCarrier::Header(h)) = route.pin.as_ref().map(|p| &p.carrier) {
                parts.headers.remove(h);
            }
            parts.headers.insert(&X_COHORT, target.header_value.clone());
            append_forwarded_for(&mut parts.headers, peer);
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
            slot = upstream.pick().1;
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
            faults = body.faults();
            let sent = upstream.send(&mut slot, Request::from_parts(parts, body));
            // Counted from `start` rather than from a second clock read: the routing above, a
            // few microseconds, counts against the response timeout. (The config caps
            // durations, so the addition cannot overflow.)
            tokio::time::timeout_at(start + upstream.spec.response_timeout, sent)
        };
        let result = exchange.await;
        let upstream = &target.upstream;
        acct.hold_endpoint(slot);
        let resp = match result {
            Err(_elapsed) => return fail(&mut acct, failure::Upstream::Timeout).into(),
            Ok(Err(e)) => {
                // The client's body ended the exchange: its fault, recorded by the body.
                if let Some(fault) = faults.get() {
                    acct.refused();
                    return refuse(&table, fault).into();
                }
                if let Some(fault) = upstream::internal(e.error()) {
                    acct.refused();
                    table.internal[fault as usize].increment(1);
                    let failure = Failure::Internal(fault);
                    tracing::error!(route = %route.name, cohort = %target.name, upstream = %upstream.name(), origin = failure.origin(), reason = failure.reason(), error = %e, "cohort could not build the upstream request");
                    return failure.response().into();
                }
                let reason = upstream::classify(e.error(), e.connect);
                let failure = Failure::Upstream(reason);
                tracing::debug!(route = %route.name, cohort = %target.name, upstream = %upstream.name(), origin = failure.origin(), reason = failure.reason(), error = %e, "upstream request failed");
                return fail(&mut acct, reason).into();
            }
            Ok(Ok(resp)) => resp,
        };

        let mut resp = resp;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade =
            (switched && upgrade.is_some()).then(|| hyper::upgrade::on(&mut resp));
        let (mut rparts, rbody) = resp.into_parts();
        if let Some(i) = route
            .segment
            .as_ref()
            .and_then(|s| s.of_response(&rparts.headers))
        {
            acct.in_segment(i);
        }
        target.metrics.request_in(acct.segment(), rparts.status);
        acct.answered(rparts.status);
        let outcome = rparts
            .headers
            .get(&route.outcome_header)
            .map(|v| route.outcome_slot(v.as_bytes()));
        if is_grpc(&rparts.headers) {
            // Trailers-only answers carry grpc-status in the head.
            let failed = rparts.headers.get("grpc-status").is_some_and(grpc_failed);
            acct.defer_outcome(GrpcVerdict {
                outcome,
                error: route.outcome_slot(b"error"),
                failed,
            });
        } else if let Some(slot) = outcome {
            target.metrics.outcome_in(acct.segment(), slot);
            acct.counted_outcome(slot);
        }
        let switched_to = rparts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut rparts.headers);
        pin::stamp(
            &mut rparts.headers,
            route,
            choice.index,
            choice.pin,
            self.secure(),
        );
        if route.response_cohort_header {
            rparts
                .headers
                .insert(&X_COHORT, target.header_value.clone());
        }
        if let Some(up) = upstream_upgrade {
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = switched_to {
                rparts.headers.insert(header::UPGRADE, p);
            }
            let tunnel = Tunnel {
                upstream: up,
                acct,
                idle: upstream.spec.tunnel_idle_timeout,
            };
            return Answer {
                response: Response::from_parts(rparts, ProxyBody::empty()),
                tunnel: Some(Box::new(tunnel)),
            };
        }
        // Only a successful answer has usage or tokens to time; an error's body is its own.
        let usage = rparts
            .status
            .is_success()
            .then(|| usage::UsageReader::new(target.usage, &rparts.headers, &mut acct));
        let body = ObservedBody::new(rbody, acct, upstream.spec.idle_timeout, usage);
        Response::from_parts(rparts, ProxyBody::Upstream { body }).into()
    }
}

/// Answers a failed upstream exchange, counted by reason and as the cohort's request.
fn fail(acct: &mut Accounting, reason: failure::Upstream) -> Response<ProxyBody> {
    let target = acct.cohort();
    target.metrics.failure(reason as usize);
    let resp: Response<ProxyBody> = Failure::Upstream(reason).response();
    target.metrics.request_in(acct.segment(), resp.status());
    acct.answered(resp.status());
    resp
}
