//! The pin section's configuration rules, each checked for the line, column and field path it
//! reports (the contract's `minimal.yaml`, 25 lines, with `pin:` appended at line 26 (where a rule of the whole section is reported) and its
//! fields from line 27), and what a valid section becomes.

use std::path::Path;

use super::pin::PinCarrier;
use super::tests::{accept, reject, MINIMAL};

/// A secret file in `dir` with these lines.
fn secret(dir: &Path, lines: &[&str]) -> String {
    let path = dir.join("pin.key");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    format!("{:?}", path.display().to_string())
}

/// `MINIMAL` with a pin section: `secret_file` first (line 27), then `lines` (from line 28).
fn with_pin(secret_file: &str, lines: &[&str]) -> String {
    let mut s = format!("{MINIMAL}    pin:\n      secret_file: {secret_file}\n");
    for l in lines {
        s.push_str(&format!("      {l}\n"));
    }
    s
}

const GOOD: &str = "0123456789abcdef-new";
const OLD: &str = "0123456789abcdef-old";

#[test]
fn a_pin_section_is_accepted_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD, "", &format!("  {OLD}\r")]);
    let t = accept(&with_pin(&file, &["cookie: cohort_pin"]));
    let spec = t.routes[0].pin.as_ref().expect("pinning on");
    assert_eq!(spec.secrets, [GOOD.as_bytes(), OLD.as_bytes()]);
    assert_eq!(spec.carrier, PinCarrier::Cookie("cohort_pin".into()));
    assert_eq!((spec.idle_ttl, spec.max_ttl), (30 * 60, 24 * 3600));
    assert_eq!(spec.counters.honoured.len(), 2);
    assert_eq!(spec.counters.issued.len(), 2);
    // Watched, so a rotation is a reload.
    assert!(t.watched_files.iter().any(|f| f.ends_with("pin.key")));

    let t = accept(&with_pin(
        &file,
        &["header: X-Cohort-Pin", "idle_ttl: 90s", "max_ttl: 90s"],
    ));
    let spec = t.routes[0].pin.as_ref().unwrap();
    assert_eq!(
        spec.carrier,
        PinCarrier::Header("x-cohort-pin".parse().unwrap())
    );
    assert_eq!((spec.idle_ttl, spec.max_ttl), (90, 90));
    assert!(accept(MINIMAL).routes[0].pin.is_none());
}

#[test]
fn exactly_one_carrier() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD]);
    let both = with_pin(&file, &["cookie: a", "header: x-a"]);
    reject(
        &both,
        26,
        5,
        "routes[0].pin",
        &["exactly one of cookie and header"],
    );
    let neither = with_pin(&file, &[]);
    reject(
        &neither,
        26,
        5,
        "routes[0].pin",
        &["exactly one of cookie and header"],
    );
}

#[test]
fn carrier_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD]);
    reject(
        &with_pin(&file, &["cookie: \"a;b\""]),
        28,
        15,
        "routes[0].pin.cookie",
        &["\"a;b\" is not a cookie name"],
    );
    reject(
        &with_pin(&file, &["header: \"bad header\""]),
        28,
        15,
        "routes[0].pin.header",
        &["not a valid header name"],
    );
    reject(
        &with_pin(&file, &["header: x-cohort"]),
        28,
        15,
        "routes[0].pin.header",
        &["taken by the override or the x-cohort header"],
    );
    let text = MINIMAL.replacen(
        "    split:\n",
        "    override_header: x-pin\n    split:\n",
        1,
    );
    let text = format!("{text}    pin:\n      secret_file: {file}\n      header: x-pin\n");
    reject(
        &text,
        29,
        15,
        "routes[0].pin.header",
        &["taken by the override"],
    );
}

#[test]
fn lifetimes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD]);
    reject(
        &with_pin(&file, &["cookie: p", "idle_ttl: 2h", "max_ttl: 1h"]),
        30,
        16,
        "routes[0].pin.max_ttl",
        &["must be at least idle_ttl"],
    );
    reject(
        &with_pin(&file, &["cookie: p", "idle_ttl: 500ms"]),
        29,
        17,
        "routes[0].pin.idle_ttl",
        &["shorter than the shortest this field accepts, 1s"],
    );
    reject(
        &with_pin(&file, &["cookie: p", "sticky: true"]),
        29,
        7,
        "routes[0].pin.sticky",
        &["unknown field `sticky`"],
    );
}

#[test]
fn every_secret_line_is_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD, "short"]);
    reject(
        &with_pin(&file, &["cookie: p"]),
        27,
        20,
        "routes[0].pin.secret_file",
        &["line 2: must hold at least 16 bytes"],
    );
    let missing = format!("{:?}", dir.path().join("absent").display().to_string());
    reject(
        &with_pin(&missing, &["cookie: p"]),
        27,
        20,
        "routes[0].pin.secret_file",
        &["cannot read"],
    );
}

#[test]
fn two_routes_sharing_a_pin_cookie_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), &[GOOD]);
    let second = |cookie: &str| {
        format!(
            "  - name: other\n    match:\n      path_prefix: /other\n    split:\n      \
             - cohort: stable\n        upstream: stable\n        percent: 100\n    pin:\n      \
             secret_file: {file}\n      cookie: {cookie}\n"
        )
    };
    // The first route, moved after the second so its prefix does not shadow it.
    let first = with_pin(&file, &["cookie: p"]);
    let (head, agent) = first.split_once("  - name: agent\n").unwrap();
    let text = |cookie: &str| format!("{head}{}  - name: agent\n{agent}", second(cookie));
    let t = accept(&text("p"));
    assert_eq!(
        t.warnings(),
        [
            "routes \"other\" and \"agent\" both keep their pins in cookie \"p\": on one host \
          each replaces the other's pin"
        ]
    );
    assert!(accept(&text("q")).warnings().is_empty());
}
