//! Segments of the rollout evidence: cells that also keep each segment's counts apart, and
//! the arithmetic on a tally's segments.
//!
//! Owns: how a segment index picks its cells, the segments' part in a tally's arithmetic and
//! checks, and [`Needs`] (which counts of a segment a report must carry). Must not touch:
//! what a segment is (`routing::table`), which guards read which counts (`control::rollout`
//! says so with a [`Needs`]).

use super::{Answer, Cells, Tally};

impl Cells {
    /// Cells with `segments` segments (none: the route has no segment).
    pub fn with_segments(segments: usize) -> Cells {
        let mut cells = Cells::default();
        cells.segments = (0..segments).map(|_| Cells::default()).collect();
        cells
    }

    /// How many segments these cells keep apart.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// [`Cells::record`], and the same in segment `segment`'s cells when there are any.
    #[inline]
    pub fn record_in(&self, segment: Option<usize>, a: &Answer) {
        self.record(a);
        if let Some(c) = segment.and_then(|i| self.segments.get(i)) {
            c.record(a);
        }
    }

    /// [`Cells::record_abandoned`], and the same in segment `segment`'s cells.
    #[inline]
    pub fn record_abandoned_in(&self, segment: Option<usize>) {
        self.record_abandoned();
        if let Some(c) = segment.and_then(|i| self.segments.get(i)) {
            c.record_abandoned();
        }
    }
}

/// `f` over two tallies' segments, one by one; a missing segment counts as zero (a tally
/// read before its segments were known, such as the empty one a step starts from).
pub(super) fn zip_segments(a: &[Tally], b: &[Tally], f: fn(u64, u64) -> u64) -> Vec<Tally> {
    if a.is_empty() && b.is_empty() {
        return Vec::new();
    }
    let zero = Tally::default();
    (0..a.len().max(b.len()))
        .map(|i| {
            let (x, y) = (a.get(i).unwrap_or(&zero), b.get(i).unwrap_or(&zero));
            x.zip(y, f)
        })
        .collect()
}

/// Why one of `segments` cannot have come from recording, if one cannot.
pub(super) fn impossible_segment(segments: &[Tally]) -> Option<String> {
    segments.iter().enumerate().find_map(|(i, s)| {
        if !s.segments.is_empty() {
            return Some(format!("segment {i} has segments of its own"));
        }
        s.impossible().map(|why| format!("segment {i}: {why}"))
    })
}

/// Which counts of each segment the `per_segment` guards read: what a fleet report carries
/// of the segments ([`Tally::keeping`]). Each also keeps what it is a part of, so that a
/// trimmed segment is still a tally recording can make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub errors: bool,
    pub outcomes: bool,
    pub latency: bool,
    pub ttfb: bool,
    pub ttft: bool,
    pub inter_token: bool,
    pub output_tokens: bool,
    pub cost: bool,
}

impl Tally {
    /// Whether every count (its segments' too) is zero.
    pub fn is_zero(&self) -> bool {
        let Tally { segments, .. } = self;
        segments.iter().all(Tally::is_zero)
            && Tally {
                segments: Vec::new(),
                ..self.clone()
            } == Tally::default()
    }

    /// This tally with only the counts `needs` of each segment (the whole kept entire); no
    /// segments at all when nothing is needed.
    pub fn keeping(&self, needs: Needs) -> Tally {
        if needs == Needs::default() {
            return Tally {
                segments: Vec::new(),
                ..self.clone()
            };
        }
        let usage = needs.output_tokens || needs.cost;
        let ttft = needs.ttft || needs.inter_token;
        let timed = needs.latency || needs.ttfb || ttft || usage;
        let keep = |on: bool, v: &Vec<u64>| if on { v.clone() } else { vec![0; v.len()] };
        let trim = |s: &Tally| Tally {
            requests: s.requests,
            errors: if needs.errors { s.errors } else { 0 },
            with_outcome: if needs.outcomes { s.with_outcome } else { 0 },
            outcomes: keep(needs.outcomes, &s.outcomes),
            latency: keep(timed, &s.latency),
            ttfb: keep(needs.ttfb, &s.ttfb),
            ttft: keep(ttft, &s.ttft),
            inter_token: keep(needs.inter_token, &s.inter_token),
            with_usage: if usage { s.with_usage } else { 0 },
            output_tokens: keep(needs.output_tokens, &s.output_tokens),
            cost: keep(needs.cost, &s.cost),
            units: s.units,
            late_outcomes: s.late_outcomes.clone(),
            segments: Vec::new(),
        };
        Tally {
            segments: self.segments.iter().map(trim).collect(),
            ..self.clone()
        }
    }
}
