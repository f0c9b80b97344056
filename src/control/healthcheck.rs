//! The client of `cohort healthcheck`: one plain-HTTP GET, what a container's health check runs
//! against the admin listener's `/healthz`.
//!
//! Owns: that GET and its timeout. Must not touch: the serving table, the proxy's upstream
//! clients and pools (it builds its own, once per run), the demo.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `url` and returns its status, or why there is none within `timeout`.
pub async fn probe(url: &str, timeout: Duration) -> Result<StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs can be probed"));
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let get = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}
