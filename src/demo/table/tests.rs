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

/// The token families as the proxy exposes them (the lead's names), for two scrapes 10 s apart.
const TOKENS_SCRAPE: &str = r#"# TYPE cohort_time_to_first_token_seconds histogram
cohort_time_to_first_token_seconds_bucket{route="r",cohort="canary",le="0.1"} 0
cohort_time_to_first_token_seconds_bucket{route="r",cohort="canary",le="0.25"} 50
cohort_time_to_first_token_seconds_bucket{route="r",cohort="canary",le="0.5"} 100
cohort_time_to_first_token_seconds_bucket{route="r",cohort="canary",le="+Inf"} 100
cohort_time_to_first_token_seconds_sum{route="r",cohort="canary"} 25
cohort_time_to_first_token_seconds_count{route="r",cohort="canary"} 100
cohort_inter_token_seconds_bucket{route="r",cohort="canary",le="0.025"} 0
cohort_inter_token_seconds_bucket{route="r",cohort="canary",le="0.05"} 1000
cohort_inter_token_seconds_bucket{route="r",cohort="canary",le="+Inf"} 1000
cohort_inter_token_seconds_sum{route="r",cohort="canary"} 30
cohort_inter_token_seconds_count{route="r",cohort="canary"} 1000
# TYPE cohort_answer_output_tokens histogram
cohort_answer_output_tokens_bucket{route="r",cohort="canary",le="256"} 90
cohort_answer_output_tokens_bucket{route="r",cohort="canary",le="+Inf"} 100
cohort_answer_output_tokens_sum{route="r",cohort="canary"} 18000
cohort_answer_output_tokens_count{route="r",cohort="canary"} 100
cohort_answer_cost_bucket{route="r",cohort="canary",le="+Inf"} 100
cohort_answer_cost_sum{route="r",cohort="canary"} 0.25
cohort_answer_cost_count{route="r",cohort="canary"} 100
# TYPE cohort_tokens_total counter
cohort_tokens_total{route="r",cohort="canary",kind="input"} 4000
cohort_tokens_total{route="r",cohort="canary",kind="output"} 18000
cohort_tokens_total{route="r",cohort="canary",kind="cached_input"} 1024
cohort_usage_answers_total{route="r",cohort="canary",usage="reported"} 90
cohort_usage_answers_total{route="r",cohort="canary",usage="missing"} 10
cohort_requests_total{route="r",cohort="canary",status_class="2xx"} 100
"#;

#[test]
fn reads_the_token_families_of_a_scrape() {
    let snap = Snapshot::from_scrape(TOKENS_SCRAPE);
    let c = &snap.cohorts[&("r".to_string(), "canary".to_string())];
    assert_eq!(c.ttft.buckets.len(), 4);
    assert_eq!(c.ttft.quantile(0.5), Some(0.25));
    assert_eq!(c.inter_token.buckets.last(), Some(&(f64::INFINITY, 1000.0)));
    assert_eq!(
        c.output_tokens,
        Mean {
            sum: 18000.0,
            count: 100.0
        }
    );
    assert_eq!(
        c.cost,
        Mean {
            sum: 0.25,
            count: 100.0
        }
    );
    assert_eq!(c.tokens["cached_input"], 1024.0);
    assert_eq!((c.usage["reported"], c.usage["missing"]), (90.0, 10.0));
    assert_eq!(
        c.duration,
        Hist::default(),
        "the token buckets are not the latency's"
    );

    let rows = Window::new(Duration::from_secs(10)).push(Instant::now(), snap, &[]);
    let r = &rows[0];
    assert_eq!((r.ttft_p50, r.output_tokens), (Some(0.25), Some(180.0)));
    assert!(
        (r.ttft_p99.unwrap() - 0.495).abs() < 1e-9,
        "{:?}",
        r.ttft_p99
    );
    assert!((r.inter_token_p99.unwrap() - 0.04975).abs() < 1e-9);
    assert!((r.cost_per_1k.unwrap() - 2.5).abs() < 1e-9);
    assert_eq!(r.usage_missing_pct, Some(10.0));
    let table = tokens(&rows);
    assert!(table[0].starts_with("cohort") && table[0].contains("ttft p50"));
    for cell in ["250ms", "495ms", "50ms", "180", "2.50", "10.0%"] {
        assert!(table[1].contains(cell), "{cell} in {}", table[1]);
    }
    let line = &plain(Duration::from_secs(1), &rows)[0];
    assert!(
        line.contains(" ttft_p50=250ms ")
            && line.contains(" out_tokens=180 ")
            && line.contains(" cost_per_1k=2.50 "),
        "{line}"
    );
}

#[test]
fn token_columns_difference_over_the_window_and_show_dashes_when_absent() {
    let t0 = Instant::now();
    let mut w = Window::new(Duration::from_secs(10));
    w.push(t0, Snapshot::from_scrape(TOKENS_SCRAPE), &[]);
    let later = TOKENS_SCRAPE
        .replace(
            "tokens_sum{route=\"r\",cohort=\"canary\"} 18000",
            "tokens_sum{route=\"r\",cohort=\"canary\"} 48000",
        )
        .replace(
            "tokens_count{route=\"r\",cohort=\"canary\"} 100",
            "tokens_count{route=\"r\",cohort=\"canary\"} 200",
        )
        .replace("kind=\"input\"} 4000", "kind=\"input\"} 14000")
        .replace("kind=\"cached_input\"} 1024", "kind=\"cached_input\"} 6024");
    let rows = w.push(
        t0 + Duration::from_secs(10),
        Snapshot::from_scrape(&later),
        &[],
    );
    assert_eq!(
        rows[0].output_tokens,
        Some(300.0),
        "the window's answers only"
    );
    assert_eq!(rows[0].token_rates["input"], 1000.0);
    assert_eq!(
        rows[0].cost_per_1k, None,
        "no new answers priced in the window"
    );
    assert!(
        tokens(&rows)[1].contains("50.0%"),
        "half the window's input was cached"
    );

    let bare = Window::new(Duration::from_secs(10)).push(t0, Snapshot::from_scrape(SCRAPE), &[]);
    let table = tokens(&bare);
    assert!(
        table[1]["stable".len()..]
            .split_whitespace()
            .all(|c| c == "-"),
        "{}",
        table[1]
    );
}
