//! TLS material shared by both sides: the crypto provider, loading PEM certificates and keys,
//! the SNI certificate resolver and server config for listeners, and the hash that notices a
//! rotated file. rustls with `ring`. The client config of `https://` upstreams is
//! `upstream::tls`'s.
//!
//! Owns: reading TLS files and building listener configs. Must not touch: anything of the
//! crate (a leaf), sockets (the listener and the upstream connector use what this builds).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file that could not be used, with the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

/// A [`TlsError`] about `path`.
pub fn fail(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The protocol versions cohort speaks, as a listener and as a client.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| fail(path, format!("no usable PEM private key: {e}")))
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    CertifiedKey::from_der(chain, der, &provider())
        .map(Arc::new)
        .map_err(|e| {
            fail(
                key,
                format!("does not fit the certificate {}: {e}", cert.display()),
            )
        })
}

/// Picks a listener's certificate by SNI: exact name, then a `*.suffix` wildcard, then the
/// default (used also when the client sends no SNI). A wildcard stands for exactly one label,
/// as browsers read certificates (RFC 6125 §6.4.3): `*.example.com` covers `a.example.com`,
/// not `a.b.example.com` nor `example.com`.
#[derive(Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`, so a name is looked up once, by what follows its first label.
    wildcards: HashMap<String, Arc<CertifiedKey>>,
    /// The first certificate without names.
    default: Option<Arc<CertifiedKey>>,
    /// The first certificate, the default when every one has names.
    first: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcards.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .field("first", &self.first.is_some())
            .finish()
    }
}

impl SniResolver {
    /// Adds `key` for `names`; the first one with no names becomes the default, else the
    /// first one added.
    pub fn add(&mut self, names: &[String], key: Arc<CertifiedKey>) {
        if names.is_empty() && self.default.is_none() {
            self.default = Some(Arc::clone(&key));
        }
        if self.first.is_none() {
            self.first = Some(Arc::clone(&key));
        }
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => {
                    // As before, the first certificate listed for a wildcard keeps it.
                    self.wildcards
                        .entry(parent.to_string())
                        .or_insert_with(|| Arc::clone(&key));
                }
                None => {
                    self.exact.insert(name, Arc::clone(&key));
                }
            }
        }
    }

    fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.default.as_ref().or(self.first.as_ref()).cloned()
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.fallback();
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        name.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcards.get(parent))
            .map(Arc::clone)
            .or_else(|| self.fallback())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A listener's server config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: SniResolver) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A hash of the files' contents (a missing file hashes as missing), so a reload notices a
/// rotated certificate even when the YAML did not change.
pub fn files_hash(paths: &[PathBuf]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        match std::fs::read(p) {
            Ok(bytes) => h.update(&bytes),
            Err(_) => h.update(b"\0missing"),
        }
    }
    h.digest()
}
