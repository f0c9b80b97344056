//! Pins under a rollout: the judge counts each turn against the cohort that served it (a
//! pinned turn is the canary's sample even where the key's band is the baseline's), a pin of
//! another rollout id is foreign, and a rollback through the rollout machinery overrides the
//! canary's pins at once.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::{fetch, request, within, Config, TestProxy, WAIT};

const ROLLOUT: &str =
    "rollout: {id: v2, canary: canary, steps: [10, 50], soak: 1h, min_samples: 100000}";

async fn rollout(proxy: &TestProxy) -> Value {
    let r = proxy.admin("GET", "/rollouts").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rollouts"][0].clone()
}

/// Waits until the step's samples are `(canary, baseline)`: a sample is recorded as its
/// response body ends, which may be just after the client read it.
async fn expect_samples(proxy: &TestProxy, canary: u64, baseline: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = rollout(proxy).await;
        let got = (
            r["samples"]["canary"].as_u64(),
            r["samples"]["baseline"].as_u64(),
        );
        if got == (Some(canary), Some(baseline)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "samples {got:?}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pinned_turns_are_the_serving_cohorts_samples_and_a_rollback_overrides_pins() {
    let b = backends().await;
    let (stable, canary, secret) = (&b.stable, &b.canary, &b.secret);
    let yaml = Config::new()
        .top("reload: {watch: false, poll_interval: 1h}")
        .top("state_dir: state")
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(route(
            "10",
            Some((secret.as_str(), Carrier::Header)),
            &[ROLLOUT],
        ))
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    let r = rollout(&proxy).await;
    assert_eq!(
        (&r["state"], &r["step"]),
        (&"ramping".into(), &0.into()),
        "{r:#}"
    );

    // Keys whose band at 10% is the baseline's, each holding a canary pin of this rollout.
    let keys: Vec<String> = (0..)
        .map(|i| format!("judged-{i}"))
        .filter(|k| band(k, 10) == "stable")
        .take(50)
        .collect();
    let t = now();
    let mut conversations = Vec::new();
    for key in &keys[..30] {
        let mut c = Conversation::new(key.clone(), Carrier::Header);
        c.pin = Some(mint("agent", "canary", "v2", t, t + 600));
        for _ in 0..2 {
            assert_eq!(
                c.turn(&proxy.client, proxy.public).await.cohort,
                "canary",
                "{key}"
            );
        }
        conversations.push(c);
    }
    // Unpinned, and pinned by an earlier rollout (foreign): the baseline, as the band says.
    for key in &keys[30..40] {
        let mut c = Conversation::new(key.clone(), Carrier::Header);
        assert_eq!(c.turn(&proxy.client, proxy.public).await.cohort, "stable");
    }
    for key in &keys[40..50] {
        let mut c = Conversation::new(key.clone(), Carrier::Header);
        c.pin = Some(mint("agent", "canary", "v1", t, t + 600));
        assert_eq!(c.turn(&proxy.client, proxy.public).await.cohort, "stable");
    }
    expect_samples(&proxy, 60, 20).await;

    // Rolled back by the machinery: the canary is at 0%, and its pins are ignored at once.
    let req = request("POST", proxy.admin, "/rollouts/agent/rollback", &[], "");
    let reply = within("the rollback", fetch(&proxy.client, req)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    for c in &mut conversations {
        let turn = c.turn(&proxy.client, proxy.public).await;
        assert_eq!(turn.cohort, "stable", "{}", c.key);
        // And a fresh pin for the cohort it now has.
        assert_eq!(pinned_cohort(turn.pin.as_deref().unwrap()), "stable");
        assert_eq!(c.turn(&proxy.client, proxy.public).await.cohort, "stable");
    }
    // The second turn after the rollback rode the fresh stable pin.
    assert_counts(
        &proxy.scrape().await,
        &[
            ("cohort_pin_rejected_total", "foreign", 10.0),
            ("cohort_pin_rejected_total", "inactive", 30.0),
            ("cohort_pinned_requests_total", "canary", 60.0),
            ("cohort_pinned_requests_total", "stable", 30.0),
        ],
    );
}
