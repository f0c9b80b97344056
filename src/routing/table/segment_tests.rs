//! A route's `segment` and its rollout's `per_segment` guards: what is accepted, and each
//! rule's error with its line, column and field path (edits of the contract's
//! `minimal.yaml`, whose route ends at line 25; the segment starts at line 26).

use http::{HeaderMap, HeaderValue};

use super::segment::SegmentSource;
use super::tests::{accept, reject, MINIMAL};

fn with_segment(segment: &str, rollout: &str) -> String {
    format!("{MINIMAL}    segment:\n{segment}{rollout}state_dir: state\n")
}

const CHANNEL: &str =
    "      request_header: x-channel\n      values: [Billing, shipping, returns]\n";

#[test]
fn a_segment_is_read_from_its_header_and_anything_else_is_other() {
    let t = accept(&with_segment(CHANNEL, ""));
    let s = t.routes[0].segment.as_ref().unwrap();
    assert_eq!(
        s.source,
        SegmentSource::Request("x-channel".parse().unwrap())
    );
    assert_eq!(s.names(), ["billing", "shipping", "returns", "other"]);
    let mut h = HeaderMap::new();
    assert_eq!(s.of_request(&h), 3);
    for (value, index) in [("BILLING", 0), (" returns", 2), ("fax", 3), ("", 3)] {
        h.insert("x-channel", HeaderValue::from_str(value).unwrap());
        assert_eq!(s.of_request(&h), index, "{value:?}");
        assert_eq!(s.of_response(&h), None);
    }

    let t = accept(&with_segment(
        "      response_header: x-agent-intent\n      values: [refund]\n",
        "",
    ));
    let s = t.routes[0].segment.as_ref().unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-agent-intent", HeaderValue::from_static("refund"));
    // Known only from the response head: `other` until then.
    assert_eq!((s.of_request(&h), s.of_response(&h)), (1, Some(0)));
    assert!(accept(MINIMAL).routes[0].segment.is_none());
}

#[test]
fn a_bad_segment_is_refused_where_it_is() {
    let at = "routes[0].segment";
    reject(
        &with_segment(
            "      request_header: a\n      response_header: b\n      values: [x]\n",
            "",
        ),
        26,
        5,
        at,
        &["exactly one of request_header and response_header"],
    );
    reject(
        &with_segment("      values: [x]\n", ""),
        26,
        5,
        at,
        &["exactly one of request_header and response_header"],
    );
    reject(
        &with_segment("      request_header: x-c\n      values: []\n", ""),
        28,
        7,
        &format!("{at}.values"),
        &["0 values: give from 1 to 16"],
    );
    reject(
        &with_segment("      request_header: x-c\n      values: [a, Other]\n", ""),
        28,
        19,
        &format!("{at}.values[1]"),
        &["`other` is where every value not listed goes"],
    );
    reject(
        &with_segment("      request_header: x-c\n      values: [a, A]\n", ""),
        28,
        19,
        &format!("{at}.values[1]"),
        &["duplicate segment value name \"a\""],
    );
    reject(
        &with_segment("      request_header: x-c\n      values: [\"a b\"]\n", ""),
        28,
        16,
        &format!("{at}.values[0]"),
        &["not a valid name"],
    );
    reject(
        &with_segment(
            "      request_header: \"bad header\"\n      values: [a]\n",
            "",
        ),
        27,
        23,
        &format!("{at}.request_header"),
        &["not a valid header name"],
    );
    let many: Vec<String> = (0..17).map(|i| format!("v{i}")).collect();
    reject(
        &with_segment(
            &format!(
                "      request_header: x-c\n      values: [{}]\n",
                many.join(", ")
            ),
            "",
        ),
        28,
        7,
        &format!("{at}.values"),
        &["17 values: give from 1 to 16"],
    );
}

const PER_SEGMENT: &str = "    rollout:\n      id: v2\n      canary: canary\n      guards:\n        - {metric: error_rate, margin: 2}\n        - {metric: error_rate, margin: 2, per_segment: true}\n        - {metric: latency, quantile: 0.95, per_segment: true}\n";

#[test]
fn per_segment_guards_are_tested_in_every_segment_at_a_share_of_alpha() {
    let t = accept(&with_segment(CHANNEL, PER_SEGMENT));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!(spec.segments, ["billing", "shipping", "returns", "other"]);
    let names = |g: &[super::rollout::Guard]| g.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&spec.guards), ["error_rate"]);
    assert_eq!(names(&spec.segment_guards), ["error_rate", "latency p95"]);
    // Three guards at five steps; each per_segment one split again over four segments.
    assert!((spec.alpha_per_test() - 0.05 / 15.0).abs() < 1e-15);
    assert!((spec.alpha_per_segment_test() - 0.05 / 60.0).abs() < 1e-15);
}

#[test]
fn a_per_segment_guard_needs_a_segment_and_is_not_repeated() {
    let rollout = "    rollout:\n      id: v2\n      canary: canary\n      guards:\n        - {metric: error_rate, per_segment: true}\n";
    reject(
        &format!("{MINIMAL}{rollout}state_dir: state\n"),
        30,
        45,
        "routes[0].rollout.guards[0].per_segment",
        &["the route has no `segment`"],
    );
    let twice = "    rollout:\n      id: v2\n      canary: canary\n      guards:\n        - {metric: error_rate, per_segment: true}\n        - {metric: error_rate, margin: 1, per_segment: true}\n";
    reject(
        &with_segment(CHANNEL, twice),
        34,
        11,
        "routes[0].rollout.guards[1]",
        &["a second per_segment error_rate guard"],
    );
}

#[test]
fn a_per_segment_guard_cannot_include_late_outcomes_which_carry_no_segment() {
    let rollout = "    rollout:\n      id: v2\n      canary: canary\n      guards:\n        - {metric: escalation_rate, per_segment: true, include_late: true}\n";
    reject(
        &with_segment(CHANNEL, rollout),
        33,
        70,
        "routes[0].rollout.guards[0].include_late",
        &["late outcomes carry no segment"],
    );
}

#[test]
fn per_segment_histograms_are_bounded_for_the_fleet_reports() {
    let values: Vec<String> = (0..16).map(|i| format!("v{i}")).collect();
    let segment = format!(
        "      request_header: x-c\n      values: [{}]\n",
        values.join(", ")
    );
    let rollout = |guards: &str| {
        format!("    rollout:\n      id: v2\n      canary: canary\n      guards:\n{guards}")
    };
    // 17 segments, each keeping durations and first-byte times: 34 histograms.
    let two = "        - {metric: latency, per_segment: true}\n        - {metric: ttfb, per_segment: true}\n        - {metric: error_rate, per_segment: true}\n";
    accept(&with_segment(&segment, &rollout(two)));
    let three = format!("{two}        - {{metric: ttft, per_segment: true}}\n");
    reject(
        &with_segment(&segment, &rollout(&three)),
        32,
        7,
        "routes[0].rollout.guards",
        &["keep 51 histograms apart", "more than 34"],
    );
}
