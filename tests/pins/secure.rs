//! Cookie pins over TLS: the cookie is `Secure` on a TLS listener, and an HTTP/2 client that
//! splits its cookies into crumbs still presents its pin.

use crate::common::*;
use crate::support::tls::{TestCa, TlsConn};
use crate::support::Config;

#[tokio::test]
async fn a_tls_listener_sets_a_secure_cookie_and_h2_crumbs_carry_the_pin() {
    let b = backends().await;
    let ca = TestCa::new("pins test CA");
    let leaf = ca.leaf(&["api.example.test"]);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(certs.path(), "leaf");
    let yaml = Config::new()
        .upstream("stable", b.stable.addr)
        .upstream("canary", b.canary.addr)
        .route(route("50", Some((b.secret.as_str(), Carrier::Cookie)), &[]))
        .certificate(&cert, &key, &[]);
    let proxy = yaml.start().await;

    let mut h1 = TlsConn::connect(proxy.public, ca.client_config(&[]), "api.example.test").await;
    let first = h1.get("/v1/chat", &[("x-user-id", "user-1")]).await;
    let cohort = first.header("x-cohort").unwrap().to_string();
    let set = first.header("set-cookie").unwrap();
    assert!(
        set.starts_with(&format!("{COOKIE}=v1~agent~{cohort}~~")),
        "{set}"
    );
    assert!(
        set.ends_with("; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax; Secure"),
        "{set}"
    );
    let pin = &set[COOKIE.len() + 1..set.find(';').unwrap()];

    // The pin names the cohort user-1 had, and another user presenting it lands there too
    // (a pin is a bearer value), in a cookie crumb of its own.
    let other = if cohort == "canary" {
        "stable"
    } else {
        "canary"
    };
    let key = (0..)
        .map(|i| format!("other-{i}"))
        .find(|k| band(k, 50) == other)
        .unwrap();
    let mut h2 =
        TlsConn::connect(proxy.public, ca.client_config(&["h2"]), "api.example.test").await;
    assert_eq!(h2.version(), http::Version::HTTP_2);
    let crumb = format!("{COOKIE}={pin}");
    let reply = h2
        .get(
            "/v1/chat",
            &[
                ("x-user-id", &key),
                ("cookie", "theme=dark"),
                ("cookie", &crumb),
            ],
        )
        .await;
    assert_eq!(reply.header("x-cohort"), Some(cohort.as_str()));
    assert!(reply.header("set-cookie").unwrap().ends_with("; Secure"));
    proxy
        .expect_metric(
            "cohort_pinned_requests_total",
            &[("route", "agent"), ("cohort", &cohort)],
            1.0,
        )
        .await;
}
