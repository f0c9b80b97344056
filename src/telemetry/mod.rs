//! Metric names, help texts, buckets, and the registry each proxy instance owns.
//!
//! Owns: creating metric handles (once, when a table is built), retiring the series of routes
//! and cohorts a reload removed, and rendering the scrape. Must not touch: the request path
//! looks nothing up here; it only uses handles from the table.
//! The registry is per instance rather than global so in-process tests do not share counters.

mod exposition;
mod help;
mod pins;
mod retired;
mod segment;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};

use self::exposition::Exposition;
pub use self::pins::PinCounters;
use self::retired::Retirements;
pub use self::segment::SegmentMetrics;

pub const REQUESTS: &str = "cohort_requests_total";
pub const DURATION: &str = "cohort_request_duration_seconds";
pub const TTFB: &str = "cohort_time_to_first_byte_seconds";
pub const UPSTREAM_FAILURES: &str = "cohort_upstream_failures_total";
pub const OUTCOMES: &str = "cohort_outcomes_total";
pub const IN_FLIGHT: &str = "cohort_in_flight_requests";
pub const SPLIT: &str = "cohort_split_percent";
pub const UNROUTED: &str = "cohort_unrouted_requests_total";
pub const RELOADS: &str = "cohort_config_reloads_total";
pub const GENERATION: &str = "cohort_config_generation";
pub const REJECTED: &str = "cohort_rejected_requests_total";
pub const OVERRIDE_REJECTED: &str = "cohort_override_rejected_total";
pub const CONNECTIONS_REFUSED: &str = "cohort_connections_refused_total";
pub const OPEN_CONNECTIONS: &str = "cohort_open_connections";
pub const PARKED_CONNECTIONS: &str = "cohort_parked_connections";
pub const ABANDONED: &str = "cohort_abandoned_requests_total";
pub const INTERNAL: &str = "cohort_internal_errors_total";
pub const TOKENS: &str = "cohort_tokens_total";
pub const USAGE_ANSWERS: &str = "cohort_usage_answers_total";
pub const OUTPUT_TOKENS: &str = "cohort_answer_output_tokens";
pub const COST: &str = "cohort_answer_cost";
pub const TTFT: &str = "cohort_time_to_first_token_seconds";
pub const INTER_TOKEN: &str = "cohort_inter_token_seconds";
pub const PINNED: &str = "cohort_pinned_requests_total";
pub const PINS_ISSUED: &str = "cohort_pins_issued_total";
pub const PIN_REJECTED: &str = "cohort_pin_rejected_total";
pub const LATE_OUTCOMES: &str = "cohort_late_outcomes_total";
pub const LATE_REFUSED: &str = "cohort_late_outcomes_refused_total";
pub const LATE_EVICTED: &str = "cohort_late_outcomes_ids_evicted_total";

/// The `kind` labels of `cohort_tokens_total`, in [`CohortMetrics::tokens`]' order.
pub const TOKEN_KINDS: [&str; 3] = ["input", "output", "cached_input"];

/// Output tokens per answer: a one-line reply to a long report.
pub const OUTPUT_TOKEN_BUCKETS: &[f64] = &[
    16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

/// Cost per answer, in the prices' currency: a cached snippet to a long reasoning turn.
pub const COST_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Gaps between streamed events: a fast model's token to a stall.
pub const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Agent latencies run from a cached answer (milliseconds) to a long tool-using turn (minutes).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// When a client left an exchange unfinished; the `stage` label of
/// `cohort_abandoned_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Before the response head: never answered, so not in `cohort_requests_total`.
    BeforeHead = 0,
    /// During the upstream's body: answered, so also in `cohort_requests_total`.
    DuringBody = 1,
}

impl Abandoned {
    pub const ALL: [Abandoned; 2] = [Self::BeforeHead, Self::DuringBody];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeHead => "before_head",
            Self::DuringBody => "during_body",
        }
    }
}

static METADATA: Metadata<'static> = Metadata::new("cohort", metrics::Level::INFO, Some("cohort"));

