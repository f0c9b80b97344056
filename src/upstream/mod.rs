//! Upstreams: endpoints, power-of-two-choices balancing on in-flight requests, which
//! connection pool serves an endpoint (`pool` for cleartext HTTP/1.1, hyper-util's client for
//! TLS and HTTP/2), timeouts, and the classification of upstream failures.
//!
//! Owns: everything about talking to backends except the request/response rewriting.
//! Must not touch: routing decisions, metrics registration, configuration files.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::ServerName;

use crate::failure;
use crate::tls::TlsError;
use body::RequestBody;
use exchange::Sending;
use pool::Pool;

pub(crate) mod body;
mod client;
mod exchange;
pub(crate) mod pool;
mod spec;
pub(crate) mod tls;

pub use spec::{parse_endpoint, AuthorityFrom, EndpointSpec, Protocol, UpstreamSpec, UpstreamTls};

/// How an endpoint's requests travel: cleartext HTTP/1.1 through its own pool, TLS and HTTP/2
/// through a hyper-util client of its own.
// The pool stays inline, where the request path reads it, as it was before there was a
// choice; an endpoint is built once per table, so the unused variant's room costs nothing.
#[allow(clippy::large_enum_variant)]
enum Via {
    Pool(Pool),
    Client(UpstreamClient),
}

pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    in_flight: AtomicUsize,
    via: Via,
}

pub use client::UpstreamClient;

/// A live upstream: endpoints with their load, each with its pool or its hyper-util client.
pub struct Upstream {
    pub spec: UpstreamSpec,
    pub endpoints: Vec<Endpoint>,
}

/// Holds one in-flight slot on an endpoint until dropped (when the response body ends), and
/// with it the pooled connection the response came on, which then goes back to the pool.
pub struct InFlight {
    upstream: Arc<Upstream>,
    index: usize,
    conn: Option<pool::Sender>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let endpoint = &self.upstream.endpoints[self.index];
        endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let (Some(conn), Via::Pool(pool)) = (self.conn.take(), &endpoint.via) {
            pool.put(conn);
        }
    }
}

/// An upstream exchange that failed, with whether it failed before a connection was open.
#[derive(Debug)]
pub struct SendError {
    pub connect: bool,
    source: Box<dyn StdError + Send + Sync>,
}

impl SendError {
    pub fn error(&self) -> &(dyn StdError + 'static) {
        &*self.source
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(spec.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // The TLS connector wraps plain `http://` too, so one client type serves both.
        http.enforce_http(false);
        let uses_tls = spec.endpoints.iter().any(|e| e.scheme == Scheme::HTTPS);
        let config = if uses_tls {
            let t = &spec.tls;
            let client = t
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            tls::client_config(t.ca_file.as_deref(), client)?
        } else {
            // Never used for a handshake; avoids reading the system roots for nothing.
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError {
                    path: "<tls>".into(),
                    reason: e.to_string(),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let server_name = match &spec.tls.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| TlsError {
                path: "server_name".into(),
                reason: format!("{name:?}: {e}"),
            })?),
            None => None,
        };
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            let via = if e.scheme == Scheme::HTTP && spec.protocol != Protocol::Http2 {
                Via::Pool(Pool::new(
                    e.authority.clone(),
                    spec.max_idle_per_endpoint,
                    http.clone(),
                ))
            } else {
                let client = client::for_endpoint(&spec, e, &http, &config, server_name.clone())?;
                Via::Client(client)
            };
            endpoints.push(Endpoint {
                scheme: e.scheme.clone(),
                authority: e.authority.clone(),
                in_flight: AtomicUsize::new(0),
                via,
            });
        }
        Ok(Upstream { spec, endpoints })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Power of two choices: two distinct random endpoints, the less loaded wins. Takes an
    /// in-flight slot on the chosen one.
    pub fn pick(self: &Arc<Self>) -> (&Endpoint, InFlight) {
        let n = self.endpoints.len();
        let index = if n <= 1 {
            0
        } else {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
            if load(b) < load(a) {
                b
            } else {
                a
            }
        };
        self.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        (
            &self.endpoints[index],
            InFlight {
                upstream: Arc::clone(self),
                index,
                conn: None,
            },
        )
    }

