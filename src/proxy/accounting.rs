//! Per-request accounting that ends with the exchange: in-flight gauges, time to first byte,
//! duration, abandonment, the gRPC verdict, a streamed answer's first token and the gaps
//! between its events, its token usage and cost, and the samples a rollout's guards read;
//! on a route with a segment, in the answer's segment (the request's, or the response head's).
//!
//! Owns: what is recorded exactly once per request, however it ends (body done, error, or
//! the client going away). Must not touch: routing, header rewriting, the response body's
//! frames (`super::body` reports them here).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::routing::table::CohortTarget;
use crate::samples::Answer;
use crate::telemetry::{Abandoned, OutcomeSlot};
use crate::upstream::InFlight;

/// Request accounting that must happen exactly once, however the exchange ends (body done,
/// error, or the client going away and the body being dropped).
pub struct Accounting {
    cohort: Arc<CohortTarget>,
    start: Instant,
    ttfb_done: bool,
    _endpoint: Option<InFlight>,
    grpc: Option<GrpcVerdict>,
    /// For a rollout's guards: the status the client got (0 until answered), whether the body
    /// was cut, the outcome counted, and the time to first byte.
    status: u16,
    cut: bool,
    outcome: Option<OutcomeSlot>,
    ttfb: Option<Duration>,
    /// A streamed answer's events so far: when the first and the last arrived, and how many.
    events: Option<(Instant, Instant, u32)>,
    /// Whether the answer is a stream of events, whose first token is awaited.
    streamed: bool,
    /// Whether the route reads usage (so an answer without it counts as missing).
    reads_usage: bool,
    usage: Option<Tokens>,
    /// Where the exchange stands, which decides what the drop records.
    stage: Stage,
    /// The answer's segment on a route with one: the request's, or (a response-header
    /// segment) `other` until the response head names one.
    segment: Option<usize>,
}

/// One answer's token counts, normalised: `input` includes `cached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
}

/// How far an exchange got before its [`Accounting`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No response head yet: a drop here is a client that left before the head (closed,
    /// reset its stream, timed out), unless the request was refused first.
    Waiting,
    /// Refused for the client's own body: counted in `cohort_rejected_requests_total` only.
    Refused,
    /// A head was answered; the body, if any, is the upstream's and has not ended.
    Answered,
    /// The upstream body ended (or failed): the client saw the whole answer.
    Finished,
}

/// A gRPC answer's verdict comes in its trailers (`grpc-status`), so its outcome is counted
/// when the body ends: `error` when the status is not 0, else the outcome header's value.
#[derive(Debug, Clone, Copy)]
pub struct GrpcVerdict {
    pub outcome: Option<OutcomeSlot>,
    pub error: OutcomeSlot,
    pub failed: bool,
}

/// Whether a `grpc-status` value reports a failure (anything but 0).
pub fn grpc_failed(status: &http::HeaderValue) -> bool {
    status.as_bytes().trim_ascii() != b"0"
}

impl Accounting {
    pub fn start(cohort: Arc<CohortTarget>, start: Instant) -> Self {
        cohort.metrics.in_flight.increment(1.0);
        Accounting {
            cohort,
            start,
            ttfb_done: false,
            _endpoint: None,
            grpc: None,
            status: 0,
            cut: false,
            outcome: None,
            ttfb: None,
            events: None,
            streamed: false,
            reads_usage: false,
            usage: None,
            stage: Stage::Waiting,
            segment: None,
        }
    }

    /// The answer's segment, on a route with one (see [`Accounting::segment`]).
    pub fn in_segment(&mut self, segment: usize) {
        self.segment = Some(segment);
    }

    /// The segment whose series and cells the answer counts in; `None` on a route without.
    pub fn segment(&self) -> Option<usize> {
        self.segment
    }

    /// Notes the status the client gets. A local answer (502, 504) is complete at once; an
    /// upstream one when its body ends ([`super::ObservedBody`]).
    pub fn answered(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
        self.stage = Stage::Finished;
    }

    /// The request was refused for its own body (too large, too slow, malformed): the
    /// client's fault, neither answered nor abandoned, and no sample.
    pub fn refused(&mut self) {
        self.stage = Stage::Refused;
    }

    /// The upstream's head was answered and its body is on its way ([`super::ObservedBody`]).
    pub(super) fn streaming(&mut self) {
        self.stage = Stage::Answered;
    }

    /// The upstream body ended or failed: a drop from now on is no abandonment.
    pub(super) fn finished(&mut self) {
        self.stage = Stage::Finished;
    }

    /// Notes the outcome counted from the response head.
    pub fn counted_outcome(&mut self, slot: OutcomeSlot) {
        self.outcome = Some(slot);
    }

    /// Counts the outcome when the body ends instead of now (see [`GrpcVerdict`]).
    pub fn defer_outcome(&mut self, verdict: GrpcVerdict) {
        self.grpc = Some(verdict);
    }

    pub(super) fn stream_failed(&mut self) {
        self.cut = true;
        if let Some(v) = self.grpc.as_mut() {
            v.failed = true;
        }
    }

