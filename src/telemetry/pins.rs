//! The handles of a route's conversation pins: requests a pin kept on its cohort, fresh pins
//! issued, and pins refused by reason.
//!
//! Owns: registering those series (once, when a table is built). Must not touch: the pin
//! format or its rules (`routing`); the request path only increments these handles.

use metrics::{Counter, Key, Label, Recorder};

use super::{Metrics, METADATA, PINNED, PINS_ISSUED, PIN_REJECTED};

/// The pin counters of one route: per cohort (aligned with the route's cohorts) and per
/// rejection reason (aligned with the reasons they were registered with).
#[derive(Clone)]
pub struct PinCounters<const N: usize> {
    pub honoured: Vec<Counter>,
    pub issued: Vec<Counter>,
    pub rejected: [Counter; N],
}

impl Metrics {
    /// Registers (or finds again, so counts survive reloads) the pin series of `route`.
    pub fn pins<const N: usize>(
        &self,
        route: &str,
        cohorts: &[&str],
        reasons: [&'static str; N],
    ) -> PinCounters<N> {
        self.retired.note(route, None);
        let counter = |name: &'static str, k: &'static str, v: &str| {
            let labels = vec![
                Label::new("route", route.to_string()),
                Label::new(k, v.to_string()),
            ];
            self.recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        PinCounters {
            honoured: cohorts
                .iter()
                .map(|c| counter(PINNED, "cohort", c))
                .collect(),
            issued: cohorts
                .iter()
                .map(|c| counter(PINS_ISSUED, "cohort", c))
                .collect(),
            rejected: reasons.map(|r| counter(PIN_REJECTED, "reason", r)),
        }
    }
}
