//! Cohort assignment through real sockets: the cohort each request lands in must be the one the
//! contract's formula gives, whichever key source is used, and the `x-cohort` header must be
//! the proxy's alone.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use http::StatusCode;
use support::*;

const TWO: [(&str, u32); 2] = [("stable", 7000), ("canary", 3000)];
const THREE: [(&str, u32); 3] = [("stable", 6000), ("canary", 2500), ("shadow", 1500)];

/// A proxy with one route per key source, over three JSON mocks named like their cohorts.
async fn assignment_proxy() -> (TestProxy, [MockUpstream; 3]) {
    let mocks = [
        MockUpstream::json("stable").await,
        MockUpstream::json("canary").await,
        MockUpstream::json("shadow").await,
    ];
    let two: &[(&str, &str, &str)] = &[("stable", "stable", "70"), ("canary", "canary", "30")];
    let mut config = Config::new();
    for m in &mocks {
        config = config.upstream(&m.name, m.addr);
    }
    let route = |name: &str, prefix: &str, key: &str| {
        Route::new(name)
            .matching(&format!("path_prefix: {prefix}"))
            .key(key)
    };
    let proxy = config
        .route(route("by-header", "/h/", "header: x-user-id").split(two))
        .route(
            route("salted", "/salted/", "header: x-user-id")
                .set("salt: support-2026-11")
                .split(two),
        )
        .route(route("by-cookie", "/cookie/", "cookie: session").split(two))
        .route(route("by-query", "/query/", "query: user").split(two))
        .route(route("by-ip", "/ip/", "client_ip: true").split(two))
        .route(route("three", "/three/", "header: x-user-id").split(&[
            ("stable", "stable", "60"),
            ("canary", "canary", "25"),
            ("shadow", "shadow", "15"),
        ]))
        .route(
            route("agent", "/agent/", "header: x-user-id")
                .set("fallback: canary")
                .split(&[("stable", "stable", "95"), ("canary", "canary", "5")]),
        )
        .start()
        .await;
    (proxy, mocks)
}

/// Asserts that the request landed in `expected`: the response says so, and the upstream of
/// that name received it with exactly one `x-cohort: expected`.
fn assert_cohort(reply: &Reply, expected: &str, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}");
    assert_eq!(
        reply.all("x-cohort"),
        [expected],
        "response x-cohort for {what}"
    );
    let (upstream, saw) = reply.upstream_saw();
    assert_eq!(upstream, expected, "upstream that answered {what}");
    assert_eq!(saw, [expected], "x-cohort the upstream received for {what}");
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[tokio::test]
async fn header_key_matches_the_contract_formula_for_500_keys() {
    let (proxy, mocks) = assignment_proxy().await;
    let mut per_cohort = [0usize; 2];
    for key in keys(500) {
        let expected = contract_cohort("by-header", key.as_bytes(), &TWO);
        per_cohort[usize::from(expected == "canary")] += 1;
        let reply = proxy.get("/h/chat", &[("x-user-id", &key)]).await;
        assert_cohort(&reply, expected, &key);
    }
    // Both cohorts were exercised, and each mock saw exactly its share.
    assert!(per_cohort.iter().all(|&n| n > 0), "{per_cohort:?}");
    assert_eq!(mocks[0].request_count(), per_cohort[0]);
    assert_eq!(mocks[1].request_count(), per_cohort[1]);
    assert_eq!(mocks[2].request_count(), 0);
}

#[tokio::test]
async fn contract_vectors_through_the_proxy() {
    let (proxy, _mocks) = assignment_proxy().await;
    // The contract's table for salt `agent` with stable 95 / canary 5.
    for (key, expected) in [
        ("user-1", "stable"),
        ("user-2", "stable"),
        ("user-3", "canary"),
        ("alice", "stable"),
    ] {
        let reply = proxy.get("/agent/chat", &[("x-user-id", key)]).await;
        assert_cohort(&reply, expected, key);
    }
}

#[tokio::test]
async fn custom_salt_changes_the_seed() {
    let (proxy, _mocks) = assignment_proxy().await;
    let mut differs = 0;
    for key in keys(300) {
        let expected = contract_cohort("support-2026-11", key.as_bytes(), &TWO);
        if expected != contract_cohort("salted", key.as_bytes(), &TWO) {
            differs += 1;
        }
        let reply = proxy.get("/salted/chat", &[("x-user-id", &key)]).await;
        assert_cohort(&reply, expected, &key);
    }
    assert!(differs > 0, "the salt must matter for some keys");
}

#[tokio::test]
async fn cookie_key_matches_the_contract_formula() {
    let (proxy, _mocks) = assignment_proxy().await;
    for key in keys(200) {
        let expected = contract_cohort("by-cookie", key.as_bytes(), &TWO);
        let cookie = format!("theme=dark; session={key}; lang=en");
        let reply = proxy.get("/cookie/chat", &[("cookie", &cookie)]).await;
        assert_cohort(&reply, expected, &key);
    }
}

