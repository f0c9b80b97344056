//! Request hygiene at the edge: size limits cohort enforces itself (exact caps, unlike hyper's
//! buffer size), Host sanity, header-name policy, and the normalised path routes match on.
//!
//! Owns: deciding whether a request head is acceptable and what path it is routed by, by the
//! policy the table validated (`routing::table::Policy`). Must not touch: routing, upstreams,
//! metrics registration. Pure functions over a request's head; a refusal is a `failure::Downstream`.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Uri, Version};

use crate::failure::Downstream;
use crate::routing::table::{Policy, Underscores};

/// Checks a request head. Returns the normalised path to route by (dot segments removed,
/// slashes merged) when it differs from the received one, `None` when the received path is
/// already normal (the usual case, which allocates nothing). Drops underscore headers when the
/// policy says so. With `normalize_path`, the URI is rewritten too, so the upstream sees what
/// was routed.
pub fn check<B>(req: &mut Request<B>, policy: &Policy) -> Result<Option<String>, Downstream> {
    let uri_len = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if uri_len > policy.max_uri_bytes {
        return Err(Downstream::UriTooLong);
    }
    if req.headers().len() > policy.max_headers {
        return Err(Downstream::HeadersTooLarge);
    }
    // Counted as on the wire for HTTP/1.1: "name: value\r\n".
    let bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > policy.max_header_bytes {
        return Err(Downstream::HeadersTooLarge);
    }
    check_host(req.uri(), req.headers(), req.version())?;
    if policy.underscores != Underscores::Allow
        && req.headers().keys().any(|k| k.as_str().contains('_'))
    {
        if policy.underscores == Underscores::Reject {
            return Err(Downstream::UnderscoreHeader);
        }
        let names: Vec<HeaderName> = req
            .headers()
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            req.headers_mut().remove(n);
        }
    }
    let normal = match normalize(req.uri().path(), policy.reject_encoded_slashes)
        .ok_or(Downstream::BadPath)?
    {
        Cow::Borrowed(_) => return Ok(None),
        Cow::Owned(p) => p,
    };
    if policy.normalize_path {
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.path_and_query = format!("{normal}{query}").parse().ok();
        *req.uri_mut() = http::Uri::from_parts(uri).map_err(|_| Downstream::BadPath)?;
    }
    Ok(Some(normal))
}

/// HTTP/1.1 needs exactly one Host; no userinfo anywhere; an absolute-form or HTTP/2
/// authority must agree with Host when both are sent.
fn check_host(uri: &Uri, headers: &HeaderMap, version: Version) -> Result<(), Downstream> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Downstream::BadHost);
    }
    if host.is_none() && version == Version::HTTP_11 {
        return Err(Downstream::BadHost);
    }
    if host.is_some_and(|h| h.as_bytes().contains(&b'@') || h.is_empty()) {
        return Err(Downstream::BadHost);
    }
    if let Some(a) = uri.authority() {
        if a.as_str().contains('@') {
            return Err(Downstream::BadHost);
        }
        if host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())) {
            return Err(Downstream::BadHost);
        }
    }
    Ok(())
}

/// Removes `.` and `..` segments (also when written `%2e`), merges repeated slashes, and
/// refuses a path that climbs above the root, isn't origin-form, or (when asked) encodes a
/// slash or backslash. Borrowed when nothing changes.
pub fn normalize(path: &str, reject_encoded_slashes: bool) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) is fine to route as is; anything else is not origin-form.
        return (path == "*").then_some(Cow::Borrowed(path));
    }
    // One pass over the bytes, on every request: most paths need nothing done, and the answer
    // for those must not cost a scan per rule. Every refusal is final, whichever comes first.
    let b = path.as_bytes();
    let mut needs_work = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return None,
            b'/' if matches!(b.get(i + 1), Some(b'/' | b'.')) => needs_work = true,
            b'%' => match (b.get(i + 1), b.get(i + 2).map(u8::to_ascii_lowercase)) {
                (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c')) if reject_encoded_slashes => {
                    return None
                }
                (Some(b'2'), Some(b'e')) => needs_work = true,
                _ => {}
            },
            _ => {}
        }
    }
    if !needs_work {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let dots = match seg.to_ascii_lowercase().replace("%2e", ".").as_str() {
            "." => 1,
            ".." => 2,
            _ => 0,
        };
        match (dots, seg.is_empty()) {
            (1, _) => trailing_slash = i == last,
            (2, _) => {
                out.pop()?;
                trailing_slash = i == last;
            }
            (_, true) => trailing_slash = i == last,
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut p = String::with_capacity(path.len());
    for seg in &out {
        p.push('/');
        p.push_str(seg);
    }
    if trailing_slash || p.is_empty() {
        p.push('/');
    }
    Some(Cow::Owned(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_paths() {
        let cases = [
            ("/", Some("/")),
            ("/a/b", Some("/a/b")),
            ("/a//b///c", Some("/a/b/c")),
            ("/a/./b", Some("/a/b")),
            ("/a/b/../c", Some("/a/c")),
            ("/a/b/..", Some("/a/")),
            ("/a/%2e%2E/admin", Some("/admin")),
            ("/a/b/", Some("/a/b/")),
            ("//", Some("/")),
            ("/..", None),
            ("/a/../../etc/passwd", None),
            ("/a%2fb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("*", Some("*")),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input, true).as_deref(), want, "{input}");
        }
        assert_eq!(normalize("/a%2Fb", false).as_deref(), Some("/a%2Fb"));
        assert!(matches!(
            normalize("/v1/chat", true),
            Some(Cow::Borrowed(_))
        ));
    }

    /// The rules the single pass in `normalize` applies, written one scan per rule.
    fn by_the_rules(path: &str, reject_encoded_slashes: bool) -> Option<bool> {
        let escaped = |hi: u8, lo: u8| {
            path.as_bytes()
                .windows(3)
                .any(|w| w[0] == b'%' && w[1] == hi && w[2].eq_ignore_ascii_case(&lo))
        };
        if reject_encoded_slashes && (escaped(b'2', b'f') || escaped(b'5', b'c')) {
            return None;
        }
        if path.contains('\\') {
            return None;
        }
        Some(path.contains("//") || path.contains("/.") || escaped(b'2', b'e'))
    }

    proptest! {
        #[test]
        fn one_pass_decides_as_the_rules(path in "/[a/.%25eEfFcC\\\\]{0,24}", reject: bool) {
            let got = normalize(&path, reject);
            match by_the_rules(&path, reject) {
                None => prop_assert!(got.is_none()),
                Some(false) => prop_assert!(matches!(got, Some(Cow::Borrowed(p)) if p == path)),
                Some(true) => prop_assert!(!matches!(got, Some(Cow::Borrowed(_)))),
            }
        }

        #[test]
        fn normal_paths_are_fixed_points(path in "/[a-z./%2eEfF]{0,40}") {
            if let Some(n) = normalize(&path, true) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
                let again = normalize(&n, true).map(|c| c.into_owned());
                prop_assert_eq!(again.as_deref(), Some(n.as_ref()));
            }
        }
    }
}
