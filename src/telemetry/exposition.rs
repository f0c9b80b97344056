//! The registry and the scrape behind [`crate::telemetry::Metrics`]: metrics-util's atomic
//! registry, rendered in the Prometheus text format (0.0.4) with metrics-exporter-prometheus's
//! own formatting helpers and metrics-util's bucketed histogram.
//!
//! Why not that exporter's recorder: it cannot remove a series (metrics-rs/metrics#243), and
//! its idle timeout would drop a quiet cohort's series while the table still holds their
//! handles, which would then count into nothing. Here a series goes only when asked.
//!
//! Owns: the storage of every series, their help texts, histogram buckets, rendering.
//! Must not touch: which series exist and when they go (`metrics`). The request path only
//! uses the handles registered here (plain atomics, no lock, no lookup).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    key_to_parts, sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_util::registry::{AtomicStorage, Registry};
use metrics_util::storage::Histogram as Buckets;

pub struct Exposition {
    registry: Registry<Key, AtomicStorage>,
    /// Help texts by sanitised name; written when a table is built, read when scraped.
    help: RwLock<HashMap<String, SharedString>>,
    /// Each histogram's cumulative buckets, fed from its atomic sample bucket by `drain`.
    distributions: Mutex<HashMap<Key, Buckets>>,
    /// An empty histogram with the default bucket bounds, and with those of the families
    /// that count other things than seconds.
    empty: Buckets,
    empty_for: HashMap<&'static str, Buckets>,
}

impl Exposition {
    /// `None` when any bucket list is empty.
    pub fn new(bounds: &[f64], families: &[(&'static str, &[f64])]) -> Option<Self> {
        let empty_for = families
            .iter()
            .map(|(name, b)| Some((*name, Buckets::new(b)?)))
            .collect::<Option<_>>()?;
        Some(Exposition {
            registry: Registry::atomic(),
            help: RwLock::new(HashMap::new()),
            distributions: Mutex::new(HashMap::new()),
            empty: Buckets::new(bounds)?,
            empty_for,
        })
    }

    fn describe(&self, name: &KeyName, text: SharedString) {
        let mut help = self.help.write().unwrap_or_else(PoisonError::into_inner);
        help.entry(sanitize_metric_name(name.as_str()))
            .or_insert(text);
    }

    /// Moves the samples recorded since the last drain into the buckets, so sample memory
    /// stays bounded between scrapes.
    pub fn drain(&self) {
        let mut dists = self
            .distributions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.registry.visit_histograms(|key, samples| {
            let dist = dists.entry(key.clone()).or_insert_with(|| {
                let own = self.empty_for.get(key.name());
                own.unwrap_or(&self.empty).clone()
            });
            samples.clear_with(|s| dist.record_many(s));
        });
    }

    /// Removes at once every gauge whose key `matches`.
    pub fn remove_gauges(&self, matches: impl Fn(&Key) -> bool) {
        self.registry.retain_gauges(|k, _| !matches(k));
    }

    /// Removes every counter and histogram whose key `matches`.
    pub fn remove_counts(&self, matches: impl Fn(&Key) -> bool) {
        self.registry.retain_counters(|k, _| !matches(k));
        self.registry.retain_histograms(|k, _| !matches(k));
        self.distributions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !matches(k));
    }

    /// The text exposition: each family once, with its HELP and TYPE lines first.
    pub fn render(&self) -> String {
        self.drain();
        let mut counters: BTreeMap<String, Vec<(Vec<String>, u64)>> = BTreeMap::new();
        self.registry.visit_counters(|key, value| {
            let (name, labels) = key_to_parts(key, None);
            let value = value.load(std::sync::atomic::Ordering::Acquire);
            counters.entry(name).or_default().push((labels, value));
        });
        let mut gauges: BTreeMap<String, Vec<(Vec<String>, f64)>> = BTreeMap::new();
        self.registry.visit_gauges(|key, value| {
            let (name, labels) = key_to_parts(key, None);
            let value = f64::from_bits(value.load(std::sync::atomic::Ordering::Acquire));
            gauges.entry(name).or_default().push((labels, value));
        });
        let mut histograms: BTreeMap<String, Vec<(Vec<String>, Buckets)>> = BTreeMap::new();
        for (key, dist) in self
            .distributions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let (name, labels) = key_to_parts(key, None);
            histograms
                .entry(name)
                .or_default()
                .push((labels, dist.clone()));
        }

        let help = self.help.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str| {
            if let Some(text) = help.get(name) {
                write_help_line(out, name, text);
            }
            write_type_line(out, name, kind);
        };
        fn plain<T: std::fmt::Display>(
            out: &mut String,
            name: &str,
            series: Vec<(Vec<String>, T)>,
        ) {
            for (labels, value) in series {
                write_metric_line::<&str, T>(out, name, None, &labels, None, value, None);
            }
            out.push('\n');
        }
        for (name, mut series) in counters {
            head(&mut out, &name, "counter");
            series.sort_by(|a, b| a.0.cmp(&b.0));
            plain(&mut out, &name, series);
        }
        for (name, mut series) in gauges {
            head(&mut out, &name, "gauge");
            series.sort_by(|a, b| a.0.cmp(&b.0));
            plain(&mut out, &name, series);
        }
        for (name, mut series) in histograms {
            head(&mut out, &name, "histogram");
            series.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, h) in series {
                for (le, count) in h.buckets() {
                    let le = Some(("le", le));
                    write_metric_line(&mut out, &name, Some("bucket"), &labels, le, count, None);
                }
                let inf = Some(("le", "+Inf"));
                write_metric_line(
                    &mut out,
                    &name,
                    Some("bucket"),
                    &labels,
                    inf,
                    h.count(),
                    None,
                );
                write_metric_line::<&str, f64>(
                    &mut out,
                    &name,
                    Some("sum"),
                    &labels,
                    None,
                    h.sum(),
                    None,
                );
                write_metric_line::<&str, u64>(
                    &mut out,
                    &name,
                    Some("count"),
                    &labels,
                    None,
                    h.count(),
                    None,
                );
            }
            out.push('\n');
        }
        out
    }
}

impl Recorder for Exposition {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&key, text);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&key, text);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
        self.describe(&key, text);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}
