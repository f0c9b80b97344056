//! The rollout section's configuration rules, each checked for the line, column and field path
//! it reports, as `tests.rs` does for the rest (edits of the contract's `minimal.yaml`, whose
//! line 25 is the canary's `percent: 5`; the rollout starts at line 26).

use std::time::Duration;

use super::rollout::After;
use super::tests::{accept, edit, reject, MINIMAL};

/// `MINIMAL` with a state_dir and `rollout` (lines after `rollout:`, indented by 6) on its
/// route; `extra` replaces nothing when empty, else is inserted before the rollout.
fn with_rollout(extra: &str, lines: &str) -> String {
    format!("{MINIMAL}{extra}    rollout:\n{lines}state_dir: state\n")
}

const BASIC: &str = "      id: v2\n      canary: canary\n";

/// `BASIC` with `lines` after it in the rollout (the first at line 29) is refused at `line`,
/// `column` and `routes[0].rollout.<field>`, saying each of `says`.
#[track_caller]
fn reject_rollout(lines: &str, line: usize, column: usize, field: &str, says: &[&str]) {
    let text = with_rollout("", &format!("{BASIC}      {lines}\n"));
    reject(
        &text,
        line,
        column,
        &format!("routes[0].rollout.{field}"),
        says,
    );
}

/// As [`reject_rollout`] for one guard with the options `lines`, at `guards[0].<field>`.
#[track_caller]
fn reject_guard(lines: &[&str], line: usize, column: usize, field: &str, says: &[&str]) {
    let guard = format!("guards:\n        - {}", lines.join("\n          "));
    reject_rollout(&guard, line, column, &format!("guards[0].{field}"), says);
}

#[test]
fn a_rollout_is_accepted_with_its_defaults() {
    let t = accept(&with_rollout("", BASIC));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!((spec.id.as_str(), spec.canary.as_str()), ("v2", "canary"));
    assert_eq!(spec.baseline, "stable");
    assert_eq!(spec.steps, [100, 500, 2500, 5000, 10000]);
    assert_eq!(spec.soak, Duration::from_secs(600));
    assert_eq!((spec.min_samples, spec.alpha), (500, 0.05));
    assert_eq!(spec.after, After::Hold);
    assert_eq!(spec.guards.len(), 1);
    assert_eq!(spec.guards[0].name, "error_rate");
    assert_eq!(spec.alpha_per_test(), 0.01);
    assert_eq!(
        t.state_dir.as_deref(),
        Some(std::path::Path::new("./state"))
    );
    // The table holds the file's percents; the rollouts set the effective ones.
    let weights: Vec<u32> = t.routes[0].cohorts.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [9500, 500]);

    let t = accept(&with_rollout(
        "",
        &format!(
            "{BASIC}      steps: [0.5, 2.25, 95]\n      after: promote\n      guards:\n\
             \x20       - metric: latency\n          quantile: 0.99\n\
             \x20       - metric: resolution_rate\n          outcome: Resolved\n          relative_margin: 0.5\n"
        ),
    ));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!(spec.steps, [50, 225, 9500]);
    assert_eq!(spec.after, After::Promote);
    let names: Vec<_> = spec.guards.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["latency p99", "resolution_rate"]);
}

#[test]
fn a_rollout_needs_a_state_dir() {
    let text = format!("{MINIMAL}    rollout:\n{BASIC}");
    reject(&text, 26, 5, "routes[0].rollout", &["state_dir"]);
}

#[test]
fn the_canary_is_a_later_cohort_the_last_and_not_the_fallback() {
    let r = |canary: &str| with_rollout("", &format!("      id: v2\n      canary: {canary}\n"));
    reject(
        &r("nope"),
        28,
        15,
        "routes[0].rollout.canary",
        &["\"nope\"", "not a cohort"],
    );
    reject(
        &r("stable"),
        28,
        15,
        "routes[0].rollout.canary",
        &["baseline"],
    );
    let third = edit(
        "        percent: 5\n",
        "        percent: 5\n      - cohort: small\n        upstream: canary\n        percent: 0\n",
    );
    let text = format!("{third}    rollout:\n{BASIC}state_dir: s\n");
    reject(&text, 31, 15, "routes[0].rollout.canary", &["last"]);
    let text = with_rollout("    fallback: canary\n", BASIC);
    reject(&text, 29, 15, "routes[0].rollout.canary", &["fallback"]);
}

#[test]
fn steps_increase_within_the_room_the_other_cohorts_leave() {
    reject_rollout("steps: [5, 1]", 29, 18, "steps[1]", &["increase"]);
    reject_rollout("steps: [1, 1.005]", 29, 18, "steps[1]", &["two decimals"]);
    reject_rollout("steps: [0, 5]", 29, 15, "steps[0]", &["above 0"]);
    reject_rollout("steps: []", 29, 7, "steps", &["at least one"]);
    let third = edit(
        "        percent: 95\n",
        "        percent: 92\n      - cohort: small\n        upstream: stable\n        percent: 3\n",
    );
    let text = format!("{third}    rollout:\n{BASIC}      steps: [50, 98]\nstate_dir: s\n");
    reject(
        &text,
        32,
        19,
        "routes[0].rollout.steps[1]",
        &["other cohorts hold 3%"],
    );
}

