//! The live table's tests: a scrape read, differenced over the window and drawn.

use std::time::{Duration, Instant};

use super::*;

const SCRAPE: &str = r#"# HELP cohort_requests_total Requests answered.
# TYPE cohort_requests_total counter
cohort_requests_total{route="r",cohort="stable",status_class="2xx"} 90
cohort_requests_total{route="r",cohort="stable",status_class="5xx"} 10
cohort_requests_total{route="r",cohort="canary",status_class="2xx"} 4
cohort_outcomes_total{route="r",cohort="stable",outcome="resolved"} 60
cohort_outcomes_total{route="r",cohort="stable",outcome="escalated"} 30
cohort_outcomes_total{route="r",cohort="stable",outcome="handed_off"} 10
cohort_split_percent{route="r",cohort="stable"} 80
cohort_split_percent{route="r",cohort="canary"} 20
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="0.1"} 50
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="0.2"} 100
cohort_time_to_first_byte_seconds_bucket{route="r",cohort="stable",le="+Inf"} 100
cohort_time_to_first_byte_seconds_sum{route="r",cohort="stable"} 9
cohort_config_generation 3
"#;

#[test]
fn reads_the_cohort_families_of_a_scrape() {
    let snap = Snapshot::from_scrape(SCRAPE);
    let stable = &snap.cohorts[&("r".to_string(), "stable".to_string())];
    assert_eq!(
        (stable.requests, stable.errors, stable.split),
        (100.0, 10.0, Some(80.0))
    );
    assert_eq!(stable.outcomes["escalated"], 30.0);
    assert_eq!(stable.ttfb.buckets.len(), 3);
    assert_eq!(stable.ttfb.buckets[2], (f64::INFINITY, 100.0));
    let canary = &snap.cohorts[&("r".to_string(), "canary".to_string())];
    assert_eq!((canary.requests, canary.errors), (4.0, 0.0));
    assert_eq!(snap.cohorts.len(), 2);
}

#[test]
fn quantiles_interpolate_like_histogram_quantile() {
    let h = Hist {
        buckets: vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)],
    };
    assert_eq!(h.quantile(0.5), Some(0.1));
    assert!((h.quantile(0.25).unwrap() - 0.05).abs() < 1e-12);
    assert!((h.quantile(0.75).unwrap() - 0.15).abs() < 1e-12);
    let mut tail = h.clone();
    tail.buckets[2].1 = 200.0;
    assert_eq!(
        tail.quantile(0.99),
        Some(0.2),
        "the +Inf bucket reports its lower bound"
    );
    assert_eq!(Hist::default().quantile(0.5), None);
}

#[test]
fn observe_fills_cumulative_buckets() {
    let mut h = Hist::default();
    h.observe(0.3);
    h.observe(500.0);
    assert_eq!(h.buckets.iter().find(|b| b.0 == 0.25).unwrap().1, 0.0);
    assert_eq!(h.buckets.iter().find(|b| b.0 == 0.5).unwrap().1, 1.0);
    assert_eq!(h.buckets.last().unwrap().1, 2.0);
    assert!(h.quantile(0.25).unwrap() > 0.25 && h.quantile(0.25).unwrap() <= 0.5);
}

#[test]
fn window_differences_newest_against_oldest() {
    let t0 = Instant::now();
    let mut w = Window::new(Duration::from_secs(10));
    let order = vec![
        ("r".to_string(), "stable".to_string()),
        ("r".to_string(), "canary".to_string()),
    ];
    let first = w.push(t0, Snapshot::from_scrape(SCRAPE), &order);
    assert_eq!(first[0].cohort, "stable", "rows follow the given order");
    assert_eq!(first[0].rate, 0.0);
    let later = SCRAPE
        .replace("\"5xx\"} 10", "\"5xx\"} 30")
        .replace("\"2xx\"} 90", "\"2xx\"} 170");
    let rows = w.push(
        t0 + Duration::from_secs(5),
        Snapshot::from_scrape(&later),
        &order,
    );
    let stable = &rows[0];
    assert_eq!(stable.total, 200.0);
    assert_eq!(stable.rate, 20.0);
    assert_eq!(stable.error_pct, Some(20.0));
    assert_eq!(stable.p50, None, "no new TTFB observations in the window");
    let dropped = w.push(
        t0 + Duration::from_secs(16),
        Snapshot::from_scrape(&later),
        &order,
    );
    assert_eq!(dropped[0].rate, 0.0, "the first snapshot left the window");
}

#[test]
fn renders_aligned_columns_and_plain_lines() {
    let t0 = Instant::now();
    let mut w = Window::new(Duration::from_secs(10));
    let rows = w.push(t0, Snapshot::from_scrape(SCRAPE), &[]);
    let table = render("title", &rows);
    assert_eq!(table.len(), 4, "title, head, two cohorts");
    assert!(table[1].starts_with("cohort"));
    let widths: Vec<usize> = table[1..].iter().map(|l| l.len()).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{table:#?}");
    assert!(
        table[3].contains("60.0%") && table[3].contains("10.0%"),
        "{}",
        table[3]
    );
    let lines = plain(Duration::from_secs(3), &rows);
    assert!(lines[1].starts_with("[3s] route=r cohort=stable split=80% requests=100"));
    assert!(lines[1].contains(" errors=10.0% ") && lines[1].contains(" other=10.0%"));
    assert!(redraw(3, &table).starts_with("\x1b[3A"));
}
