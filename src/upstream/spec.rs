//! What an upstream is made of, as the table validates it: endpoints, protocol, TLS files,
//! timeouts and the authority it is sent. Two equal specs are interchangeable, which lets a
//! reload keep the old pool.
//!
//! Owns: the spec types and parsing an endpoint. Must not touch: connections (`super`).

use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};

/// Which authority an upstream is sent: as Host on HTTP/1.1 and as `:authority` on HTTP/2,
/// the same one whatever the protocol, and never a Host that differs from `:authority`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthorityFrom {
    /// The client's (its Host or `:authority`), as Envoy passes it; the endpoint's when the
    /// client named none (HTTP/1.0).
    #[default]
    Client,
    /// The endpoint's `host:port`, for backends that route on their own name.
    Endpoint,
}

/// How cohort speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// h2c with prior knowledge in cleartext, ALPN `h2` over TLS.
    Http2,
    /// ALPN over TLS (h2 preferred); HTTP/1.1 in cleartext.
    Auto,
}

/// TLS settings of an upstream, with a hash of the files so a rotated certificate makes a
/// different spec (and a fresh pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub files_hash: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// What an upstream is made of, as validated from the config; two upstreams with equal specs
/// are interchangeable, which lets a reload keep the old pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    pub protocol: Protocol,
    pub tls: UpstreamTls,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub authority: AuthorityFrom,
}

/// Parses `host:port`, `http://host:port` or `https://host[:port]` (no path).
pub fn parse_endpoint(s: &str) -> Result<EndpointSpec, String> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        (Scheme::HTTP, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (Scheme::HTTPS, r)
    } else if s.contains("://") {
        return Err("the schemes accepted are http:// and https://".into());
    } else {
        (Scheme::HTTP, s)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') {
        return Err(
            "expected host:port, http://host:port or https://host:port, with no path or user"
                .into(),
        );
    }
    let mut authority: Authority = rest.parse().map_err(|e| format!("not a host:port: {e}"))?;
    if authority.host().is_empty() {
        return Err("a host is required (host:port)".into());
    }
    if authority.port_u16().is_none() {
        if scheme != Scheme::HTTPS {
            return Err("a port is required (host:port)".into());
        }
        authority = format!("{rest}:443")
            .parse()
            .map_err(|e| format!("not a host: {e}"))?;
    }
    Ok(EndpointSpec { scheme, authority })
}
