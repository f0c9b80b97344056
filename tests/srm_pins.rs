//! Conversation pins and the sample ratio check together: after a step, conversations pinned
//! to the baseline keep it though their keys' buckets moved into the canary. Counted as
//! units of the cohort that served them, they would make the canary's share look far below
//! its percent and halt a sound rollout; pinned requests are no units (only the band's
//! choices are), so the check sees the new conversations alone, and they hold the split.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cohort::control::rollout::{judge, Now};
use serde_json::Value;
use support::sim::{Behaviour, SimBackend};
use support::{bearer_request, contract_cohort, fetch, get, h1_client, Config, Route};

const HEADER: &str = "x-cohort-pin";

/// The unit slot of a key (`samples::units`: its own xxh3 seed, 2^17 slots).
fn slot(user: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(format!("user-{user}").as_bytes(), 0x6c7d_2a91_e4b3_5f08)
        & ((1 << 17) - 1)
}

#[tokio::test]
async fn pinned_turns_after_a_step_are_no_units_and_a_sound_split_does_not_halt() {
    let backends = (
        SimBackend::start(Behaviour::default()).await,
        SimBackend::start(Behaviour::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pin.key"),
        "srm-pins-secret-0123456789abcdef",
    )
    .unwrap();
    let route = Route::new("agent")
        .key("header: x-user-id")
        .set("pin: {secret_file: pin.key, header: x-cohort-pin}")
        .set("rollout: {id: v2, canary: canary, steps: [10, 50], soak: 1h, min_samples: 10}");
    let yaml = Config::new()
        .top("state_dir: state")
        .top("reload: {watch: false, poll_interval: 1h}")
        .upstream("stable", backends.0.addr)
        .upstream("canary", backends.1.addr)
        .route(route.split(&[("stable", "stable", "90"), ("canary", "canary", "10")]))
        .yaml();
    let path = dir.path().join("cohort.yaml");
    std::fs::write(&path, yaml).unwrap();
    let running = support::start_unjudged(&path).await;
    let (public, admin) = (running.listener("public").unwrap(), running.admin_address);
    let client = h1_client();
    let rollout = || async {
        let r = fetch(&client, bearer_request("GET", admin, "/rollouts", None)).await;
        r.json()["rollouts"][0].clone()
    };
    // One turn of `user`'s conversation, with its pin when it holds one; the cohort, and the
    // pin the response carries.
    let turn = |user: u64, pin: Option<String>| {
        let client = client.clone();
        async move {
            let key = format!("user-{user}");
            let mut headers = vec![("x-user-id", key.as_str())];
            if let Some(p) = &pin {
                headers.push((HEADER, p.as_str()));
            }
            let r = fetch(&client, get(public, "/", &headers)).await;
            assert_eq!(r.status, 200);
            let next = r.header(HEADER).map(String::from);
            (r.header("x-cohort").unwrap_or_default().to_string(), next)
        }
    };

    // At 10%, 600 conversations begin, each pinned to the cohort of its first turn.
    let mut pins = Vec::new();
    for user in 0..600 {
        let (cohort, pin) = turn(user, None).await;
        assert_eq!(
            cohort,
            contract_cohort(
                "agent",
                format!("user-{user}").as_bytes(),
                &[("stable", 9_000), ("canary", 1_000)]
            )
        );
        pins.push((cohort, pin.expect("a fresh pin")));
    }
    let mut now = Now::real().later(Duration::from_secs(3_601));
    judge::tick(&running.control, now);
    let r: Value = rollout().await;
    assert_eq!(
        (&r["step"], &r["percent"]),
        (&1.into(), &50.0.into()),
        "{r:#}"
    );

    // At 50%: every conversation goes on where it was, about 40% of the stable ones now in
    // the canary's band; and 300 conversations begin.
    let split = [("stable", 5_000), ("canary", 5_000)];
    let mut moved = 0;
    for (user, (was, pin)) in pins.iter().enumerate() {
        let (cohort, _) = turn(user as u64, Some(pin.clone())).await;
        assert_eq!(&cohort, was, "user-{user} left its pinned cohort");
        let band = contract_cohort("agent", format!("user-{user}").as_bytes(), &split);
        moved += usize::from(band != was);
    }
    assert!(moved > 150, "only {moved} conversations would have moved");
    for user in 600..900 {
        turn(user, None).await;
    }
    now = now.later(Duration::from_secs(1));
    judge::tick(&running.control, now);
    let r = rollout().await;
    assert_eq!(
        (&r["state"], &r["step"]),
        (&"ramping".into(), &1.into()),
        "{r:#}"
    );
    // The step's units are exactly the new conversations' keys.
    let fresh: BTreeSet<u64> = (600..900).map(slot).collect();
    let units =
        r["srm"]["canary_units"].as_u64().unwrap() + r["srm"]["baseline_units"].as_u64().unwrap();
    assert_eq!(units, fresh.len() as u64, "{r:#}");
    assert_eq!(r["srm"]["mismatch"], false, "{r:#}");
    running.shutdown().await;
}
