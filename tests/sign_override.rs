//! `cohort sign-override` as a tester runs it: the printed value verifies with
//! `cohort::routing::signed::verify` and forces the cohort through the proxy from an untrusted client.

mod support;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use support::process::cohort;
use support::*;

const SECRET: &str = "sign-override-test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Mints a value for `canary` with the given ttl from a secret file with a trailing newline
/// (as `echo` writes it).
fn mint(dir: &Path, ttl: &str) -> String {
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let before = now();
    let out = cohort(
        &[
            "sign-override",
            "--secret-file",
            "secret",
            "--cohort",
            "canary",
            "--ttl",
            ttl,
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let value = stdout.trim_end().to_string();
    // `<cohort>.<expiry>.<signature>`, expiring ttl from when it was run.
    let expiry: u64 = value.split('.').nth(1).unwrap().parse().unwrap();
    let ttl = humantime::parse_duration(ttl).unwrap().as_secs();
    assert!(
        (before + ttl..=now() + ttl).contains(&expiry),
        "expiry {expiry} is not {ttl}s from now"
    );
    value
}

#[test]
fn the_value_verifies_with_the_trimmed_secret() {
    let dir = tempfile::tempdir().unwrap();
    let value = mint(dir.path(), "1h");
    assert!(value.starts_with("canary."), "{value}");
    assert_eq!(
        cohort::routing::signed::verify(SECRET.as_bytes(), value.as_bytes(), now()),
        Ok("canary")
    );
    // Signed with the secret as the proxy reads it: the newline is not part of it.
    assert_eq!(
        cohort::routing::signed::verify(format!("{SECRET}\n").as_bytes(), value.as_bytes(), now()),
        Err(cohort::routing::signed::Rejection::Forged)
    );
    assert_eq!(
        cohort::routing::signed::verify(SECRET.as_bytes(), value.as_bytes(), now() + 3601),
        Err(cohort::routing::signed::Rejection::Expired)
    );
    let value = mint(dir.path(), "1h 30m");
    assert_eq!(
        cohort::routing::signed::verify(SECRET.as_bytes(), value.as_bytes(), now() + 5000),
        Ok("canary")
    );
}

#[tokio::test]
async fn the_proxy_honours_the_value_from_an_untrusted_client() {
    let dir = tempfile::tempdir().unwrap();
    let value = mint(dir.path(), "1h");
    let secret = format!(
        "override_secret_file: {}",
        yaml_path(&dir.path().join("secret"))
    );
    // Nobody is trusted: only a signed value can force a cohort.
    let (proxy, stable, canary) = override_proxy("[]", &[&secret]).await;

    let reply = proxy
        .get(
            "/v1/chat",
            &[("x-user-id", "user-1"), ("x-cohort-override", &value)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-cohort"), Some("canary"));
    let seen = canary.only_request();
    assert_eq!(seen.header("x-cohort-override"), None, "override forwarded");
    assert_eq!(stable.request_count(), 0);

    // Without it the same user is on stable, and nothing was counted as rejected.
    let reply = proxy.get("/v1/chat", &[("x-user-id", "user-1")]).await;
    assert_eq!(reply.header("x-cohort"), Some("stable"));
    let scrape = proxy.scrape().await;
    for s in scrape.series("cohort_override_rejected_total") {
        assert_eq!(s.value, 0.0, "{s:?}");
    }
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "too short\n").unwrap();
    let args = |file: &str, ttl: &str| {
        [
            "sign-override",
            "--secret-file",
            file,
            "--cohort",
            "canary",
            "--ttl",
            ttl,
        ]
        .map(String::from)
    };
    let run = |a: [String; 7]| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cohort(&refs, dir.path())
    };

    let out = run(args("missing", "1h"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("cannot read missing"),
        "{}",
        text(&out.stderr)
    );

    let out = run(args("short", "1h"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("at least 16 bytes"),
        "{}",
        text(&out.stderr)
    );

    // Not a duration: clap's usage error.
    let out = run(args("short", "soon"));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
}
