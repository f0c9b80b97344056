//! Late outcomes refused and bounded: each bad event with its reason, replays counted once,
//! bodies too large (413) or too slow (408) while the public and admin listeners serve
//! everyone else, and curl as a user would post.

mod support;

use serde_json::{json, Value};
use support::late::{curl, event, rfc3339, wall_ms, Rig, TOKEN};
use support::{fetch, get, request, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn refused(rig: &Rig, reason: &str) -> f64 {
    rig.scrape()
        .await
        .get("cohort_late_outcomes_refused_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

#[tokio::test]
async fn every_bad_event_is_refused_with_its_reason_and_good_ones_count_once() {
    let rig = Rig::start(
        "",
        &[
            "window: 1h",
            "dedupe_window: 1h",
            "max_events: 50",
            "max_body_bytes: 4096",
        ],
    )
    .await;
    let now = wall_ms();
    // Taken once the proxy serves: its history begins before.
    let ok = |id: &str| event(id, "alice", "resolved", now);
    let mut unknown_route = ok("r");
    unknown_route["route"] = json!("no-such-route");
    let mut unknown_outcome = ok("o");
    unknown_outcome["outcome"] = json!("delighted");
    let mut no_key = ok("k");
    no_key.as_object_mut().unwrap().remove("key");
    let mut pin = ok("p");
    pin.as_object_mut().unwrap().remove("key");
    pin["pin"] = json!("v1.abc");
    let batch = json!({"events": [
        ok("a"),
        ok("a"),
        unknown_route,
        unknown_outcome,
        event("old", "alice", "resolved", now - 2 * 3600 * 1000),
        event("future", "alice", "resolved", now + 3600 * 1000),
        event("before", "alice", "resolved", now - 1800 * 1000),
        no_key,
        json!({"id": "t", "route": "agent", "key": "alice", "outcome": "resolved", "started_at": "yesterday"}),
        json!(17),
        pin,
    ]});
    let r = rig.post(&batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let reasons: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("accepted"))
        .collect();
    assert_eq!(
        reasons,
        [
            "accepted",
            "duplicate",
            "unknown_route",
            "unknown_outcome",
            "too_old",
            "future",
            // Started before the proxy began keeping the route's history.
            "no_history",
            "malformed",
            "malformed",
            "malformed",
            // The route does not pin conversations.
            "bad_pin",
        ]
    );
    assert_eq!(
        (doc["accepted"].clone(), doc["refused"].clone()),
        (json!(1), json!(10))
    );
    assert_eq!(doc["refused_by_reason"]["malformed"], 3);
    // alice is bucket 2871: stable at 10%.
    assert_eq!(doc["results"][0]["cohort"], "stable");
    assert_eq!(doc["results"][0]["bucket"], 2871);
    // A replay in a later request still counts once.
    let again = rig.post(&ok("a")).await.json();
    assert_eq!(again["results"][0]["reason"], "duplicate");
    let scrape = rig.scrape().await;
    scrape.assert_well_formed();
    let labels = [
        ("route", "agent"),
        ("cohort", "stable"),
        ("outcome", "resolved"),
    ];
    assert_eq!(scrape.get("cohort_late_outcomes_total", &labels), Some(1.0));
    assert_eq!(
        scrape.get(
            "cohort_late_outcomes_refused_total",
            &[("reason", "duplicate")]
        ),
        Some(2.0)
    );
    // The sender's route name never becomes a label.
    assert!(!rig
        .admin("GET", "/metrics", "")
        .await
        .text()
        .contains("no-such-route"));

    // Whole bodies: not JSON, not the shape, without the token.
    let r = rig.admin("POST", "/outcomes", "{not json").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["reason"].clone()),
        (400, json!("malformed"))
    );
    let r = rig.post(&json!({"events": 3})).await;
    assert_eq!(r.status, 400);
    let r = fetch(
        &rig.client,
        request("POST", rig.admin, "/outcomes", &[], ok("z").to_string()),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(rig.admin("GET", "/outcomes", "").await.status, 405);
    assert_eq!(refused(&rig, "malformed").await, 5.0);
    rig.running.shutdown().await;
}

#[tokio::test]
async fn huge_batches_and_slow_clients_are_bounded_and_nothing_else_is_lost() {
    let rig = Rig::start(
        "",
        &[
            "max_events: 50",
            "max_body_bytes: 4096",
            "read_timeout: 300ms",
        ],
    )
    .await;
    let now = wall_ms();
    // Too many events (the body itself is small enough).
    let many: Vec<Value> = (0..51)
        .map(|i| json!({"id": format!("{i}"), "route": "agent", "key": "k", "outcome": "resolved", "started_at": now / 1000}))
        .collect();
    let r = rig.post(&Value::Array(many)).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["reason"].clone()),
        (413, json!("too_large"))
    );
    // A declared length past the cap is refused before a byte of the body is read.
    let big = "x".repeat(5000);
    let r = rig.admin("POST", "/outcomes", big).await;
    assert_eq!(r.status, 413);
    assert_eq!(refused(&rig, "too_large").await, 2.0);

    // A chunked body (no declared length) that grows past the cap, as curl sends one.
    let file = rig.path.parent().unwrap().join("huge.json");
    std::fs::write(&file, format!("[{}]", "{\"id\": \"padding\"},".repeat(400))).unwrap();
    let out = curl(vec![
        "-sS".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "-H".into(),
        format!("Authorization: Bearer {TOKEN}"),
        "-H".into(),
        "Transfer-Encoding: chunked".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
        format!("http://{}/outcomes", rig.admin),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    assert_eq!(refused(&rig, "too_large").await, 3.0);

    // A client that sends half a body and stalls: 408 once read_timeout has passed, while
    // the public and admin listeners serve everyone else.
    let mut slow = tokio::net::TcpStream::connect(rig.admin).await.unwrap();
    let head = format!(
        "POST /outcomes HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 200\r\n\r\n[{{\"id\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..5 {
        let r = fetch(&rig.client, get(rig.public, "/", &[("x-user-id", "bob")])).await;
        assert_eq!(r.status, 200);
        assert_eq!(rig.admin("GET", "/healthz", "").await.status, 200);
    }
    let mut answer = Vec::new();
    within("the slow client's answer", slow.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("read_timeout"), "{answer}");
    assert_eq!(refused(&rig, "read_timeout").await, 1.0);

    // And a good event afterwards, posted with curl as a user would.
    let body = json!({"id": "csat-1", "route": "agent", "key": "alice", "outcome": "resolved", "started_at": rfc3339(wall_ms())});
    let out = curl(vec![
        "-sS".to_string(),
        "-H".into(),
        format!("Authorization: Bearer {TOKEN}"),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data".into(),
        body.to_string(),
        format!("http://{}/outcomes", rig.admin),
    ])
    .await;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["accepted"], 1, "{doc}");
    assert_eq!(doc["results"][0]["cohort"], "stable");
    rig.running.shutdown().await;
}
