//! The demo's live comparison of cohorts: cumulative counts per (route, cohort) taken from the
//! proxy's own scrape (or the load generator's own measurements), differenced over a sliding
//! window, and drawn as a table redrawn in place on a terminal or as plain lines elsewhere.
//!
//! Owns: the window and its rows (here), reading a scrape into counts (`scrape`), drawing the
//! rows (`draw`). Must not touch: the proxy's modules: it reads the scrape's text and the
//! metric names of `telemetry`, nothing else.

mod draw;
mod scrape;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub use draw::{plain, redraw, render, tokens};
pub use scrape::{Counts, Hist, Mean, Snapshot};

/// One cohort over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub route: String,
    pub cohort: String,
    pub split: Option<f64>,
    pub total: f64,
    pub rate: f64,
    pub error_pct: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub ttfb_p50: Option<f64>,
    pub ttfb_p99: Option<f64>,
    /// Share of the window's outcomes, in percent, by outcome.
    pub outcomes: BTreeMap<String, f64>,
    pub ttft_p50: Option<f64>,
    pub ttft_p99: Option<f64>,
    pub inter_token_p99: Option<f64>,
    /// Mean output tokens per answer over the window.
    pub output_tokens: Option<f64>,
    /// Cost of 1,000 answers at the window's mean, in the price's currency.
    pub cost_per_1k: Option<f64>,
    /// Tokens per second over the window, by kind (`input`, `output`, `cached_input`).
    pub token_rates: BTreeMap<String, f64>,
    /// Share of the window's answers that reported no usage, in percent.
    pub usage_missing_pct: Option<f64>,
}

/// `new - old` for each key of `new`.
fn grown(
    new: &BTreeMap<String, f64>,
    old: Option<&BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    new.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - old.and_then(|o| o.get(k)).copied().unwrap_or(0.0),
            )
        })
        .collect()
}

impl Row {
    pub fn between(key: &(String, String), old: Option<&Counts>, new: &Counts, secs: f64) -> Row {
        let requests = new.requests - old.map_or(0.0, |o| o.requests);
        let errors = new.errors - old.map_or(0.0, |o| o.errors);
        let (duration, ttfb) = (
            new.duration.since(old.map(|o| &o.duration)),
            new.ttfb.since(old.map(|o| &o.ttfb)),
        );
        let outcomes = grown(&new.outcomes, old.map(|o| &o.outcomes));
        let seen: f64 = outcomes.values().sum();
        let (ttft, inter_token) = (
            new.ttft.since(old.map(|o| &o.ttft)),
            new.inter_token.since(old.map(|o| &o.inter_token)),
        );
        let usage = grown(&new.usage, old.map(|o| &o.usage));
        let answers: f64 = usage.values().sum();
        Row {
            route: key.0.clone(),
            cohort: key.1.clone(),
            split: new.split,
            total: new.requests,
            rate: if secs > 0.0 { requests / secs } else { 0.0 },
            error_pct: (requests > 0.0).then(|| 100.0 * errors / requests),
            p50: duration.quantile(0.5),
            p99: duration.quantile(0.99),
            ttfb_p50: ttfb.quantile(0.5),
            ttfb_p99: ttfb.quantile(0.99),
            outcomes: outcomes
                .into_iter()
                .filter(|_| seen > 0.0)
                .map(|(k, v)| (k, 100.0 * v / seen))
                .collect(),
            ttft_p50: ttft.quantile(0.5),
            ttft_p99: ttft.quantile(0.99),
            inter_token_p99: inter_token.quantile(0.99),
            output_tokens: new.output_tokens.since(old.map(|o| &o.output_tokens)),
            cost_per_1k: new.cost.since(old.map(|o| &o.cost)).map(|c| 1000.0 * c),
            token_rates: grown(&new.tokens, old.map(|o| &o.tokens))
                .into_iter()
                .filter(|_| secs > 0.0)
                .map(|(k, v)| (k, v / secs))
                .collect(),
            usage_missing_pct: (answers > 0.0)
                .then(|| 100.0 * usage.get("missing").copied().unwrap_or(0.0) / answers),
        }
    }

    fn outcome(&self, name: &str) -> Option<f64> {
        (!self.outcomes.is_empty()).then(|| self.outcomes.get(name).copied().unwrap_or(0.0))
    }
}

/// Snapshots of the last `window`, to difference the newest against the oldest.
pub struct Window {
    window: Duration,
    kept: VecDeque<(Instant, Snapshot)>,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Window {
            window,
            kept: VecDeque::new(),
        }
    }

    /// Adds `snap`, taken at `at`, and returns a row per cohort (in `order` first, then the
    /// rest by name) over the window that ends with it.
    pub fn push(&mut self, at: Instant, snap: Snapshot, order: &[(String, String)]) -> Vec<Row> {
        while self
            .kept
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.window)
        {
            self.kept.pop_front();
        }
        self.kept.push_back((at, snap));
        let (first_at, first) = self.kept.front().expect("just pushed");
        let (_, last) = self.kept.back().expect("just pushed");
        let secs = at.duration_since(*first_at).as_secs_f64();
        let mut keys: Vec<&(String, String)> = order
            .iter()
            .filter(|k| last.cohorts.contains_key(k))
            .collect();
        keys.extend(last.cohorts.keys().filter(|k| !order.contains(k)));
        keys.into_iter()
            .map(|k| {
                let old = (self.kept.len() > 1)
                    .then(|| first.cohorts.get(k))
                    .flatten();
                Row::between(k, old, &last.cohorts[k], secs)
            })
            .collect()
    }
}
