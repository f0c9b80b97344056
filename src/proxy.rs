//! The request path: one table load, route match, one hash, header rewrite, forward, record.
//!
//! Owns: turning a downstream request into an upstream one and the response back, and mapping
//! failures to status codes. Must not touch: listeners and connection handling (`server`),
//! config validation (`table`), the swap (`reload`). Takes no lock, formats no label and looks
//! up no metric by name: every handle comes from the table.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{Accounting, GrpcVerdict, ObservedBody, ProxyBody, RequestBody};
use crate::hygiene::{self, Reject};
use crate::metrics::FailureReason;
use crate::overrides;
use crate::table::RoutingTable;
use crate::upstream;

pub static X_COHORT: HeaderName = HeaderName::from_static("x-cohort");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The shared state of one request path: the swappable table and the listener's scheme.
pub struct Proxy {
    table: Arc<ArcSwap<RoutingTable>>,
    proto: HeaderValue,
    /// Upgraded connections outlive their request: they are tracked with the connections, so
    /// shutdown waits for them and cuts them at `shutdown_timeout`.
    life: crate::server::Lifecycle,
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
        Reject::BodyTooLarge | Reject::BodyTimeout | Reject::BadBody
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
        life: crate::server::Lifecycle,
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
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        // A full Arc, not a guard: the request keeps its table to the end, whatever reloads.
        let table = self.table.load_full();
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade
            .as_ref()
            .map(|_| crate::tunnel::ClientSide::of(&mut req));
        let (mut parts, body) = req.into_parts();

        let routed_path = match hygiene::check(&mut parts, &table.policy) {
            Ok(p) => p,
            Err(r) => return reject(&table, r),
        };
        let Ok(host) = request_host(&parts.uri, &parts.headers) else {
            return reject(&table, Reject::BadHost);
        };
        let host_no_port = host.as_ref().map_or("", |h| strip_port(h.as_str()));
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

        let client = table.client_ip(peer.ip(), &parts.headers);
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
        append_forwarded_for(&mut parts.headers, peer);
        parts.headers.insert(&X_FORWARDED_PROTO, self.proto.clone());
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(h.as_str()).ok()) {
            parts.headers.insert(&X_FORWARDED_HOST, v.clone());
            // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
            parts.headers.entry(header::HOST).or_insert(v);
        }

        let upstream = &target.upstream;
        if upstream.spec.protocol == upstream::Protocol::Http2 {
            // HTTP/2 names the host in :authority, which is the endpoint's here; a second,
            // different `host` would make the request malformed (RFC 9113 §8.3.1). The
            // client's host still travels in X-Forwarded-Host.
            parts.headers.remove(header::HOST);
        }
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

        let body = RequestBody::new(body, route.max_body_bytes, table.limits.body_read_timeout);
        let sent = upstream.send(&mut slot, Request::from_parts(parts, body));
        let result = tokio::time::timeout(upstream.spec.response_timeout, sent).await;
        acct.hold_endpoint(slot);
        let resp = match result {
            Err(_elapsed) => {
                return self.fail(&mut acct, Failure::Upstream(FailureReason::Timeout))
            }
            Ok(Err(e)) => {
                if let Some(fault) = crate::body::client_body_fault(e.error()) {
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
            self.life.connections.spawn(crate::tunnel::run(
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

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if asks {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The authority the client addressed: the URI's (HTTP/2 or absolute-form) or Host.
/// `Ok(None)` when there is none (HTTP/1.0); `Err` when Host is not a valid authority.
fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<Authority>, ()> {
    if let Some(a) = uri.authority() {
        return Ok(Some(a.clone()));
    }
    match headers.get(header::HOST) {
        Some(v) => Authority::try_from(v.as_bytes()).map(Some).map_err(|_| ()),
        None => Ok(None),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Headers that must never be removed because `Connection` names them: cohort sets them.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == X_COHORT || name.as_str().starts_with("x-forwarded-")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those `Connection` names, the fixed list,
/// every `Proxy-*`, and `TE` unless it asks only for trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (standard names compare as small enums) finds which are there;
    // only those are removed, since each removal hashes. Most requests carry none, and most
    // responses only `Connection: keep-alive`.
    let (mut connection, mut keep_alive, mut chunked, mut upgrade, mut proxy, mut te) =
        (false, false, false, false, false, false);
    for k in headers.keys() {
        if k == header::CONNECTION {
            connection = true;
        } else if k == header::TE {
            te = true;
        } else if k == header::TRANSFER_ENCODING {
            chunked = true;
        } else if k == header::UPGRADE {
            upgrade = true;
        } else if k == KEEP_ALIVE {
            keep_alive = true;
        } else if k.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            // The Keep-Alive header, if any, is removed below in any case.
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| !protected(n))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if chunked {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
    if proxy {
        let proxies: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in proxies {
            headers.remove(n);
        }
    }
    if !te {
        return;
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.split(|&b| b == b';').next().unwrap_or(t);
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Appends the peer to X-Forwarded-For, folding earlier values into one header.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = crate::table::canonical_ip(peer.ip());
    let mut buf = BytesMut::with_capacity(64);
    for v in headers.get_all(&X_FORWARDED_FOR) {
        buf.put_slice(v.as_bytes());
        buf.put_slice(b", ");
    }
    use std::fmt::Write;
    let _ = write!(buf, "{ip}");
    if let Ok(v) = HeaderValue::from_maybe_shared(buf.freeze()) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_is_stripped_but_protected_names_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (
                "connection",
                "keep-alive, x-secret, x-cohort, host, X-Forwarded-For",
            ),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate;q=0.5"),
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-keep", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "host: example.com",
                "te: trailers",
                "x-forwarded-for: 1.2.3.4",
                "x-keep: yes"
            ]
        );

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, "[::ffff:10.0.0.1]:5".parse().unwrap());
        assert_eq!(
            h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 10.0.0.1"]
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
