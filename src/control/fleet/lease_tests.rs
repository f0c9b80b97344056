//! The lease's decisions, without an engine: acquire, renew, wait, take over, fence.

use std::time::Duration;

use super::*;

const LEASE: Duration = Duration::from_secs(10);

fn me(replica: &str, incarnation: u64) -> Claimant {
    Claimant {
        replica: replica.into(),
        incarnation,
    }
}

fn held(by: &Claimant, expires_at_ms: u64, epoch: u64) -> LeaseRecord {
    LeaseRecord {
        holder: by.replica.clone(),
        incarnation: by.incarnation,
        expires_at_ms,
        epoch,
    }
}

#[test]
fn an_empty_key_is_created_at_epoch_one() {
    let a = me("a", 7);
    assert_eq!(
        decide(&a, &Read::Empty, 1_000, LEASE),
        Plan::Create(held(&a, 11_000, 1))
    );
}

#[test]
fn the_holder_renews_with_the_same_epoch_even_past_expiry() {
    let a = me("a", 7);
    for now in [5_000, 11_000, 50_000] {
        let read = Read::Record(held(&a, 11_000, 3), 42);
        assert_eq!(
            decide(&a, &read, now, LEASE),
            Plan::Update {
                record: held(&a, now + 10_000, 3),
                expected: 42
            }
        );
    }
}

#[test]
fn another_waits_while_the_lease_is_live() {
    let (a, b) = (me("a", 7), me("b", 8));
    let current = held(&a, 11_000, 3);
    let read = Read::Record(current.clone(), 42);
    assert_eq!(decide(&b, &read, 10_999, LEASE), Plan::Wait(current));
}

#[test]
fn another_takes_over_at_expiry_with_the_next_epoch() {
    let (a, b) = (me("a", 7), me("b", 8));
    let read = Read::Record(held(&a, 11_000, 3), 42);
    assert_eq!(
        decide(&b, &read, 11_000, LEASE),
        Plan::Update {
            record: held(&b, 21_000, 4),
            expected: 42
        }
    );
}

#[test]
fn a_restarted_process_is_a_new_holder() {
    let (before, after) = (me("a", 7), me("a", 9));
    let current = held(&before, 11_000, 3);
    let live = Read::Record(current.clone(), 42);
    assert_eq!(decide(&after, &live, 5_000, LEASE), Plan::Wait(current));
    let expired = Read::Record(held(&before, 11_000, 3), 42);
    assert_eq!(
        decide(&after, &expired, 12_000, LEASE),
        Plan::Update {
            record: held(&after, 22_000, 4),
            expected: 42
        }
    );
}

#[test]
fn an_unreadable_key_is_taken_over_past_every_epoch_it_held() {
    let a = me("a", 7);
    assert_eq!(
        decide(&a, &Read::Unreadable(42), 1_000, LEASE),
        Plan::Update {
            record: held(&a, 11_000, 43),
            expected: 42
        }
    );
}

#[test]
fn epochs_only_grow_along_any_run_of_decisions() {
    // Replicas take turns reading one shared key and writing what they decide; whatever the
    // order and the clock, the epoch never falls and changes exactly when the holder does.
    let replicas = [me("a", 1), me("b", 2), me("c", 3)];
    let mut rng = fastrand::Rng::with_seed(16);
    let (mut read, mut revision, mut now) = (Read::Empty, 0u64, 0u64);
    for _ in 0..10_000 {
        now += rng.u64(0..4_000);
        let who = &replicas[rng.usize(0..replicas.len())];
        let before = match &read {
            Read::Record(r, _) => Some(r.clone()),
            _ => None,
        };
        let written = match decide(who, &read, now, LEASE) {
            Plan::Create(r) => r,
            Plan::Update { record, expected } => {
                assert_eq!(expected, revision);
                record
            }
            Plan::Wait(_) => continue,
        };
        if let Some(b) = before {
            let same_holder = b.holder == written.holder && b.incarnation == written.incarnation;
            assert_eq!(written.epoch, b.epoch + u64::from(!same_holder));
            assert!(
                same_holder || now >= b.expires_at_ms,
                "taken over while live"
            );
        }
        revision += 1;
        read = Read::Record(written, revision);
    }
}
