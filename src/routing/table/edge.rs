//! Validation of the edge settings: CIDR lists, secret and token files, and the `limits`
//! section (connection limits and request hygiene policy).

use ipnet::IpNet;

use super::build::{err, Invalid, TableError};

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
) -> Result<(super::ConnLimits, crate::edge::hygiene::Policy), TableError> {
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
        body_min_rate: crate::body::MinRate {
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
    let policy = crate::edge::hygiene::Policy {
        max_header_bytes: l.max_request_header_bytes,
        max_headers: l.max_request_headers,
        max_uri_bytes: l.max_uri_bytes,
        underscores: match l.underscore_headers {
            crate::config::RawUnderscores::Reject => crate::edge::hygiene::Underscores::Reject,
            crate::config::RawUnderscores::Drop => crate::edge::hygiene::Underscores::Drop,
            crate::config::RawUnderscores::Allow => crate::edge::hygiene::Underscores::Allow,
        },
        normalize_path: l.normalize_path,
        reject_encoded_slashes: l.reject_encoded_slashes,
    };
    Ok((limits, policy))
}
