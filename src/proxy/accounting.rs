//! Per-request accounting that ends with the exchange: in-flight gauges, time to first byte,
//! duration, abandonment, the gRPC verdict, and the samples a rollout's guards read.
//!
//! Owns: what is recorded exactly once per request, however it ends (body done, error, or
//! the client going away). Must not touch: routing, header rewriting, the response body's
//! frames (`super::body` reports them here).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::routing::table::CohortTarget;
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
    /// Where the exchange stands, which decides what the drop records.
    stage: Stage,
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
            stage: Stage::Waiting,
        }
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
                m.outcome(slot);
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
                    cells.record_abandoned();
                }
            }
            Stage::Answered | Stage::Finished => {
                let duration = self.start.elapsed();
                m.duration.record(duration.as_secs_f64());
                let (mut ttfb, mut duration) = (self.ttfb, duration);
                if self.stage == Stage::Answered {
                    m.abandoned[Abandoned::DuringBody as usize].increment(1);
                    // The client waited at least this long and saw no end: for the latency
                    // guards, slower than any threshold.
                    (ttfb, duration) = (ttfb.or(Some(Duration::MAX)), Duration::MAX);
                }
                if let Some(cells) = guard {
                    cells.record(self.status, self.cut, self.outcome, ttfb, duration);
                }
            }
        }
    }
}
