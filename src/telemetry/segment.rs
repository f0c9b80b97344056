//! The handles of a route's segments: `cohort_requests_total`, `cohort_outcomes_total` and
//! `cohort_request_duration_seconds` with a `segment` label, one set per allowed value and
//! one for `other`, made with the table; and the request path's choice among them, by index.
//!
//! Owns: which families carry the segment and the order of their labels (route, cohort,
//! segment, then the family's own). Must not touch: where a segment comes from (`proxy`), the
//! allowed values (`routing::table`); a segment's label is always one of the route's values
//! or `other`, so the series stay as many as the configuration says.

use metrics::{Counter, Histogram, Key, Label, Recorder};

use super::{
    CohortMetrics, Metrics, OutcomeSlot, DURATION, METADATA, OUTCOMES, REQUESTS, STATUS_CLASSES,
};

/// One segment's handles of one (route, cohort).
#[derive(Clone)]
pub struct SegmentMetrics {
    pub requests: [Counter; 5],
    pub duration: Histogram,
    /// Aligned with the route's allowed outcome values.
    pub outcomes: Vec<Counter>,
    pub outcome_other: Counter,
}

impl Metrics {
    /// After a reload, applied or rejected, and [`Metrics::settle`]: retires, of each cohort
    /// still served, the segments' series that `serving` (route, cohort and its segments:
    /// the route's values and `other`, or none) no longer has: a value removed from
    /// `values`, a segment removed, or the series without one when a segment was added.
    /// Counters and histograms go after the same grace as a removed cohort's.
    pub fn settle_segments(&self, serving: &[(String, String, Vec<String>)]) {
        self.retired.settle_segments(serving);
    }

    /// The handles of each of `segments` (the route's values, then `other`), in order.
    pub(super) fn segments(
        &self,
        route: &str,
        cohort: &str,
        outcomes: &[String],
        segments: &[String],
    ) -> Vec<SegmentMetrics> {
        self.retired.note_segments(route, cohort, segments);
        segments
            .iter()
            .map(|segment| {
                let labels = |extra: Option<(&'static str, &str)>| {
                    let mut l = vec![
                        Label::new("route", route.to_string()),
                        Label::new("cohort", cohort.to_string()),
                        Label::new("segment", segment.clone()),
                    ];
                    if let Some((k, v)) = extra {
                        l.push(Label::new(k, v.to_string()));
                    }
                    l
                };
                let counter = |name: &'static str, k: &'static str, v: &str| {
                    self.recorder
                        .register_counter(&Key::from_parts(name, labels(Some((k, v)))), &METADATA)
                };
                SegmentMetrics {
                    requests: STATUS_CLASSES.map(|c| counter(REQUESTS, "status_class", c)),
                    duration: self
                        .recorder
                        .register_histogram(&Key::from_parts(DURATION, labels(None)), &METADATA),
                    outcomes: outcomes
                        .iter()
                        .map(|o| counter(OUTCOMES, "outcome", o))
                        .collect(),
                    outcome_other: counter(OUTCOMES, "outcome", "other"),
                }
            })
            .collect()
    }
}

impl CohortMetrics {
    /// The handles of segment `segment` (an index the route's segment gave), if the route
    /// has segments.
    #[inline]
    fn segment(&self, segment: Option<usize>) -> Option<&SegmentMetrics> {
        segment.and_then(|i| self.segments.get(i))
    }

    /// Counts an answer in its segment, or in the route's series without one.
    #[inline]
    pub fn request_in(&self, segment: Option<usize>, status: http::StatusCode) {
        match self.segment(segment) {
            Some(s) => {
                let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
                s.requests[class].increment(1);
            }
            None => self.request(status),
        }
    }

    #[inline]
    pub fn outcome_in(&self, segment: Option<usize>, slot: OutcomeSlot) {
        match (self.segment(segment), slot) {
            (Some(s), OutcomeSlot::Allowed(i)) => {
                if let Some(c) = s.outcomes.get(i) {
                    c.increment(1);
                }
            }
            (Some(s), OutcomeSlot::Other) => s.outcome_other.increment(1),
            (None, slot) => self.outcome(slot),
        }
    }

    /// The duration histogram of the segment, or the route's.
    #[inline]
    pub fn duration_in(&self, segment: Option<usize>) -> &Histogram {
        self.segment(segment)
            .map_or(&self.duration, |s| &s.duration)
    }
}

#[cfg(test)]
mod tests {
    use crate::telemetry::{Metrics, RETIRED_GRACE};
    use std::time::Instant;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn settle(m: &Metrics, segments: &[&str]) {
        m.settle(&[("r".to_string(), names(&["c"]))]);
        m.settle_segments(&[("r".to_string(), "c".to_string(), names(segments))]);
    }

    /// The `cohort_requests_total` 2xx series of route r, cohort c, as rendered.
    fn series(m: &Metrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("cohort_requests_total{route=\"r\"") && l.contains("2xx"))
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_segment_a_reload_removes_goes_after_the_grace_and_the_others_stay() {
        let m = Metrics::new();
        let first = m.cohort_segmented("r", "c", &[], &[], &names(&["x", "y", "other"]));
        first.segments[1].requests[1].increment(1);
        settle(&m, &["x", "y", "other"]);
        assert_eq!(series(&m).len(), 3);

        // `y` leaves the values.
        let second = m.cohort_segmented("r", "c", &[], &[], &names(&["x", "other"]));
        second.segments[0].requests[1].increment(1);
        settle(&m, &["x", "other"]);
        let y =
            "cohort_requests_total{route=\"r\",cohort=\"c\",segment=\"y\",status_class=\"2xx\"} 1";
        assert!(series(&m).iter().any(|l| l == y), "kept for the grace");
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        assert_eq!(
            series(&m),
            [
                "cohort_requests_total{route=\"r\",cohort=\"c\",segment=\"other\",status_class=\"2xx\"} 0",
                "cohort_requests_total{route=\"r\",cohort=\"c\",segment=\"x\",status_class=\"2xx\"} 1",
            ]
        );

        // A refused table registered `z`; what serves is still x and other.
        let _tried = m.cohort_segmented("r", "c", &[], &[], &names(&["z", "other"]));
        settle(&m, &["x", "other"]);
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        assert!(series(&m).iter().all(|l| !l.contains("\"z\"")));

        // The route drops its segment: the segments' series go, the plain ones come.
        let plain = m.cohort("r", "c", &[], &[]);
        plain.requests[1].increment(1);
        settle(&m, &[]);
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        assert_eq!(
            series(&m),
            ["cohort_requests_total{route=\"r\",cohort=\"c\",status_class=\"2xx\"} 1"]
        );

        // And takes one again: the plain series go in their turn.
        let _back = m.cohort_segmented("r", "c", &[], &[], &names(&["x", "other"]));
        settle(&m, &["x", "other"]);
        assert_eq!(series(&m).len(), 3, "the plain one kept for the grace");
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        let now = series(&m);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(now.iter().all(|l| l.contains("segment=")), "{now:?}");
    }
}
