//! Cohort key extraction: cookie and query parsing and the source list, on any header bytes
//! and request target. A key, when found, is never empty.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use cohort::cohort::{cookie_value, extract_key, query_value, KeySource};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // name length, name, then the rest split in two at its middle: Cookie value, target.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 8).min(rest.len());
    let (name, rest) = rest.split_at(n);
    let name = String::from_utf8_lossy(name).into_owned();
    let (cookie, target) = rest.split_at(rest.len() / 2);

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        headers.append(http::header::COOKIE, v.clone());
        headers.append(HeaderName::from_static("x-user-id"), v);
    }
    if let Some(v) = cookie_value(&headers, &name) {
        assert!(!v.is_empty());
    }
    let query = String::from_utf8_lossy(target);
    if let Some(v) = query_value(&query, &name) {
        assert!(!v.is_empty());
    }
    let uri: Uri = std::str::from_utf8(target)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let sources = [
        KeySource::Header(HeaderName::from_static("x-user-id")),
        KeySource::Cookie(name.clone()),
        KeySource::Query(name),
        KeySource::ClientIp,
    ];
    for start in 0..sources.len() {
        let key = extract_key(
            &sources[start..],
            &headers,
            &uri,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        );
        assert!(key.is_some_and(|k| !k.is_empty()));
    }
});
