//! Pins across replicas: two `cohort run` processes sharing the secret file, one at 5% and
//! one already at 50% (as in the middle of a fleet's ramp), honour each other's pins.

use std::net::SocketAddr;

use crate::common::*;
use crate::support::process::Process;
use crate::support::{fetch, get, h1_client, Scrape};

async fn pinned(client: &crate::support::H1Client, admin: SocketAddr, cohort: &str) -> f64 {
    let text = fetch(client, get(admin, "/metrics", &[])).await.text();
    Scrape::parse(&text).metric(
        "cohort_pinned_requests_total",
        &[("route", "agent"), ("cohort", cohort)],
    )
}

#[tokio::test]
async fn two_processes_sharing_the_secret_honour_each_others_pins() {
    let b = backends().await;
    let (stable, canary, secret) = (&b.stable, &b.canary, &b.secret);
    let pin = Some((secret.as_str(), Carrier::Header));
    let a = Process::start(
        "run",
        &config(stable.addr, canary.addr, "5", pin, &[]),
        None,
    )
    .await;
    let b = Process::start(
        "run",
        &config(stable.addr, canary.addr, "50", pin, &[]),
        None,
    )
    .await;
    let client = h1_client();

    // Started on A (5%), continued on B (50%), then on A again with B's pin.
    let keys: Vec<String> = (0..100).map(|i| format!("replica-{i}")).collect();
    let mut held = 0;
    for key in &keys {
        let mut c = Conversation::new(key.clone(), Carrier::Header);
        let first = c.turn(&client, a.public).await.cohort;
        assert_eq!(first, band(key, 5), "{key}");
        assert_eq!(c.turn(&client, b.public).await.cohort, first, "{key} on B");
        assert_eq!(
            c.turn(&client, a.public).await.cohort,
            first,
            "{key} back on A"
        );
        // Without the pin, B would have moved it.
        let mut fresh = Conversation::new(key.clone(), Carrier::Header);
        let unpinned = fresh.turn(&client, b.public).await.cohort;
        assert_eq!(unpinned, band(key, 50), "{key}");
        held += usize::from(unpinned != first);
    }
    assert!(held > 20, "only {held} conversations would have moved");

    // Started on B: its canary conversations stay canary on A, where their band is stable.
    let mut b_canary = 0;
    for i in 0..100 {
        let mut c = Conversation::new(format!("from-b-{i}"), Carrier::Header);
        let first = c.turn(&client, b.public).await.cohort;
        b_canary += usize::from(first == "canary");
        assert_eq!(c.turn(&client, a.public).await.cohort, first, "{}", c.key);
    }
    assert!(b_canary > 20, "{b_canary}");

    let stable_on_a = keys.iter().filter(|k| band(k, 5) == "stable").count();
    let canary_on_a = keys.len() - stable_on_a;
    assert_eq!(pinned(&client, b.admin, "stable").await, stable_on_a as f64);
    assert_eq!(pinned(&client, b.admin, "canary").await, canary_on_a as f64);
    assert_eq!(
        pinned(&client, a.admin, "canary").await,
        (canary_on_a + b_canary) as f64
    );
    assert_eq!(
        pinned(&client, a.admin, "stable").await,
        (stable_on_a + 100 - b_canary) as f64
    );
}