#[test]
fn samples_alpha_and_id_are_checked() {
    reject_rollout("min_samples: 0", 29, 20, "min_samples", &["at least 1"]);
    reject_rollout("alpha: 0", 29, 14, "alpha", &["probability"]);
    reject_rollout("alpha: 0.7", 29, 14, "alpha", &["at most 0.5"]);
    reject_rollout("after: later", 29, 14, "after", &["unknown variant"]);
    let text = with_rollout("", "      id: v 2\n      canary: canary\n");
    reject(&text, 27, 11, "routes[0].rollout.id", &["not a valid name"]);
}

#[test]
fn each_guard_takes_only_its_own_options() {
    reject_guard(
        &["metric: error_rate", "quantile: 0.9"],
        31,
        21,
        "quantile",
        &["only latency"],
    );
    reject_guard(
        &["metric: latency", "outcome: x"],
        31,
        20,
        "outcome",
        &["only escalation_rate"],
    );
    reject_guard(
        &["metric: latency", "margin: 1"],
        31,
        19,
        "margin",
        &["relative_margin"],
    );
    reject_guard(
        &["metric: latency", "quantile: 0.3"],
        31,
        21,
        "quantile",
        &["0.5 to 0.999"],
    );
    let both = ["metric: error_rate", "margin: 1", "relative_margin: 0.1"];
    reject_guard(&both, 31, 19, "margin", &["not both"]);
    reject_guard(
        &["metric: error_rate", "margin: 100"],
        31,
        19,
        "margin",
        &["percentage points"],
    );
    let lower = ["metric: resolution_rate", "relative_margin: 1"];
    reject_guard(&lower, 31, 28, "relative_margin", &["below 1"]);
    reject_guard(
        &["metric: escalation_rate", "outcome: transferred"],
        31,
        20,
        "outcome",
        &["\"transferred\"", "outcomes"],
    );
    reject_guard(&["metric: p99"], 30, 19, "metric", &["unknown variant"]);
    reject_guard(
        &["metric: ttfb", "threshold: 1"],
        31,
        11,
        "threshold",
        &["unknown field `threshold`"],
    );
    let twice = "guards:\n        - metric: ttfb\n        - metric: ttfb";
    reject_rollout(twice, 31, 11, "guards[1]", &["second ttfb p50"]);
    // An outcome guard needs its outcome among the route's.
    let text = with_rollout(
        "    outcomes: [resolved, error]\n",
        &format!("{BASIC}      guards:\n        - metric: escalation_rate\n"),
    );
    reject(
        &text,
        31,
        11,
        "routes[0].rollout.guards[0]",
        &["\"escalated\""],
    );
}

#[test]
fn the_rollout_demo_config_loads() {
    let t = accept(include_str!("../../../config/rollout.yaml"));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!(spec.steps, [1000, 2500, 5000, 10000]);
    assert_eq!(spec.guards.len(), 3);
    assert!(t.state_dir.is_some());
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn srm_alpha_defaults_to_a_thousandth_may_be_off_and_is_checked() {
    let t = accept(&with_rollout("", BASIC));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!(spec.srm_alpha, 0.001);
    assert_eq!(spec.srm_alpha_per_step(), 0.001 / 5.0);
    let t = accept(&with_rollout("", &format!("{BASIC}      srm_alpha: 0\n")));
    assert_eq!(
        t.routes[0].rollout.as_ref().unwrap().srm_alpha_per_step(),
        0.0
    );
    reject_rollout(
        "srm_alpha: 0.7",
        29,
        18,
        "srm_alpha",
        &["from 0 (the check off) to 0.5"],
    );
    reject_rollout(
        "srm_alpha: -0.1",
        29,
        18,
        "srm_alpha",
        &["not a probability"],
    );
}

#[test]
fn only_outcome_guards_include_late_outcomes() {
    reject_guard(
        &["metric: error_rate", "include_late: true"],
        31,
        25,
        "include_late",
        &["only escalation_rate and resolution_rate"],
    );
    let guard = "guards:\n        - metric: resolution_rate\n          include_late: true\n";
    let t = accept(&with_rollout("", &format!("{BASIC}      {guard}")));
    let g = &t.routes[0].rollout.as_ref().unwrap().guards[0];
    assert_eq!(g.name, "resolution_rate +late");
    assert!(matches!(
        g.kind,
        super::rollout::GuardKind::Rate {
            source: super::rollout::Rate::OutcomeWithLate(0),
            ..
        }
    ));
}
