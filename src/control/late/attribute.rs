//! Which cohort a late outcome belongs to, and counting it there: the cohort its key had when
//! its conversation started, by the contract's formula over the route's percent history.
//!
//! Owns: the order of the checks an event passes, and what an accepted event adds (the late
//! counter of its cohort, and the late cells of a judged rollout). Must not touch: the body or
//! the HTTP exchange (`endpoint`), files (`file`).

use super::dedupe::{Admit, Dedupe};
use super::event::{refuse, Event, Reason, Refusal, Subject};
use crate::routing::history::History;
use crate::routing::table::{Route, RoutingTable};
use crate::telemetry::OutcomeSlot;

/// An accepted event: where it was counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub cohort: String,
    /// The key's bucket; absent when a pin named the cohort.
    pub bucket: Option<u32>,
    /// When the split it was attributed under began (ms since the epoch).
    pub split_since_ms: Option<u64>,
    /// Ids forgotten to make room for this one's.
    pub evicted: usize,
}

/// Everything one event is checked against.
pub struct Context<'a> {
    pub table: &'a RoutingTable,
    pub history: &'a History,
    pub dedupe: &'a mut Dedupe,
    pub now_ms: u64,
}

/// The cohort a genuine pin of `route` names, by index. A pin carries the cohort that served
/// the conversation, so it needs no history. Its expiry is no matter here: it bounds how long
/// the pin routes, and outcomes come later than that; the route's `window` bounds them
/// instead. Its rollout id is no matter either, as a key's attribution does not ask which
/// rollout was running. A pin the route's secrets did not sign, another route's, or any pin
/// on a route that does not pin, is refused; so is one to a cohort the route no longer has.
fn pin_cohort(route: &Route, value: &str) -> Result<usize, Refusal> {
    let Some(spec) = &route.pin else {
        return Err(refuse(
            Reason::BadPin,
            "the route does not pin conversations (no `pin` section): post the key",
        ));
    };
    let pin = crate::routing::pin::genuine(&spec.secrets, value.as_bytes()).map_err(|r| {
        refuse(
            Reason::BadPin,
            format!("not a genuine pin of this route ({})", r.as_str()),
        )
    })?;
    if pin.route != route.name {
        return Err(refuse(
            Reason::BadPin,
            format!("a pin of route {:?}, not of this one", pin.route),
        ));
    }
    route.cohort_index(pin.cohort.as_bytes()).ok_or_else(|| {
        refuse(
            Reason::CohortGone,
            format!(
                "the pin's cohort {:?} is no longer among the route's",
                pin.cohort
            ),
        )
    })
}

/// Checks `event` and, when it passes, counts it; what it was counted as.
pub fn attribute(cx: &mut Context<'_>, event: &Event) -> Result<Counted, Refusal> {
    let spec = &cx.table.late;
    let Some(route) = cx.table.route(&event.route) else {
        // The name is the sender's: it goes into the answer, never into a label.
        return Err(refuse(
            Reason::UnknownRoute,
            format!("no route {:?}", event.route),
        ));
    };
    let Some(slot) = route
        .outcomes
        .iter()
        .position(|o| o.eq_ignore_ascii_case(&event.outcome))
    else {
        return Err(refuse(
            Reason::UnknownOutcome,
            format!(
                "outcome {:?} is not among the route's outcomes ({})",
                event.outcome,
                route.outcomes.join(", ")
            ),
        ));
    };
    let skew = millis(spec.max_clock_skew);
    if event.started_ms > cx.now_ms.saturating_add(skew) {
        return Err(refuse(
            Reason::Future,
            format!(
                "started_at is {} ms ahead of this clock (max_clock_skew allows {skew} ms)",
                event.started_ms - cx.now_ms
            ),
        ));
    }
    let window = millis(spec.window);
    if event.started_ms.saturating_add(window) < cx.now_ms {
        return Err(refuse(
            Reason::TooOld,
            format!(
                "the conversation started more than {} ago (late_outcomes.window)",
                humantime::format_duration(spec.window)
            ),
        ));
    }
    let at = event.started_ms.min(cx.now_ms);
    let (index, bucket, since) = match &event.subject {
        Subject::Key(key) => {
            let Ok(entry) = cx.history.at(&route.name, at) else {
                return Err(refuse(
                    Reason::NoHistory,
                    "no split of this route is recorded at started_at (before its history began)",
                ));
            };
            let (bucket, cohort) = entry.assign(key.as_bytes());
            let Some(index) = route.cohort_index(cohort.as_bytes()) else {
                return Err(refuse(
                    Reason::CohortGone,
                    format!("the key was in cohort {cohort:?} then, which the route no longer has"),
                ));
            };
            (index, Some(bucket), Some(entry.at_unix_ms))
        }
        Subject::Pin(pin) => (pin_cohort(route, pin)?, None, None),
    };
    let evicted = match cx.dedupe.admit(
        &event.id,
        cx.now_ms,
        millis(spec.dedupe_window),
        spec.max_remembered_ids,
    ) {
        Admit::Replay => {
            return Err(refuse(
                Reason::Duplicate,
                "this id was accepted before (within late_outcomes.dedupe_window)",
            ))
        }
        Admit::New { evicted } => evicted,
    };
    let cohort = &route.cohorts[index];
    if let Some(c) = cohort.metrics.late_outcomes.get(slot) {
        c.increment(1);
    }
    // The guards take only conversations that started under the split being judged: one that
    // started in an earlier step, at another share, would make the canary's arrivals a
    // different mix of delays than the baseline's (`rollout::late_sim` shows the bias).
    let this_step = cx
        .history
        .at(&route.name, cx.now_ms)
        .is_ok_and(|current| event.started_ms >= current.at_unix_ms);
    if let (Some(cells), true) = (&cohort.guard, this_step) {
        cells.record_late(OutcomeSlot::Allowed(slot));
    }
    Ok(Counted {
        cohort: cohort.name.clone(),
        bucket,
        split_since_ms: since,
        evicted,
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
