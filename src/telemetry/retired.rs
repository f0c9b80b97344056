//! The series of routes and cohorts a reload removed: which they are, when they were removed,
//! and their removal from the registry (gauges at once, counters and histograms once a last
//! scrape has had time to read them).
//!
//! Owns: the list of retired routes and cohorts, and of the segments' series (see
//! `segment`) a reload removed from cohorts that stay. Must not touch: the request path (nothing
//! here runs on it: a reload retires, the periodic upkeep sweeps), the tables themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::Key;

use super::{DURATION, OUTCOMES, REQUESTS};

use crate::telemetry::exposition::Exposition;

#[derive(Default)]
pub struct Retirements {
    list: Mutex<Vec<Retired>>,
    /// Every route and cohort handles were registered for since the last settle, including
    /// those of a table that then failed to validate.
    registered: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// The segments (`None`: the series without one) each route and cohort registered
    /// handles for since the last `settle_segments`.
    segments: Mutex<Registered>,
}

/// A removed route (every series labelled with it) or cohort of a route, or (`scope`) a
/// segment's series of a cohort that stays.
struct Retired {
    route: String,
    cohort: Option<String>,
    at: Instant,
    scope: Scope,
}

/// Which of a cohort's series a retirement takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// All of them (a removed route or cohort).
    All,
    /// Those of one segment (its value left the route's `values`, or the route its segment).
    Segment(String),
    /// The three families' series without a segment (the route has one now).
    Unsegmented,
}

impl Scope {
    fn owns(&self, key: &Key) -> bool {
        let segment = key
            .labels()
            .find(|l| l.key() == "segment")
            .map(|l| l.value());
        match self {
            Scope::All => true,
            Scope::Segment(s) => segment == Some(s.as_str()),
            Scope::Unsegmented => {
                segment.is_none() && [REQUESTS, OUTCOMES, DURATION].contains(&key.name())
            }
        }
    }

    fn of(segment: &Option<String>) -> Scope {
        segment.clone().map_or(Scope::Unsegmented, Scope::Segment)
    }
}

/// Per (route, cohort), the segments handles were registered for; `None`: the series
/// without a segment.
type Registered = BTreeMap<(String, String), BTreeSet<Option<String>>>;

fn scopes(segments: &[String]) -> BTreeSet<Option<String>> {
    if segments.is_empty() {
        return BTreeSet::from([None]);
    }
    segments.iter().cloned().map(Some).collect()
}

impl Retired {
    fn owns(&self, key: &Key) -> bool {
        let label = |name: &str| key.labels().find(|l| l.key() == name).map(|l| l.value());
        label("route") == Some(self.route.as_str())
            && self
                .cohort
                .as_deref()
                .is_none_or(|c| label("cohort") == Some(c))
            && self.scope.owns(key)
    }
}

impl Retirements {
    /// Handles were registered for `route` (and `cohort`).
    pub fn note(&self, route: &str, cohort: Option<&str>) {
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cohorts = registered.entry(route.to_string()).or_default();
        if let Some(c) = cohort {
            cohorts.insert(c.to_string());
        }
    }

    /// Retires everything registered that `serving` does not have, which then is all that
    /// is registered.
    pub fn settle(&self, registry: &Exposition, serving: &[(String, Vec<String>)]) {
        let old: Vec<(String, Vec<String>)> = {
            let mut registered = self
                .registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let old = registered
                .iter()
                .map(|(r, cs)| (r.clone(), cs.iter().cloned().collect()))
                .collect();
            *registered = serving
                .iter()
                .map(|(r, cs)| (r.clone(), cs.iter().cloned().collect()))
                .collect();
            old
        };
        self.retire(registry, &old, serving);
    }

    fn retire(
        &self,
        registry: &Exposition,
        old: &[(String, Vec<String>)],
        new: &[(String, Vec<String>)],
    ) {
        let has = |route: &str, cohort: Option<&str>| {
            new.iter().any(|(r, cohorts)| {
                r == route && cohort.is_none_or(|c| cohorts.iter().any(|n| n == c))
            })
        };
        let at = Instant::now();
        let mut gone = Vec::new();
        for (route, cohorts) in old {
            let retired = |cohort: Option<&String>| Retired {
                route: route.clone(),
                cohort: cohort.cloned(),
                at,
                scope: Scope::All,
            };
            if !has(route, None) {
                gone.push(retired(None));
                continue;
            }
            for c in cohorts.iter().filter(|c| !has(route, Some(c))) {
                gone.push(retired(Some(c)));
            }
        }
        for r in &gone {
            registry.remove_gauges(|k| r.owns(k));
        }
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        // A segment's retirement is undone by `settle_segments` alone, when it serves again.
        list.retain(|r| r.scope != Scope::All || !has(&r.route, r.cohort.as_deref()));
        list.extend(gone);
    }

