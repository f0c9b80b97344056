//! The demo's pieces against a real proxy: the mock agent's misbehaviour knobs, the load
//! generator's tally against the proxy's own metrics, and `cohort healthcheck` / `cohort
//! demo-agent` as the container runs them.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cohort::demo::agent::{serve_agent, AgentSpec};
use cohort::demo::load::{self, LoadSpec, ROUTE};
use cohort::demo::table::Snapshot;
use support::*;
use tokio::net::TcpListener;

async fn agent(spec: AgentSpec) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_agent(listener, spec));
    addr
}

/// The demo's route: stable 80 / canary 20 keyed by x-user-id, in front of two agents.
async fn demo_proxy(stable: AgentSpec, canary: AgentSpec) -> TestProxy {
    Config::new()
        .upstream("stable", agent(stable).await)
        .upstream("canary", agent(canary).await)
        .route(
            Route::new("support-agent")
                .matching("path_prefix: /v1/")
                .key("header: x-user-id")
                .split(&[("stable", "stable", "80"), ("canary", "canary", "20")]),
        )
        .start()
        .await
}

#[tokio::test]
async fn knobs_make_the_agent_fail_escalate_and_wait() {
    let mut failing = AgentSpec::canary();
    failing.error_rate = 1.0;
    let mut escalating = AgentSpec::stable();
    escalating.escalation_rate = Some(1.0);
    escalating.latency = Duration::from_millis(200);
    let p = demo_proxy(escalating, failing).await;
    let user_in = |cohort: &str| {
        (1..)
            .map(|i| format!("user-{i}"))
            .find(|k| {
                let split = [("stable", 8000), ("canary", 2000)];
                contract_cohort("support-agent", k.as_bytes(), &split) == cohort
            })
            .unwrap()
    };
    let (canary_user, stable_user) = (user_in("canary"), user_in("stable"));
    let r = p.get("/v1/chat", &[("x-user-id", &canary_user)]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-agent-outcome"), Some("error"));
    assert_eq!(r.header("x-cohort"), Some("canary"));
    let r = p
        .get("/v1/chat/stream", &[("x-user-id", &canary_user)])
        .await;
    assert_eq!(r.status, 500, "a failing turn does not stream");

    let started = tokio::time::Instant::now();
    let r = p
        .get("/v1/chat/stream", &[("x-user-id", &stable_user)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cohort"), Some("stable"));
    assert_eq!(r.header("x-agent-outcome"), Some("escalated"));
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the think time is a floor"
    );
}

#[tokio::test]
async fn the_load_tally_matches_the_proxys_metrics() {
    let mut canary = AgentSpec::canary();
    canary.error_rate = 0.5;
    let p = demo_proxy(AgentSpec::stable(), canary).await;
    let tally = load::spawn(LoadSpec {
        base: format!("http://{}", p.public),
        path: "/v1/chat".into(),
        rps: 500.0,
        requests: Some(200),
        users: 1000,
    });
    within("200 requests", async {
        while !tally.finished.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(tally.sent.load(Ordering::Relaxed), 200);
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0);

    let seen = tally.snapshot();
    let requests = |c: &str| seen.cohorts[&(ROUTE.to_string(), c.to_string())].requests;
    assert_eq!(requests("stable") + requests("canary"), 200.0);
    assert!(requests("canary") > 0.0 && requests("stable") > requests("canary"));
    for cohort in ["stable", "canary"] {
        let mine = &seen.cohorts[&(ROUTE.to_string(), cohort.to_string())];
        let route = [("route", "support-agent"), ("cohort", cohort)];
        p.expect_metric(
            "cohort_requests_total",
            &[route[0], route[1], ("status_class", "5xx")],
            mine.errors,
        )
        .await;
        p.expect_metric(
            "cohort_requests_total",
            &[route[0], route[1], ("status_class", "2xx")],
            mine.requests - mine.errors,
        )
        .await;
        // The table's reading of the proxy's scrape agrees with what the client saw.
        let proxy = Snapshot::from_scrape(&p.scrape().await.text);
        let theirs = &proxy.cohorts[&("support-agent".to_string(), cohort.to_string())];
        assert_eq!(
            (theirs.requests, theirs.errors),
            (mine.requests, mine.errors)
        );
        assert_eq!(theirs.outcomes.values().sum::<f64>(), mine.requests);
        for (outcome, n) in &mine.outcomes {
            assert_eq!(theirs.outcomes.get(outcome), Some(n), "{cohort} {outcome}");
        }
        assert_eq!(theirs.ttfb.buckets.last().unwrap().1, mine.requests);
    }
    let canary = &seen.cohorts[&(ROUTE.to_string(), "canary".to_string())];
    assert_eq!(
        canary.outcomes.get("error").copied().unwrap_or(0.0),
        canary.errors
    );
    let totals = tally.totals();
    assert_eq!(
        totals.last().unwrap(),
        "total sent=200 answered=200 failed=0"
    );
}

#[tokio::test]
async fn probe_reports_status_or_failure() {
    let p = demo_proxy(AgentSpec::stable(), AgentSpec::canary()).await;
    let url = format!("http://{}/healthz", p.admin);
    assert_eq!(load::probe(&url, WAIT).await, Ok(http::StatusCode::OK));
    let missing = format!("http://{}/nope", p.admin);
    assert_eq!(
        load::probe(&missing, WAIT).await,
        Ok(http::StatusCode::NOT_FOUND)
    );
    let dead = format!("http://{}/healthz", dead_endpoint().await);
    assert!(load::probe(&dead, WAIT).await.is_err());
    assert!(load::probe("https://example.com/", WAIT).await.is_err());
}

fn cohort_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cohort"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

#[tokio::test]
async fn healthcheck_subcommand_exits_by_the_answer() {
    let p = demo_proxy(AgentSpec::stable(), AgentSpec::canary()).await;
    let run = |url: String| {
        tokio::task::spawn_blocking(move || {
            cohort_bin()
                .args(["healthcheck", "--url", &url, "--timeout", "5s"])
                .output()
                .unwrap()
        })
    };
    let ok = run(format!("http://{}/healthz", p.admin)).await.unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let not_found = run(format!("http://{}/nope", p.admin)).await.unwrap();
    assert_eq!(not_found.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("404"));
    let dead = run(format!("http://{}/healthz", dead_endpoint().await))
        .await
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_agent_subcommand_serves_its_knobs() {
    let port = dead_endpoint().await.port();
    let _agent = Child(
        cohort_bin()
            .args([
                "demo-agent",
                "--name",
                "canary",
                "--port",
                &port.to_string(),
            ])
            .args(["--error-rate", "100%"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let client = h1_client();
    let reply = within("the demo agent to answer", async {
        loop {
            if let Ok(resp) = client.request(get(addr, "/v1/chat", &[])).await {
                return read_all(resp).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("x-agent"), Some("canary"));
    assert_eq!(reply.header("x-agent-outcome"), Some("error"));
    let health = fetch(&client, get(addr, "/healthz", &[])).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n"),
        "probes pass whatever the knobs"
    );
}

/// Closing a terminal sends SIGHUP: the interactive demo ends with it, ports and all, while
/// `cohort run` (a daemon) reloads its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_ends_the_demo_and_reloads_run() {
    use support::process::{free_port, Process};
    let agents = [free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    // Nothing but SIGHUP reloads this config.
    let yaml = Config::new()
        .top("reload: {watch: false, poll_interval: 1h}")
        .upstream("stable", &agents[0])
        .upstream("canary", &agents[1])
        .route(
            Route::new("support-agent")
                .split(&[("stable", "stable", "80"), ("canary", "canary", "20")]),
        )
        .yaml();
    let mut demo = Process::start("demo", &yaml, None).await;
    demo.signal("HUP");
    let status = demo.exit_within(WAIT).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the demo exits on SIGHUP"
    );
    assert!(
        tokio::net::TcpStream::connect(demo.public).await.is_err(),
        "its port is free again"
    );

    let client = h1_client();
    let run = Process::start("run", &yaml, None).await;
    let generation = || async {
        let routes = fetch(&client, get(run.admin, "/routes", &[])).await;
        routes.json()["generation"].as_u64().unwrap()
    };
    let before = generation().await;
    let path = run.dir.path().join("cohort.yaml");
    let changed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("percent: 80", "percent: 70")
        .replace("percent: 20", "percent: 30");
    std::fs::write(&path, changed).unwrap();
    run.signal("HUP");
    within("the reload", async {
        while generation().await == before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
