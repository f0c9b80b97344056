//! Upstreams: endpoints, the kept-alive connection pool, power-of-two-choices balancing on
//! in-flight requests, timeouts, and the classification of upstream failures.
//!
//! Owns: everything about talking to backends except the request/response rewriting.
//! Must not touch: routing decisions, metrics registration, configuration files.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::metrics::FailureReason;

/// What an upstream is made of, as validated from the config; two upstreams with equal specs
/// are interchangeable, which lets a reload keep the old pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: String,
    pub endpoints: Vec<Authority>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

pub struct Endpoint {
    pub authority: Authority,
    in_flight: AtomicUsize,
}

/// A live upstream: endpoints with their load, and one pooled client shared by all of them
/// (the pool is keyed per endpoint authority).
pub struct Upstream {
    pub spec: UpstreamSpec,
    pub endpoints: Vec<Endpoint>,
    pub client: Client<HttpConnector, Incoming>,
}

/// Holds one in-flight slot on an endpoint until dropped (when the response body ends).
pub struct InFlight {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(spec.max_idle_per_endpoint)
            .build(connector);
        let endpoints = spec
            .endpoints
            .iter()
            .map(|a| Endpoint {
                authority: a.clone(),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        Upstream {
            spec,
            endpoints,
            client,
        }
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
            },
        )
    }

    pub fn in_flight(&self, index: usize) -> usize {
        self.endpoints[index].in_flight.load(Ordering::Relaxed)
    }
}

/// `http` for every endpoint in this build; TLS upstreams come with their own issue.
pub fn scheme() -> Scheme {
    Scheme::HTTP
}

/// Parses `host:port` or `http://host:port` (no path).
pub fn parse_endpoint(s: &str) -> Result<Authority, String> {
    let rest = if let Some(r) = s.strip_prefix("http://") {
        r
    } else if s.starts_with("https://") {
        return Err("https endpoints are not supported yet; use http://host:port".into());
    } else if s.contains("://") {
        return Err("the only scheme accepted is http://".into());
    } else {
        s
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') {
        return Err("expected host:port or http://host:port, with no path or user".into());
    }
    let authority: Authority = rest.parse().map_err(|e| format!("not a host:port: {e}"))?;
    if authority.port_u16().is_none() {
        return Err("a port is required (host:port)".into());
    }
    if authority.host().is_empty() {
        return Err("a host is required (host:port)".into());
    }
    Ok(authority)
}

/// Maps a client error to the reason label and whether it is a timeout (504) or not (502).
pub fn classify(err: &(dyn StdError + 'static), is_connect: bool) -> FailureReason {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return FailureReason::Timeout,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof if !is_connect => {
                    return FailureReason::Reset
                }
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return FailureReason::Protocol;
            }
            if h.is_timeout() {
                return FailureReason::Timeout;
            }
        }
        cur = e.source();
    }
    if is_connect {
        FailureReason::Connect
    } else {
        FailureReason::Reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("127.0.0.1:80").unwrap().as_str(),
            "127.0.0.1:80"
        );
        assert_eq!(
            parse_endpoint("http://agent.svc:8080").unwrap().as_str(),
            "agent.svc:8080"
        );
        assert_eq!(
            parse_endpoint("http://[::1]:8080/").unwrap().as_str(),
            "[::1]:8080"
        );
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
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_endpoint: 1,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = Arc::new(Upstream::new(spec));
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