/// How long the counters and histograms of a removed route or cohort stay in the scrape:
/// several scrape intervals, so Prometheus reads their last values (and `increase()` over a
/// window that ends after the removal still sees them) before they go.
pub const RETIRED_GRACE: Duration = Duration::from_secs(5 * 60);

/// The registry of one proxy instance.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<Exposition>,
    /// Routes and cohorts a reload removed whose counters and histograms still show.
    retired: Arc<Retirements>,
    pub unrouted: Counter,
    pub reload_success: Counter,
    pub reload_failure: Counter,
    pub generation: Gauge,
}

/// Handles for one (route, cohort), created when the table is built.
#[derive(Clone)]
pub struct CohortMetrics {
    pub requests: [Counter; 5],
    pub duration: Histogram,
    pub ttfb: Histogram,
    /// Aligned with the reasons [`Metrics::cohort`] was given.
    pub failures: Vec<Counter>,
    /// Aligned with `Abandoned::ALL`.
    pub abandoned: [Counter; 2],
    /// Aligned with the route's allowed outcome values.
    pub outcomes: Vec<Counter>,
    pub outcome_other: Counter,
    pub in_flight: Gauge,
    pub split: Gauge,
    /// Aligned with [`TOKEN_KINDS`].
    pub tokens: [Counter; 3],
    /// Answers whose usage was read, and those without (where the route reads usage).
    pub usage_reported: Counter,
    pub usage_missing: Counter,
    pub output_tokens: Histogram,
    pub cost: Histogram,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    /// A route with a `segment`: the requests, duration and outcome handles of each segment
    /// (its values, then `other`), which replace the fields above (then never registered,
    /// so no series without the `segment` label). Empty otherwise.
    pub segments: Vec<SegmentMetrics>,
    /// `cohort_late_outcomes_total`, aligned with the route's allowed outcome values (a late
    /// outcome outside them is refused, so there is no `other`).
    pub late_outcomes: Vec<Counter>,
}

/// Which outcome counter a backend's verdict lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeSlot {
    /// Index into the route's allowed outcomes.
    Allowed(usize),
    Other,
}

impl CohortMetrics {
    #[inline]
    pub fn outcome(&self, slot: OutcomeSlot) {
        match slot {
            OutcomeSlot::Allowed(i) => self.outcomes[i].increment(1),
            OutcomeSlot::Other => self.outcome_other.increment(1),
        }
    }

