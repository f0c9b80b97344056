//! `https://` upstreams: a private CA from `tls.ca_file`, a wrong CA failing as reason `tls`,
//! `tls.server_name` for an endpoint given by IP, mutual TLS, and `protocol: auto` taking h2
//! by ALPN.

mod support;

use http::{StatusCode, Version};
use support::tls::TestCa;
use support::*;

const COHORT: [(&str, &str); 2] = [("route", "agent"), ("cohort", "backend")];

/// The failure counters of (agent, backend) as `reason -> count`, in `FailureReason` order.
async fn failures(proxy: &TestProxy) -> Vec<(String, f64)> {
    let scrape = proxy.scrape().await;
    ["connect", "timeout", "reset", "tls", "protocol"]
        .iter()
        .map(|r| {
            let labels = [COHORT[0], COHORT[1], ("reason", r)];
            (
                r.to_string(),
                scrape.metric("cohort_upstream_failures_total", &labels),
            )
        })
        .collect()
}

fn only(reason: &str, n: f64) -> Vec<(String, f64)> {
    ["connect", "timeout", "reset", "tls", "protocol"]
        .iter()
        .map(|r| (r.to_string(), if *r == reason { n } else { 0.0 }))
        .collect()
}

/// `tls: {...}` with these `key: value` pairs, paths quoted.
fn tls_option(pairs: &[(&str, String)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("tls: {{{}}}", inner.join(", "))
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_ca_file() {
    let ca = TestCa::new("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let mock = MockUpstream::builder()
        .name("backend")
        .tls(ca.leaf(&["127.0.0.1"]).server_config(&["http/1.1"], None))
        .start()
        .await;
    let tls = tls_option(&[("ca_file", yaml_path(&ca_file))]);
    let proxy = proxy_to_backend(format!("https://{}", mock.addr), &[&tls]).await;

    for i in 0..3 {
        let r = proxy.get(&format!("/ok/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.upstream_saw().0, "backend");
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    // The client spoke plain HTTP to cohort; only the upstream hop is TLS.
    assert_eq!(seen[0].all("x-forwarded-proto"), ["http"]);
    assert_eq!(mock.tls_failures(), 0);
    assert_eq!(failures(&proxy).await, only("tls", 0.0));
}

#[tokio::test]
async fn a_wrong_ca_is_a_502_counted_as_tls() {
    let ca = TestCa::new("upstream CA");
    let stranger = TestCa::new("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let wrong = stranger.write(dir.path(), "wrong-ca.pem");
    let mock = MockUpstream::builder()
        .name("backend")
        .tls(ca.leaf(&["127.0.0.1"]).server_config(&["http/1.1"], None))
        .start()
        .await;
    let tls = tls_option(&[("ca_file", yaml_path(&wrong))]);
    let proxy = proxy_to_backend(format!("https://{}", mock.addr), &[&tls]).await;

    let r = proxy.get("/", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(mock.request_count(), 0);
    assert_eq!(failures(&proxy).await, only("tls", 1.0));
    proxy
        .expect_metric(
            "cohort_requests_total",
            &[COHORT[0], COHORT[1], ("status_class", "5xx")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn server_name_overrides_the_endpoint_host() {
    let ca = TestCa::new("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    // The certificate names only the service, never the address cohort dials.
    let leaf = ca.leaf(&["agent.internal"]);
    let mock = MockUpstream::builder()
        .name("backend")
        .tls(leaf.server_config(&["http/1.1"], None))
        .start()
        .await;
    let endpoint = format!("https://{}", mock.addr);

    let with_name = tls_option(&[
        ("ca_file", yaml_path(&ca_file)),
        ("server_name", "agent.internal".into()),
    ]);
    let proxy = proxy_to_backend(&endpoint, &[&with_name]).await;
    let r = proxy.get("/named", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(mock.only_request().target, "/named");
    assert_eq!(failures(&proxy).await, only("tls", 0.0));

    // Without the override the certificate does not match 127.0.0.1.
    let without = tls_option(&[("ca_file", yaml_path(&ca_file))]);
    let proxy = proxy_to_backend(&endpoint, &[&without]).await;
    let r = proxy.get("/unnamed", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.request_count(), 1);
    assert_eq!(failures(&proxy).await, only("tls", 1.0));
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let server_ca = TestCa::new("upstream CA");
    let client_ca = TestCa::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = server_ca.write(dir.path(), "ca.pem");
    let (client_cert, client_key) = client_ca
        .leaf(&["cohort.client"])
        .write(dir.path(), "client");
    let mock = MockUpstream::builder()
        .name("backend")
        .tls(
            server_ca
                .leaf(&["127.0.0.1"])
                .server_config(&["http/1.1"], Some(&client_ca)),
        )
        .start()
        .await;
    let endpoint = format!("https://{}", mock.addr);

    let mtls = tls_option(&[
        ("ca_file", yaml_path(&ca_file)),
        ("client_cert", yaml_path(&client_cert)),
        ("client_key", yaml_path(&client_key)),
    ]);
    let proxy = proxy_to_backend(&endpoint, &[&mtls]).await;
    let r = proxy.get("/mtls", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(mock.only_request().target, "/mtls");
    assert_eq!(mock.tls_failures(), 0);

    // The same upstream without a client certificate is refused at the handshake.
    let no_cert = tls_option(&[("ca_file", yaml_path(&ca_file))]);
    let proxy = proxy_to_backend(&endpoint, &[&no_cert]).await;
    let r = proxy.get("/anonymous", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(mock.request_count(), 1, "no request got past the handshake");
    within("the mock to see the failed handshake", async {
        while mock.tls_failures() < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(mock.tls_failures(), 1);
    assert_eq!(failures(&proxy).await, only("tls", 1.0));
}

/// The HTTP version the mock saw for one request through an upstream with `protocol`, when
/// the mock offers `alpn`.
async fn version_seen(protocol: &str, alpn: &[&str]) -> Version {
    let ca = TestCa::new("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let mock = MockUpstream::builder()
        .name("backend")
        .tls(ca.leaf(&["127.0.0.1"]).server_config(alpn, None))
        .start()
        .await;
    let tls = tls_option(&[("ca_file", yaml_path(&ca_file))]);
    let protocol = format!("protocol: {protocol}");
    let proxy = proxy_to_backend(format!("https://{}", mock.addr), &[&tls, &protocol]).await;
    let r = proxy.get("/v", &[("x-user-id", "u1")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = mock.only_request();
    assert_eq!(seen.all("x-cohort"), ["backend"]);
    seen.version
}

#[tokio::test]
async fn protocol_auto_negotiates_h2_by_alpn() {
    assert_eq!(
        version_seen("auto", &["h2", "http/1.1"]).await,
        Version::HTTP_2
    );
    assert_eq!(version_seen("auto", &["http/1.1"]).await, Version::HTTP_11);
    assert_eq!(
        version_seen("http2", &["h2", "http/1.1"]).await,
        Version::HTTP_2
    );
    assert_eq!(
        version_seen("http1", &["h2", "http/1.1"]).await,
        Version::HTTP_11
    );
}
