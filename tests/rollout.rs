//! Progressive delivery end to end: the proxy in front of simulated backends whose error rate,
//! latency and outcomes each test chooses, the judge ticked by the test on a simulated clock
//! (soak time passes without sleeping; nothing here asserts a timing), the state directory
//! across reloads and restarts, the admin endpoints, the audit log and the metrics.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cohort::control::reload::Outcome;
use cohort::control::rollout::{judge, Now};
use serde_json::Value;
use support::sim::{Behaviour, SimBackend};
use support::{
    bearer_request, fetch, get, h1_client, within, Config, H1Client, Reply, Route, Scrape,
};

/// A proxy on a config file of its own directory, with the judge left to the test.
struct Rig {
    running: cohort::app::Running,
    public: SocketAddr,
    admin: SocketAddr,
    client: H1Client,
    now: Now,
    next_user: u64,
    token: Option<String>,
}

/// The route `agent` (stable 90, canary 10) with `rollout` (none when empty).
fn write_config(dir: &Path, stable: &SimBackend, canary: &SimBackend, rollout: &str) -> PathBuf {
    // The tests reload when they mean to: no watcher or poll racing them.
    let mut route = Route::new("agent").key("header: x-user-id");
    if !rollout.is_empty() {
        route = route.set(&format!("rollout: {rollout}"));
    }
    let yaml = Config::new()
        .top("state_dir: state")
        .top("reload: {watch: false, poll_interval: 1h}")
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(route.split(&[("stable", "stable", "90"), ("canary", "canary", "10")]))
        .yaml();
    let path = dir.join("cohort.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

impl Rig {
    async fn start(path: &Path) -> Rig {
        let running = support::start_unjudged(path).await;
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            next_user: 0,
            token: None,
        }
    }

    /// `n` requests from new users, 16 at a time; how many the canary answered.
    async fn send(&mut self, n: u64) -> u64 {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            self.next_user += 1;
            let (client, gate) = (self.client.clone(), Arc::clone(&gate));
            let req = get(
                self.public,
                "/",
                &[("x-user-id", &format!("user-{}", self.next_user))],
            );
            set.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                fetch(&client, req).await.header("x-cohort") == Some("canary")
            });
        }
        let mut canary = 0;
        while let Some(r) = within("a batch of requests", set.join_next()).await {
            canary += u64::from(r.unwrap());
        }
        canary
    }

    /// One judge tick `secs` simulated seconds after the last.
    fn tick(&mut self, secs: u64) -> bool {
        self.now = self.now.later(Duration::from_secs(secs));
        judge::tick(&self.running.control, self.now)
    }

    /// `n` requests, then a judge tick `secs` simulated seconds later.
    async fn send_and_tick(&mut self, n: u64, secs: u64) {
        self.send(n).await;
        self.tick(secs);
    }

    async fn admin(&self, method: &str, path: &str) -> Reply {
        let req = bearer_request(method, self.admin, path, self.token.as_deref());
        fetch(&self.client, req).await
    }

    /// The route's rollout, from `GET /rollouts`.
    async fn rollout(&self) -> Value {
        let r = self.admin("GET", "/rollouts").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["rollouts"][0].clone()
    }

    /// (effective, configured) percent of a cohort, from `GET /routes`.
    async fn percent(&self, cohort: &str) -> (f64, f64) {
        let routes = self.admin("GET", "/routes").await.json();
        let c = routes["routes"][0]["cohorts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cohort"] == cohort)
            .unwrap()
            .clone();
        (
            c["percent"].as_f64().unwrap(),
            c["configured_percent"].as_f64().unwrap(),
        )
    }

    /// `POST /reload`, which must apply the file as it now is.
    async fn reload(&self) {
        let r = self.admin("POST", "/reload").await;
        assert_eq!(r.json()["result"], "applied", "{}", r.text());
    }

    async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.admin("GET", "/metrics").await.text())
    }

    /// Sends `per_tick` requests and ticks one simulated second until the rollout leaves
    /// `state` or `ticks` pass; the rollout then.
    async fn run_while(&mut self, state: &str, per_tick: u64, ticks: u64) -> Value {
        for _ in 0..ticks {
            self.send_and_tick(per_tick, 1).await;
            let r = self.rollout().await;
            if r["state"] != state {
                return r;
            }
        }
        self.rollout().await
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// The rollout is in `state` at step `step`.
#[track_caller]
fn assert_at(r: &Value, state: &str, step: u64) {
    assert_eq!(
        (&r["state"], &r["step"]),
        (&state.into(), &step.into()),
        "{r:#}"
    );
}

fn decisions(r: &Value) -> Vec<String> {
    r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap().to_string())
        .collect()
}

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Simulated stable and canary backends, and a config for them in a directory of its own.
struct Setup {
    stable: SimBackend,
    canary: SimBackend,
    dir: tempfile::TempDir,
    path: PathBuf,
}

