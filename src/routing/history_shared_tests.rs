use super::super::tests::entry;
use super::*;

fn weights(entries: &[Entry]) -> Vec<(u64, u32)> {
    entries
        .iter()
        .map(|e| (e.at_unix_ms, e.cohorts[1].weight))
        .collect()
}

#[test]
fn the_union_is_the_same_whatever_order_the_copies_come_in() {
    let a = vec![entry(1_000, 100), entry(3_000, 2500)];
    let b = vec![entry(2_000, 500), entry(3_000, 2500), entry(4_000, 2500)];
    let ab = union(&a, &b);
    assert_eq!(ab, union(&b, &a));
    assert_eq!(union(&ab, &a), ab);
    // 4_000 deals as 3_000 does: the earlier says it.
    assert_eq!(weights(&ab), [(1_000, 100), (2_000, 500), (3_000, 2500)]);
    // Two splits at one millisecond: every replica keeps both in the same order.
    let tie = union(&[entry(5_000, 5000)], &[entry(5_000, 0)]);
    assert_eq!(tie, union(&[entry(5_000, 0)], &[entry(5_000, 5000)]));
    assert_eq!(weights(&tie), [(5_000, 5000), (5_000, 0)]);
    let mut bad = entry(6_000, 500);
    bad.cohorts[0].weight = 1;
    assert_eq!(union(&[bad], &[]), []);
}

#[test]
fn bounds_keep_the_split_in_force_at_the_cutoff_and_the_newest() {
    let mut e: Vec<Entry> = (1..=4).map(|i| entry(i * 1_000, i as u32 * 100)).collect();
    bound(&mut e, 2_500);
    assert_eq!(weights(&e), [(2_000, 200), (3_000, 300), (4_000, 400)]);
    bound(&mut e, 500);
    assert_eq!(e.len(), 3);
    let mut many: Vec<Entry> = (0..MAX_SHARED as u64 + 5)
        .map(|i| entry(i, 100 + (i % 2) as u32))
        .collect();
    bound(&mut many, 0);
    assert_eq!(many.len(), MAX_SHARED);
    assert_eq!(many[0].at_unix_ms, 5);
}

#[test]
fn only_entries_from_the_start_of_theirs_on_are_worth_writing() {
    let theirs = vec![entry(2_000, 500), entry(3_000, 2500)];
    assert!(!adds_to(&[entry(1_000, 100), entry(2_000, 500)], &theirs));
    assert!(adds_to(&[entry(4_000, 5000)], &theirs));
    assert!(adds_to(&[entry(2_500, 700)], &theirs));
    assert!(adds_to(&[entry(1, 100)], &[]));
    assert!(!adds_to(&[], &[]));
}

#[test]
fn adopting_makes_the_fleets_word_final_from_its_first_entry_on() {
    let mut h = History::default();
    // Its own: the first load at 500, then what it served while it started (0% at 3_100)
    // and once it read the record (25% at 3_140).
    h.record(entry(500, 100));
    h.record(entry(3_100, 0));
    h.record(entry(3_140, 2500));
    let mut other = entry(0, 700);
    other.route = "other".into();
    h.record(other.clone());
    let shared = vec![entry(1_000, 500), entry(3_000, 2500)];
    assert!(h.adopt("agent", &shared));
    assert_eq!(
        weights(&h.of("agent").cloned().collect::<Vec<_>>()),
        [(500, 100), (1_000, 500), (3_000, 2500)]
    );
    assert_eq!(h.of("other").next(), Some(&other));
    assert!(!h.adopt("agent", &shared));
    assert!(!h.adopt("agent", &[]));
    // A later copy, pruned at its start: what it no longer holds stays as it was.
    let later = vec![entry(3_000, 2500), entry(9_000, 5000)];
    assert!(h.adopt("agent", &later));
    assert_eq!(h.at("agent", 3_050).unwrap().cohorts[1].weight, 2500);
    assert_eq!(h.at("agent", 1_500).unwrap().cohorts[1].weight, 500);
    assert_eq!(h.at("agent", 9_000).unwrap().cohorts[1].weight, 5000);
    // Another route's entries in the copy are not this route's.
    let mut stray = entry(10_000, 9000);
    stray.route = "other".into();
    assert!(!h.adopt("agent", &[stray]));
}
