//! Fleet reports of a segmented rollout: the segments' counts travel to the judge (only
//! those the `per_segment` guards read), pool like the rest, and the report's size is
//! measured against [`MAX_REPORT_BYTES`].

use super::*;
use crate::control::rollout::segment_needs;
use crate::routing::table::rollout::{Guard, GuardKind, Latency, Rate};
use crate::routing::table::segment::{MAX_SEGMENT_HISTOGRAMS, MAX_SEGMENT_VALUES};
use crate::samples::{Needs, BINS};

fn key() -> StepKey {
    StepKey {
        id: "a".into(),
        step: 0,
        step_version: 1,
    }
}

/// A tally with every count at its largest plausible value, in `segments` segments too.
fn full(segments: usize) -> Tally {
    let mut t = Tally {
        requests: u64::MAX,
        errors: u64::MAX / 8,
        with_outcome: u64::MAX / 2,
        with_usage: u64::MAX / 2,
        ..Tally::default()
    };
    t.outcomes.iter_mut().for_each(|c| *c = u64::MAX / 64);
    for h in [
        &mut t.latency,
        &mut t.ttfb,
        &mut t.ttft,
        &mut t.inter_token,
        &mut t.output_tokens,
        &mut t.cost,
    ] {
        h.iter_mut().for_each(|c| *c = u64::MAX / 1024);
    }
    t.segments = vec![t.clone(); segments];
    t
}

fn size(t: &Tally) -> usize {
    let r = Report::new(&"h".repeat(253), u64::MAX, u64::MAX, key(), (t, t));
    let bytes = r.encode();
    if bytes.len() <= MAX_REPORT_BYTES {
        assert!(
            Report::decode(&bytes) == Ok(r),
            "a report does not read back"
        );
    }
    bytes.len()
}

fn guard(kind: GuardKind) -> Guard {
    Guard {
        name: "g".into(),
        key: "g".into(),
        kind,
    }
}

#[test]
fn a_report_carries_only_the_segment_counts_its_guards_read_and_fits() {
    let rate = |source| GuardKind::Rate {
        source,
        boundary: crate::routing::table::rollout::Boundary::new(
            crate::routing::table::rollout::Worse::Higher,
            crate::routing::table::rollout::Margin::Points(0.0),
        ),
    };
    let latency = |source| GuardKind::Latency {
        source,
        quantile: 0.95,
        relative_margin: 0.1,
    };
    let mut spec = crate::control::rollout::traffic::tests::issue_spec();
    spec.segments = ["billing", "shipping", "returns", "other"]
        .map(String::from)
        .to_vec();
    spec.segment_guards = vec![guard(rate(Rate::Errors)), guard(latency(Latency::Duration))];
    let needs = segment_needs(&spec);
    assert_eq!(
        needs,
        Needs {
            errors: true,
            latency: true,
            ..Needs::default()
        }
    );
    let whole = size(&full(0));
    let kept = full(4).keeping(needs);
    assert!(kept
        .segments
        .iter()
        .all(|s| s.ttfb.iter().all(|c| *c == 0) && s.errors > 0));
    let brief = size(&kept);
    // Every segment, every count: what a report would be without trimming.
    let untrimmed = size(&full(4));
    // The most segments, each with as many histograms as a config may keep apart (two
    // each) and every rate: the largest report cohort sends.
    let most_segments = MAX_SEGMENT_VALUES + 1;
    assert_eq!(MAX_SEGMENT_HISTOGRAMS, 2 * most_segments);
    let two = Needs {
        errors: true,
        outcomes: true,
        ttfb: true,
        ..Needs::default()
    };
    let most = size(&full(most_segments).keeping(two));
    let one_histogram = size(&full(most_segments).keeping(needs));
    // Six histograms in four segments (24, within the limit on histograms).
    let all = Needs {
        errors: true,
        outcomes: true,
        latency: true,
        ttfb: true,
        ttft: true,
        inter_token: true,
        output_tokens: true,
        cost: true,
    };
    let four_all = size(&full(4).keeping(all));
    println!(
        "report bytes: unsegmented {whole}; 4 segments, error_rate and latency per segment {brief} \
         (untrimmed {untrimmed}); 17 segments, error_rate and latency {one_histogram}; \
         17 segments, rates and two histograms {most}; 4 segments, every count {four_all}; \
         limit {MAX_REPORT_BYTES}"
    );
    for n in [whole, brief, one_histogram, most, four_all] {
        assert!(n <= MAX_REPORT_BYTES, "{n} bytes");
    }
    assert_eq!(full(0).keeping(Needs::default()), full(0));
    assert!(full(3).keeping(Needs::default()).segments.is_empty());
    assert_eq!(BINS, 256);
}

