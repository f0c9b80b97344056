//! TLS listeners: certificates chosen by SNI (exact, wildcard, default), ALPN h2 and
//! http/1.1, live rotation that spares open connections, and clear errors for bad files.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, Version};
use support::tls::{handshake, peer_leaf, Leaf, TestCa, TlsConn};
use support::*;

/// A proxy whose public listener serves `certs` (in order) in front of a JSON mock.
async fn tls_proxy(certs: &[(&Leaf, &[&str])], dir: &Path) -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::json("backend").await;
    let mut config = Config::new().upstream("backend", mock.addr).route(
        Route::new("agent")
            .key("header: x-user-id")
            .single("backend"),
    );
    for (i, (leaf, names)) in certs.iter().enumerate() {
        let (cert, key) = leaf.write(dir, &format!("leaf{i}"));
        config = config.certificate(&cert, &key, names);
    }
    (config.start().await, mock)
}

/// A proxy serving the certificate in these files (read from there, so they can be rotated),
/// with the top-level lines `top`.
async fn proxy_with_default_cert(
    cert: &Path,
    key: &Path,
    top: &[&str],
) -> (TestProxy, MockUpstream) {
    let mock = MockUpstream::json("backend").await;
    let mut config = Config::new();
    for line in top {
        config = config.top(line);
    }
    let proxy = config
        .upstream("backend", mock.addr)
        .route(Route::new("agent").single("backend"))
        .certificate(cert, key, &[])
        .start()
        .await;
    (proxy, mock)
}

/// A config whose one route goes to an upstream that is never reached.
fn unreachable_backend() -> Config {
    Config::new()
        .upstream("backend", "127.0.0.1:1")
        .route(Route::new("agent").single("backend"))
}

