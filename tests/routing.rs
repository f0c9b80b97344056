//! Route matching on host (exact and `*.suffix`), path prefix, method and headers, in config
//! order: the first route that matches takes the request.

mod support;

use http::StatusCode;
use support::*;

/// Every route sends to the same backend but through a cohort named after the route, so the
/// response's `x-cohort` tells which route matched.
async fn routing_proxy() -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::json("backend").await;
    let route = |name: &str, matchers: &[&str]| {
        let mut r = Route::new(name);
        for m in matchers {
            r = r.matching(m);
        }
        r.split(&[(name, "backend", "100")])
    };
    let proxy = Config::new()
        .upstream("backend", mock.addr)
        .route(route("post", &["method: POST", "path_prefix: /v1/"]))
        .route(route(
            "tenant",
            &["path_prefix: /v1/", "headers: {x-tenant: acme}"],
        ))
        .route(route(
            "exact",
            &["host: api.example.com", "path_prefix: /v1/"],
        ))
        .route(route(
            "suffix",
            &["host: \"*.example.com\"", "path_prefix: /v1/"],
        ))
        .route(route("chat", &["path_prefix: /v1/chat"]))
        .route(route("v1", &["path_prefix: /v1/"]))
        .start()
        .await;
    (proxy, mock)
}

/// method, host, path, extra headers, the route expected to match (None: unrouted).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[tokio::test]
async fn first_matching_route_wins() {
    let (proxy, mock) = routing_proxy().await;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("POST", "api.example.com", "/v1/chat", &[], Some("post")),
        ("GET", "api.example.com", "/v1/chat", &[("x-tenant", "acme")], Some("tenant")),
        ("GET", "api.example.com", "/v1/chat", &[("x-tenant", "other")], Some("exact")),
        ("GET", "API.Example.COM:8080", "/v1/chat", &[], Some("exact")),
        ("GET", "eu.example.com", "/v1/chat", &[], Some("suffix")),
        ("GET", "a.b.example.com:443", "/v1/x", &[], Some("suffix")),
        // `*.example.com` needs a label before the suffix, and a dot boundary.
        ("GET", "example.com", "/v1/chat", &[], Some("chat")),
        ("GET", "notexample.com", "/v1/chat/stream", &[], Some("chat")),
        ("GET", "other.org", "/v1/other", &[], Some("v1")),
        ("PUT", "other.org", "/v1/other", &[], Some("v1")),
        ("GET", "api.example.com", "/v1", &[], None),
        ("GET", "api.example.com", "/v2/chat", &[], None),
        ("POST", "api.example.com", "/", &[], None),
    ];
    let mut unrouted = 0.0;
    for (method, host, path, extra, expected) in cases {
        let mut headers = vec![("host", *host)];
        headers.extend_from_slice(extra);
        let reply = proxy
            .fetch(request(method, proxy.public, path, &headers, ""))
            .await;
        let what = format!("{method} {host}{path} {extra:?}");
        match expected {
            Some(route) => {
                assert_eq!(reply.status, StatusCode::OK, "{what}");
                assert_eq!(reply.all("x-cohort"), [*route], "{what}");
            }
            None => {
                unrouted += 1.0;
                assert_eq!(reply.status, StatusCode::NOT_FOUND, "{what}");
            }
        }
    }
    let routed = cases.iter().filter(|c| c.4.is_some()).count();
    assert_eq!(mock.request_count(), routed);
    let scrape = proxy.scrape().await;
    assert_eq!(
        scrape.metric("cohort_unrouted_requests_total", &[]),
        unrouted
    );
}

#[tokio::test]
async fn h2c_authority_is_matched_like_host() {
    let (proxy, _mock) = routing_proxy().await;
    let mut h2 = H2c::connect(proxy.public).await;
    // The :authority of an HTTP/2 request is the host the routes see.
    let req = http::Request::builder()
        .uri("http://eu.example.com/v1/chat")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = h2.fetch(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.all("x-cohort"), ["suffix"]);
}