#[test]
fn segments_pool_across_replicas_and_go_back_never() {
    let seg = |requests, errors| Tally {
        requests,
        errors,
        ..Tally::default()
    };
    let t = |segs: &[(u64, u64)]| {
        let segments: Vec<Tally> = segs.iter().map(|&(r, e)| seg(r, e)).collect();
        Tally {
            requests: segments.iter().map(|s| s.requests).sum(),
            errors: segments.iter().map(|s| s.errors).sum(),
            segments,
            ..Tally::default()
        }
    };
    let mut pool = Pool::new(key());
    let a = t(&[(10, 1), (20, 0)]);
    let b = t(&[(5, 5), (0, 0)]);
    pool.offer(&Report::new("r1", 1, 1, key(), (&a, &a)))
        .unwrap();
    pool.offer(&Report::new("r2", 1, 1, key(), (&b, &b)))
        .unwrap();
    let (c, _) = pool.block();
    assert_eq!(c.segments, t(&[(15, 6), (20, 0)]).segments);
    // A segment that shrank is another incarnation's counts.
    let shrunk = t(&[(9, 1), (40, 0)]);
    assert_eq!(
        pool.offer(&Report::new("r1", 1, 2, key(), (&shrunk, &shrunk))),
        Err(Rejected::WentBack)
    );
    let grown = t(&[(12, 2), (20, 0)]);
    pool.offer(&Report::new("r1", 1, 3, key(), (&grown, &grown)))
        .unwrap();
    let (c, _) = pool.block();
    assert_eq!(c.segments, t(&[(2, 1), (0, 0)]).segments);
    // Counts recording cannot make, in one segment, are refused.
    let bad = t(&[(1, 3)]);
    assert!(matches!(
        pool.offer(&Report::new("r3", 1, 1, key(), (&bad, &bad))),
        Err(Rejected::Impossible(_))
    ));
}

#[test]
fn the_judge_over_trimmed_pooled_reports_reads_every_segment_as_one_replica_would() {
    use crate::control::rollout::Progress;
    use std::time::Duration;
    let latency = GuardKind::Latency {
        source: Latency::Duration,
        quantile: 0.5,
        relative_margin: 0.0,
    };
    let errors = GuardKind::Rate {
        source: Rate::Errors,
        boundary: crate::routing::table::rollout::Boundary::new(
            crate::routing::table::rollout::Worse::Higher,
            crate::routing::table::rollout::Margin::Points(0.0),
        ),
    };
    let mut spec = crate::control::rollout::traffic::tests::issue_spec();
    spec.segments = ["a", "b", "other"].map(String::from).to_vec();
    spec.segment_guards = vec![guard(errors), guard(latency)];
    let needs = segment_needs(&spec);
    let mut rng = fastrand::Rng::with_seed(12);
    // Each replica's answers: segment `a` fails more in the canary and is slower.
    let draw = |rng: &mut fastrand::Rng, canary: bool| {
        let mut t = Tally {
            segments: vec![Tally::default(); 3],
            ..Tally::default()
        };
        for _ in 0..40 {
            let s = rng.usize(0..3);
            let worse = canary && s == 0;
            let failed = rng.f64() < if worse { 0.3 } else { 0.05 };
            let bin = 100 + rng.usize(0..10) + if worse { 8 } else { 0 };
            for x in [&mut t.segments[s], &mut Tally::default()] {
                x.requests += 1;
                x.errors += u64::from(failed);
                if !failed {
                    x.latency[bin] += 1;
                    x.ttfb[bin - 5] += 1;
                }
            }
        }
        let mut whole = t.segments.iter().fold(Tally::default(), |a, s| a.plus(s));
        whole.segments = t.segments;
        whole
    };
    let mut pool = Pool::new(key());
    let (mut pooled, mut single) = (Progress::start(), Progress::start());
    let mut cum = vec![(Tally::default(), Tally::default()); 3];
    for tick in 1..40u64 {
        let (mut all_c, mut all_b) = (Tally::default(), Tally::default());
        for (i, c) in cum.iter_mut().enumerate() {
            let (bc, bb) = (draw(&mut rng, true), draw(&mut rng, false));
            c.0 = c.0.plus(&bc);
            c.1 = c.1.plus(&bb);
            all_c = all_c.plus(&bc);
            all_b = all_b.plus(&bb);
            let (rc, rb) = (c.0.keeping(needs), c.1.keeping(needs));
            let r = Report::new(&format!("r{i}"), 7, tick, key(), (&rc, &rb));
            pool.offer(&Report::decode(&r.encode()).unwrap()).unwrap();
        }
        let (c, b) = pool.block();
        assert!(c.segments.iter().all(|s| s.ttfb.iter().all(|n| *n == 0)));
        pooled.observe(&spec, Duration::from_secs(1), &c, &b);
        single.observe(&spec, Duration::from_secs(1), &all_c, &all_b);
        assert_eq!(
            pooled.readings(&spec),
            single.readings(&spec),
            "tick {tick}"
        );
    }
    let readings = pooled.readings(&spec);
    let failed: Vec<_> = readings
        .iter()
        .filter(|r| r.status == crate::control::rollout::guard::Status::Fail)
        .map(|r| (r.guard.as_str(), r.segment.as_deref()))
        .collect();
    // The overall error_rate sees the diluted regression too; the segments' guards fail in
    // `a` alone, on counts the reports carried.
    assert_eq!(
        failed,
        [("error_rate", None), ("g", Some("a")), ("g", Some("a"))],
        "{readings:#?}"
    );
}