    /// Sends `req` to the endpoint `slot` holds. `req` carries the origin-form path and the
    /// client's Host, if it named one; the authority the upstream sees is set here, by
    /// `spec.authority`, as Host on the pool's HTTP/1.1 and as the URI hyper-util's client
    /// takes `:authority` (or, on HTTP/1.1, Host) from.
    ///
    /// A plain fn, not an async one: the request is handed to the pool or the client before it
    /// returns, so the future does not keep a copy of it next to theirs.
    pub fn send<'a>(
        &'a self,
        slot: &'a mut InFlight,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + 'a {
        let endpoint = &self.endpoints[slot.index];
        let client = match &endpoint.via {
            Via::Pool(pool) => {
                if self.spec.authority == AuthorityFrom::Endpoint {
                    // The pool names its endpoint where the request names no host.
                    req.headers_mut().remove(header::HOST);
                }
                return Sending::Pooled {
                    slot,
                    sent: pool.send(req),
                };
            }
            Via::Client(client) => client,
        };
        let named = match self.spec.authority {
            AuthorityFrom::Client => req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok()),
            AuthorityFrom::Endpoint => {
                req.headers_mut().remove(header::HOST);
                None
            }
        };
        let authority = named.unwrap_or_else(|| endpoint.authority.clone());
        match client::request(client, endpoint, authority, req) {
            Ok(sent) => Sending::Client { sent },
            Err(e) => Sending::Failed { error: Some(e) },
        }
    }

    pub fn in_flight(&self, index: usize) -> usize {
        self.endpoints[index].in_flight.load(Ordering::Relaxed)
    }
}

/// Whether a failed send was cohort's own doing: the request it assembled for the upstream
/// did not hold together (an `http::Error` from building its URI), which no backend or client
/// behaviour explains, so it is answered 500 rather than blamed on the upstream.
pub fn internal(err: &(dyn StdError + 'static)) -> Option<failure::Internal> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<http::Error>() {
            return Some(failure::Internal::Request);
        }
        cur = e.source();
    }
    None
}

/// Maps a client error to the reason label and whether it is a timeout (504) or not (502).
pub fn classify(err: &(dyn StdError + 'static), is_connect: bool) -> failure::Upstream {
    if tls::is_tls_error(err) {
        return failure::Upstream::Tls;
    }
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return failure::Upstream::Timeout,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof if !is_connect => {
                    return failure::Upstream::Reset
                }
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return failure::Upstream::Protocol;
            }
            if h.is_timeout() {
                return failure::Upstream::Timeout;
            }
        }
        cur = e.source();
    }
    if is_connect {
        failure::Upstream::Connect
    } else {
        failure::Upstream::Reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cohort_could_not_build_is_internal_not_the_upstreams() {
        // What `client::request` meets when the URI it assembles is refused.
        let built = http::Uri::builder()
            .scheme("http")
            .path_and_query("/x")
            .build();
        let Err(err) = built else {
            panic!("a scheme without an authority builds")
        };
        let sent = SendError {
            connect: false,
            source: Box::new(err),
        };
        assert_eq!(internal(sent.error()), Some(failure::Internal::Request));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(internal(&reset), None);
        assert_eq!(classify(&reset, false), failure::Upstream::Reset);
    }

    fn parsed(s: &str) -> String {
        let e = parse_endpoint(s).unwrap();
        format!("{}://{}", e.scheme, e.authority)
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(parsed("127.0.0.1:80"), "http://127.0.0.1:80");
        assert_eq!(parsed("http://agent.svc:8080"), "http://agent.svc:8080");
        assert_eq!(parsed("http://[::1]:8080/"), "http://[::1]:8080");
        assert_eq!(parsed("https://agent.svc"), "https://agent.svc:443");
        assert_eq!(parsed("https://agent.svc:8443"), "https://agent.svc:8443");
        for bad in [
            "127.0.0.1",
            "ftp://x:1",
            "http://x:1/path",
            "x:notaport",
            "http://u@x:1",
            ":80",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let spec = UpstreamSpec {
            name: "u".into(),
            endpoints: vec![
                parse_endpoint("127.0.0.1:1").unwrap(),
                parse_endpoint("127.0.0.1:2").unwrap(),
            ],
            protocol: Protocol::Http1,
            tls: UpstreamTls {
                ca_file: None,
                server_name: None,
                client_cert: None,
                files_hash: 0,
            },
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            tunnel_idle_timeout: Duration::from_secs(1),
            max_idle_per_endpoint: 1,
            authority: AuthorityFrom::Client,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = Arc::new(Upstream::new(spec).unwrap());
            // With two endpoints both are always sampled, so the idle one must win.
            let mut held = Vec::new();
            for _ in 0..10 {
                let (_, g) = up.pick();
                held.push(g);
            }
            assert_eq!(up.in_flight(0) + up.in_flight(1), 10);
            assert!(up.in_flight(0).abs_diff(up.in_flight(1)) <= 1);
            drop(held);
            assert_eq!(up.in_flight(0) + up.in_flight(1), 0);
        });
    }
}
