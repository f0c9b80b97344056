//! The hyper-util client of one TLS or HTTP/2 endpoint, and how a request goes through it.
//!
//! Owns: the connector that dials the endpoint whatever authority a request names, SNI, and
//! the URI that carries the authority the upstream sees. Must not touch: endpoint choice and
//! in-flight counts (`super`), the cleartext HTTP/1.1 pool (`crate::upstream::pool`).

use std::time::Duration;

use http::uri::{Authority, Uri};
use http::Request;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use super::{Endpoint, EndpointSpec, Protocol, SendError, UpstreamSpec};
use crate::tls::TlsError;
use crate::upstream::body::RequestBody;

pub type UpstreamClient = Client<HttpsConnector<FixedEndpoint>, RequestBody>;

/// A connector that always dials its endpoint, whatever authority the request names: the
/// request's URI carries the authority the upstream is to see (`:authority` on HTTP/2 comes
/// from it), not where to connect.
#[derive(Clone)]
pub struct FixedEndpoint {
    http: HttpConnector,
    dst: Uri,
}

impl tower_service::Service<Uri> for FixedEndpoint {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, _named: Uri) -> Self::Future {
        self.http.call(self.dst.clone())
    }
}

/// Sends `req` through an endpoint's hyper-util client, naming `authority` in its URI: no Host
/// goes with it, so HTTP/1.1 gets Host and HTTP/2 `:authority` from the same place, and the
/// two can never differ (RFC 9113 §8.3.1).
pub(super) fn request(
    client: &UpstreamClient,
    endpoint: &Endpoint,
    authority: Authority,
    mut req: Request<RequestBody>,
) -> Result<ResponseFuture, SendError> {
    let mut uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(authority);
    if let Some(pq) = req.uri().path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    *req.uri_mut() = uri.build().map_err(|e| SendError {
        connect: false,
        source: Box::new(e),
    })?;
    Ok(client.request(req))
}

/// The hyper-util client of one TLS or HTTP/2 endpoint. Its pool is keyed by the authority a
/// request names, and its connector dials the endpoint for any of them; SNI is the upstream's
/// `server_name` or the endpoint's host, never the authority sent.
pub(super) fn for_endpoint(
    spec: &UpstreamSpec,
    e: &EndpointSpec,
    http: &HttpConnector,
    config: &rustls::ClientConfig,
    server_name: Option<ServerName<'static>>,
) -> Result<UpstreamClient, TlsError> {
    let dst = Uri::builder()
        .scheme(e.scheme.clone())
        .authority(e.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|err| TlsError {
            path: "endpoints".into(),
            reason: err.to_string(),
        })?;
    let host = e
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let sni = match server_name {
        Some(name) => name,
        None => ServerName::try_from(host.to_string()).map_err(|err| TlsError {
            path: "endpoints".into(),
            reason: format!("{host:?}: {err}"),
        })?,
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_or_http()
        .with_server_name_resolver(FixedServerNameResolver::new(sni));
    let fixed = FixedEndpoint {
        http: http.clone(),
        dst,
    };
    let connector = match spec.protocol {
        Protocol::Http1 => builder.enable_http1().wrap_connector(fixed),
        Protocol::Http2 => builder.enable_http2().wrap_connector(fixed),
        Protocol::Auto => builder.enable_all_versions().wrap_connector(fixed),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(spec.max_idle_per_endpoint)
        .http2_only(spec.protocol == Protocol::Http2)
        .http2_adaptive_window(true)
        .build(connector))
}
