use super::*;
pub(super) use crate::control::rollout::traffic::tests::issue_spec;
use crate::samples::BINS;

fn key(step: usize) -> StepKey {
    StepKey {
        id: "a".into(),
        step,
        step_version: 3,
    }
}

fn tally(requests: u64, errors: u64) -> Tally {
    let mut t = Tally {
        requests,
        errors,
        ..Tally::default()
    };
    t.latency[100] = requests - errors;
    t
}

fn report(replica: &str, incarnation: u64, seq: u64, c: (u64, u64), b: (u64, u64)) -> Report {
    Report::new(
        replica,
        incarnation,
        seq,
        key(1),
        (&tally(c.0, c.1), &tally(b.0, b.1)),
    )
}

#[test]
fn the_pool_sums_each_incarnations_latest_report_and_blocks_are_its_increments() {
    let mut p = Pool::new(key(1));
    p.offer(&report("r1", 1, 1, (10, 1), (100, 2))).unwrap();
    p.offer(&report("r2", 1, 1, (5, 0), (50, 1))).unwrap();
    assert_eq!(p.block(), (tally(15, 1), tally(150, 3)));
    p.offer(&report("r1", 1, 2, (12, 1), (130, 2))).unwrap();
    // A late report of r1 is refused; the pool keeps the newer.
    assert_eq!(
        p.offer(&report("r1", 1, 1, (10, 1), (100, 2))),
        Err(Rejected::Stale { seq: 1, latest: 2 })
    );
    assert_eq!(p.block(), (tally(2, 0), tally(30, 0)));
    // r2 restarts: its old incarnation's counts stay, the new one's add from zero.
    p.offer(&report("r2", 2, 1, (3, 1), (20, 0))).unwrap();
    assert_eq!(p.totals(), &(tally(20, 2), tally(200, 3)));
    assert_eq!(p.block(), (tally(3, 1), tally(20, 0)));
    assert_eq!(p.block(), (Tally::default(), Tally::default()));
    assert_eq!(p.sources().count(), 3);
    // Counts that shrink within an incarnation, or cannot have been recorded, or belong to
    // another step, change nothing.
    let before = p.totals().clone();
    assert_eq!(
        p.offer(&report("r1", 1, 3, (11, 1), (130, 2))),
        Err(Rejected::WentBack)
    );
    let mut bad = report("r3", 1, 1, (1, 0), (1, 0));
    bad.canary.errors = 5;
    assert!(matches!(p.offer(&bad), Err(Rejected::Impossible(_))));
    let mut other = report("r3", 1, 1, (1, 0), (1, 0));
    other.step = key(2);
    assert_eq!(p.offer(&other), Err(Rejected::OtherStep));
    assert_eq!(p.totals(), &before);
}

#[test]
fn a_successor_judge_whose_copy_of_the_reports_lags_feeds_only_answers_not_yet_fed() {
    let mut p = Pool::new(key(1));
    p.offer(&report("r1", 1, 1, (10, 1), (100, 2))).unwrap();
    p.offer(&report("r2", 1, 4, (5, 0), (50, 1))).unwrap();
    p.offer(&report("r2", 2, 1, (3, 0), (20, 0))).unwrap();
    p.offer(&report("r1", 1, 2, (12, 1), (130, 2))).unwrap();
    p.block();
    let saved: SavedPool = serde_json::from_slice(&serde_json::to_vec(&p.save()).unwrap()).unwrap();
    // r2's first incarnation, replaced by its second, is kept as a sum.
    assert_eq!(saved.retired, vec![("r2".to_string(), 1)]);
    assert_eq!(saved.sources.len(), 2);
    let mut q = Pool::restore(key(1), &saved).unwrap();
    assert_eq!(q.totals(), p.totals());
    assert_eq!(q.block(), (Tally::default(), Tally::default()));
    // The successor still holds older reports than its predecessor pooled: they add nothing
    // (a sum it had not caught up with gave a block of latency without requests).
    assert_eq!(
        q.offer(&report("r1", 1, 1, (10, 1), (100, 2))),
        Err(Rejected::Stale { seq: 1, latest: 2 })
    );
    assert_eq!(
        q.offer(&report("r2", 1, 4, (5, 0), (50, 1))),
        Err(Rejected::Retired)
    );
    assert_eq!(q.block(), (Tally::default(), Tally::default()));
    // Newer reports are deltas from what was fed; a new replica adds from zero.
    q.offer(&report("r1", 1, 3, (15, 1), (140, 2))).unwrap();
    q.offer(&report("r3", 1, 1, (2, 1), (9, 0))).unwrap();
    assert_eq!(q.block(), (tally(5, 1), tally(19, 0)));
    assert_eq!(q.totals(), &(tally(25, 2), tally(219, 3)));
    // A successor of the successor agrees too.
    let r = Pool::restore(key(1), &q.save()).unwrap();
    assert_eq!(r.totals(), q.totals());
    let mut bad = q.save();
    bad.sources[0].canary.errors = 1_000;
    assert!(matches!(
        Pool::restore(key(1), &bad),
        Err(Rejected::Impossible(_))
    ));
}

