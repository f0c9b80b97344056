//! The TLS parts of a table: listener certificates (an SNI resolver per listener) and upstream
//! TLS settings, with every file they read recorded (as `edge` records secret and token files)
//! so a reload notices rotation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use super::build::{Invalid, TableError};
use crate::config::{RawListenerTls, RawUpstreamTls};
use crate::tls::{self, SniResolver};
use crate::upstream::UpstreamTls;

/// Every file besides the config that a table was built from: certificates, keys, CA roots,
/// the admin token and override secrets. Watched and fingerprinted, so a rotation is a reload.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles(pub Vec<PathBuf>);

impl TlsFiles {
    pub(super) fn take(&mut self, base: &Path, p: &Path) -> PathBuf {
        let full = base.join(p);
        self.0.push(full.clone());
        full
    }
}

fn tls_err(path: String, e: impl std::fmt::Display) -> TableError {
    TableError {
        path,
        kind: Invalid::Tls {
            reason: e.to_string(),
        },
    }
}

pub fn listener_config(
    path: &str,
    raw: &RawListenerTls,
    base: &Path,
    files: &mut TlsFiles,
) -> Result<Arc<ServerConfig>, TableError> {
    if raw.certificates.is_empty() {
        return Err(TableError {
            path: format!("{path}.certificates"),
            kind: Invalid::Empty,
        });
    }
    let mut resolver = SniResolver::default();
    for (i, c) in raw.certificates.iter().enumerate() {
        let cp = format!("{path}.certificates[{i}]");
        for (j, n) in c.server_names.iter().enumerate() {
            let body = n.strip_prefix("*.").unwrap_or(n);
            if body.is_empty()
                || !body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
            {
                return Err(TableError {
                    path: format!("{cp}.server_names[{j}]"),
                    kind: Invalid::BadHost { value: n.clone() },
                });
            }
        }
        let cert = files.take(base, &c.cert);
        let key = files.take(base, &c.key);
        let ck = tls::certified_key(&cert, &key).map_err(|e| tls_err(cp.clone(), e))?;
        resolver.add(&c.server_names, ck);
    }
    tls::server_config(resolver).map_err(|e| tls_err(path.to_string(), e))
}

pub fn upstream_tls(
    path: &str,
    raw: Option<&RawUpstreamTls>,
    base: &Path,
    files: &mut TlsFiles,
) -> Result<UpstreamTls, TableError> {
    let Some(raw) = raw else {
        return Ok(UpstreamTls {
            ca_file: None,
            server_name: None,
            client_cert: None,
            files_hash: 0,
        });
    };
    let mut mine = TlsFiles::default();
    let ca_file = raw.ca_file.as_ref().map(|p| mine.take(base, p));
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(c), Some(k)) => Some((mine.take(base, c), mine.take(base, k))),
        (None, None) => None,
        _ => {
            return Err(tls_err(
                format!("{path}.client_cert"),
                "client_cert and client_key go together",
            ));
        }
    };
    if let Some(name) = &raw.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(TableError {
                path: format!("{path}.server_name"),
                kind: Invalid::BadHost {
                    value: name.clone(),
                },
            });
        }
    }
    // Read now so a missing or broken file is a config error, not a failed request later.
    let client = client_cert
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    if ca_file.is_some() || client.is_some() {
        crate::upstream::tls::client_config(ca_file.as_deref(), client)
            .map_err(|e| tls_err(path.to_string(), e))?;
    }
    let files_hash = tls::files_hash(&mine.0);
    files.0.extend(mine.0);
    Ok(UpstreamTls {
        ca_file,
        server_name: raw.server_name.clone(),
        client_cert,
        files_hash,
    })
}
