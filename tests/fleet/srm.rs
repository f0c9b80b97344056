//! The sample ratio check across a fleet: three replicas behind a client that spreads each
//! user's requests over them. Sound traffic does not halt; a client that drops the key for
//! half of the canary's users halts the shared record, and every replica serves the canary
//! at 0%, with the reason naming the replica whose units crossed.

use std::time::Duration;

use crate::support::fleet::{in_canary, Fleet, RecordWatch, Shared, KEY_HEADER};
use crate::support::{fetch, get, h1_client, H1Client};

use super::common::*;

/// `users` fresh users (named by `round`), two requests each to two replicas in turn;
/// those `dropped` says go without the key.
async fn send(
    client: &H1Client,
    addrs: &[Shared],
    round: usize,
    users: usize,
    dropped: impl Fn(&str, usize) -> bool,
) {
    for i in 0..users {
        let key = format!("srm-{round}-{i}");
        for turn in 0..2 {
            let Some(addr) = *addrs[(i + turn) % addrs.len()].lock().unwrap() else {
                continue;
            };
            let headers: Vec<(&str, &str)> = if dropped(&key, i) {
                vec![]
            } else {
                vec![(KEY_HEADER, key.as_str())]
            };
            let reply = fetch(client, get(addr, "/", &headers)).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_half_the_canarys_keys_halts_the_fleet_and_a_sound_one_does_not() {
    let _one = one_at_a_time().await;
    let rollout = "{id: srm-v1, canary: canary, steps: [50], soak: 1h, min_samples: 10}";
    let Some(fleet) = Fleet::start("srm", 3, rollout, 0.0, 0.0).await else {
        return;
    };
    bounded(Duration::from_secs(120), async {
        let watch = RecordWatch::start(&fleet.admin_addrs());
        fleet
            .until_synced("every replica synced", Duration::from_secs(20), |_| true)
            .await;
        let client = h1_client();
        let addrs = fleet.public_addrs();
        send(&client, &addrs, 0, 900, |_, _| false).await;
        // Two judge looks and more: still ramping, each replica's reading under its bound.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for r in &fleet.replicas {
            let local = r.rollout().await;
            assert_eq!(local["state"], "ramping", "{}: {local:#}", r.id);
            let srm = &local["srm"];
            assert!(
                srm["statistic"].as_f64() < srm["threshold"].as_f64(),
                "{}: {local:#}",
                r.id
            );
            // srm_alpha 0.001 over one step, at one replica's share: 1 / 2 / 20.
            let want = (2.0f64 * 20.0 / 0.001).ln();
            assert!(
                (srm["threshold"].as_f64().unwrap() - want).abs() < 1e-9,
                "{local:#}"
            );
        }
        assert_eq!(
            watch.latest().map(|s| s.phase().to_string()).as_deref(),
            Some("ramping")
        );

        let mut round = 1;
        let halted = loop {
            send(&client, &addrs, round, 900, |k, i| {
                in_canary(k, 5_000) && i % 2 == 0
            })
            .await;
            if let Some(s) = watch.latest().filter(|s| s.phase() == "halted") {
                break s;
            }
            round += 1;
            assert!(round < 20, "no halt after {round} rounds");
        };
        let decision = last_decision(&halted.record, "halt").expect("a halt in the history");
        assert_eq!(decision["trigger"], "judge", "{decision:#}");
        let note = decision["reason"].as_str().unwrap_or_default().to_string();
        assert!(
            note.starts_with("sample ratio mismatch: canary "),
            "{:#}",
            halted.record
        );
        assert!(note.contains(" at replica r"), "{note}");
        eprintln!("halted after {round} rounds of broken traffic: {note}");
        // Every replica follows the record to 0%.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for r in &fleet.replicas {
            loop {
                let local = r.rollout().await;
                if local["state"] == "halted" && local["percent"] == 0.0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{}: {local:#}", r.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        watch.stop().await;
    })
    .await;
}
