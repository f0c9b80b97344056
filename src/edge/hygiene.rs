//! Request hygiene at the edge: size limits cohort enforces itself (exact caps, unlike hyper's
//! buffer size), Host sanity, header-name policy, and the normalised path routes match on.
//!
//! Owns: deciding whether a request head is acceptable and what path it is routed by.
//! Must not touch: routing, upstreams, metrics registration. Pure functions over `Parts`.

use std::borrow::Cow;

use http::header::{self, HeaderName};
use http::request::Parts;
use http::{StatusCode, Version};

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

/// Why a request was refused before routing; the `reason` label of
/// `cohort_rejected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    UriTooLong = 0,
    HeadersTooLarge = 1,
    BadHost = 2,
    UnderscoreHeader = 3,
    BadPath = 4,
    BodyTooLarge = 5,
    BodyTimeout = 6,
    /// A request body the client framed wrongly (a bad chunk size) or abandoned part way.
    BadBody = 7,
    /// A request body slower than `body_min_rate` (a trickle that never falls silent).
    BodyTooSlow = 8,
    /// An HTTP/1.x head with both Transfer-Encoding and Content-Length (a smuggling attempt
    /// or a broken client): refused, never forwarded.
    TeAndCl = 9,
}

impl Reject {
    pub const ALL: [Reject; 10] = [
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::BadHost,
        Self::UnderscoreHeader,
        Self::BadPath,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::BadBody,
        Self::BodyTooSlow,
        Self::TeAndCl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BadHost => "bad_host",
            Self::UnderscoreHeader => "underscore_header",
            Self::BadPath => "bad_path",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BadBody => "bad_body",
            Self::BodyTooSlow => "body_too_slow",
            Self::TeAndCl => "te_and_cl",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadHost
            | Self::UnderscoreHeader
            | Self::BadPath
            | Self::BadBody
            | Self::TeAndCl => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout | Self::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Self::UriTooLong => "request URI too long\n",
            Self::HeadersTooLarge => "request headers too large\n",
            Self::BadHost => "missing, duplicate or inconsistent Host\n",
            Self::UnderscoreHeader => "header names with underscores are not accepted\n",
            Self::BadPath => "malformed request path\n",
            Self::BodyTooLarge => "request body too large\n",
            Self::BodyTimeout => "request body too slow\n",
            Self::BadBody => "malformed or incomplete request body\n",
            Self::BodyTooSlow => "request body sent too slowly\n",
            Self::TeAndCl => "both Transfer-Encoding and Content-Length\n",
        }
    }
}

/// Checks a request head. Returns the normalised path to route by (dot segments removed,
/// slashes merged) when it differs from the received one, `None` when the received path is
/// already normal (the usual case, which allocates nothing). Drops underscore headers when the
/// policy says so. With `normalize_path`, the URI is rewritten too, so the upstream sees what
/// was routed.
pub fn check(parts: &mut Parts, policy: &Policy) -> Result<Option<String>, Reject> {
    let uri_len = parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > policy.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    if parts.headers.len() > policy.max_headers {
        return Err(Reject::HeadersTooLarge);
    }
    // Counted as on the wire for HTTP/1.1: "name: value\r\n".
    let bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > policy.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    check_host(parts)?;
    if policy.underscores != Underscores::Allow
        && parts.headers.keys().any(|k| k.as_str().contains('_'))
    {
        if policy.underscores == Underscores::Reject {
            return Err(Reject::UnderscoreHeader);
        }
        let names: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            parts.headers.remove(n);
        }
    }
    let normal =
        match normalize(parts.uri.path(), policy.reject_encoded_slashes).ok_or(Reject::BadPath)? {
            Cow::Borrowed(_) => return Ok(None),
            Cow::Owned(p) => p,
        };
    if policy.normalize_path {
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = format!("{normal}{query}").parse().ok();
        parts.uri = http::Uri::from_parts(uri).map_err(|_| Reject::BadPath)?;
    }
    Ok(Some(normal))
}

/// HTTP/1.1 needs exactly one Host; no userinfo anywhere; an absolute-form or HTTP/2
/// authority must agree with Host when both are sent.
fn check_host(parts: &Parts) -> Result<(), Reject> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::BadHost);
    }
    if host.is_none() && parts.version == Version::HTTP_11 {
        return Err(Reject::BadHost);
    }
    if host.is_some_and(|h| h.as_bytes().contains(&b'@') || h.is_empty()) {
        return Err(Reject::BadHost);
    }
    if let Some(a) = parts.uri.authority() {
        if a.as_str().contains('@') {
            return Err(Reject::BadHost);
        }
        if host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())) {
            return Err(Reject::BadHost);
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
