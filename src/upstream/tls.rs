//! Client TLS for `https://` upstreams: the roots (a CA file or the system's), the optional
//! client certificate, and recognising a TLS failure in an upstream error.
//!
//! Owns: the rustls client config. Must not touch: listener TLS (`crate::tls`, whose shared
//! material this uses), sockets (the connector in `client` uses what this builds).

use std::path::Path;
use std::sync::OnceLock;

use rustls::{ClientConfig, RootCertStore};

use crate::tls::{fail, load_certs, load_key, provider, TlsError, VERSIONS};

/// The system's roots, read once (reading them is slow and they do not change under us).
fn native_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "while loading the system's root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates loaded");
            roots
        })
        .clone()
}

/// Client config for an upstream: roots from `ca_file` or the system, optional client cert.
/// ALPN is set by the connector from the upstream's protocol.
pub fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(path, format!("not a usable CA certificate: {e}")))?;
            }
            roots
        }
        None => native_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| fail(Path::new("<tls>"), e))?
        .with_root_certificates(roots);
    match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                fail(
                    key,
                    format!(
                        "does not fit the client certificate {}: {e}",
                        cert.display()
                    ),
                )
            }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Whether `err`, somewhere in its chain, is a TLS failure.
pub fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error an io::Error wraps (it returns that error's own
        // source), so step into the wrapped error itself: hyper-rustls wraps tokio-rustls's
        // io::Error, which wraps the rustls::Error, in a second io::Error.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_nested_io_errors() {
        let tls = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let direct = std::io::Error::new(std::io::ErrorKind::InvalidData, tls());
        assert!(is_tls_error(&direct));
        // What a failed upstream handshake looks like through hyper-rustls.
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls()));
        assert!(is_tls_error(&nested));
        assert!(!is_tls_error(&std::io::Error::other(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
    }
}