    pub(super) fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let (Some(v), Some(status)) = (self.grpc.as_mut(), trailers.get("grpc-status")) {
            v.failed |= grpc_failed(status);
        }
    }

    pub fn hold_endpoint(&mut self, slot: InFlight) {
        self._endpoint = Some(slot);
    }

    pub fn cohort(&self) -> &CohortTarget {
        &self.cohort
    }

    /// The answer's body will be read for usage; `streamed` when it is a stream of events.
    pub(super) fn reading(&mut self, streamed: bool) {
        self.reads_usage = true;
        self.streamed = streamed;
    }

    /// `n` events of a streamed answer began in the frame that just arrived: the first is
    /// its first token, and each one after it ends a gap (events that came in one frame
    /// arrived together, so their gaps are zero).
    pub(super) fn events(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let m = &self.cohort.metrics;
        let (first, last, count) = match self.events {
            None => {
                m.ttft.record(now.duration_since(self.start).as_secs_f64());
                (now, now, 0)
            }
            Some((first, last, count)) => {
                m.inter_token.record(now.duration_since(last).as_secs_f64());
                (first, now, count)
            }
        };
        for _ in 1..n {
            m.inter_token.record(0.0);
        }
        self.events = Some((first, last, count.saturating_add(n)));
    }

    /// A stream whose usage is not read, timed all the same.
    pub(super) fn streaming_events(&mut self) {
        self.streamed = true;
    }

    pub(super) fn usage(&mut self, tokens: Tokens) {
        self.usage = Some(tokens);
    }

    /// The body's usage, where the agent's own header or trailer gave none.
    pub(super) fn usage_unless_told(&mut self, tokens: Tokens) {
        self.usage.get_or_insert(tokens);
    }

    /// What the guards read of the stream: the first token, and the mean gap between events.
    fn stream_answer(&self) -> (Option<Duration>, Option<Duration>) {
        match self.events {
            None => (None, None),
            Some((first, last, n)) => {
                let ttft = first.duration_since(self.start);
                let gap = (n > 1).then(|| last.duration_since(first) / (n - 1));
                (Some(ttft), gap)
            }
        }
    }

    /// Counts the answer's usage (a successful, complete one) and returns what the guards
    /// read of it: output tokens and cost in millionths.
    fn count_usage(&self) -> Option<(u64, Option<u64>)> {
        let m = &self.cohort.metrics;
        if !self.reads_usage {
            return None;
        }
        let Some(t) = self.usage else {
            m.usage_missing.increment(1);
            return None;
        };
        m.usage_reported.increment(1);
        m.tokens[0].increment(t.input);
        m.tokens[1].increment(t.output);
        m.tokens[2].increment(t.cached);
        m.output_tokens.record(t.output as f64);
        let cost = self.cohort.price.map(|p| {
            let micros = p.micros(t.input, t.output, t.cached);
            m.cost.record(micros / 1e6);
            // Whole millionths for the guards' bins; prices are bounded when loaded, and
            // a float past u64 saturates.
            micros.round() as u64
        });
        Some((t.output, cost))
    }

    pub(super) fn first_byte(&mut self) {
        if !self.ttfb_done {
            self.ttfb_done = true;
            let ttfb = self.start.elapsed();
            self.ttfb = Some(ttfb);
            self.cohort.metrics.ttfb.record(ttfb.as_secs_f64());
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let m = &self.cohort.metrics;
        if let Some(v) = self.grpc {
            self.outcome = match (v.failed, v.outcome) {
                (true, _) => Some(v.error),
                (false, slot) => slot,
            };
            if let Some(slot) = self.outcome {
                m.outcome_in(self.segment, slot);
            }
        }
        m.in_flight.decrement(1.0);
        let guard = self.cohort.guard.as_deref();
        match self.stage {
            Stage::Refused => {}
            Stage::Waiting => {
                // Not answered, so in neither `cohort_requests_total` nor the duration
                // histogram, which stays in step with it.
                m.abandoned[Abandoned::BeforeHead as usize].increment(1);
                if let Some(cells) = guard {
                    cells.record_abandoned_in(self.segment);
                }
            }
            Stage::Answered | Stage::Finished => {
                let duration = self.start.elapsed();
                m.duration_in(self.segment).record(duration.as_secs_f64());
                let (mut ttfb, mut duration) = (self.ttfb, duration);
                let (mut ttft, mut gap) = self.stream_answer();
                let complete =
                    self.stage == Stage::Finished && !self.cut && (200..300).contains(&self.status);
                let usage = if complete { self.count_usage() } else { None };
                if self.stage == Stage::Answered {
                    m.abandoned[Abandoned::DuringBody as usize].increment(1);
                    // The client waited at least this long and saw no end: for the latency
                    // guards, slower than any threshold; and so for the token guards, if
                    // it was waiting on a stream.
                    (ttfb, duration) = (ttfb.or(Some(Duration::MAX)), Duration::MAX);
                    if self.streamed {
                        ttft = ttft.or(Some(Duration::MAX));
                        gap = self.events.map(|_| Duration::MAX);
                    }
                }
                if let Some(cells) = guard {
                    // The segment's cells are picked now: a response-header segment is
                    // known only once the head has come.
                    cells.record_in(
                        self.segment,
                        &Answer {
                            status: self.status,
                            cut: self.cut,
                            outcome: self.outcome,
                            ttfb,
                            duration,
                            ttft,
                            gap,
                            usage,
                        },
                    );
                }
            }
        }
    }
}
