//! The series of routes and cohorts a reload removed: which they are, when they were removed,
//! and their removal from the registry (gauges at once, counters and histograms once a last
//! scrape has had time to read them).
//!
//! Owns: the list of retired routes and cohorts. Must not touch: the request path (nothing
//! here runs on it: a reload retires, the periodic upkeep sweeps), the tables themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::Key;

use crate::telemetry::exposition::Exposition;

#[derive(Default)]
pub struct Retirements {
    list: Mutex<Vec<Retired>>,
    /// Every route and cohort handles were registered for since the last settle, including
    /// those of a table that then failed to validate.
    registered: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

/// A removed route (every series labelled with it) or cohort of a route.
struct Retired {
    route: String,
    cohort: Option<String>,
    at: Instant,
}

impl Retired {
    fn owns(&self, key: &Key) -> bool {
        let label = |name: &str| key.labels().find(|l| l.key() == name).map(|l| l.value());
        label("route") == Some(self.route.as_str())
            && self
                .cohort
                .as_deref()
                .is_none_or(|c| label("cohort") == Some(c))
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
        list.retain(|r| !has(&r.route, r.cohort.as_deref()));
        list.extend(gone);
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
