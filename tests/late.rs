//! Late outcomes end to end: `POST /outcomes` on the admin listener, attributed to the cohort
//! each key had when its conversation started (the contract's formula, computed here from its
//! text, over the splits the test itself saw served), across a judged ramp and a rollback;
//! `cohort assign --at` agreeing with the proxy; the history across a restart; guards with
//! `include_late`. Refusals and bounds are in `late_bounds.rs`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::late::{event, rfc3339, wall_ms, Rig, TOKEN};
use support::{contract_cohort, fetch, h1_client, request};

/// One span of real time in which the route served one split: `[from, to]`, canary width.
struct Span {
    from: u64,
    to: u64,
    canary: u32,
}

impl Span {
    fn middle(&self) -> u64 {
        (self.from + self.to) / 2
    }
}

#[tokio::test]
async fn late_outcomes_take_the_cohort_of_their_start_across_a_ramp_and_a_rollback() {
    let mut rig = Rig::start(
        "{id: v2, canary: canary, steps: [5, 25, 50], soak: 1s, min_samples: 10, after: hold}",
        &[],
    )
    .await;
    // Each span is bounded by times taken before and after the changes that open and close
    // it, and a pause keeps it from being empty.
    let pause = || tokio::time::sleep(Duration::from_millis(30));
    let mut spans = Vec::new();
    let mut from = wall_ms();
    assert_eq!(rig.canary_percent().await, 5.0);
    for expected in [25.0, 50.0] {
        pause().await;
        rig.send(400).await;
        let to = wall_ms();
        assert!(rig.tick(2), "the judge advanced");
        spans.push(Span {
            from,
            to,
            canary: 0,
        });
        from = wall_ms();
        assert_eq!(rig.canary_percent().await, expected);
    }
    pause().await;
    let to = wall_ms();
    let r = rig.admin("POST", "/rollouts/agent/rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    spans.push(Span {
        from,
        to,
        canary: 0,
    });
    from = wall_ms();
    assert_eq!(rig.canary_percent().await, 0.0);
    pause().await;
    spans.push(Span {
        from,
        to: wall_ms(),
        canary: 0,
    });
    for (span, width) in spans.iter_mut().zip([500, 2500, 5000, 0]) {
        span.canary = width;
    }

    // 300 keys, each with one outcome per span.
    let outcomes = ["resolved", "escalated", "abandoned"];
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut events = Vec::new();
    let mut wanted = Vec::new();
    for (s, span) in spans.iter().enumerate() {
        let split = [("stable", 10_000 - span.canary), ("canary", span.canary)];
        for k in 0..300 {
            let key = format!("conversation-{k}");
            let outcome = outcomes[(k + s) % 3];
            let cohort = contract_cohort("agent", key.as_bytes(), &split);
            *expected
                .entry((cohort.to_string(), outcome.to_string()))
                .or_default() += 1;
            events.push(event(&format!("e-{s}-{k}"), &key, outcome, span.middle()));
            wanted.push(cohort);
        }
    }
    // Batches of both shapes.
    let (first, rest) = events.split_at(600);
    let a = rig.post(&json!({ "events": first })).await;
    let b = rig.post(&Value::Array(rest.to_vec())).await;
    for r in [&a, &b] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["refused"], 0, "{}", r.text());
    }
    let results: Vec<Value> = [a.json(), b.json()]
        .iter()
        .flat_map(|d| d["results"].as_array().unwrap().clone())
        .collect();
    let got: Vec<&str> = results
        .iter()
        .map(|r| r["cohort"].as_str().unwrap())
        .collect();
    assert_eq!(got, wanted);

    let scrape = rig.scrape().await;
    for cohort in ["stable", "canary"] {
        for outcome in outcomes {
            let want = expected
                .get(&(cohort.to_string(), outcome.to_string()))
                .copied()
                .unwrap_or(0);
            let labels = [("route", "agent"), ("cohort", cohort), ("outcome", outcome)];
            assert_eq!(
                scrape.get("cohort_late_outcomes_total", &labels),
                Some(want as f64),
                "{cohort} {outcome}"
            );
        }
    }
    // The ramp put keys in the canary, the rollback none: the test means something.
    let canary_total: u64 = expected
        .iter()
        .filter(|((c, _), _)| c == "canary")
        .map(|(_, n)| n)
        .sum();
    assert!(canary_total > 50, "{canary_total}");

    // `cohort assign --at` reads the same history from the state directory.
    let dir = rig.path.parent().unwrap().to_path_buf();
    for (s, span) in spans.iter().enumerate() {
        let keys: Vec<String> = (0..300).map(|k| format!("conversation-{k}")).collect();
        let at = rfc3339(span.middle());
        let mut args = vec![
            "assign",
            "--config",
            "cohort.yaml",
            "--route",
            "agent",
            "--at",
            &at,
        ];
        args.extend(keys.iter().map(String::as_str));
        let out = support::process::cohort(&args, &dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8(out.stdout).unwrap();
        let cohorts: Vec<&str> = lines
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(cohorts, wanted[s * 300..(s + 1) * 300], "span {s}");
    }
    // Before the history began there is no answer, and the command says why.
    let out = support::process::cohort(
        &[
            "assign",
            "-c",
            "cohort.yaml",
            "--route",
            "agent",
            "--at",
            "2020-01-01T00:00:00Z",
            "k",
        ],
        &dir,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no split of route \"agent\" is recorded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unix seconds name the same moment.
    let secs = format!("{}", spans[1].middle() as f64 / 1000.0);
    let out = support::process::cohort(
        &[
            "assign",
            "-c",
            "cohort.yaml",
            "--route",
            "agent",
            "--at",
            &secs,
            "conversation-7",
        ],
        &dir,
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.ends_with(&format!(" {}\n", wanted[300 + 7])), "{line}");
    rig.running.shutdown().await;
}

#[tokio::test]
async fn the_history_survives_a_restart_and_is_served_for_offline_attribution() {
    let rig = Rig::start("", &[]).await;
    let started = wall_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let yaml = std::fs::read_to_string(&rig.path).unwrap();
    let yaml = yaml
        .replace("percent: 90\n", "percent: 50\n")
        .replace("percent: 10\n", "percent: 50\n");
    std::fs::write(&rig.path, yaml).unwrap();
    let r = rig.admin("POST", "/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let history = rig.admin("GET", "/outcomes/history", "").await.json();
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{history}");
    assert_eq!(
        entries[0]["cohorts"][1],
        json!({"cohort": "canary", "weight": 1000})
    );
    assert_eq!(
        entries[1]["cohorts"][1],
        json!({"cohort": "canary", "weight": 5000})
    );
    assert_eq!(entries[1]["salt"], "agent");
    let path = rig.path.clone();
    let dir = rig._dir.path().to_path_buf();
    rig.running.shutdown().await;

    // Restarted on the same state directory: the first split is still known.
    let running = support::start_unjudged(&path).await;
    let client = h1_client();
    let auth = format!("Bearer {TOKEN}");
    // user-3 (bucket 9955) was canary at 10% and is at 50%; user-2 (8756) only at 50%.
    let body = json!([
        event("x1", "user-2", "resolved", started + 5),
        event("x2", "user-2", "resolved", wall_ms()),
    ]);
    let req = request(
        "POST",
        running.admin_address,
        "/outcomes",
        &[("authorization", &auth)],
        body.to_string(),
    );
    let doc = fetch(&client, req).await.json();
    assert_eq!(doc["results"][0]["cohort"], "stable", "{doc}");
    assert_eq!(doc["results"][1]["cohort"], "canary", "{doc}");
    assert_history_file(&dir.join("state"));
    running.shutdown().await;
}

fn assert_history_file(state: &Path) {
    let text = std::fs::read_to_string(state.join("percent-history.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[tokio::test]
async fn a_guard_with_include_late_counts_them_in_the_step_they_arrive_in() {
    let mut rig = Rig::start(
        "{id: v2, canary: canary, steps: [50, 100], soak: 1h, min_samples: 100000, guards: [\
         {metric: escalation_rate, include_late: true}, {metric: escalation_rate}]}",
        &[],
    )
    .await;
    let now = wall_ms();
    let split = [("stable", 5000), ("canary", 5000)];
    let mut want = BTreeMap::new();
    let events: Vec<Value> = (0..200)
        .map(|k| {
            let key = format!("c-{k}");
            let outcome = if k % 4 == 0 { "escalated" } else { "resolved" };
            let cohort = contract_cohort("agent", key.as_bytes(), &split);
            let e: &mut (u64, u64) = want.entry(cohort).or_default();
            e.0 += u64::from(outcome == "escalated");
            e.1 += 1;
            event(&format!("g-{k}"), &key, outcome, now)
        })
        .collect();
    let r = rig.post(&Value::Array(events)).await;
    assert_eq!(r.json()["accepted"], 200, "{}", r.text());
    rig.tick(1);
    let rollouts = rig.admin("GET", "/rollouts", "").await.json();
    let guards = &rollouts["rollouts"][0]["guards"];
    let (canary, stable) = (want["canary"], want["stable"]);
    assert_eq!(guards[0]["guard"], "escalation_rate +late");
    assert_eq!(
        (
            guards[0]["canary_samples"].clone(),
            guards[0]["baseline_samples"].clone()
        ),
        (json!(canary.1), json!(stable.1)),
        "{guards}"
    );
    assert_eq!(
        guards[0]["canary"],
        json!(canary.0 as f64 / canary.1 as f64)
    );
    // The guard without include_late saw none of them (the mock backends send no outcome).
    assert_eq!(guards[1]["canary_samples"], 0, "{guards}");
    rig.running.shutdown().await;
}

#[tokio::test]
async fn late_outcomes_of_an_earlier_step_are_counted_but_are_no_evidence_in_the_next() {
    let mut rig = Rig::start(
        "{id: v2, canary: canary, steps: [30, 60], soak: 1s, min_samples: 10, after: hold, \
         guards: [{metric: escalation_rate, margin: 50, include_late: true}]}",
        &[],
    )
    .await;
    let first_step = wall_ms();
    let events: Vec<Value> = (0..200)
        .map(|k| {
            event(
                &format!("s0-{k}"),
                &format!("c-{k}"),
                "resolved",
                first_step,
            )
        })
        .collect();
    assert_eq!(
        rig.post(&Value::Array(events)).await.json()["accepted"],
        200
    );
    // A step also needs its requests.
    rig.send(200).await;
    assert!(rig.tick(2), "the judge advanced");
    assert_eq!(rig.canary_percent().await, 60.0);
    let second_step = wall_ms();

    // One conversation of each step, both canary under the split they started in.
    let at_30 = [("stable", 7000), ("canary", 3000)];
    let key = (0..)
        .map(|k| format!("k-{k}"))
        .find(|k| contract_cohort("agent", k.as_bytes(), &at_30) == "canary")
        .unwrap();
    let r = rig
        .post(&json!([
            event("old", &key, "escalated", first_step),
            event("new", &key, "escalated", second_step),
        ]))
        .await;
    assert_eq!(r.json()["accepted"], 2, "{}", r.text());
    rig.tick(1);
    let guards = &rig.admin("GET", "/rollouts", "").await.json()["rollouts"][0]["guards"];
    assert_eq!(guards[0]["canary_samples"], 1, "{guards}");
    assert_eq!(guards[0]["baseline_samples"], 0, "{guards}");
    let labels = [
        ("route", "agent"),
        ("cohort", "canary"),
        ("outcome", "escalated"),
    ];
    assert_eq!(
        rig.scrape()
            .await
            .get("cohort_late_outcomes_total", &labels),
        Some(2.0)
    );
    rig.running.shutdown().await;
}