    /// Handles were registered for `route`'s `cohort` in `segments` (none: without one).
    pub fn note_segments(&self, route: &str, cohort: &str, segments: &[String]) {
        self.segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route.to_string(), cohort.to_string()))
            .or_default()
            .extend(scopes(segments));
    }

    /// See `Metrics::settle_segments`.
    pub fn settle_segments(&self, serving: &[(String, String, Vec<String>)]) {
        let now: Registered = serving
            .iter()
            .map(|(r, c, s)| ((r.clone(), c.clone()), scopes(s)))
            .collect();
        let old = std::mem::replace(
            &mut *self.segments.lock().unwrap_or_else(PoisonError::into_inner),
            now.clone(),
        );
        let at = Instant::now();
        let serves = |r: &Retired| {
            let cohort = r.cohort.clone().unwrap_or_default();
            now.get(&(r.route.clone(), cohort))
                .is_some_and(|s| match &r.scope {
                    Scope::All => true,
                    Scope::Segment(v) => s.contains(&Some(v.clone())),
                    Scope::Unsegmented => s.contains(&None),
                })
        };
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|r| r.scope == Scope::All || !serves(r));
        for ((route, cohort), registered) in old {
            let Some(kept) = now.get(&(route.clone(), cohort.clone())) else {
                continue;
            };
            for s in registered.difference(kept) {
                list.push(Retired {
                    route: route.clone(),
                    cohort: Some(cohort.clone()),
                    at,
                    scope: Scope::of(s),
                });
            }
        }
    }

    /// Removes the counters and histograms of what was retired `grace` or more before `now`.
    pub fn sweep(&self, registry: &Exposition, now: Instant, grace: Duration) {
        let due: Vec<Retired> = {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            let (due, kept) = list
                .drain(..)
                .partition(|r| now.duration_since(r.at) >= grace);
            *list = kept;
            due
        };
        for r in &due {
            registry.remove_counts(|k| r.owns(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::telemetry::{Metrics, RETIRED_GRACE};
    use std::time::Instant;

    fn owners(routes: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        routes
            .iter()
            .map(|(r, cs)| (r.to_string(), cs.iter().map(|c| c.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_removed_route_takes_every_series_labelled_with_it_and_spares_the_others() {
        let m = Metrics::new();
        let gone = m.cohort("gone", "c", &[], &["connect"]);
        let kept = m.cohort("kept", "c", &[], &["connect"]);
        let step = m.gauge("cohort_rollout_step_percent", "help", &[("route", "gone")]);
        let decisions = m.counter(
            "cohort_rollout_decisions_total",
            "help",
            &[("route", "gone")],
        );
        for c in [&gone, &kept] {
            c.requests[1].increment(1);
            c.split.set(50.0);
        }
        step.set(5.0);
        decisions.increment(1);
        let before = Instant::now();
        m.settle(&owners(&[("kept", &["c"])]));
        let text = m.render();
        assert!(!text.contains("cohort_rollout_step_percent{"), "{text}");
        assert!(
            !text.contains("cohort_split_percent{route=\"gone\""),
            "{text}"
        );
        assert!(
            text.contains("cohort_requests_total{route=\"gone\""),
            "{text}"
        );
        assert!(
            text.contains("cohort_rollout_decisions_total{route=\"gone\""),
            "{text}"
        );

        m.upkeep_at(before + RETIRED_GRACE / 2);
        assert!(m.render().contains("route=\"gone\""));
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        let text = m.render();
        assert!(!text.contains("route=\"gone\""), "{text}");
        assert!(
            text.contains("cohort_split_percent{route=\"kept\",cohort=\"c\"} 50"),
            "{text}"
        );
        assert!(
            text.contains(
                "cohort_requests_total{route=\"kept\",cohort=\"c\",status_class=\"2xx\"} 1"
            ),
            "{text}"
        );

        // A table that failed to validate registered a cohort nobody serves.
        let tried = m.cohort("kept", "tried", &[], &["connect"]);
        tried.split.set(10.0);
        m.settle(&owners(&[("kept", &["c"])]));
        assert!(!m
            .render()
            .contains("cohort_split_percent{route=\"kept\",cohort=\"tried\""));
        m.upkeep_at(Instant::now() + RETIRED_GRACE);
        let text = m.render();
        assert!(!text.contains("tried"), "{text}");
        assert!(text.contains("cohort=\"c\""), "{text}");
    }
}
