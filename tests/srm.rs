//! The sample ratio check end to end: the proxy in front of two simulated backends, users
//! with a varied number of requests each, the judge ticked by the test on a simulated clock.
//! A client that drops the key header for half of the canary's users (their requests go
//! keyless to the fallback) halts the rollout with the canary at 0% and the reason stated;
//! the same traffic with every key kept does not.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cohort::control::rollout::{judge, Now};
use serde_json::Value;
use support::sim::{Behaviour, SimBackend};
use support::{bearer_request, contract_cohort, fetch, get, h1_client, within, Config, Route};
use support::{H1Client, Reply, Scrape};

const USERS: u64 = 800;
/// The canary's percent at the rollout's only step, and so its share of units.
const SPLIT: [(&str, u32); 2] = [("stable", 5_000), ("canary", 5_000)];

fn write_config(dir: &Path, stable: &SimBackend, canary: &SimBackend) -> PathBuf {
    let route = Route::new("agent")
        .key("header: x-user-id")
        .set("fallback: stable")
        .set("rollout: {id: v2, canary: canary, steps: [50], soak: 1h, min_samples: 10}");
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

struct Rig {
    running: cohort::app::Running,
    public: SocketAddr,
    admin: SocketAddr,
    client: H1Client,
    now: Now,
    _backends: (SimBackend, SimBackend),
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let backends = (
            SimBackend::start(Behaviour::default()).await,
            SimBackend::start(Behaviour::default()).await,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &backends.0, &backends.1);
        let running = support::start_unjudged(&path).await;
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            _backends: backends,
            dir,
        }
    }

    /// Sends `requests` (a user, and whether the key header goes along), 16 at a time; the
    /// cohort that answered each.
    async fn send(&self, requests: &[(u64, bool)]) -> Vec<String> {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for (j, &(user, keyed)) in requests.iter().enumerate() {
            let (client, gate) = (self.client.clone(), Arc::clone(&gate));
            let key = format!("user-{user}");
            let headers: Vec<(&str, &str)> = if keyed {
                vec![("x-user-id", &key)]
            } else {
                vec![]
            };
            let req = get(self.public, "/", &headers);
            set.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let cohort = fetch(&client, req)
                    .await
                    .header("x-cohort")
                    .map(String::from);
                (j, cohort.unwrap_or_default())
            });
        }
        let mut out = vec![String::new(); requests.len()];
        while let Some(r) = within("a batch of requests", set.join_next()).await {
            let (j, cohort) = r.unwrap();
            out[j] = cohort;
        }
        out
    }

    /// Stops the proxy and starts another on the same file and state directory.
    async fn restart(self) -> Rig {
        let Rig {
            running,
            _backends,
            dir,
            ..
        } = self;
        running.shutdown().await;
        let path = dir.path().join("cohort.yaml");
        let running = support::start_unjudged(&path).await;
        Rig {
            public: running.listener("public").unwrap(),
            admin: running.admin_address,
            running,
            client: h1_client(),
            now: Now::real(),
            _backends,
            dir,
        }
    }

    fn tick(&mut self) {
        self.now = self.now.later(Duration::from_secs(1));
        judge::tick(&self.running.control, self.now);
    }

    async fn admin(&self, method: &str, path: &str) -> Reply {
        fetch(&self.client, bearer_request(method, self.admin, path, None)).await
    }

    async fn rollout(&self) -> Value {
        let r = self.admin("GET", "/rollouts").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["rollouts"][0].clone()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("state/audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn cohort_of(user: u64) -> &'static str {
    contract_cohort("agent", format!("user-{user}").as_bytes(), &SPLIT)
}

/// Every user's requests, shuffled: user `u` sends 1, 1, 1, 2, 3, 1 or 9 of them (by `u % 7`),
/// so a few heavy users make a good share of the traffic. `keyed` says, per user, whether
/// the key header goes along.
fn traffic(keyed: impl Fn(u64) -> bool) -> Vec<(u64, bool)> {
    let mut all: Vec<(u64, bool)> = (0..USERS)
        .flat_map(|u| {
            let n = [1, 1, 1, 2, 3, 1, 9][(u % 7) as usize];
            std::iter::repeat_n((u, keyed(u)), n)
        })
        .collect();
    fastrand::Rng::with_seed(18).shuffle(&mut all);
    all
}

/// The slot each user's key marks (`samples::units`: its own xxh3 seed, 2^17 slots),
/// written out here so that the units expected can be counted exactly.
fn slot(user: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(format!("user-{user}").as_bytes(), 0x6c7d_2a91_e4b3_5f08)
        & ((1 << 17) - 1)
}

#[tokio::test]
async fn a_client_that_drops_the_key_for_half_the_canarys_users_halts_the_rollout() {
    let mut rig = Rig::start().await;
    // Every other canary user (by id) goes without the key: those requests go keyless to
    // the fallback, stable, and count as no cohort's unit.
    let all = traffic(|u| !(cohort_of(u) == "canary" && u % 2 == 0));
    let mut halted = None;
    for (batch, chunk) in all.chunks(200).enumerate() {
        rig.send(chunk).await;
        rig.tick();
        let r = rig.rollout().await;
        if r["state"] == "halted" {
            halted = Some((batch, r));
            break;
        }
        assert_eq!(r["state"], "ramping", "{r:#}");
    }
    let Some((batch, r)) = halted else {
        panic!("no halt: {:#}", rig.rollout().await)
    };
    println!("halted after {} requests", (batch + 1) * 200);
    assert_eq!(
        (&r["step"], &r["percent"]),
        (&0.into(), &0.0.into()),
        "{r:#}"
    );
    let d = r["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&d["decision"], &d["trigger"]),
        (&"halt".into(), &"judge".into())
    );
    let reason = d["reason"].as_str().unwrap();
    println!("{reason}");
    assert!(
        reason.starts_with("sample ratio mismatch: canary "),
        "{reason}"
    );
    assert!(
        reason.contains("against 50.00% expected; ln e-value "),
        "{reason}"
    );
    assert_eq!(r["note"], d["reason"], "{r:#}");
    let audited = rig.audit();
    let last = audited.last().unwrap();
    assert_eq!(
        (&last["decision"], &last["reason"]),
        (&"halt".into(), &d["reason"])
    );
    let m = Scrape::parse(&rig.admin("GET", "/metrics").await.text());
    assert_eq!(
        m.get("cohort_rollout_srm_halts_total", &[("route", "agent")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("cohort_rollout_step_percent", &[("route", "agent")]),
        Some(0.0)
    );

    // Halted: the canary's own users go to stable now, and nothing more is judged.
    let canary_users: Vec<(u64, bool)> = (0..USERS)
        .filter(|u| cohort_of(*u) == "canary")
        .take(50)
        .map(|u| (u, true))
        .collect();
    assert!(rig.send(&canary_users).await.iter().all(|c| c == "stable"));
    rig.tick();
    assert_eq!(rig.rollout().await["state"], "halted");

    // An operator resumes once the client is mended: the same step, its evidence anew.
    let resumed = rig.admin("POST", "/rollouts/agent/resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    let r = rig.rollout().await;
    assert_eq!(
        (&r["state"], &r["step"], &r["percent"]),
        (&"ramping".into(), &0.into(), &50.0.into()),
        "{r:#}"
    );
    assert_eq!(
        (&r["srm"]["canary_units"], &r["srm"]["baseline_units"]),
        (&0.into(), &0.into()),
        "{r:#}"
    );
    assert!(rig.send(&canary_users).await.iter().all(|c| c == "canary"));
    // Counted again under the resumed step's epoch, though the halted step counted some; with
    // as many stable users beside them, the split holds.
    let stable_users = (0..USERS).filter(|u| cohort_of(*u) == "stable").take(50);
    let mixed: Vec<(u64, bool)> = canary_users
        .iter()
        .copied()
        .chain(stable_users.map(|u| (u, true)))
        .collect();
    rig.send(&mixed).await;
    rig.tick();
    let r = rig.rollout().await;
    assert_eq!(r["state"], "ramping", "{r:#}");
    let distinct = mixed
        .iter()
        .map(|(u, _)| slot(*u))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let units =
        r["srm"]["canary_units"].as_u64().unwrap() + r["srm"]["baseline_units"].as_u64().unwrap();
    assert_eq!(units, distinct, "{r:#}");
    rig.running.shutdown().await;
}

#[tokio::test]
async fn the_same_traffic_with_every_key_kept_does_not_halt() {
    let mut rig = Rig::start().await;
    let all = traffic(|_| true);
    for chunk in all.chunks(200) {
        let got = rig.send(chunk).await;
        for ((user, _), cohort) in chunk.iter().zip(&got) {
            assert_eq!(cohort, cohort_of(*user), "user-{user}");
        }
        rig.tick();
        let r = rig.rollout().await;
        assert_eq!(r["state"], "ramping", "{r:#}");
    }
    let r = rig.rollout().await;
    let srm = &r["srm"];
    assert_eq!(srm["mismatch"], false, "{r:#}");
    assert_eq!(srm["expected_share"], 0.5, "{r:#}");
    assert!(
        srm["statistic"].as_f64() < srm["threshold"].as_f64(),
        "{r:#}"
    );
    assert_eq!(
        srm["threshold"].as_f64(),
        Some((1.0f64 / 0.001).ln()),
        "{r:#}"
    );
    // Units, not requests: one per distinct slot (two users on one slot count once, for
    // whichever came first).
    let mut slots: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for u in 0..USERS {
        slots.entry(slot(u)).or_default().push(cohort_of(u));
    }
    let units = srm["canary_units"].as_u64().unwrap() + srm["baseline_units"].as_u64().unwrap();
    assert_eq!(units, slots.len() as u64, "{r:#}");
    let sure = slots
        .values()
        .filter(|c| c.iter().all(|c| *c == "canary"))
        .count() as u64;
    let mixed = slots
        .values()
        .filter(|c| c.contains(&"canary") && c.contains(&"stable"))
        .count() as u64;
    let canary = srm["canary_units"].as_u64().unwrap();
    assert!(
        (sure..=sure + mixed).contains(&canary),
        "{canary} canary units; {sure} sure, {mixed} mixed"
    );
    let requests =
        r["samples"]["canary"].as_u64().unwrap() + r["samples"]["baseline"].as_u64().unwrap();
    assert_eq!(requests, all.len() as u64, "{r:#}");
    let m = Scrape::parse(&rig.admin("GET", "/metrics").await.text());
    assert_eq!(
        m.get("cohort_rollout_srm_halts_total", &[("route", "agent")]),
        Some(0.0)
    );
    rig.running.shutdown().await;
}

#[tokio::test]
async fn a_user_counts_once_a_step_across_reloads() {
    let mut rig = Rig::start().await;
    let users: Vec<(u64, bool)> = (0..100).map(|u| (u, true)).collect();
    let distinct = users
        .iter()
        .map(|(u, _)| slot(*u))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let units = |r: &Value| {
        r["srm"]["canary_units"].as_u64().unwrap() + r["srm"]["baseline_units"].as_u64().unwrap()
    };
    rig.send(&users).await;
    rig.tick();
    assert_eq!(units(&rig.rollout().await), distinct);
    // A reload builds a new table; the step, its cells and its epoch stay: the same users
    // are no new units.
    let path = rig.dir.path().join("cohort.yaml");
    let edited = std::fs::read_to_string(&path).unwrap() + "# edited\n";
    std::fs::write(&path, edited).unwrap();
    // (The check that follows startup may take the edit first: either way, generation 2.)
    let reloaded = rig.admin("POST", "/reload").await.json();
    assert_eq!(reloaded["generation"], 2, "{reloaded}");
    rig.send(&users).await;
    rig.send(&users).await;
    rig.tick();
    let r = rig.rollout().await;
    assert_eq!(units(&r), distinct, "{r:#}");
    let requests =
        r["samples"]["canary"].as_u64().unwrap() + r["samples"]["baseline"].as_u64().unwrap();
    assert_eq!(requests, 300, "{r:#}");
    rig.running.shutdown().await;
}

#[tokio::test]
async fn a_restart_mid_step_keeps_the_checks_e_value_and_counts_units_anew() {
    let mut rig = Rig::start().await;
    let broken = traffic(|u| !(cohort_of(u) == "canary" && u % 2 == 0));
    rig.send(&broken[..60]).await;
    rig.tick();
    let before = rig.rollout().await;
    assert_eq!(before["state"], "ramping", "{before:#}");
    let statistic = before["srm"]["statistic"].as_f64().unwrap();
    assert!(
        before["srm"]["canary_units"].as_u64() > Some(0),
        "{before:#}"
    );

    let mut rig = rig.restart().await;
    let after = rig.rollout().await;
    assert_eq!(
        (&after["state"], &after["step"]),
        (&"ramping".into(), &0.into())
    );
    // The slots are new: the units start over; the e-value goes on from where it was.
    let srm = &after["srm"];
    assert_eq!(
        (&srm["canary_units"], &srm["baseline_units"]),
        (&0.into(), &0.into()),
        "{after:#}"
    );
    assert_eq!(srm["statistic"].as_f64(), Some(statistic), "{after:#}");
    // The same broken client after the restart: halted, on both spans' evidence.
    let mut halted = false;
    for chunk in broken[60..].chunks(100) {
        rig.send(chunk).await;
        rig.tick();
        if rig.rollout().await["state"] == "halted" {
            halted = true;
            break;
        }
    }
    assert!(halted, "{:#}", rig.rollout().await);
    rig.running.shutdown().await;
}
