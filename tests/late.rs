//! Late outcomes end to end: `POST /outcomes` on the admin listener, attributed to the cohort
//! each key had when its conversation started (the contract's formula, computed here from its
//! text, over the splits the test itself saw served), across a judged ramp and a rollback;
//! every refusal and bound with its status and reason while the proxy keeps serving; and
//! `cohort assign --at` agreeing with the proxy.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cohort::control::rollout::{judge, Now};
use serde_json::{json, Value};
use support::{
    contract_cohort, fetch, get, h1_client, request, within, Config, H1Client, MockUpstream, Reply,
    Route, Scrape,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "a-late-outcomes-token-of-enough-bytes";

struct Rig {
    running: cohort::app::Running,
    public: SocketAddr,
    admin: SocketAddr,
    client: H1Client,
    now: Now,
    path: PathBuf,
    next_user: u64,
    _dir: tempfile::TempDir,
    _backends: (MockUpstream, MockUpstream),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `ms` since the epoch as RFC 3339 with milliseconds.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Rig {
    /// The route `agent` (stable, canary) with `rollout` when not empty, `late` lines under
    /// `late_outcomes:`, the admin token, and the judge left to the test.
    async fn start(rollout: &str, late: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let stable = MockUpstream::json("stable").await;
        let canary = MockUpstream::json("canary").await;
        let mut route = Route::new("agent").key("header: x-user-id");
        if !rollout.is_empty() {
            route = route.set(&format!("rollout: {rollout}"));
        }
        let mut config = Config::new()
            .admin("token_file: token")
            .top("state_dir: state")
            .top("reload: {watch: false, poll_interval: 1h}")
            .upstream("stable", stable.addr)
            .upstream("canary", canary.addr)
            .route(route.split(&[("stable", "stable", "90"), ("canary", "canary", "10")]));
        if !late.is_empty() {
            config = config.top("late_outcomes:");
            for l in late {
                config = config.top(&format!("  {l}"));
            }
        }
        let path = dir.path().join("cohort.yaml");
        std::fs::write(&path, config.yaml()).unwrap();
        let options = cohort::app::Options { judge_every: None };
        let running = match within("start", cohort::app::start_with(&path, options)).await {
            Ok(r) => r,
            Err(e) => panic!("proxy did not start: {e}"),
        };
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            path,
            next_user: 0,
            _dir: dir,
            _backends: (stable, canary),
        }
    }

    async fn admin(&self, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let req = request(method, self.admin, path, &[("authorization", &auth)], body);
        fetch(&self.client, req).await
    }

    async fn post(&self, body: &Value) -> Reply {
        self.admin("POST", "/outcomes", body.to_string()).await
    }

    async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.admin("GET", "/metrics", "").await.text())
    }

    async fn send(&mut self, n: u64) {
        for _ in 0..n {
            self.next_user += 1;
            let user = format!("user-{}", self.next_user);
            let r = fetch(&self.client, get(self.public, "/", &[("x-user-id", &user)])).await;
            assert_eq!(r.status, 200);
        }
    }

    /// The canary's effective percent, from `GET /routes`.
    async fn canary_percent(&self) -> f64 {
        let routes = self.admin("GET", "/routes", "").await.json();
        routes["routes"][0]["cohorts"][1]["percent"]
            .as_f64()
            .unwrap()
    }

    /// A judge tick `secs` simulated seconds after the last.
    fn tick(&mut self, secs: u64) -> bool {
        self.now = self.now.later(Duration::from_secs(secs));
        judge::tick(&self.running.control, self.now)
    }
}

fn event(id: &str, key: &str, outcome: &str, started_ms: u64) -> Value {
    json!({"id": id, "route": "agent", "key": key, "outcome": outcome, "started_at": rfc3339(started_ms)})
}

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

/// curl with `args`, off the runtime's thread (the proxy under test runs on it).
async fn curl(args: Vec<String>) -> std::process::Output {
    let run = move || {
        std::process::Command::new("curl")
            .args(["--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl")
    };
    within("curl", tokio::task::spawn_blocking(run))
        .await
        .unwrap()
}

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
            "pin_unsupported",
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
    let options = cohort::app::Options { judge_every: None };
    let running = within("restart", cohort::app::start_with(&path, options))
        .await
        .unwrap();
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
