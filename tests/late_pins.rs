//! Late outcomes named by a conversation pin instead of a key: the pin says which cohort
//! served the conversation, so the event goes there with no history, even after the pin
//! stopped routing; a pin the route's secret did not sign, or a pin posted to a route that
//! does not pin, is refused `bad_pin`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::late::{rfc3339, wall_ms, Rig};
use support::{fetch, get};

const SECRET: &str = "late-pins-secret-0123456789abcdef";
const HEADER: &str = "x-cohort-pin";

fn by_pin(id: &str, pin: &str, started_ms: u64) -> Value {
    json!({"id": id, "route": "agent", "pin": pin, "outcome": "resolved",
           "started_at": rfc3339(started_ms)})
}

#[tokio::test]
async fn a_pin_names_its_cohort_without_history_and_after_it_stopped_routing() {
    let pin = [
        "pin:",
        "  secret_file: pin.key",
        "  header: x-cohort-pin",
        "  idle_ttl: 1s",
    ];
    let rig = Rig::with_route("", &[], &pin, &[("pin.key", SECRET)]).await;
    // At 90/10, alice (bucket 2871) is stable and user-3 (bucket 9955) canary.
    let mut pins = Vec::new();
    for user in ["alice", "user-3"] {
        let r = fetch(&rig.client, get(rig.public, "/", &[("x-user-id", user)])).await;
        assert_eq!(r.status, 200);
        let value = r
            .headers
            .get(HEADER)
            .expect("a fresh pin")
            .to_str()
            .unwrap();
        pins.push(value.to_string());
    }
    // Past the idle ttl: the pins no longer route, and still say who served.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // An hour ago: before this proxy kept any history, so a key could not be attributed.
    let started = wall_ms() - 3_600_000;
    let mut forged = pins[0].clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let body = json!({"events": [
        by_pin("p-stable", &pins[0], started),
        by_pin("p-canary", &pins[1], started),
        by_pin("p-forged", &forged, started),
        {"id": "k-alice", "route": "agent", "key": "alice", "outcome": "resolved",
         "started_at": rfc3339(started)},
    ]});
    let doc = rig.post(&body).await.json();
    let results = doc["results"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["result"].as_str().unwrap(),
                r["cohort"].as_str().or(r["reason"].as_str()).unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("accepted", "stable"),
            ("accepted", "canary"),
            ("refused", "bad_pin"),
            ("refused", "no_history"),
        ],
        "{doc:#}"
    );
    // Named by its pin, an event has no bucket.
    assert_eq!(results[0]["bucket"], Value::Null, "{doc:#}");
    let scrape = rig.scrape().await;
    for (cohort, n) in [("stable", 1.0), ("canary", 1.0)] {
        let labels = [
            ("route", "agent"),
            ("cohort", cohort),
            ("outcome", "resolved"),
        ];
        assert_eq!(scrape.get("cohort_late_outcomes_total", &labels), Some(n));
    }
    let refused = |reason| scrape.get("cohort_late_outcomes_refused_total", &[("reason", reason)]);
    assert_eq!(refused("bad_pin"), Some(1.0));
    assert_eq!(refused("no_history"), Some(1.0));
}

#[tokio::test]
async fn a_pin_on_a_route_that_does_not_pin_is_refused() {
    let rig = Rig::start("", &[]).await;
    let value = cohort::routing::pin::mint(
        SECRET.as_bytes(),
        &cohort::routing::pin::Pin {
            route: "agent",
            cohort: "stable",
            rollout: "",
            issued: 1,
            expires: 2,
        },
    );
    let doc = rig.post(&by_pin("p", &value, wall_ms())).await.json();
    assert_eq!(doc["results"][0]["reason"], "bad_pin", "{doc:#}");
    assert_eq!(doc["accepted"], 0);
}
