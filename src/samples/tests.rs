use super::*;
use crate::telemetry::OutcomeSlot;
use std::time::Duration;

#[test]
fn bins_are_contiguous_and_increasing() {
    assert_eq!(bin_of(Duration::ZERO), 0);
    assert_eq!(bin_of(Duration::from_micros(7)), 7);
    assert_eq!(bin_of(Duration::from_micros(8)), 8);
    assert_eq!(bin_of(Duration::from_micros(15)), 15);
    assert_eq!(bin_of(Duration::from_micros(16)), 16);
    let mut last = 0;
    for us in (0..5_000_000u64).step_by(37) {
        let b = bin_of(Duration::from_micros(us));
        assert!(b >= last, "{us} µs went back to bin {b}");
        assert!(
            bin_floor(b) <= us as f64 / 1e6 + 1e-12,
            "{us} below its bin"
        );
        assert!(bin_floor(b + 1) > us as f64 / 1e6, "{us} past its bin");
        last = b;
    }
    assert_eq!(bin_of(Duration::from_secs(1_000_000)), BINS - 1);
    // Bins past 8 µs are at most 12.5% wide.
    for b in 8..BINS - 1 {
        let (lo, hi) = (bin_floor(b), bin_floor(b + 1));
        assert!(hi > lo && (hi - lo) / lo <= 0.125 + 1e-9, "bin {b}");
    }
}

fn answer(
    status: u16,
    cut: bool,
    outcome: Option<OutcomeSlot>,
    ttfb: Option<Duration>,
    duration: Duration,
) -> Answer {
    Answer {
        status,
        cut,
        outcome,
        ttfb,
        duration,
        ..Answer::default()
    }
}

#[test]
fn recording_counts_errors_outcomes_and_latency() {
    let c = Cells::default();
    let ms = Duration::from_millis;
    c.record(&answer(
        200,
        false,
        Some(OutcomeSlot::Allowed(1)),
        Some(ms(3)),
        ms(9),
    ));
    c.record(&answer(
        503,
        false,
        Some(OutcomeSlot::Other),
        Some(ms(1)),
        ms(1),
    ));
    c.record(&answer(200, true, None, Some(ms(1)), ms(1)));
    c.record(&answer(101, false, None, None, ms(500)));
    let t = c.snapshot();
    assert_eq!((t.requests, t.errors, t.with_outcome), (4, 2, 2));
    assert_eq!((t.outcomes[1], t.outcomes[OTHER_SLOT]), (1, 1));
    assert_eq!(t.latency.iter().sum::<u64>(), 1);
    assert_eq!(t.latency[bin_of(ms(9))], 1);
    assert_eq!(t.ttfb[bin_of(ms(3))], 1);
    assert_eq!(outcome_index(OutcomeSlot::Allowed(400)), OTHER_SLOT);
    let d = t.since(&Tally::default());
    assert_eq!(d, t);
    assert_eq!(t.plus(&t).requests, 8);
    assert!(t.well_formed());
    assert_eq!(t.impossible(), None);
}

#[test]
fn a_streamed_answer_adds_its_first_token_its_gap_its_tokens_and_its_cost() {
    let c = Cells::default();
    let ms = Duration::from_millis;
    let streamed = Answer {
        ttft: Some(ms(120)),
        gap: Some(ms(25)),
        usage: Some((164, Some(2_460))),
        ..answer(200, false, None, Some(ms(100)), ms(4_000))
    };
    c.record(&streamed);
    // No price: tokens without a cost. One event: a first token without a gap.
    c.record(&Answer {
        ttft: Some(ms(90)),
        usage: Some((40, None)),
        ..answer(200, false, None, Some(ms(80)), ms(200))
    });
    // An error's usage and first token are not an answer's.
    c.record(&Answer {
        ttft: Some(ms(1)),
        usage: Some((9, Some(9))),
        ..answer(502, false, None, None, ms(1))
    });
    let t = c.snapshot();
    assert_eq!((t.requests, t.errors, t.with_usage), (3, 1, 2));
    assert_eq!(t.ttft[bin_of(ms(120))], 1);
    assert_eq!(t.ttft.iter().sum::<u64>(), 2);
    assert_eq!(t.inter_token.iter().sum::<u64>(), 1);
    assert_eq!(t.inter_token[bin_of(ms(25))], 1);
    assert_eq!(t.output_tokens[bin_of_count(164)], 1);
    assert_eq!(t.output_tokens[bin_of_count(40)], 1);
    assert_eq!(t.cost.iter().sum::<u64>(), 1);
    assert_eq!(t.cost[bin_of_count(2_460)], 1);
    assert_eq!(t.impossible(), None);
    // Counts recording cannot make are named.
    let gaps_without_tokens = Tally {
        ttft: vec![0; BINS],
        ..t.clone()
    };
    assert_eq!(
        gaps_without_tokens.impossible().as_deref(),
        Some("1 token gaps but 0 first-token times")
    );
    let tokens_without_usage = Tally {
        with_usage: 0,
        ..t.clone()
    };
    assert_eq!(
        tokens_without_usage.impossible().as_deref(),
        Some("2 output-token counts but 0 answers with usage")
    );
}
