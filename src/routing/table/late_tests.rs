//! The `late_outcomes` section: its defaults, and each rule placed at its field.

use std::time::Duration;

use super::late::LateSpec;
use super::tests::{accept, reject, MINIMAL};

#[test]
fn late_outcomes_have_defaults_and_take_every_option() {
    let t = accept(MINIMAL);
    assert_eq!(t.late, LateSpec::default());
    assert_eq!(t.late.window, Duration::from_secs(7 * 86_400));
    assert_eq!(
        (t.late.max_events, t.late.max_body_bytes),
        (1000, 1024 * 1024)
    );
    let text = format!(
        "{MINIMAL}late_outcomes:\n  window: 2d\n  max_clock_skew: 0s\n  dedupe_window: 1h\n  \
         max_remembered_ids: 10\n  max_body_bytes: 300\n  max_events: 2\n  read_timeout: 100ms\n"
    );
    let t = accept(&text);
    assert_eq!(
        t.late,
        LateSpec {
            window: Duration::from_secs(2 * 86_400),
            max_clock_skew: Duration::ZERO,
            dedupe_window: Duration::from_secs(3600),
            max_remembered_ids: 10,
            max_body_bytes: 300,
            max_events: 2,
            read_timeout: Duration::from_millis(100),
        }
    );
}

#[test]
fn late_outcome_limits_are_refused_at_their_field() {
    let with = |lines: &str| format!("{MINIMAL}late_outcomes:\n{lines}");
    reject(
        &with("  max_events: 0\n"),
        27,
        15,
        "late_outcomes.max_events",
        &["from 1"],
    );
    reject(
        &with("  max_body_bytes: 10\n"),
        27,
        19,
        "late_outcomes.max_body_bytes",
        &["from 256"],
    );
    reject(
        &with("  max_remembered_ids: 0\n"),
        27,
        23,
        "late_outcomes.max_remembered_ids",
        &["from 1"],
    );
    reject(
        &with("  read_timeout: 1ms\n"),
        27,
        17,
        "late_outcomes.read_timeout",
        &["shorter"],
    );
}
