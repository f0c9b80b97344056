//! What the proxy changes on the way through, and what it must leave alone: hop-by-hop
//! headers, X-Forwarded-*, method, target and body, over HTTP/1.1 and h2c.

mod support;

use bytes::Bytes;
use http::{StatusCode, Version};
use support::*;

async fn echo_proxy() -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::with("backend", Respond::Echo).await;
    let proxy = proxy_to_backend(mock.addr, &[]).await;
    (proxy, mock)
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped_and_forwarding_headers_set() {
    let (proxy, mock) = echo_proxy().await;
    let raw = "POST /v1/chat?q=1&r=2 HTTP/1.1\r\n\
        Host: agent.example.com:8443\r\n\
        Connection: close, X-Secret\r\n\
        Connection: x-other\r\n\
        X-Secret: s\r\n\
        X-Other: o\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers, deflate;q=0.5\r\n\
        Upgrade: websocket\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Foo: bar\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.example\r\n\
        X-User-Id: user-1\r\n\
        X-Keep: yes\r\n\
        Transfer-Encoding: chunked\r\n\
        \r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.public, raw).await;
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n"),
        "unexpected response: {response:?}"
    );
    assert!(response.ends_with("hello world"), "{response:?}");

    let seen = mock.only_request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/chat?q=1&r=2");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.body, Bytes::from_static(b"hello world"));
    for gone in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "proxy-foo",
    ] {
        assert_eq!(
            seen.all(gone),
            Vec::<&str>::new(),
            "{gone} must not be forwarded"
        );
    }
    // The body is re-framed by the proxy: at most one chunked coding, never the client's.
    assert!(
        matches!(seen.all("transfer-encoding").as_slice(), [] | ["chunked"]),
        "{:?}",
        seen.all("transfer-encoding")
    );
    assert_eq!(seen.all("te"), ["trailers"]);
    assert_eq!(seen.all("x-keep"), ["yes"]);
    assert_eq!(seen.all("x-user-id"), ["user-1"]);
    assert_eq!(seen.all("host"), ["agent.example.com:8443"]);
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["agent.example.com:8443"]);
    assert_eq!(seen.all("x-cohort"), ["backend"]);
}

#[tokio::test]
async fn te_without_trailers_is_dropped_and_xff_is_created() {
    let (proxy, mock) = echo_proxy().await;
    let reply = proxy
        .get(
            "/plain",
            &[("te", "gzip, deflate"), ("host", "api.example.com")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = mock.only_request();
    assert_eq!(seen.all("te"), Vec::<&str>::new());
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-host"), ["api.example.com"]);
    assert_eq!(seen.all("host"), ["api.example.com"]);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let (proxy, _mock) = echo_proxy().await;
    let reply = proxy
        .get(
            "/resp",
            &[
                ("x-mock-set", "connection: x-resp-secret"),
                ("x-mock-set", "x-resp-secret: 1"),
                ("x-mock-set", "keep-alive: timeout=5"),
                ("x-mock-set", "proxy-authenticate: Basic"),
                ("x-mock-set", "x-resp-keep: yes"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    for gone in [
        "connection",
        "x-resp-secret",
        "keep-alive",
        "proxy-authenticate",
    ] {
        assert_eq!(
            reply.all(gone),
            Vec::<&str>::new(),
            "{gone} must not reach the client"
        );
    }
    assert_eq!(reply.all("x-resp-keep"), ["yes"]);
    assert_eq!(reply.all("x-upstream"), ["backend"]);
}

#[tokio::test]
async fn status_and_method_pass_through() {
    let (proxy, mock) = echo_proxy().await;
    let reply = proxy
        .fetch(request(
            "PUT",
            proxy.public,
            "/things/7",
            &[("x-mock-status", "418")],
            "payload",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.body, Bytes::from_static(b"payload"));
    let seen = mock.only_request();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.target, "/things/7");
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_upstream() {
    let (proxy, mock) = echo_proxy().await;
    let mut h2 = H2c::connect(proxy.public).await;
    for i in 0..3 {
        let body = format!("turn {i}");
        let reply = h2
            .fetch(request(
                "POST",
                proxy.public,
                &format!("/v1/chat?turn={i}"),
                &[("x-user-id", "alice")],
                body.clone(),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.body, Bytes::from(body));
        assert_eq!(reply.all("x-cohort"), ["backend"]);
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.version, Version::HTTP_11, "the upstream speaks HTTP/1.1");
        assert_eq!(s.target, format!("/v1/chat?turn={i}"));
        // :authority becomes Host for the HTTP/1.1 upstream.
        assert_eq!(s.all("host"), [proxy.public.to_string().as_str()]);
        assert_eq!(
            s.all("x-forwarded-host"),
            [proxy.public.to_string().as_str()]
        );
        assert_eq!(s.all("x-cohort"), ["backend"]);
    }
}

#[tokio::test]
async fn an_http10_request_without_host_does_not_pass_x_forwarded_host_through() {
    let (proxy, mock) = echo_proxy().await;
    let raw = "GET /old HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nX-User-Id: u\r\n\r\n";
    let response = raw_exchange(proxy.public, raw).await;
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    let seen = mock.only_request();
    assert_eq!(seen.all("x-forwarded-host"), Vec::<&str>::new());
    // The HTTP/1.1 upstream leg still needs a Host: the endpoint's.
    assert_eq!(seen.all("host"), [mock.addr.to_string().as_str()]);
}

#[tokio::test]
async fn h2_cookie_crumbs_are_one_cookie_for_the_key_and_the_http1_upstream() {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let split = [("stable", 5000), ("canary", 5000)];
    // A session whose cohort is the canary: the key is in the second crumb.
    let sid = (0..)
        .map(|i| format!("s-{i}"))
        .find(|k| contract_cohort("agent", k.as_bytes(), &split) == "canary")
        .unwrap();
    let proxy = Config::new()
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new("agent")
                .key("cookie: sid")
                .split(&[("stable", "stable", "50"), ("canary", "canary", "50")]),
        )
        .start()
        .await;
    let mut h2 = H2c::connect(proxy.public).await;
    let crumb = format!("sid={sid}");
    let cookies = [
        ("cookie", "a=1"),
        ("cookie", crumb.as_str()),
        ("cookie", "theme=dark"),
    ];
    let reply = h2.fetch(get(proxy.public, "/chat", &cookies)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.all("x-cohort"), ["canary"]);
    assert_eq!(stable.request_count(), 0);
    let seen = canary.only_request();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.all("cookie"),
        [format!("a=1; sid={sid}; theme=dark").as_str()]
    );
}

#[tokio::test]
async fn an_upstream_answer_with_both_transfer_encoding_and_content_length_loses_the_length() {
    // Content-Length says 3, the chunked body holds 5 bytes: the body is read by its chunks.
    let (upstream, heads) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = proxy_to_backend(upstream, &[]).await;
    let raw = "GET /both HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.public, raw).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{response}");
    assert!(!head.contains("content-length"), "{response}");
    assert!(
        head.contains("\r\ntransfer-encoding: chunked"),
        "{response}"
    );
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n", "{response}");
    assert_eq!(heads.lock().unwrap().len(), 1);
}