/// Waits for the reload that follows a change of the certificate's files.
async fn second_generation(proxy: &TestProxy, what: &str) {
    within(what, async {
        while proxy.running.control.current().generation < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let ca = TestCa::new("cohort test CA");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test", "*.b.test"]);
    // Also valid for a name two labels under `*.b.test`, which must get the default.
    let fallback = ca.leaf(&["default.test", "eu.api.b.test"]);
    let dir = tempfile::tempdir().unwrap();
    // The default (no server_names) comes last: it is the first without names, not the first.
    let (proxy, _mock) = tls_proxy(
        &[
            (&a, &["a.test"]),
            (&b, &["b.test", "*.b.test"]),
            (&fallback, &[]),
        ],
        dir.path(),
    )
    .await;

    let cases = [
        ("a.test", &a, "exact name"),
        ("A.TEST", &a, "exact name, any case"),
        ("b.test", &b, "exact name of the second"),
        ("api.b.test", &b, "wildcard"),
        ("API.B.test", &b, "wildcard, any case"),
        // A wildcard stands for one label, as browsers read it.
        ("eu.api.b.test", &fallback, "two labels under the wildcard"),
        ("default.test", &fallback, "no name matches"),
    ];
    for (sni, want, what) in cases {
        let stream = handshake(proxy.public, ca.client_config(&[]), sni).await;
        assert!(
            peer_leaf(&stream) == want.der,
            "SNI {sni} ({what}) got the wrong certificate"
        );
    }

    // No SNI at all: the default certificate (verified for its own name).
    let mut no_sni = ca.client_config(&[]);
    no_sni.enable_sni = false;
    let stream = handshake(proxy.public, no_sni, "default.test").await;
    assert!(
        peer_leaf(&stream) == fallback.der,
        "a client without SNI got the wrong certificate"
    );
}

#[tokio::test]
async fn alpn_h2_and_http1_reach_the_upstream_as_https() {
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.leaf(&["agent.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (proxy, mock) = tls_proxy(&[(&leaf, &["agent.test"])], dir.path()).await;

    let offers: [(&[&str], Option<&str>, Version); 4] = [
        (&["h2", "http/1.1"], Some("h2"), Version::HTTP_2),
        (&["h2"], Some("h2"), Version::HTTP_2),
        (&["http/1.1"], Some("http/1.1"), Version::HTTP_11),
        (&[], None, Version::HTTP_11),
    ];
    for (i, (offer, chosen, version)) in offers.into_iter().enumerate() {
        let mut conn = TlsConn::connect(proxy.public, ca.client_config(offer), "agent.test").await;
        assert_eq!(conn.alpn.as_deref(), chosen, "ALPN for offer {offer:?}");
        assert_eq!(conn.version(), version);
        let r = conn.get(&format!("/v1/chat?n={i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "offer {offer:?}: {}", r.text());
        assert_eq!(r.version, version);
        assert_eq!(r.header("x-cohort"), Some("backend"));

        let seen = mock.requests().pop().unwrap();
        assert_eq!(seen.target, format!("/v1/chat?n={i}"));
        assert_eq!(seen.all("x-forwarded-proto"), ["https"], "offer {offer:?}");
        assert_eq!(
            seen.all("x-forwarded-host"),
            ["agent.test"],
            "offer {offer:?}"
        );
        assert_eq!(seen.all("host"), ["agent.test"], "offer {offer:?}");
    }
    assert_eq!(mock.request_count(), 4);
}

#[tokio::test]
async fn rotation_reaches_new_handshakes_and_spares_open_connections() {
    let ca = TestCa::new("cohort test CA");
    let old = ca.leaf(&["agent.test"]);
    let new = ca.leaf(&["agent.test"]);
    assert!(old.der != new.der);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = old.write(dir.path(), "agent");
    let (proxy, mock) = proxy_with_default_cert(&cert, &key, &[]).await;
    assert_eq!(proxy.running.control.current().generation, 1);

    let mut h1 =
        TlsConn::connect(proxy.public, ca.client_config(&["http/1.1"]), "agent.test").await;
    let mut h2 = TlsConn::connect(proxy.public, ca.client_config(&["h2"]), "agent.test").await;
    assert_eq!(
        (h1.version(), h2.version()),
        (Version::HTTP_11, Version::HTTP_2)
    );
    assert!(h1.leaf == old.der && h2.leaf == old.der);
    assert_eq!(h1.get("/before", &[]).await.status, StatusCode::OK);
    assert_eq!(h2.get("/before", &[]).await.status, StatusCode::OK);

    new.replace(&cert, &key);
    second_generation(&proxy, "a reload after the certificate changed").await;

    let mut fresh = TlsConn::connect(proxy.public, ca.client_config(&["h2"]), "agent.test").await;
    assert!(
        fresh.leaf == new.der,
        "a new handshake should get the rotated certificate"
    );
    assert_eq!(fresh.get("/fresh", &[]).await.status, StatusCode::OK);

    // The connections opened before the rotation keep working, on their old certificate.
    for i in 0..3 {
        let r = h1.get(&format!("/after/h1/{i}"), &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "kept-alive HTTP/1.1 after rotation"
        );
        let r = h2.get(&format!("/after/h2/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "HTTP/2 after rotation");
    }
    assert!(h1.leaf == old.der && h2.leaf == old.der);
    assert_eq!(mock.request_count(), 2 + 1 + 6);
    assert!(proxy.running.control.last_error().is_none());
}

/// The config error for a listener whose certificates are `certs`, built the way a reload
/// does (parse, then the table), or `None` if it is accepted.
fn listener_error(dir: &Path, certs: &[(&Path, &Path)]) -> Option<cohort::config::ConfigError> {
    let mut config = unreachable_backend();
    for (cert, key) in certs {
        config = config.certificate(cert, key, &[]);
    }
    let file = dir.join("cohort.yaml");
    let loaded = cohort::config::parse(&file, config.yaml()).expect("the YAML parses");
    let metrics = cohort::telemetry::Metrics::new();
    cohort::routing::table::from_loaded(&loaded, &metrics, None, 1).err()
}

#[tokio::test]
async fn bad_certificates_are_config_errors_naming_file_and_reason() {
    let ca = TestCa::new("cohort test CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = ca.leaf(&["agent.test"]).write(d, "good");
    let (other_cert, other_key) = ca.leaf(&["other.test"]).write(d, "other");
    let missing = d.join("missing.crt");
    let empty = d.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let prose = d.join("prose.pem");
    std::fs::write(&prose, "this is not a certificate\n").unwrap();
    let broken = d.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();

    assert_eq!(listener_error(d, &[(&cert, &key)]), None, "the good pair");
    assert_eq!(
        listener_error(d, &[(&cert, &key), (&other_cert, &other_key)]),
        None
    );

    let show = |p: &Path| p.display().to_string();
    /// (cert, key, message prefix): the message names the file `named`, then `says`.
    fn case<'a>(
        cert: &'a Path,
        key: &'a Path,
        named: &Path,
        says: &str,
    ) -> (&'a Path, &'a Path, String) {
        (cert, key, format!("{}: {says}", named.display()))
    }
    let cases = [
        case(&missing, &key, &missing, "cannot read: "),
        case(&cert, &missing, &missing, "cannot read: "),
        case(&empty, &key, &empty, "no PEM certificate found"),
        case(&prose, &key, &prose, "no PEM certificate found"),
        case(&broken, &key, &broken, "not a PEM certificate file: "),
        case(&cert, &empty, &empty, "no usable PEM private key: "),
        // A key as the certificate: not a certificate.
        case(&key, &key, &key, "no PEM certificate found"),
        // A certificate as the key: no key in it.
        case(&cert, &cert, &cert, "no usable PEM private key: "),
        // Two good files that do not belong together.
        case(
            &cert,
            &other_key,
            &other_key,
            &format!("does not fit the certificate {}: ", show(&cert)),
        ),
    ];
    for (bad_cert, bad_key, prefix) in &cases {
        let bad = (*bad_cert, *bad_key);
        for (position, certs) in [
            (0, vec![bad]),
            (1, vec![(cert.as_path(), key.as_path()), bad]),
        ] {
            let e = listener_error(d, &certs).unwrap_or_else(|| {
                panic!("{bad_cert:?} with {bad_key:?} at {position} should be rejected")
            });
            assert_eq!(
                e.field,
                format!("listeners[0].tls.certificates[{position}]"),
                "{e}"
            );
            assert!(
                e.message.starts_with(prefix.as_str()),
                "{e}\nexpected {prefix}"
            );
            assert!(e.line > 0, "the error is placed in the file: {e}");
            assert_eq!(e.file, d.join("cohort.yaml"));
        }
    }

    // Starting a proxy on such a file fails the same way, with no panic.
    let config = unreachable_backend().certificate(&cert, &other_key, &[]);
    let file = d.join("start.yaml");
    std::fs::write(&file, config.yaml()).unwrap();
    let e = match within("start", cohort::app::start(&file)).await {
        Ok(_) => panic!("a mismatched pair should not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("listeners[0].tls.certificates[0]")
            && e.contains(&show(&other_key))
            && e.contains("does not fit the certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_serving_certificate() {
    let ca = TestCa::new("cohort test CA");
    let good = ca.leaf(&["agent.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = good.write(dir.path(), "agent");
    let (proxy, _mock) = proxy_with_default_cert(&cert, &key, &[]).await;

    // A half-written certificate, as a careless rotation might leave it.
    let truncated = &good.cert_pem[..good.cert_pem.len() / 2];
    let tmp = cert.with_extension("tmp");
    std::fs::write(&tmp, truncated).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    let message = within("the broken certificate to be rejected", async {
        loop {
            if let Some(e) = proxy.running.control.last_error() {
                return e.message;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        message.contains("listeners[0].tls.certificates[0]")
            && message.contains(&cert.display().to_string()),
        "{message}"
    );
    assert_eq!(proxy.running.control.current().generation, 1);

    let mut conn = TlsConn::connect(proxy.public, ca.client_config(&["h2"]), "agent.test").await;
    assert!(
        conn.leaf == good.der,
        "still serving the last good certificate"
    );
    assert_eq!(conn.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_accepted() {
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.leaf(&["agent.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (proxy, mock) = tls_proxy(&[(&leaf, &[])], dir.path()).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
        let stream = handshake(proxy.public, config, "agent.test").await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
    assert_eq!(mock.request_count(), 0);
}

/// A Kubernetes Secret volume holding `leaf`: `tls.crt -> ..data/tls.crt`, `..data -> ..<ts>`.
fn secret_volume(dir: &Path, leaf: &Leaf, ts: &str) {
    let real = dir.join(ts);
    std::fs::create_dir(&real).unwrap();
    leaf.write(&real, "tls");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts, &tmp).unwrap();
    // kubelet's swap: the new `..data` is renamed over the old one.
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

/// cert-manager renews, kubelet swaps the Secret volume's `..data`: with `reload` settings
/// `reload`, the proxy must notice (by the watcher on the certificate's own directory, or by
/// the poll) and serve the new certificate.
async fn secret_rotation_is_noticed(reload: &str) {
    let ca = TestCa::new("cohort test CA");
    let (old, new) = (ca.leaf(&["agent.test"]), ca.leaf(&["agent.test"]));
    let secret = tempfile::tempdir().unwrap();
    secret_volume(secret.path(), &old, "..2026_01_01_00_00_00.1");
    let (cert, key) = (secret.path().join("tls.crt"), secret.path().join("tls.key"));
    let (proxy, _mock) = proxy_with_default_cert(&cert, &key, &[reload]).await;
    let conn = TlsConn::connect(proxy.public, ca.client_config(&[]), "agent.test").await;
    assert!(conn.leaf == old.der);

    secret_volume(secret.path(), &new, "..2026_03_01_00_00_00.2");
    second_generation(&proxy, "the rotated Secret to be applied").await;
    let mut conn = TlsConn::connect(proxy.public, ca.client_config(&[]), "agent.test").await;
    assert!(conn.leaf == new.der, "{reload}: the new certificate");
    assert_eq!(conn.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_secret_volume_swap_is_seen_by_the_watcher() {
    // The config file's directory is not the certificate's, and the poll never runs.
    secret_rotation_is_noticed("reload: {poll_interval: 1h, watch: true}").await;
}

#[tokio::test]
async fn a_secret_volume_swap_is_seen_by_the_poll() {
    secret_rotation_is_noticed("reload: {poll_interval: 200ms, watch: false}").await;
}
