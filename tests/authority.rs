//! The authority an upstream sees is one rule for every protocol: the client's by default, the
//! endpoint's with `authority: endpoint`, sent as Host on HTTP/1.1 and as `:authority` on
//! HTTP/2, and never a Host beside an `:authority` that differs (RFC 9113 §8.3.1). The backend
//! here checks that, as strict HTTP/2 servers do, and records the whole header block.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::TestCa;
use support::*;
use tokio::net::TcpListener;

/// One request as the strict backend received it: version, `:authority` (HTTP/2) and every
/// header field, sorted.
type Block = (Version, Option<String>, Vec<(String, String)>);

/// A backend serving HTTP/1.1 and HTTP/2 (over TLS when given a config) that refuses, with
/// 400, an HTTP/2 request whose `host` differs from its `:authority`.
async fn strict_backend(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<Mutex<Vec<Block>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let blocks = Arc::clone(&seen);
    tokio::spawn(async move {
        let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
            TokioExecutor::new(),
        ));
        while let Ok((tcp, _)) = listener.accept().await {
            let (blocks, builder, tls) = (Arc::clone(&blocks), Arc::clone(&builder), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let blocks = Arc::clone(&blocks);
                    async move { Ok::<_, Infallible>(check(&blocks, req)) }
                });
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(config) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn check(blocks: &Mutex<Vec<Block>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authority = req.uri().authority().map(|a| a.to_string());
    let fields = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()));
    // Sorted: a header map's order says nothing about the wire's.
    let mut fields: Vec<_> = fields.collect();
    fields.sort();
    blocks
        .lock()
        .unwrap()
        .push((req.version(), authority.clone(), fields));
    let host = req.headers().get("host").map(|h| h.to_str().unwrap());
    let malformed =
        req.version() == Version::HTTP_2 && host.is_some() && host != authority.as_deref();
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    if malformed {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

const CLIENT_HOST: &str = "agent.example:8443";

/// What the strict backend saw for one GET with Host `CLIENT_HOST` through an upstream with
/// these options, over TLS (offering `alpn`) or not; and the status the client got.
async fn seen_through(options: &[&str], alpn: Option<&[&str]>) -> (StatusCode, Block, SocketAddr) {
    let ca = TestCa::new("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    let (tls, scheme) = match alpn {
        Some(alpn) => {
            let ca_file = ca.write(dir.path(), "ca.pem");
            lines.push(format!("tls: {{ca_file: {}}}", yaml_path(&ca_file)));
            let server = ca.leaf(&["127.0.0.1"]).server_config(alpn, None);
            (Some(server), "https://")
        }
        None => (None, ""),
    };
    let (addr, blocks) = strict_backend(tls).await;
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let proxy = proxy_to_backend(format!("{scheme}{addr}"), &lines).await;
    let r = proxy
        .get("/v1/chat", &[("host", CLIENT_HOST), ("x-user-id", "u1")])
        .await;
    let block = blocks
        .lock()
        .unwrap()
        .pop()
        .expect("the backend saw the request");
    (r.status, block, addr)
}

/// The header block an upstream gets for that GET, but for the field naming the authority.
fn forwarded(host: Option<&str>) -> Vec<(String, String)> {
    let mut want = vec![("x-user-id", "u1")];
    if let Some(h) = host {
        want.insert(0, ("host", h));
    }
    want.extend([
        ("x-cohort", "backend"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", CLIENT_HOST),
    ]);
    let mut want: Vec<_> = want
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    want
}

/// What a case is called, the upstream's options, the ALPN its TLS backend offers (none for
/// cleartext), and the version the backend must see.
type Case = (
    &'static str,
    &'static [&'static str],
    Option<&'static [&'static str]>,
    Version,
);

const TLS_H2: Option<&[&str]> = Some(&["h2", "http/1.1"]);
const TLS_H1: Option<&[&str]> = Some(&["http/1.1"]);

#[tokio::test]
async fn every_protocol_sends_the_clients_authority_by_default() {
    let cases: [Case; 4] = [
        ("cleartext HTTP/1.1", &[], None, Version::HTTP_11),
        ("h2c", &["protocol: http2"], None, Version::HTTP_2),
        (
            "auto over TLS, ALPN h2",
            &["protocol: auto"],
            TLS_H2,
            Version::HTTP_2,
        ),
        (
            "auto over TLS, ALPN http/1.1",
            &["protocol: auto"],
            TLS_H1,
            Version::HTTP_11,
        ),
    ];
    for (what, options, alpn, version) in cases {
        let (status, (seen_version, authority, fields), _) = seen_through(options, alpn).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        assert_eq!(seen_version, version, "{what}");
        if version == Version::HTTP_2 {
            assert_eq!(
                authority.as_deref(),
                Some(CLIENT_HOST),
                "{what}: :authority"
            );
            assert_eq!(fields, forwarded(None), "{what}: no host beside :authority");
        } else {
            assert_eq!(fields, forwarded(Some(CLIENT_HOST)), "{what}");
        }
    }
}

#[tokio::test]
async fn authority_endpoint_sends_the_endpoints_name_on_every_protocol() {
    let cases: [Case; 3] = [
        (
            "cleartext HTTP/1.1",
            &["authority: endpoint"],
            None,
            Version::HTTP_11,
        ),
        (
            "h2c",
            &["authority: endpoint", "protocol: http2"],
            None,
            Version::HTTP_2,
        ),
        (
            "auto over TLS, ALPN h2",
            &["authority: endpoint", "protocol: auto"],
            TLS_H2,
            Version::HTTP_2,
        ),
    ];
    for (what, options, alpn, version) in cases {
        let (status, (seen_version, authority, fields), addr) = seen_through(options, alpn).await;
        let endpoint = addr.to_string();
        assert_eq!(status, StatusCode::OK, "{what}");
        assert_eq!(seen_version, version, "{what}");
        if version == Version::HTTP_2 {
            assert_eq!(
                authority.as_deref(),
                Some(endpoint.as_str()),
                "{what}: :authority"
            );
            assert_eq!(fields, forwarded(None), "{what}");
        } else {
            assert_eq!(fields, forwarded(Some(&endpoint)), "{what}");
        }
    }
}
