//! TLS for the integration tests: a private CA made with rcgen, leaf certificates written to
//! files, server configs for TLS mock upstreams, and a rustls client that speaks HTTP/1.1 or
//! HTTP/2 (by ALPN) to a TLS listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{read_all, within, Reply};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that exists only for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate signed by a [`TestCa`], with its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate as `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// A leaf for `names` (DNS names or IP addresses); the first is also its common name.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A rustls client config trusting only this CA, offering `alpn` (such as `["h2"]`).
    pub fn client_config(&self, alpn: &[&str]) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }

    /// Writes `dir/<stem>.crt` and `dir/<stem>.key`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// Replaces both files the way cert-manager's tooling does: new files renamed over the old.
    pub fn replace(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    /// A server config presenting this leaf, offering `alpn`; with `client_ca`, clients must
    /// present a certificate signed by it.
    pub fn server_config(&self, alpn: &[&str], client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.der.clone()], self.key())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS handshake with `addr`, sending `server_name` as SNI unless the config disables it
/// (the name is still what the certificate is verified against).
pub async fn handshake(
    addr: std::net::SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> TlsStream<TcpStream> {
    let tcp = within("TCP connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    within(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS handshake for {server_name}: {e}"))
}

/// The leaf certificate the server presented.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

/// The ALPN protocol the server chose.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

// hyper's two senders share no trait: the one `match` over them is here.
impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send_request(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// One TLS connection to a listener, speaking whatever ALPN chose (HTTP/2 for `h2`, else
/// HTTP/1.1), kept open across requests.
pub struct TlsConn {
    sender: Sender,
    host: String,
    /// The certificate the server presented on this connection.
    pub leaf: CertificateDer<'static>,
    pub alpn: Option<String>,
}

impl TlsConn {
    pub async fn connect(addr: std::net::SocketAddr, config: ClientConfig, host: &str) -> Self {
        let stream = handshake(addr, config, host).await;
        let (leaf, alpn) = (peer_leaf(&stream), alpn(&stream));
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some("h2") {
            let (s, conn) = within(
                "the h2 handshake",
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = within(
                "the HTTP/1.1 handshake",
                hyper::client::conn::http1::handshake(io),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        };
        TlsConn {
            sender,
            host: host.to_string(),
            leaf,
            alpn,
        }
    }

    pub fn version(&self) -> Version {
        match self.sender {
            Sender::H1(_) => Version::HTTP_11,
            Sender::H2(_) => Version::HTTP_2,
        }
    }

    /// A GET of `path` for this connection's host, read to the end.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::builder().method("GET");
        b = match self.sender {
            // HTTP/2 carries the host in :authority, HTTP/1.1 in Host (origin-form target).
            Sender::H2(_) => b.uri(format!("https://{}{path}", self.host)),
            Sender::H1(_) => b.uri(path).header("host", &self.host),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        within("the connection to be ready", self.sender.ready())
            .await
            .unwrap();
        let resp = within("response headers", self.sender.send_request(req))
            .await
            .unwrap();
        read_all(resp).await
    }
}
