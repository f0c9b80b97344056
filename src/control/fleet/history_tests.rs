use super::*;
use crate::routing::history::Share;

fn entry(route: &str, at: u64, canary: u32) -> Entry {
    Entry {
        route: route.into(),
        at_unix_ms: at,
        salt: route.into(),
        cohorts: vec![
            Share {
                cohort: "stable".into(),
                weight: 10_000 - canary,
            },
            Share {
                cohort: "canary".into(),
                weight: canary,
            },
        ],
    }
}

#[test]
fn a_value_comes_back_and_holds_only_its_routes_well_formed_entries() {
    let mut bad = entry("agent", 3, 500);
    bad.cohorts[1].weight = 1;
    let value = encode(&[entry("agent", 1, 500), entry("other", 2, 500), bad]);
    assert_eq!(decode("agent", &value), [entry("agent", 1, 500)]);
    assert_eq!(decode("agent", b"{not json"), []);
    assert_eq!(decode("agent", &vec![b' '; MAX_BYTES + 1]), []);
}

#[test]
fn a_copy_is_pending_only_while_it_holds_what_the_bucket_lacks() {
    let mut c = Copies::default();
    assert!(c.decided(entry("agent", 1_000, 500), 0));
    assert!(!c.decided(entry("agent", 1_000, 500), 0));
    assert_eq!(c.pending(), ["agent"]);
    // The bucket already has it (another replica wrote it first): nothing to write.
    let theirs = encode(&[entry("agent", 500, 100), entry("agent", 1_000, 500)]);
    assert!(c.learned("agent", Some(&theirs), 7, 0));
    assert_eq!(c.pending(), Vec::<String>::new());
    assert_eq!(c.of("agent").len(), 2);
    // An older delivery than the one read changes nothing.
    assert!(!c.learned("agent", Some(&encode(&[])), 6, 0));
    // A change applied here before the bucket has it.
    assert!(c.decided(entry("agent", 2_000, 2500), 0));
    assert_eq!(c.pending(), ["agent"]);
    // Pruned at the window's start: the entry in force there stays.
    assert!(c.decided(entry("agent", 3_000, 5000), 2_500));
    let at: Vec<u64> = c.of("agent").iter().map(|e| e.at_unix_ms).collect();
    assert_eq!(at, [2_000, 3_000]);
}
