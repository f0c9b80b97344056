//! Validation of the edge settings: CIDR lists, secret and token files, and the `limits`
//! section (connection limits and request hygiene policy), and the validated policy type the
//! edge's `hygiene` applies.

use ipnet::IpNet;

use super::build::{err, Invalid, TableError};

/// What the edge accepts, from the config's `limits` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub underscores: Underscores,
    pub normalize_path: bool,
    pub reject_encoded_slashes: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 16 * 1024,
            underscores: Underscores::Reject,
            normalize_path: false,
            reject_encoded_slashes: true,
        }
    }
}

/// What to do with header names holding `_`, which some servers read as `-` (so a client
/// could smuggle a header past a filter that only knows the dashed spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    Reject,
    Drop,
    Allow,
}

pub(super) fn parse_cidr(path: &str, s: &str) -> Result<IpNet, TableError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            err(
                path,
                Invalid::BadCidr {
                    value: s.to_string(),
                },
            )
        })
}

/// A secret or token file (relative to `base`): its contents without the trailing newline
/// editors add. Recorded in `files` before it is read, so a file that is fixed or rotated
/// later is noticed like a rotated certificate.
pub(super) fn read_secret(
    path: &str,
    base: &std::path::Path,
    relative: &std::path::Path,
    files: &mut super::secure::TlsFiles,
) -> Result<Vec<u8>, TableError> {
    let file = &files.take(base, relative);
    let fail = |reason: String| {
        err(
            path,
            Invalid::Secret {
                path: file.display().to_string(),
                reason,
            },
        )
    };
    let mut bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.len() < crate::routing::signed::MIN_SECRET_BYTES {
        return Err(fail(format!(
            "must hold at least {} bytes",
            crate::routing::signed::MIN_SECRET_BYTES
        )));
    }
    Ok(bytes)
}

pub(super) fn build_limits(
    l: &crate::config::RawLimits,
) -> Result<(super::ConnLimits, Policy), TableError> {
    let at_least = |field: &str, value: u64, min: u64| {
        if value < min {
            Err(err(format!("limits.{field}"), Invalid::TooSmall { min }))
        } else {
            Ok(())
        }
    };
    at_least(
        "max_request_header_bytes",
        l.max_request_header_bytes as u64,
        1024,
    )?;
    at_least("max_request_headers", l.max_request_headers as u64, 1)?;
    at_least("max_uri_bytes", l.max_uri_bytes as u64, 64)?;
    at_least("max_connections", l.max_connections as u64, 1)?;
    at_least(
        "http2_max_concurrent_streams",
        u64::from(l.http2_max_concurrent_streams),
        1,
    )?;
    let limits = super::ConnLimits {
        header_read_timeout: l.header_read_timeout,
        body_read_timeout: l.body_read_timeout,
        body_min_rate: crate::upstream::body::MinRate {
            bytes_per_sec: l.body_min_rate,
            window: l.body_rate_window,
        },
        keepalive_timeout: l.keepalive_timeout,
        max_connections: l.max_connections,
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        max_header_bytes: l.max_request_header_bytes,
        max_headers: l.max_request_headers,
        max_uri_bytes: l.max_uri_bytes,
    };
    let policy = Policy {
        max_header_bytes: l.max_request_header_bytes,
        max_headers: l.max_request_headers,
        max_uri_bytes: l.max_uri_bytes,
        underscores: match l.underscore_headers {
            crate::config::RawUnderscores::Reject => Underscores::Reject,
            crate::config::RawUnderscores::Drop => Underscores::Drop,
            crate::config::RawUnderscores::Allow => Underscores::Allow,
        },
        normalize_path: l.normalize_path,
        reject_encoded_slashes: l.reject_encoded_slashes,
    };
    Ok((limits, policy))
}