#[test]
fn the_judge_over_pooled_blocks_reads_what_it_would_over_one_replica_with_all_the_traffic() {
    use crate::control::rollout::Progress;
    use std::time::Duration;
    let spec = issue_spec();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut pool = Pool::new(key(1));
    let (mut pooled, mut single) = (Progress::start(), Progress::start());
    let mut cum = vec![(Tally::default(), Tally::default()); 3];
    for tick in 1..60u64 {
        let (mut all_c, mut all_b) = (Tally::default(), Tally::default());
        for (i, c) in cum.iter_mut().enumerate() {
            let (bc, bb) = (tally(10, rng.u64(0..4)), tally(90, rng.u64(0..9)));
            c.0 = c.0.plus(&bc);
            c.1 = c.1.plus(&bb);
            all_c = all_c.plus(&bc);
            all_b = all_b.plus(&bb);
            pool.offer(&Report::new(
                &format!("r{i}"),
                7,
                tick,
                key(1),
                (&c.0, &c.1),
            ))
            .unwrap();
        }
        let (c, b) = pool.block();
        pooled.observe(&spec, Duration::from_secs(1), &c, &b);
        single.observe(&spec, Duration::from_secs(1), &all_c, &all_b);
    }
    assert_eq!(pooled, single);
}

#[test]
fn reports_are_json_of_bounded_size() {
    let mut full = Tally {
        requests: u64::MAX,
        with_outcome: u64::MAX / 2,
        ..Tally::default()
    };
    full.outcomes.iter_mut().for_each(|c| *c = u64::MAX / 64);
    full.with_usage = u64::MAX / 2;
    for h in [
        &mut full.latency,
        &mut full.ttfb,
        &mut full.ttft,
        &mut full.inter_token,
        &mut full.output_tokens,
        &mut full.cost,
    ] {
        h.iter_mut().for_each(|c| *c = u64::MAX / 1024);
    }
    let r = Report::new(&"h".repeat(253), u64::MAX, u64::MAX, key(1), (&full, &full));
    let bytes = r.encode();
    assert!(bytes.len() <= MAX_REPORT_BYTES, "{} bytes", bytes.len());
    assert_eq!(Report::decode(&bytes), Ok(r));
    assert!(matches!(
        Report::decode(&vec![b' '; MAX_REPORT_BYTES + 1]),
        Err(Rejected::TooLarge(_))
    ));
    assert!(matches!(Report::decode(b"{}"), Err(Rejected::Parse(_))));
    assert_eq!(full.latency.len(), BINS);
}

#[test]
fn the_split_shares_alpha_between_the_judge_and_each_replica() {
    let s = Split::EVEN;
    assert_eq!(s.judge_alpha(0.05), 0.025);
    assert!((s.local_alpha(0.05, 3) - 0.05 / 6.0).abs() < 1e-15);
    assert_eq!(s.local_alpha(0.05, 0), s.local_alpha(0.05, 1));
    // The judge's share plus every replica's is the whole.
    for n in 1..30 {
        let sum = s.judge_alpha(0.05) + n as f64 * s.local_alpha(0.05, n);
        assert!((sum - 0.05).abs() < 1e-12);
    }
    assert_eq!(Split::new(0.0), None);
    assert_eq!(Split::new(1.0), None);
    assert!(Split::new(0.8).is_some());
    let spec = issue_spec();
    // One guard, two steps: a = 0.025 per test; a replica of three rolls back at e >= 240.
    let t = s.local_log_threshold(&spec, 3);
    assert!((t - 240f64.ln()).abs() < 1e-9, "{t}");
    let (judge, local) = s.specs(&spec, 3);
    assert!((judge.alpha_per_test() - 0.0125).abs() < 1e-15);
    assert!((local.alpha_per_test() - 0.025 / 6.0).abs() < 1e-15);
}
