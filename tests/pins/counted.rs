//! Refused pins, each kind sent a known number of times, counted on `/metrics` with exact
//! values while every such request takes its normal cohort with a 200; the header pin never
//! reaches the upstream; an override beats a pin; and a secret rotation by reload.

use crate::common::*;
use crate::support::{fetch, get, override_proxy, MockUpstream, TestProxy};

/// Stable 100, canary 0 (so a canary pin is inactive), header pins, and the override header
/// for trusted loopback clients (the override tests' setup, with a pin section).
async fn setup(secret: &str) -> (TestProxy, MockUpstream, MockUpstream) {
    let secret_file = format!("  secret_file: {secret}");
    let header = format!("  header: {HEADER}");
    let pin = [
        "pin:",
        &secret_file,
        &header,
        "  idle_ttl: 10m",
        "  max_ttl: 1h",
    ];
    override_proxy("[\"127.0.0.1/32\"]", &pin).await
}

/// Reloads after the secret file changed: applied now, or already by the file watcher.
async fn reload_secrets(proxy: &TestProxy) {
    use cohort::control::reload::Outcome;
    match proxy.running.reload("test").await {
        Outcome::Applied { .. } | Outcome::Unchanged => {}
        Outcome::Rejected(e) => panic!("reload rejected: {e}"),
    }
}

/// One request of user-3 presenting `pin` (none when empty), which must be a 200 from the
/// cohort the response's fresh pin names: that pin's (cohort, route, first issue, expiry), as
/// the route's secret verifies it.
async fn served(proxy: &TestProxy, pin: &str) -> (String, String, u64, u64) {
    let reply = proxy
        .get("/v1/chat", &[("x-user-id", "user-3"), (HEADER, pin)])
        .await;
    assert_eq!(reply.status, 200);
    let value = reply.header(HEADER).expect("a pin on the response");
    let got = cohort::routing::pin::verify(&[SECRET], value.as_bytes(), now()).unwrap();
    assert_eq!(reply.header("x-cohort"), Some(got.cohort));
    assert_eq!(got.rollout, "");
    (got.cohort.into(), got.route.into(), got.issued, got.expires)
}

#[tokio::test]
async fn refused_pins_are_counted_exactly_and_take_the_normal_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, stable, canary) = setup(&write_secret(dir.path(), &[SECRET])).await;
    let t = now();
    let other_secret = cohort::routing::pin::mint(
        b"not-the-route-secret-0123456789",
        &cohort::routing::pin::Pin {
            route: "agent",
            cohort: "stable",
            rollout: "",
            issued: t,
            expires: t + 600,
        },
    );
    let cases: Vec<(&str, String, usize)> = vec![
        ("malformed", "garbage".into(), 2),
        ("malformed", "v1~agent~stable~~1~2".into(), 1),
        ("forged", other_secret, 3),
        (
            "forged",
            mint("agent", "canary", "", t, t + 600).replacen("canary", "stable", 1),
            1,
        ),
        ("expired", mint("agent", "stable", "", t - 700, t - 100), 1),
        // Within its idle expiry but past its first issue plus max_ttl (1h).
        ("expired", mint("agent", "stable", "", t - 3601, t + 300), 1),
        ("foreign", mint("other", "stable", "", t, t + 600), 1),
        (
            "foreign",
            mint("agent", "stable", "old-rollout", t, t + 600),
            2,
        ),
        ("inactive", mint("agent", "canary", "", t, t + 600), 2),
        ("inactive", mint("agent", "retired", "", t, t + 600), 1),
    ];
    let mut sent = 0;
    for (reason, value, times) in &cases {
        for _ in 0..*times {
            // Refused silently: the normal cohort (user-3 would be canary at 5%; here
            // stable has every bucket), and a fresh pin for it.
            let got = served(&proxy, value).await;
            assert_eq!(
                (got.0.as_str(), got.1.as_str()),
                ("stable", "agent"),
                "{reason}"
            );
            assert!(got.2 >= t && got.3 == got.2 + 600, "{reason}: {got:?}");
            sent += 1;
        }
    }
    // An empty header is no pin at all.
    assert!(served(&proxy, "").await.2 >= t);
    // A valid pin is honoured and comes back with its first issue time, its expiry slid.
    let (_, _, issued, expires) =
        served(&proxy, &mint("agent", "stable", "", t - 60, t + 60)).await;
    assert_eq!(issued, t - 60);
    assert!(
        expires >= t + 600,
        "the idle expiry did not slide: {expires}"
    );
    // Near the end of max_ttl (1h) the slide stops at the first issue plus max_ttl.
    let (_, _, issued, expires) =
        served(&proxy, &mint("agent", "stable", "", t - 3500, t + 60)).await;
    assert_eq!((issued, expires), (t - 3500, t + 100));

    // The header pin is the proxy's: no upstream saw it.
    assert_eq!(canary.request_count(), 0);
    assert_eq!(stable.request_count(), sent + 3);
    for seen in stable.requests() {
        assert_eq!(seen.header(HEADER), None, "pin forwarded");
    }

    let routes = proxy.admin("GET", "/routes").await.json();
    assert_eq!(
        routes["routes"][0]["pin"],
        serde_json::json!({"header": HEADER, "idle_ttl_seconds": 600, "max_ttl_seconds": 3600, "secrets": 1})
    );
    let scrape = proxy.scrape().await;
    scrape.assert_well_formed();
    for reason in ["malformed", "forged", "expired", "foreign", "inactive"] {
        let expected: usize = cases.iter().filter(|c| c.0 == reason).map(|c| c.2).sum();
        assert_counts(
            &scrape,
            &[("cohort_pin_rejected_total", reason, expected as f64)],
        );
    }
    assert_counts(
        &scrape,
        &[
            ("cohort_pinned_requests_total", "stable", 2.0),
            ("cohort_pinned_requests_total", "canary", 0.0),
            ("cohort_pins_issued_total", "stable", (sent + 1) as f64),
            ("cohort_pins_issued_total", "canary", 0.0),
        ],
    );
    // Refused pins are no override rejections.
    for s in scrape.series("cohort_override_rejected_total") {
        assert_eq!(s.value, 0.0, "{s:?}");
    }
}

