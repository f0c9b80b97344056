//! The state file's format and store, read back, damaged, and nonsense with a good checksum.

use std::fs;
use std::time::Duration;

use super::format::encode;
use super::*;
use crate::control::rollout::machine::{DecisionKind, Phase, Progress};

fn saved() -> Saved {
    let mut p = Progress::start();
    p.step = 2;
    p.soaked = Duration::from_millis(12_345);
    p.canary.requests = 10;
    p.canary.latency[40] = 7;
    p.baseline.requests = 2;
    p.baseline.with_outcome = 2;
    p.baseline.outcomes[3] = 2;
    p.wealth.insert("error_rate".into(), 1.5);
    Saved::new("agent", "v2", &p, None, Vec::new(), &[100, 500, 2500])
}

#[test]
fn a_saved_state_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("nested/state")).unwrap();
    assert!(store.load("agent", "v2", 4).unwrap().is_none());
    let s = saved();
    store.save(&s).unwrap();
    let back = store.load("agent", "v2", 4).unwrap().unwrap();
    assert_eq!(back, s);
    let p = back.progress().unwrap();
    assert_eq!((p.step, p.soaked.as_millis()), (2, 12_345));
    assert_eq!((p.canary.latency[40], p.baseline.outcomes[3]), (7, 2));
}

#[test]
fn damaged_files_are_corrupt_and_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.save(&saved()).unwrap();
    let path = store.path("agent");
    let good = fs::read_to_string(&path).unwrap();
    let cases = [
        good[..good.len() / 2].to_string(),
        good.replace("\"step\":2", "\"step\":3"),
        "garbage".to_string(),
        String::new(),
        good.replace("\"route\":\"agent\"", "\"route\":\"other\""),
    ];
    for (i, text) in cases.iter().enumerate() {
        fs::write(&path, text).unwrap();
        match store.load("agent", "v2", 4) {
            Err(StateError::Corrupt { .. }) => {}
            other => panic!("case {i}: {other:?}"),
        }
    }
    let aside = store.set_aside("agent").unwrap();
    assert!(aside.exists() && !path.exists());
    assert!(store.load("agent", "v2", 4).unwrap().is_none());
}

/// A file whose checksum matches but whose contents make no sense is refused like a
/// damaged one (`Saved::new` and `encode` re-sum it as an editor with the format would).
#[test]
fn nonsense_with_a_good_checksum_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    type Edit = (&'static str, fn(&mut Saved));
    let edits: [Edit; 8] = [
        ("more errors than requests", |s| s.canary.errors = 11),
        ("more answers with an outcome than requests", |s| {
            s.baseline.with_outcome = 1
        }),
        ("more outcomes than answers with one", |s| {
            s.canary.with_outcome = 1;
            s.canary.outcomes = vec![(2, 2)];
        }),
        ("more timed answers than requests", |s| {
            s.canary.latency = vec![(40, 7), (41, 4)]
        }),
        ("a first byte without a duration", |s| {
            s.canary.ttfb = vec![(3, 8)]
        }),
        ("counts that wrap when added", |s| {
            s.canary.latency = vec![(1, u64::MAX), (2, 2)];
        }),
        ("a soak of 30,000 years", |s| {
            s.soaked_ms = 30_000 * 365 * 24 * 3600 * 1000
        }),
        ("a step past the end", |s| s.step = 4),
    ];
    for (what, edit) in edits {
        let mut s = saved();
        edit(&mut s);
        fs::write(store.path("agent"), encode(&s)).unwrap();
        match store.load("agent", "v2", 4) {
            Err(StateError::Corrupt { reason, .. }) => {
                assert!(!reason.is_empty(), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The step is checked only for the rollout the file is resumed for, against the steps
    // the file says it indexes or, in a file without them, the rollout's.
    let mut s = saved();
    s.step = 4;
    fs::write(store.path("agent"), encode(&s)).unwrap();
    assert!(store.load("agent", "v3", 4).unwrap().is_some());
    assert!(store.load("agent", "v2", 5).is_err());
    s.steps.clear();
    fs::write(store.path("agent"), encode(&s)).unwrap();
    assert!(store.load("agent", "v2", 4).is_err());
    assert!(store.load("agent", "v2", 5).unwrap().is_some());
}

#[test]
fn inspecting_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nested/state");
    assert!(Store::inspect(&missing).unwrap().is_none());
    assert!(!dir.path().join("nested").exists());
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    match Store::inspect(&file) {
        Err(StateError::NotADirectory { path }) => assert_eq!(path, file),
        other => panic!("{other:?}"),
    }
    Store::open(dir.path()).unwrap().save(&saved()).unwrap();
    let before = fs::read_dir(dir.path()).unwrap().count();
    let store = Store::inspect(dir.path()).unwrap().unwrap();
    assert_eq!(store.load("agent", "v2", 4).unwrap().unwrap(), saved());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), before);
}

#[test]
fn the_audit_log_gets_one_line_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = Decision {
        at: "2026-01-01T00:00:00Z".into(),
        at_unix_ms: 1,
        route: "agent".into(),
        id: "v2".into(),
        decision: DecisionKind::Rollback,
        trigger: "judge".into(),
        from: None,
        to: Position {
            state: Phase::RolledBack,
            step: 0,
            percent: 0.0,
        },
        reason: "test".into(),
        soaked_seconds: 1.0,
        canary_samples: 1,
        baseline_samples: 2,
        guards: Vec::new(),
    };
    store.audit(&d).unwrap();
    store.audit(&d).unwrap();
    let text = fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
    let lines: Vec<Decision> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [d.clone(), d]);
}
