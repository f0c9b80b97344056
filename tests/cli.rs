//! The `cohort` command as users run it: `check` and `assign` on the contract's minimal.yaml,
//! and what `check` finds in a rollout's `state_dir` on disk.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::process::cohort;

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

/// `minimal.yaml` with a rollout on its route and `state_dir: <state_dir>` as its last line.
fn with_rollout(state_dir: &str) -> String {
    format!(
        "{}    rollout:\n      id: v2\n      canary: canary\nstate_dir: {state_dir}\n",
        minimal()
    )
}

/// Where `state_dir`'s value sits in `text`: its line and column, 1-based.
fn state_dir_place(text: &str) -> (usize, usize) {
    let line = text
        .lines()
        .position(|l| l.starts_with("state_dir:"))
        .unwrap();
    (line + 1, "state_dir: ".len() + 1)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn check_notes_a_missing_state_dir_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cfg.yaml", &with_rollout("state/nested"));
    let out = cohort(&["check", "cfg.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "note: state_dir ./state/nested does not exist here; cohort run creates it\n"
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "cfg.yaml: ok (1 routes)\n"
    );
    assert_eq!(listing(dir.path()), ["cfg.yaml"], "check created something");
}

#[test]
fn check_rejects_a_state_dir_that_is_a_file_where_startup_does() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_rollout("state");
    let path = write(dir.path(), "cfg.yaml", &text);
    write(dir.path(), "state", "not a directory\n");
    let out = cohort(&["check", "cfg.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let (line, column) = state_dir_place(&text);
    assert_eq!(
        stderr(&out),
        format!("cfg.yaml:{line}:{column}: state_dir: ./state: not a directory\n")
    );
    assert!(out.stdout.is_empty());
    // `cohort run` refuses the same file at the same place.
    let err =
        match cohort::control::reload::Control::start(&path, cohort::telemetry::Metrics::new()) {
            Ok(_) => panic!("startup accepted a state_dir that is a file"),
            Err(e) => e,
        };
    assert_eq!(
        (err.line, err.column, err.field.as_str()),
        (line, column, "state_dir")
    );
}

#[test]
fn check_rejects_a_read_only_state_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let text = with_rollout("state");
    write(dir.path(), "cfg.yaml", &text);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root (or any user with CAP_DAC_OVERRIDE) writes into a 0555 directory anyway, so there
    // `cohort run` would succeed and `check` rightly passes: the assertion only holds for a
    // user the mode binds, which a probe file tells.
    if std::fs::File::create(state.join("probe")).is_ok() {
        std::fs::remove_file(state.join("probe")).unwrap();
        eprintln!("skipped: this user can write into a read-only directory (root?)");
        return;
    }
    let out = cohort(&["check", "cfg.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let (line, column) = state_dir_place(&text);
    assert_eq!(
        stderr(&out),
        format!(
            "cfg.yaml:{line}:{column}: state_dir: ./state: not writable: \
             Permission denied (os error 13)\n"
        )
    );
}

#[test]
fn check_warns_about_a_corrupt_rollout_state_as_startup_does_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cfg.yaml", &with_rollout("state"));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    write(&state, "rollout-agent.json", "garbage");
    let out = cohort(&["check", "cfg.yaml"], dir.path());
    // Startup does not refuse a corrupt file: it halts the rollout with the canary at 0%.
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "warning: route \"agent\": ./state/rollout-agent.json: corrupt rollout state \
         (not a cohort rollout state file); not trusted: cohort run moves it aside to \
         rollout-agent.json.corrupt and halts the rollout; the canary stays at 0% until an \
         operator resumes, promotes or rolls back\n"
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "cfg.yaml: ok (1 routes)\n"
    );
    // Nothing moved aside, nothing written.
    assert_eq!(listing(&state), ["rollout-agent.json"]);
    assert_eq!(
        std::fs::read_to_string(state.join("rollout-agent.json")).unwrap(),
        "garbage"
    );
}

#[test]
fn check_accepts_a_good_rollout_state_quietly() {
    use cohort::control::rollout::state::{Saved, Store};
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cfg.yaml", &with_rollout("state"));
    let store = Store::open(&dir.path().join("state")).unwrap();
    let progress = cohort::control::rollout::Progress::start();
    store
        .save(&Saved::new("agent", "v2", &progress, None, Vec::new(), &[]))
        .unwrap();
    let out = cohort(&["check", "cfg.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
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

#[test]
fn check_validates_the_fleet_section_where_startup_does() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "{}fleet:\n  servers: [\"nats://127.0.0.1:4222\"]\n  name: prod\n  replica: edge-1\n",
        minimal()
    );
    write(dir.path(), "good.yaml", &good);
    let out = cohort(&["check", "good.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let line = minimal().lines().count() + 5;
    let bad = format!("{good}  heartbeat: 20s\n");
    let path = write(dir.path(), "bad.yaml", &bad);
    let out = cohort(&["check", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "bad.yaml:{line}:14: fleet.heartbeat: heartbeat (20s) must be shorter than lease (10s)\n"
        )
    );
    let err =
        match cohort::control::reload::Control::start(&path, cohort::telemetry::Metrics::new()) {
            Ok(_) => panic!("startup accepted a heartbeat longer than the lease"),
            Err(e) => e,
        };
    assert_eq!(
        (err.line, err.column, err.field.as_str()),
        (line, 14, "fleet.heartbeat")
    );
}

#[test]
fn a_reload_that_changes_the_fleet_section_is_refused() {
    use cohort::control::reload::{Control, Outcome, FLEET_RESTART};
    let dir = tempfile::tempdir().unwrap();
    let fleet = "fleet:\n  servers: [\"nats://127.0.0.1:4222\"]\n  name: prod\n  replica: edge-1\n";
    let path = write(dir.path(), "cfg.yaml", &format!("{}{fleet}", minimal()));
    let control = Control::start(&path, cohort::telemetry::Metrics::new()).unwrap();
    assert_eq!(
        control.fleet().map(|f| f.bucket()),
        Some("cohort_prod".into())
    );
    write(
        dir.path(),
        "cfg.yaml",
        &format!("{}{}", minimal(), fleet.replace("prod", "staging")),
    );
    match control.reload("test") {
        Outcome::Rejected(message) => assert!(message.contains(FLEET_RESTART), "{message}"),
        other => panic!("a new fleet name was {other:?}"),
    }
    // The rest of a file with the same fleet section reloads as before.
    let edited = minimal().replace("percent: 95\n", "percent: 90\n");
    let edited = edited.replace("percent: 5\n", "percent: 10\n");
    write(dir.path(), "cfg.yaml", &format!("{edited}{fleet}"));
    assert!(matches!(control.reload("test"), Outcome::Applied { .. }));
}