    #[inline]
    pub fn request(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].increment(1);
    }

    /// Counts a failed upstream exchange under the reason at `index` of those the handles
    /// were registered with.
    #[inline]
    pub fn failure(&self, index: usize) {
        if let Some(c) = self.failures.get(index) {
            c.increment(1);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // Only an empty bucket list is refused, and this one is a non-empty constant.
        let families: [(&'static str, &[f64]); 3] = [
            (OUTPUT_TOKENS, OUTPUT_TOKEN_BUCKETS),
            (COST, COST_BUCKETS),
            (INTER_TOKEN, INTER_TOKEN_BUCKETS),
        ];
        // Only an empty bucket list is refused, and these are non-empty constants.
        let recorder =
            Exposition::new(LATENCY_BUCKETS, &families).expect("bucket lists are not empty");
        for (name, unit, text) in help::HELP {
            let text = SharedString::const_str(text);
            match name {
                DURATION | TTFB | OUTPUT_TOKENS | COST | TTFT | INTER_TOKEN => {
                    recorder.describe_histogram(KeyName::from_const_str(name), Some(unit), text)
                }
                IN_FLIGHT | SPLIT | GENERATION | OPEN_CONNECTIONS | PARKED_CONNECTIONS => {
                    recorder.describe_gauge(KeyName::from_const_str(name), Some(unit), text)
                }
                _ => recorder.describe_counter(KeyName::from_const_str(name), Some(unit), text),
            }
        }
        let recorder = Arc::new(recorder);
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let unrouted = counter(UNROUTED, vec![]);
        let reload_success = counter(RELOADS, vec![Label::new("result", "success")]);
        let reload_failure = counter(RELOADS, vec![Label::new("result", "failure")]);
        let generation = recorder.register_gauge(&Key::from_name(GENERATION), &METADATA);
        Metrics {
            recorder,
            retired: Arc::default(),
            unrouted,
            reload_success,
            reload_failure,
            generation,
        }
    }

    /// `cohort_internal_errors_total`, one counter per `reasons` label, in their order.
    pub fn internal<const N: usize>(&self, reasons: [&'static str; N]) -> [Counter; N] {
        reasons.map(|r| {
            let labels = vec![Label::new("reason", r)];
            self.recorder
                .register_counter(&Key::from_parts(INTERNAL, labels), &METADATA)
        })
    }

    /// `cohort_rejected_requests_total`, one counter per `reasons` label, in their order
    /// (found again on every table built, so the counts survive reloads).
    pub fn rejected<const N: usize>(&self, reasons: [&'static str; N]) -> [Counter; N] {
        reasons.map(|r| {
            let labels = vec![Label::new("reason", r)];
            self.recorder
                .register_counter(&Key::from_parts(REJECTED, labels), &METADATA)
        })
    }

    /// Registers (or finds again, so counters survive reloads) the handles for one cohort;
    /// `failure_reasons` are the `reason` labels of its upstream failures.
    pub fn cohort(
        &self,
        route: &str,
        cohort: &str,
        outcomes: &[String],
        failure_reasons: &[&'static str],
    ) -> CohortMetrics {
        self.cohort_segmented(route, cohort, outcomes, failure_reasons, &[])
    }

    /// [`Metrics::cohort`] for a route whose `segments` (its values, then `other`; empty
    /// without a segment) split the requests, duration and outcome series.
    pub fn cohort_segmented(
        &self,
        route: &str,
        cohort: &str,
        outcomes: &[String],
        failure_reasons: &[&'static str],
        segments: &[String],
    ) -> CohortMetrics {
        self.retired.note(route, Some(cohort));
        let base = || {
            vec![
                Label::new("route", route.to_string()),
                Label::new("cohort", cohort.to_string()),
            ]
        };
        let with = |k: &'static str, v: String| {
            let mut l = base();
            l.push(Label::new(k, v));
            l
        };
        let counter = |name: &'static str, labels: Vec<Label>| {
            self.recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let histogram = |name: &'static str| {
            self.recorder
                .register_histogram(&Key::from_parts(name, base()), &METADATA)
        };
        let split = self.segments(route, cohort, outcomes, segments);
        let whole = split.is_empty();
        let counter_if = |name, labels| {
            if whole {
                counter(name, labels)
            } else {
                Counter::noop()
            }
        };
        CohortMetrics {
            requests: STATUS_CLASSES
                .map(|c| counter_if(REQUESTS, with("status_class", c.to_string()))),
            duration: if whole {
                histogram(DURATION)
            } else {
                Histogram::noop()
            },
            ttfb: self
                .recorder
                .register_histogram(&Key::from_parts(TTFB, base()), &METADATA),
            failures: failure_reasons
                .iter()
                .map(|r| counter(UPSTREAM_FAILURES, with("reason", r.to_string())))
                .collect(),
            abandoned: Abandoned::ALL
                .map(|a| counter(ABANDONED, with("stage", a.as_str().to_string()))),
            outcomes: outcomes
                .iter()
                .map(|o| counter_if(OUTCOMES, with("outcome", o.clone())))
                .collect(),
            outcome_other: counter_if(OUTCOMES, with("outcome", "other".to_string())),
            in_flight: self
                .recorder
                .register_gauge(&Key::from_parts(IN_FLIGHT, base()), &METADATA),
            split: self
                .recorder
                .register_gauge(&Key::from_parts(SPLIT, base()), &METADATA),
            tokens: TOKEN_KINDS.map(|k| counter(TOKENS, with("kind", k.to_string()))),
            usage_reported: counter(USAGE_ANSWERS, with("usage", "reported".to_string())),
            usage_missing: counter(USAGE_ANSWERS, with("usage", "missing".to_string())),
            output_tokens: histogram(OUTPUT_TOKENS),
            cost: histogram(COST),
            ttft: histogram(TTFT),
            inter_token: histogram(INTER_TOKEN),
            segments: split,
            late_outcomes: outcomes
                .iter()
                .map(|o| counter(LATE_OUTCOMES, with("outcome", o.clone())))
                .collect(),
        }
    }

    /// `cohort_late_outcomes_refused_total`, one counter per `reasons` label, in their order.
    pub fn late_refused<const N: usize>(&self, reasons: [&'static str; N]) -> [Counter; N] {
        reasons.map(|r| {
            let labels = vec![Label::new("reason", r)];
            self.recorder
                .register_counter(&Key::from_parts(LATE_REFUSED, labels), &METADATA)
        })
    }

    /// `cohort_late_outcomes_ids_evicted_total`.
    pub fn late_evicted(&self) -> Counter {
        self.recorder
            .register_counter(&Key::from_name(LATE_EVICTED), &METADATA)
    }

    /// Override rejections of one route, one counter per `reasons` label, in their order.
    pub fn override_rejected<const N: usize>(
        &self,
        route: &str,
        reasons: [&'static str; N],
    ) -> [Counter; N] {
        self.retired.note(route, None);
        reasons.map(|r| {
            let labels = vec![
                Label::new("route", route.to_string()),
                Label::new("reason", r),
            ];
            self.recorder
                .register_counter(&Key::from_parts(OVERRIDE_REJECTED, labels), &METADATA)
        })
    }

    /// Connection handles of one listener: refused count, open and parked gauges.
    pub fn listener(&self, name: &str) -> (Counter, Gauge, Gauge) {
        let labels = || vec![Label::new("listener", name.to_string())];
        (
            self.recorder
                .register_counter(&Key::from_parts(CONNECTIONS_REFUSED, labels()), &METADATA),
            self.recorder
                .register_gauge(&Key::from_parts(OPEN_CONNECTIONS, labels()), &METADATA),
            self.recorder
                .register_gauge(&Key::from_parts(PARKED_CONNECTIONS, labels()), &METADATA),
        )
    }

    /// A gauge outside the per-cohort sets (a rollout's), described with `help`.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        self.recorder.describe_gauge(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        self.recorder
            .register_gauge(&Key::from_parts(name, owned(labels)), &METADATA)
    }

    /// A counter outside the per-cohort sets (a rollout's), described with `help`.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        self.recorder.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        self.recorder
            .register_counter(&Key::from_parts(name, owned(labels)), &METADATA)
    }

    /// A histogram outside the per-cohort sets (the fleet's), in seconds, with the latency
    /// buckets, described with `help`.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        self.recorder.describe_histogram(
            KeyName::from_const_str(name),
            Some(metrics::Unit::Seconds),
            SharedString::const_str(help),
        );
        self.recorder
            .register_histogram(&Key::from_parts(name, owned(labels)), &METADATA)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.recorder.render()
    }

    /// Drains histogram samples into their buckets and drops the counters and histograms
    /// retired more than [`RETIRED_GRACE`] ago; called periodically so memory stays bounded.
    pub fn upkeep(&self) {
        self.upkeep_at(Instant::now());
    }

    /// [`Metrics::upkeep`] as if run at `now`.
    pub fn upkeep_at(&self, now: Instant) {
        self.recorder.drain();
        self.retired.sweep(&self.recorder, now, RETIRED_GRACE);
    }

    /// After a reload, applied or rejected: retires the series of every route and cohort
    /// that handles were registered for (by the table serving until now, or by one that failed
    /// to validate) and that `serving` (route names with their cohorts') does not have. Their
    /// gauges go at once (a removed cohort holds no share and no request of the serving
    /// table); their counters and histograms after [`RETIRED_GRACE`]. A route or cohort that
    /// is back in `serving` is no longer retired.
    pub fn settle(&self, serving: &[(String, Vec<String>)]) {
        self.retired.settle(&self.recorder, serving);
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}
