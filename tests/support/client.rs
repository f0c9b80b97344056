//! HTTP clients for the tests: a shared HTTP/1.1 client (optionally from a chosen source
//! address), an h2c client on one connection, request builders, and whole replies read to the
//! end.
//!
//! Owns: speaking HTTP to a listener. Must not touch: raw bytes (`raw.rs`) or TLS clients
//! (`tls.rs`).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{values, within};

pub type H1Client = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/1.1 client whose connections come from `ip` (any 127.0.0.0/8 address works on
/// loopback), for tests keyed on the client address.
pub fn h1_client_from(ip: IpAddr) -> H1Client {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(connector)
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request("GET", addr, path, headers, Bytes::new())
}

/// A request with no body, carrying `Authorization: Bearer <token>` when there is a token.
pub fn bearer_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    request(method, addr, path, &headers, Bytes::new())
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    /// The mock's JSON reply: which upstream answered and the x-cohort values it received.
    pub fn upstream_saw(&self) -> (String, Vec<String>) {
        let j = self.json();
        let cohorts = j["x_cohort"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        (j["upstream"].as_str().unwrap().to_string(), cohorts)
    }
}

pub async fn send(client: &H1Client, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let what = format!("response headers for {} {}", req.method(), req.uri());
    within(&what, client.request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

pub async fn fetch(client: &H1Client, req: Request<Full<Bytes>>) -> Reply {
    read_all(send(client, req).await).await
}

/// Reads a response to its end (data and trailers), failing on a body error.
pub async fn read_all(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let collected = within("the response body", body.collect())
        .await
        .expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// An HTTP/2 client with prior knowledge (h2c) on one connection.
pub struct H2c {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2c {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("h2c connect", TcpStream::connect(addr))
            .await
            .unwrap();
        let (sender, conn) = within(
            "h2c handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        H2c { sender }
    }

    /// The raw sender, for tests that expect a request to be refused (after GOAWAY, say).
    pub fn sender_mut(&mut self) -> &mut hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        &mut self.sender
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        within("h2c ready", self.sender.ready()).await.unwrap();
        within("h2c response headers", self.sender.send_request(req))
            .await
            .unwrap()
    }

    pub async fn fetch(&mut self, req: Request<Full<Bytes>>) -> Reply {
        read_all(self.send(req).await).await
    }
}
