//! The `cohort` command as users run it: `check` and `assign` on the contract's minimal.yaml.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::cohort;

/// The contract's minimal.yaml, as vendored in config/ (a unit test keeps the copy exact).
fn minimal() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/minimal.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn check_accepts_minimal_yaml() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "minimal.yaml", &minimal());
    let out = cohort(&["check", "minimal.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn check_warns_about_zero_cohorts_unused_upstreams_and_shadowed_routes() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal()
        .replace("percent: 95\n", "percent: 100\n")
        .replace("percent: 5\n", "percent: 0\n")
        .replace(
            "upstreams:\n",
            "upstreams:\n  spare:\n    endpoints: [\"127.0.0.1:18003\"]\n",
        )
        + "  - name: later\n    match:\n      path_prefix: /v1/\n    split:\n      - cohort: stable\n        upstream: stable\n        percent: 100\n";
    write(dir.path(), "warn.yaml", &text);
    let out = cohort(&["check", "warn.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "warnings do not fail the check");
    let warnings: Vec<String> = stderr(&out).lines().map(str::to_string).collect();
    assert_eq!(
        warnings,
        [
            "warning: route \"agent\": cohort \"canary\" is at 0% and receives no keyed traffic",
            "warning: route \"later\" is shadowed by the earlier route \"agent\" and never matches",
            "warning: upstream \"spare\" is not used by any route",
        ]
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "warn.yaml: ok (2 routes)\n"
    );
}

#[test]
fn check_rejects_a_bad_file_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    // The canary's percent has three decimals; the error points at the value.
    let bad = minimal().replace("percent: 5\n", "percent: 4.995\n");
    assert_ne!(bad, minimal());
    let line = bad.lines().position(|l| l.contains("4.995")).unwrap() + 1;
    let column = bad.lines().nth(line - 1).unwrap().find("4.995").unwrap() + 1;
    write(dir.path(), "bad.yaml", &bad);
    let out = cohort(&["check", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "bad.yaml:{line}:{column}: routes[0].split[1].percent: \
             4.995 is not a percent between 0 and 100 with at most two decimals"
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn check_rejects_unknown_keys_with_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = minimal().replace("    cohort_key:", "    cohort_keys:");
    assert_ne!(bad, minimal());
    write(dir.path(), "typo.yaml", &bad);
    let out = cohort(&["check", "typo.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = bad.lines().position(|l| l.contains("cohort_keys")).unwrap() + 1;
    let column = bad
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("cohort_keys")
        .unwrap()
        + 1;
    let prefix = format!(
        "typo.yaml:{line}:{column}: routes[0].cohort_keys: unknown field `cohort_keys`, expected one of "
    );
    assert!(
        err.starts_with(&prefix),
        "{err:?} should start with {prefix:?}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn assign_prints_the_contract_lines() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "minimal.yaml", &minimal());
    let out = cohort(
        &[
            "assign",
            "--config",
            "minimal.yaml",
            "--route",
            "agent",
            "user-1",
            "user-2",
            "user-3",
            "alice",
            "séance-☃",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "user-1 9341 stable\nuser-2 8756 stable\nuser-3 9955 canary\nalice 2871 stable\n\
         séance-☃ 2289 stable\n"
    );
}

#[test]
fn assign_fails_for_an_unknown_route() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "minimal.yaml", &minimal());
    let out = cohort(
        &["assign", "--config", "minimal.yaml", "--route", "nope", "k"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}