async fn setup(stable: Behaviour, canary: Behaviour, rollout: &str) -> Setup {
    let (stable, canary) = (
        SimBackend::start(stable).await,
        SimBackend::start(canary).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &stable, &canary, rollout);
    Setup {
        stable,
        canary,
        dir,
        path,
    }
}

/// As [`setup`], with two backends that never fail.
async fn healthy(rollout: &str) -> Setup {
    setup(errors(0.0), errors(0.0), rollout).await
}

fn errors(rate: f64) -> Behaviour {
    Behaviour {
        error_rate: rate,
        ..Behaviour::default()
    }
}

/// Longer than any test waits: a canary this slow never answers while the test looks.
const HANGS: Duration = Duration::from_secs(3600);

/// A healthy stable and a canary that takes `latency` before each response head.
async fn slow_canary(latency: Duration, rollout: &str) -> Setup {
    let canary = Behaviour {
        latency,
        ..Behaviour::default()
    };
    setup(Behaviour::default(), canary, rollout).await
}

#[tokio::test]
async fn twice_the_error_rate_is_rolled_back_before_the_second_step() {
    let s = setup(
        errors(0.1),
        errors(0.2),
        "{id: v2, canary: canary, steps: [20, 50, 100], soak: 60s, min_samples: 100}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    assert_eq!(rig.percent("canary").await, (20.0, 10.0));
    let r = rig.run_while("ramping", 200, 60).await;
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    assert_eq!(r["step"], 0, "{r:#}");
    assert_eq!(decisions(&r), ["start", "rollback"]);
    let d = &r["history"][1];
    assert_eq!(d["trigger"], "judge");
    let g = &d["guards"][0];
    assert_eq!(
        (&g["guard"], &g["status"]),
        (&"error_rate".into(), &"fail".into()),
        "{d:#}"
    );
    assert!(g["statistic"].as_f64() >= g["threshold"].as_f64(), "{g:#}");
    assert!(g["canary"].as_f64() > g["baseline"].as_f64(), "{g:#}");

    // One swap: the canary has no buckets, and nobody reaches it any more.
    assert_eq!(rig.percent("canary").await, (0.0, 10.0));
    assert_eq!(rig.percent("stable").await, (100.0, 90.0));
    assert_eq!(rig.send(200).await, 0);

    let lines = audit(s.dir.path());
    let kinds: Vec<_> = lines.iter().map(|l| l["decision"].clone()).collect();
    assert_eq!(kinds, ["start", "rollback"]);
    assert_eq!(lines[1]["from"]["percent"], 20.0);
    assert_eq!(lines[1]["to"]["percent"], 0.0);
    assert!(lines[1]["canary_samples"].as_u64() >= Some(100));

    let s = rig.scrape().await;
    s.assert_well_formed();
    let route = ("route", "agent");
    assert_eq!(
        s.metric("cohort_rollout_state", &[route, ("state", "rolled_back")]),
        1.0
    );
    assert_eq!(
        s.metric("cohort_rollout_state", &[route, ("state", "ramping")]),
        0.0
    );
    assert_eq!(s.metric("cohort_rollout_step_percent", &[route]), 0.0);
    let rollbacks = [route, ("decision", "rollback")];
    assert_eq!(s.metric("cohort_rollout_decisions_total", &rollbacks), 1.0);
    assert_eq!(
        s.metric("cohort_split_percent", &[route, ("cohort", "canary")]),
        0.0
    );
    rig.stop().await;
}

#[tokio::test]
async fn an_equal_canary_walks_every_step_to_the_end() {
    let s = setup(
        errors(0.02), errors(0.02),
        "{id: v2, canary: canary, steps: [10, 50, 100], soak: 5s, min_samples: 50, after: promote, \
         guards: [{metric: error_rate, margin: 4}, {metric: latency, relative_margin: 2}]}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    let mut seen = vec![rig.percent("canary").await.0];
    for _ in 0..300 {
        rig.send_and_tick(100, 1).await;
        let p = rig.percent("canary").await.0;
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        if rig.rollout().await["state"] != "ramping" {
            break;
        }
    }
    let r = rig.rollout().await;
    assert_eq!(r["state"], "promoted", "{r:#}");
    assert_eq!(decisions(&r), ["start", "advance", "advance", "promote"]);
    assert_eq!(seen, [10.0, 50.0, 100.0]);
    assert_eq!(rig.percent("canary").await, (100.0, 10.0));
    assert_eq!(rig.percent("stable").await, (0.0, 90.0));
    // Each advance waited out the soak with enough samples, every guard passing.
    for d in &r["history"].as_array().unwrap()[1..] {
        assert!(d["soaked_seconds"].as_f64() >= Some(5.0), "{d:#}");
        assert!(d["canary_samples"].as_u64() >= Some(50), "{d:#}");
    }
    let advance = &r["history"][1]["guards"];
    assert!(
        advance
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["status"] == "pass"),
        "{advance:#}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_slower_canary_is_caught_by_the_latency_guard() {
    let s = slow_canary(
        Duration::from_millis(40),
        "{id: v2, canary: canary, steps: [50, 100], soak: 60s, min_samples: 30, \
         guards: [{metric: error_rate, margin: 5}, {metric: latency, relative_margin: 0.5}]}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    let r = rig.run_while("ramping", 60, 60).await;
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let guards = r["history"][1]["guards"].as_array().unwrap().clone();
    let latency = guards.iter().find(|g| g["guard"] == "latency p50").unwrap();
    assert_eq!(latency["status"], "fail", "{latency:#}");
    assert!(
        latency["canary"].as_f64() > latency["limit"].as_f64(),
        "{latency:#}"
    );
    assert!(latency["slower_share"].as_f64() > Some(0.9), "{latency:#}");
    rig.stop().await;
}

fn tokens(output_tokens: u64) -> Behaviour {
    Behaviour {
        output_tokens,
        ..Behaviour::default()
    }
}

const TOKENS_ROLLOUT: &str =
    "{id: v2, canary: canary, steps: [50, 100], soak: 20s, min_samples: 50, \
     guards: [{metric: error_rate, margin: 5}, {metric: output_tokens, relative_margin: 0.15}]}";

#[tokio::test]
async fn a_canary_that_doubles_its_output_tokens_is_rolled_back_on_the_output_tokens_guard() {
    let s = setup(tokens(160), tokens(320), TOKENS_ROLLOUT).await;
    let mut rig = Rig::start(&s.path).await;
    let r = rig.run_while("ramping", 60, 60).await;
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let guards = r["history"][1]["guards"].as_array().unwrap().clone();
    let g = guards
        .iter()
        .find(|g| g["guard"] == "output_tokens p50")
        .unwrap();
    assert_eq!(g["status"], "fail", "{g:#}");
    // The medians, in tokens (read within a bin at most 12.5% wide).
    let (c, b) = (
        g["canary"].as_f64().unwrap(),
        g["baseline"].as_f64().unwrap(),
    );
    assert!((280.0..=360.0).contains(&c), "{g:#}");
    assert!((140.0..=180.0).contains(&b), "{g:#}");
    assert!(c > g["limit"].as_f64().unwrap(), "{g:#}");
    let scrape = rig.scrape().await;
    let canary = [("route", "agent"), ("cohort", "canary")];
    assert!(
        scrape.metric(
            "cohort_usage_answers_total",
            &[canary[0], canary[1], ("usage", "reported")]
        ) > 0.0
    );
    assert_eq!(
        scrape.metric(
            "cohort_usage_answers_total",
            &[canary[0], canary[1], ("usage", "missing")]
        ),
        0.0
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_canary_with_as_many_output_tokens_passes_the_output_tokens_guard() {
    let s = setup(tokens(160), tokens(160), TOKENS_ROLLOUT).await;
    let mut rig = Rig::start(&s.path).await;
    let r = rig.run_while("ramping", 60, 60).await;
    assert_eq!(r["state"], "held", "{r:#}");
    assert_eq!(decisions(&r), ["start", "advance", "hold"]);
    let g = r["history"][1]["guards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["guard"] == "output_tokens p50")
        .unwrap()
        .clone();
    assert_eq!(g["status"], "pass", "{g:#}");
    rig.stop().await;
}

#[tokio::test]
async fn a_restart_mid_step_resumes_the_step_its_soak_and_its_samples() {
    let s = healthy(
        "{id: v2, canary: canary, steps: [10, 50, 100], soak: 100s, min_samples: 20, \
         guards: [{metric: error_rate, margin: 5}]}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    for _ in 0..30 {
        rig.send_and_tick(100, 10).await;
        if rig.rollout().await["step"] == 1 {
            break;
        }
    }
    for _ in 0..4 {
        rig.send_and_tick(100, 10).await;
    }
    let before = rig.rollout().await;
    assert_at(&before, "ramping", 1);
    assert_eq!(before["soaked_seconds"], 40.0, "{before:#}");
    let samples = before["samples"].clone();
    assert!(samples["canary"].as_u64() > Some(0), "{before:#}");
    rig.stop().await;

    let mut rig = Rig::start(&s.path).await;
    let after = rig.rollout().await;
    assert_at(&after, "ramping", 1);
    assert_eq!(after["soaked_seconds"], 40.0, "{after:#}");
    assert_eq!(after["samples"], samples);
    assert_eq!(decisions(&after), ["start", "advance"]);
    assert_eq!(rig.percent("canary").await, (50.0, 10.0));

    // 90 s soaked of 100: still at the step; past 100, on to the next.
    rig.send_and_tick(100, 50).await;
    assert_eq!(rig.rollout().await["step"], 1);
    rig.send_and_tick(100, 20).await;
    let r = rig.rollout().await;
    assert_eq!(r["step"], 2, "{r:#}");
    assert_eq!(rig.percent("canary").await.0, 100.0);
    rig.stop().await;
}

#[tokio::test]
async fn a_rolled_back_rollout_stays_rolled_back_across_reload_and_restart() {
    let rollout = |id: &str, min: u32| {
        format!("{{id: {id}, canary: canary, steps: [25, 100], soak: 1h, min_samples: {min}}}")
    };
    let s = healthy(&rollout("v2", 100)).await;
    let rewrite = |r: String| write_config(s.dir.path(), &s.stable, &s.canary, &r);
    let rig = Rig::start(&s.path).await;
    assert_eq!(rig.percent("canary").await.0, 25.0);
    let r = rig.admin("POST", "/rollouts/agent/rollback").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "rollback");
    assert_eq!(rig.percent("canary").await, (0.0, 10.0));
    for action in ["resume", "promote", "rollback", "pause"] {
        let r = rig
            .admin("POST", &format!("/rollouts/agent/{action}"))
            .await;
        assert_eq!(r.status, 409, "{action}: {}", r.text());
    }

    // A reload with the same id keeps it rolled back.
    rewrite(rollout("v2", 200));
    rig.reload().await;
    assert_eq!(rig.rollout().await["state"], "rolled_back");
    assert_eq!(rig.rollout().await["min_samples"], 200);
    assert_eq!(rig.percent("canary").await.0, 0.0);
    rig.stop().await;

    // So does a restart.
    let rig = Rig::start(&s.path).await;
    assert_eq!(rig.rollout().await["state"], "rolled_back");
    assert_eq!(rig.percent("canary").await.0, 0.0);
    assert_eq!(
        rig.scrape()
            .await
            .metric("cohort_rollout_step_percent", &[("route", "agent")]),
        0.0
    );

    // Without its rollout the route serves the file's percents; with it back, under the same
    // id, it is rolled back still.
    rewrite(String::new());
    rig.reload().await;
    assert_eq!(rig.percent("canary").await, (10.0, 10.0));
    assert_eq!(
        rig.admin("GET", "/rollouts").await.json()["rollouts"],
        serde_json::json!([])
    );
    rewrite(rollout("v2", 100));
    rig.reload().await;
    assert_eq!(rig.rollout().await["state"], "rolled_back");
    assert_eq!(rig.percent("canary").await.0, 0.0);

    // A new id starts a new rollout.
    rewrite(rollout("v3", 100));
    rig.reload().await;
    let r = rig.rollout().await;
    assert_eq!(
        (&r["id"], &r["state"], &r["step"]),
        (&"v3".into(), &"ramping".into(), &0.into())
    );
    assert_eq!(rig.percent("canary").await.0, 25.0);
    let kinds: Vec<_> = audit(s.dir.path())
        .iter()
        .map(|l| (l["id"].clone(), l["decision"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("v2".into(), "start".into()),
            ("v2".into(), "rollback".into()),
            ("v3".into(), "start".into())
        ]
    );
    rig.stop().await;
}

/// Longer than the watcher's debounce (150ms), which its first look at the file waits.
const PAST_THE_DEBOUNCE: Duration = Duration::from_millis(600);

/// Once `shutdown` returns, the state directory is the next process's: a stopped proxy's
/// watcher does not reload (its first look at the file is still in its debounce here, as it
/// is whenever a proxy stops within 150ms of starting), and nothing it is still asked to do
/// writes a state file or an audit line. Two of them on one directory would start the same
/// new id twice, as an in-process restart did under load.
#[tokio::test]
async fn a_stopped_proxy_writes_nothing_to_its_state_dir() {
    let rollout = |id: &str| format!("{{id: {id}, canary: canary, steps: [25, 100], soak: 1h}}");
    let s = healthy(&rollout("v2")).await;
    let rig = Rig::start(&s.path).await;
    let control = Arc::clone(&rig.running.control);
    rig.stop().await;
    let state = s.dir.path().join("state/rollout-agent.json");
    let before = std::fs::read_to_string(&state).unwrap();

    write_config(s.dir.path(), &s.stable, &s.canary, &rollout("v3"));
    tokio::time::sleep(PAST_THE_DEBOUNCE).await;
    assert_eq!(control.current().generation, 1, "the watcher reloaded");

    // Asked directly, the stopped proxy's control still builds tables, but keeps the new
    // rollout to itself.
    let c = Arc::clone(&control);
    let outcome = tokio::task::spawn_blocking(move || c.reload("test"))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Applied { generation: 2 });
    assert_eq!(std::fs::read_to_string(&state).unwrap(), before);
    let kinds: Vec<_> = audit(s.dir.path())
        .iter()
        .map(|l| (l["id"].clone(), l["decision"].clone()))
        .collect();
    assert_eq!(kinds, [("v2".into(), "start".into())]);

    // The next process starts v3 once.
    let rig = Rig::start(&s.path).await;
    assert_eq!(rig.rollout().await["id"], "v3");
    assert_eq!(audit(s.dir.path()).len(), 2);
    rig.stop().await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_reported_and_never_trusted() {
    let s = healthy("{id: v2, canary: canary, steps: [30, 100], soak: 1h}").await;
    std::fs::create_dir_all(s.dir.path().join("state")).unwrap();
    let state = s.dir.path().join("state/rollout-agent.json");
    std::fs::write(
        &state,
        "{\"checksum\":\"0000000000000000\",\"state\":{\"step\":1}}\n",
    )
    .unwrap();
    let rig = Rig::start(&s.path).await;
    let r = rig.rollout().await;
    assert_eq!(r["state"], "halted", "{r:#}");
    assert!(r["note"].as_str().unwrap().contains("corrupt"), "{r:#}");
    assert_eq!(rig.percent("canary").await.0, 0.0);
    assert!(s
        .dir
        .path()
        .join("state/rollout-agent.json.corrupt")
        .exists());
    assert_eq!(decisions(&r), ["halt"]);

    let r = rig.admin("POST", "/rollouts/agent/resume").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rig.rollout().await;
    assert_eq!(
        (&r["state"], &r["step"], &r["note"]),
        (&"ramping".into(), &0.into(), &Value::Null)
    );
    assert_eq!(rig.percent("canary").await.0, 30.0);
    rig.stop().await;
}

/// Rewrites a state file's contents with `edit` and signs it again, as someone who knows the
/// format would.
fn edit_state(path: &Path, edit: impl FnOnce(&mut Value)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut file: Value = serde_json::from_str(&text).unwrap();
    edit(&mut file["state"]);
    let body = serde_json::to_string(&file["state"]).unwrap();
    let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
    std::fs::write(
        path,
        format!("{{\"checksum\":\"{sum:016x}\",\"state\":{body}}}\n"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_state_file_that_makes_no_sense_is_never_trusted() {
    type Edit = (&'static str, fn(&mut Value));
    let cases: [Edit; 4] = [
        ("more errors than requests", |s| {
            s["canary"]["errors"] = (s["canary"]["requests"].as_u64().unwrap() * 2 + 5).into()
        }),
        ("more answers with an outcome than requests", |s| {
            s["baseline"]["with_outcome"] = (s["baseline"]["requests"].as_u64().unwrap() + 1).into()
        }),
        ("a soak of 30,000 years", |s| {
            s["soaked_ms"] = (30_000u64 * 365 * 24 * 3600 * 1000).into()
        }),
        ("a step past the end of steps", |s| s["step"] = 2.into()),
    ];
    for (what, edit) in cases {
        let s = healthy(
            "{id: v2, canary: canary, steps: [30, 100], soak: 1h, min_samples: 5, \
             guards: [{metric: error_rate}]}",
        )
        .await;
        let mut rig = Rig::start(&s.path).await;
        rig.send_and_tick(200, 10).await;
        rig.stop().await;
        let state = s.dir.path().join("state/rollout-agent.json");
        edit_state(&state, edit);

        let rig = Rig::start(&s.path).await;
        let r = rig.rollout().await;
        assert_eq!(r["state"], "halted", "{what}: {r:#}");
        let note = r["note"].as_str().unwrap();
        assert!(note.contains("corrupt rollout state"), "{what}: {note}");
        assert_eq!(rig.percent("canary").await.0, 0.0, "{what}");
        assert!(state.with_extension("json.corrupt").exists(), "{what}");
        rig.stop().await;
    }
}

#[tokio::test]
async fn operators_pause_resume_and_promote_behind_the_admin_token() {
    let s =
        healthy("{id: v2, canary: canary, steps: [5, 20], soak: 1s, min_samples: 10, after: hold}")
            .await;
    let token = "a-token-of-enough-bytes";
    std::fs::write(s.dir.path().join("token"), token).unwrap();
    let yaml = std::fs::read_to_string(&s.path).unwrap().replace(
        "admin:\n  address: 127.0.0.1:0\n",
        "admin:\n  address: 127.0.0.1:0\n  token_file: token\n",
    );
    std::fs::write(&s.path, yaml).unwrap();
    let mut rig = Rig::start(&s.path).await;
    assert_eq!(rig.admin("GET", "/rollouts").await.status, 401);
    assert_eq!(rig.admin("POST", "/rollouts/agent/pause").await.status, 401);
    rig.token = Some(token.into());

    assert_eq!(rig.admin("GET", "/rollouts/agent/pause").await.status, 405);
    assert_eq!(rig.admin("POST", "/rollouts/nope/pause").await.status, 404);
    assert_eq!(
        rig.admin("POST", "/rollouts/agent/explode").await.status,
        404
    );
    assert_eq!(rig.admin("POST", "/rollouts").await.status, 405);

    let r = rig.admin("POST", "/rollouts/agent/pause").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["result"].clone()),
        (200, "pause".into())
    );
    assert_eq!(rig.admin("POST", "/rollouts/agent/pause").await.status, 409);
    // Paused: soaked and sampled, yet it stays at its step.
    for _ in 0..5 {
        rig.send_and_tick(100, 2).await;
    }
    let r = rig.rollout().await;
    assert_at(&r, "paused", 0);
    assert_eq!(
        rig.admin("POST", "/rollouts/agent/resume").await.status,
        200
    );
    rig.send_and_tick(100, 1).await;
    assert_eq!(rig.rollout().await["step"], 1);

    let r = rig.admin("POST", "/rollouts/agent/promote").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["decision"]["to"]["percent"], 100.0);
    assert_eq!(rig.percent("canary").await.0, 100.0);
    assert_eq!(rig.send(50).await, 50);
    let r = rig.rollout().await;
    assert_eq!(
        decisions(&r),
        ["start", "pause", "resume", "advance", "promote"]
    );
    assert!(r["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .take(2)
        .all(|d| d["trigger"] == "admin"));
    rig.stop().await;
}

#[tokio::test]
async fn the_judge_runs_by_itself_once_a_second() {
    let s = healthy(
        "{id: v2, canary: canary, steps: [50, 100], soak: 1s, min_samples: 5, after: promote, \
         guards: [{metric: error_rate, margin: 10}]}",
    )
    .await;
    let running = within("start", cohort::app::start(&s.path)).await.unwrap();
    let public = running.listener("public").unwrap();
    let client = h1_client();
    let promoted = async {
        for user in 0.. {
            let req = get(public, "/", &[("x-user-id", &format!("u{user}"))]);
            assert_eq!(fetch(&client, req).await.status, 200);
            if running.control.rollouts().summary("agent").unwrap()["state"] == "promoted" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within("the judge to promote the canary", promoted).await;
    running.shutdown().await;
}

/// Waits until `name{labels}` reads `expected` on the rig's scrape (a client's departure
/// reaches the proxy a moment after the client gave up).
async fn expect_metric(rig: &Rig, name: &str, labels: &[(&str, &str)], expected: f64) {
    let settled = async {
        loop {
            if rig.scrape().await.get(name, labels) == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(&format!("{name}{labels:?} to reach {expected}"), settled).await;
}

/// Waits until the proxy counts `n` canary requests abandoned before their response head.
async fn expect_canary_abandoned_before_head(rig: &Rig, n: u64) {
    let before_head = [
        ("route", "agent"),
        ("cohort", "canary"),
        ("stage", "before_head"),
    ];
    let name = "cohort_abandoned_requests_total";
    expect_metric(rig, name, &before_head, n as f64).await;
}

impl Rig {
    /// `n` requests from new users who give up after `patience`; how many gave up. The
    /// others must have been answered by stable.
    async fn send_impatient(&mut self, n: u64, patience: Duration) -> u64 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            self.next_user += 1;
            let req = get(
                self.public,
                "/",
                &[("x-user-id", &format!("user-{}", self.next_user))],
            );
            let client = self.client.clone();
            set.spawn(async move {
                match tokio::time::timeout(patience, client.request(req)).await {
                    Ok(resp) => {
                        assert_eq!(resp.unwrap().headers()["x-cohort"], "stable");
                        0
                    }
                    Err(_) => 1,
                }
            });
        }
        let mut gave_up = 0;
        while let Some(r) = within("impatient clients", set.join_next()).await {
            gave_up += r.unwrap();
        }
        gave_up
    }
}

#[tokio::test]
async fn a_canary_that_hangs_until_its_clients_give_up_is_rolled_back() {
    let s = slow_canary(
        HANGS,
        "{id: v2, canary: canary, steps: [50, 100], soak: 1h, min_samples: 10, \
         guards: [{metric: error_rate, margin: 5}, {metric: latency, relative_margin: 0.5}]}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    let canary = [("route", "agent"), ("cohort", "canary")];
    let (mut sent, mut gave_up) = (0, 0);
    for _ in 0..10 {
        gave_up += rig.send_impatient(30, Duration::from_millis(200)).await;
        sent += 30;
        expect_canary_abandoned_before_head(&rig, gave_up).await;
        rig.tick(1);
        if rig.rollout().await["state"] != "ramping" {
            break;
        }
    }
    let r = rig.rollout().await;
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let g = &r["history"][1]["guards"][0];
    assert_eq!(
        (&g["guard"], &g["status"]),
        (&"error_rate".into(), &"fail".into()),
        "{g:#}"
    );
    assert_eq!(g["canary"], 1.0, "{g:#}");
    assert_eq!(g["canary_samples"], gave_up, "{g:#}");
    assert_eq!(g["baseline_samples"], sent - gave_up, "{g:#}");

    // Never answered: no status class, and the duration histogram agrees with the counter.
    let m = rig.scrape().await;
    let answered = |cohort: &str| -> f64 {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .filter_map(|c| {
                m.get(
                    "cohort_requests_total",
                    &[("route", "agent"), ("cohort", cohort), ("status_class", c)],
                )
            })
            .sum()
    };
    let durations = |cohort: &str| {
        m.get(
            "cohort_request_duration_seconds_count",
            &[("route", "agent"), ("cohort", cohort)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(answered("canary"), 0.0);
    assert_eq!(durations("canary"), 0.0);
    assert_eq!(answered("stable"), (sent - gave_up) as f64);
    assert_eq!(durations("stable"), (sent - gave_up) as f64);
    let during = [canary[0], ("cohort", "stable"), ("stage", "during_body")];
    assert_eq!(m.get("cohort_abandoned_requests_total", &during), Some(0.0));
    rig.stop().await;
}

/// HTTP/2 clients give up with RST_STREAM on a connection that stays open: the stream's
/// cancellation alone must count as abandoned, as a closed HTTP/1.1 connection does.
#[tokio::test]
async fn an_http2_stream_reset_before_the_head_counts_as_abandoned() {
    let s = slow_canary(
        HANGS,
        "{id: v2, canary: canary, steps: [50, 100], soak: 1h, min_samples: 10, \
         guards: [{metric: error_rate, margin: 5}]}",
    )
    .await;
    let rig = Rig::start(&s.path).await;
    let mut h2 = support::H2c::connect(rig.public).await;
    let (mut gave_up, mut answered) = (0u64, None);
    for user in 0..40 {
        let req = get(rig.public, "/", &[("x-user-id", &format!("h2-{user}"))]);
        within("h2c ready", h2.sender_mut().ready()).await.unwrap();
        // Dropping the response future when the patience runs out resets the stream.
        let sent = h2.sender_mut().send_request(req);
        match tokio::time::timeout(Duration::from_millis(200), sent).await {
            Ok(resp) => {
                assert_eq!(resp.unwrap().headers()["x-cohort"], "stable");
                answered = Some(user);
            }
            Err(_) => gave_up += 1,
        }
    }
    let Some(stable_user) = answered else {
        panic!("no user was answered")
    };
    assert!(gave_up > 0);
    expect_canary_abandoned_before_head(&rig, gave_up).await;
    // The connection outlived every reset stream.
    let user = format!("h2-{stable_user}");
    let r = h2
        .fetch(get(rig.public, "/", &[("x-user-id", &user)]))
        .await;
    assert_eq!(r.status, 200);
    rig.stop().await;
}

#[tokio::test]
async fn a_request_that_started_before_an_advance_is_no_evidence_in_the_new_step() {
    let s = setup(
        Behaviour::default(),
        Behaviour::default(),
        "{id: v2, canary: canary, steps: [10, 50, 100], soak: 1s, min_samples: 5, \
         guards: [{metric: error_rate, margin: 50}]}",
    )
    .await;
    let mut rig = Rig::start(&s.path).await;
    rig.send(100).await;
    // The canary's next answers are slow failures, as an agent's can be; they are in flight
    // when the step passes, and end in the next one.
    s.canary.set(Behaviour {
        error_rate: 1.0,
        latency: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let mut slow = tokio::task::JoinSet::new();
    for user in 0..30 {
        let req = get(rig.public, "/", &[("x-user-id", &format!("slow-{user}"))]);
        let client = rig.client.clone();
        slow.spawn(async move { fetch(&client, req).await.header("x-cohort") == Some("canary") });
    }
    let canary = [("route", "agent"), ("cohort", "canary")];
    let in_flight = async {
        while rig.scrape().await.get("cohort_in_flight_requests", &canary) < Some(1.0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within("a canary request in flight", in_flight).await;
    rig.tick(2);
    assert_at(&rig.rollout().await, "ramping", 1);
    let mut ended_in_canary = 0;
    while let Some(r) = within("the slow requests", slow.join_next()).await {
        ended_in_canary += u64::from(r.unwrap());
    }
    assert!(ended_in_canary >= 1);
    expect_metric(&rig, "cohort_in_flight_requests", &canary, 0.0).await;
    rig.tick(1);
    let r = rig.rollout().await;
    assert_at(&r, "ramping", 1);
    assert_eq!(r["samples"]["canary"], 0, "{r:#}");
    rig.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_during_the_body_is_counted_answered_and_abandoned() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = support::Gate::new();
    let mock = support::MockUpstream::with("backend", support::Respond::Sse(gate.clone())).await;
    let proxy = support::proxy_to_backend(mock.addr, &[]).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.public).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: cohort.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(support::SSE_ONE) {
        let n = within("first event", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    drop(tcp);
    let backend = [("route", "agent"), ("cohort", "backend")];
    let stage = |s| [backend[0], backend[1], ("stage", s)];
    proxy
        .expect_metric(
            "cohort_abandoned_requests_total",
            &stage("during_body"),
            1.0,
        )
        .await;
    let m = proxy.scrape().await;
    assert_eq!(
        m.get("cohort_abandoned_requests_total", &stage("before_head")),
        Some(0.0)
    );
    let ok = [backend[0], backend[1], ("status_class", "2xx")];
    assert_eq!(m.get("cohort_requests_total", &ok), Some(1.0));
    assert_eq!(
        m.get("cohort_request_duration_seconds_count", &backend),
        Some(1.0)
    );
    gate.release();
}

#[tokio::test]
async fn editing_the_steps_behind_a_running_rollout_is_refused_by_reload_and_restart() {
    let rollout = |id: &str, steps: &str| {
        format!(
            "{{id: {id}, canary: canary, steps: {steps}, soak: 10s, min_samples: 20, \
             guards: [{{metric: error_rate, margin: 5}}]}}"
        )
    };
    let s = healthy(&rollout("v2", "[10, 20, 30, 40]")).await;
    let rewrite = |r: String| write_config(s.dir.path(), &s.stable, &s.canary, &r);
    let mut rig = Rig::start(&s.path).await;
    for _ in 0..30 {
        rig.send_and_tick(100, 10).await;
        if rig.rollout().await["step"] == 1 {
            break;
        }
    }
    assert_at(&rig.rollout().await, "ramping", 1);
    assert_eq!(rig.percent("canary").await.0, 20.0);

    let refusal = "routes[0].rollout.steps: rollout \"v2\" is at step 2 of [10, 20, 30, 40] \
                   (20%); under the same id the steps up to it must stay [10, 20]";
    // Fewer steps would jump to 100% on 20%'s evidence; an inserted one would move users
    // back out of the canary.
    for steps in ["[50, 100]", "[10, 15, 20, 30, 40]", "[10]"] {
        rewrite(rollout("v2", steps));
        let r = rig.admin("POST", "/reload").await;
        assert_eq!(r.status, 422, "{steps}: {}", r.text());
        let message = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("cohort.yaml:"), "{message}");
        assert!(message.contains(refusal), "{steps}: {message}");
        assert!(message.contains("give the rollout a new id"), "{message}");
        assert_at(&rig.rollout().await, "ramping", 1);
        assert_eq!(rig.percent("canary").await.0, 20.0);
    }

    // Steps after the current one may change.
    rewrite(rollout("v2", "[10, 20, 25, 100]"));
    rig.reload().await;
    assert_at(&rig.rollout().await, "ramping", 1);
    assert_eq!(
        rig.rollout().await["steps"],
        serde_json::json!([10.0, 20.0, 25.0, 100.0])
    );
    rig.stop().await;

    // A restart on an edited file refuses it as the reload did: the state file holds the steps.
    rewrite(rollout("v2", "[50, 100]"));
    let options = cohort::app::Options { judge_every: None };
    let refused = cohort::app::start_with(&s.path, options).await;
    let Err(e) = refused else {
        panic!("a restart accepted the edited steps")
    };
    let said = e.to_string();
    assert!(
        said.contains("routes[0].rollout.steps: rollout \"v2\" is at step 2 of [10, 20, 25, 100]"),
        "{said}"
    );

    // `cohort check` says so too, without starting anything.
    let out = support::process::cohort(&["check", "cohort.yaml"], s.dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].rollout.steps: rollout \"v2\" is at step 2"),
        "{stderr}"
    );

    // A new id starts the new steps from their first.
    rewrite(rollout("v3", "[50, 100]"));
    let rig = Rig::start(&s.path).await;
    assert_at(&rig.rollout().await, "ramping", 0);
    assert_eq!(rig.percent("canary").await.0, 50.0);
    rig.stop().await;
}