#[tokio::test]
async fn query_key_matches_the_contract_formula_after_percent_decoding() {
    let (proxy, _mocks) = assignment_proxy().await;
    let mut all = keys(200);
    all.push("séance-☃".into());
    all.push("a b&c=d".into());
    for key in all {
        let expected = contract_cohort("by-query", key.as_bytes(), &TWO);
        let encoded: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let path = format!("/query/chat?lang=en&user={encoded}&x=1");
        let reply = proxy.get(&path, &[]).await;
        assert_cohort(&reply, expected, &key);
    }
}

#[tokio::test]
async fn client_ip_key_matches_the_contract_formula() {
    let (proxy, _mocks) = assignment_proxy().await;
    let mut seen = [0usize; 2];
    for last in 1..=40u8 {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        let expected = contract_cohort("by-ip", ip.to_string().as_bytes(), &TWO);
        seen[usize::from(expected == "canary")] += 1;
        let client = h1_client_from(IpAddr::V4(ip));
        let reply = fetch(&client, get(proxy.public, "/ip/chat", &[])).await;
        assert_cohort(&reply, expected, &ip.to_string());
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

#[tokio::test]
async fn three_cohorts_stack_down_from_the_top() {
    let (proxy, mocks) = assignment_proxy().await;
    for key in keys(300) {
        let expected = contract_cohort("three", key.as_bytes(), &THREE);
        let reply = proxy.get("/three/chat", &[("x-user-id", &key)]).await;
        assert_cohort(&reply, expected, &key);
    }
    assert!(mocks.iter().all(|m| m.request_count() > 0));
}

#[tokio::test]
async fn keyless_requests_go_to_the_fallback_cohort() {
    let (proxy, mocks) = assignment_proxy().await;
    for i in 0..50 {
        // An empty key is no key.
        let headers: &[(&str, &str)] = if i % 2 == 0 {
            &[]
        } else {
            &[("x-user-id", "")]
        };
        let reply = proxy.get("/agent/chat", headers).await;
        assert_cohort(&reply, "canary", &format!("keyless request {i}"));
    }
    assert_eq!(mocks[0].request_count(), 0);
    assert_eq!(mocks[0].connections(), 0);
    assert_eq!(mocks[1].request_count(), 50);
}

#[tokio::test]
async fn client_sent_x_cohort_is_replaced_both_ways() {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let proxy = Config::new()
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .split(&[("stable", "stable", "95"), ("canary", "canary", "5")]),
        )
        .start()
        .await;
    let reply = proxy
        .fetch(get(
            proxy.public,
            "/chat",
            &[
                ("x-user-id", "user-1"),
                ("x-cohort", "canary"),
                ("x-cohort", "evil"),
                // The backend tries to relabel the response too.
                ("x-mock-set", "x-cohort: bogus"),
            ],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.all("x-cohort"), ["stable"]);
    assert_eq!(stable.only_request().all("x-cohort"), ["stable"]);
    assert_eq!(canary.request_count(), 0);
}

#[tokio::test]
async fn response_cohort_header_can_be_switched_off() {
    let stable = MockUpstream::json("stable").await;
    let proxy = Config::new()
        .upstream("stable", stable.addr)
        .route(
            Route::new("quiet")
                .key("header: x-user-id")
                .set("response_cohort_header: false")
                .single("stable"),
        )
        .start()
        .await;
    let reply = proxy
        .get("/chat", &[("x-user-id", "u"), ("x-cohort", "evil")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.all("x-cohort"), Vec::<&str>::new());
    // The upstream still gets it.
    assert_eq!(stable.only_request().all("x-cohort"), ["stable"]);
}

fn assert_override_stripped(mock: &MockUpstream) {
    for seen in mock.requests() {
        assert_eq!(seen.header("x-cohort-override"), None, "{seen:?}");
    }
}

#[tokio::test]
async fn override_is_honoured_from_a_trusted_peer() {
    let (proxy, stable, canary) = override_proxy("[\"127.0.0.1/32\"]", &[]).await;
    let forced = [("x-user-id", "user-1"), ("x-cohort-override", "canary")];
    let reply = proxy.get("/chat", &forced).await;
    assert_cohort(&reply, "canary", "trusted override");
    // An override naming no cohort of the route is ignored: normal assignment.
    let unknown = [("x-user-id", "user-1"), ("x-cohort-override", "nightly")];
    let reply = proxy.get("/chat", &unknown).await;
    assert_cohort(&reply, "stable", "override to an unknown cohort");
    assert_eq!(canary.request_count(), 1);
    assert_eq!(stable.request_count(), 1);
    assert_override_stripped(&stable);
    assert_override_stripped(&canary);
}

#[tokio::test]
async fn override_is_ignored_and_stripped_from_untrusted_peers() {
    for trusted in ["[]", "[\"10.0.0.0/8\"]"] {
        let (proxy, stable, canary) = override_proxy(trusted, &[]).await;
        for _ in 0..3 {
            let forced = [("x-user-id", "user-1"), ("x-cohort-override", "canary")];
            let reply = proxy.get("/chat", &forced).await;
            assert_cohort(&reply, "stable", &format!("trusted_cidrs: {trusted}"));
        }
        assert_eq!(canary.request_count(), 0, "trusted_cidrs: {trusted}");
        assert_eq!(stable.request_count(), 3);
        assert_override_stripped(&stable);
    }
}