#[tokio::test]
async fn an_override_beats_a_pin_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _stable, canary) = setup(&write_secret(dir.path(), &[SECRET])).await;
    let t = now();
    let pin = mint("agent", "stable", "", t, t + 600);
    let reply = proxy
        .get(
            "/v1/chat",
            &[
                ("x-user-id", "user-1"),
                (HEADER, &pin),
                ("x-cohort-override", "canary"),
            ],
        )
        .await;
    assert_eq!(reply.header("x-cohort"), Some("canary"));
    // A tester's forced cohort does not stick to the conversation.
    assert_eq!(reply.header(HEADER), None);
    let seen = canary.only_request();
    assert_eq!(seen.header(HEADER), None);
    assert_eq!(seen.header("x-cohort-override"), None);
    let scrape = proxy.scrape().await;
    for name in [
        "cohort_pinned_requests_total",
        "cohort_pins_issued_total",
        "cohort_pin_rejected_total",
    ] {
        for s in scrape.series(name) {
            assert_eq!(s.value, 0.0, "{s:?}");
        }
    }
}

#[tokio::test]
async fn a_rotated_secret_file_honours_old_pins_until_the_old_line_goes() {
    const NEW: &str = "the-next-pin-secret-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path(), &[SECRET]);
    let (proxy, _stable, _canary) = setup(&secret).await;
    let t = now();
    let old_pin = mint("agent", "stable", "", t, t + 600);
    let send = |pin: String| {
        let proxy = &proxy;
        async move {
            let reply = fetch(
                &proxy.client,
                get(
                    proxy.public,
                    "/",
                    &[("x-user-id", "user-1"), (HEADER, &pin)],
                ),
            )
            .await;
            reply.header(HEADER).unwrap().to_string()
        }
    };
    // The new secret on top: it signs, the old one still verifies.
    write_secret(dir.path(), &[NEW, SECRET]);
    reload_secrets(&proxy).await;
    let reissued = send(old_pin.clone()).await;
    assert!(cohort::routing::pin::verify(&[NEW], reissued.as_bytes(), now()).is_ok());
    assert_eq!(
        cohort::routing::pin::verify(&[SECRET], reissued.as_bytes(), now()),
        Err(cohort::routing::pin::Rejection::Forged)
    );
    proxy
        .expect_metric(
            "cohort_pinned_requests_total",
            &[("route", "agent"), ("cohort", "stable")],
            1.0,
        )
        .await;
    // The old line dropped: its pins are forged, the new secret's are honoured.
    write_secret(dir.path(), &[NEW]);
    reload_secrets(&proxy).await;
    send(old_pin).await;
    send(reissued).await;
    let scrape = proxy.scrape().await;
    let labels = |k, v| [("route", "agent"), (k, v)];
    assert_eq!(
        scrape.metric("cohort_pin_rejected_total", &labels("reason", "forged")),
        1.0
    );
    assert_eq!(
        scrape.metric("cohort_pinned_requests_total", &labels("cohort", "stable")),
        2.0
    );
}
