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

/// `body` with every `"created":<digits>` set to 0: the one field of a mock's OpenAI answer
/// that depends on the second it was sent.
fn uncreated(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(at) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(at + "\"created\":".len());
        out.push_str(head);
        out.push('0');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn chat(stream: bool, content: &str) -> String {
    serde_json::json!({
        "model": format!("demo-model-{stream}"),
        "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": content}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// The first `user-N` that `contract_cohort` puts in `cohort` of the demo's 80/20 split.
fn user_in(cohort: &str) -> String {
    (1..)
        .map(|i| format!("user-{i}"))
        .find(|k| {
            let split = [("stable", 8000), ("canary", 2000)];
            contract_cohort("support-agent", k.as_bytes(), &split) == cohort
        })
        .unwrap()
}

/// The mock's OpenAI answers come through the proxy exactly as the agent sends them (same
/// request, same agent, same bytes but `created`), streamed or not, with the proxy's and the
/// agent's headers; bad requests get OpenAI's 400 and the error knob OpenAI's 500.
#[tokio::test]
async fn chat_completions_come_through_the_proxy_unchanged() {
    let quick = |mut a: AgentSpec| {
        a.token_delay = Duration::from_millis(1);
        a
    };
    let direct = agent(quick(AgentSpec::stable())).await;
    let mut failing = quick(AgentSpec::canary());
    failing.error_rate = 1.0;
    let p = demo_proxy(quick(AgentSpec::stable()), failing).await;
    let client = h1_client();
    let (stable_user, canary_user) = (user_in("stable"), user_in("canary"));
    let path = "/v1/chat/completions";
    for stream in [false, true] {
        let body = chat(stream, "I forgot my password");
        let user = [("x-user-id", stable_user.as_str())];
        let via = fetch(
            &client,
            request("POST", p.public, path, &user, body.clone()),
        )
        .await;
        let own = fetch(&client, request("POST", direct, path, &[], body)).await;
        assert_eq!((via.status.as_u16(), own.status.as_u16()), (200, 200));
        assert_eq!(via.header("x-cohort"), Some("stable"));
        assert_eq!(via.header("x-agent"), Some("stable"));
        assert!(via.header("x-agent-outcome").is_some());
        let kind = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        assert_eq!(via.header("content-type"), Some(kind));
        assert_eq!(
            uncreated(&via.text()),
            uncreated(&own.text()),
            "stream={stream}"
        );
        if stream {
            let text = via.text();
            let events: Vec<&str> = text.split_terminator("\n\n").collect();
            assert_eq!(events.last(), Some(&"data: [DONE]"));
            let usage: serde_json::Value =
                serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
            assert_eq!(usage["choices"], serde_json::json!([]));
            let c = usage["usage"]["completion_tokens"].as_u64().unwrap() as usize;
            assert_eq!(
                events.len(),
                c + 3,
                "role, one chunk per token, usage, [DONE]"
            );
            assert_eq!(usage["model"], "demo-model-true", "the request's model");
        } else {
            let j = via.json();
            assert_eq!(
                (j["object"].as_str(), j["model"].as_str()),
                (Some("chat.completion"), Some("demo-model-false"))
            );
            let u = &j["usage"];
            assert_eq!(u["prompt_tokens"].as_u64(), Some((9 + 20) / 4 + 12));
            assert_eq!(
                u["total_tokens"].as_u64(),
                Some(
                    u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
                )
            );
        }
    }
    let user = [("x-user-id", stable_user.as_str())];
    let bad = fetch(
        &client,
        request("POST", p.public, path, &user, "{\"messages\":1}"),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    let user = [("x-user-id", canary_user.as_str())];
    let failed = fetch(
        &client,
        request("POST", p.public, path, &user, chat(true, "hi")),
    )
    .await;
    assert_eq!(failed.status, 500, "a failing turn does not stream");
    assert_eq!(failed.header("x-agent-outcome"), Some("error"));
    assert!(failed.json()["error"]["message"].is_string());
}

/// `cohort demo --rollout` with a canary that fails half its turns: the rollout it runs (the
/// built-in config, on free ports and with a short soak) is rolled back, as `GET /rollouts`
/// shows, and its screen (plain lines off a terminal) prints the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rollout_rolls_a_bad_canary_back() {
    use support::process::free_port;
    let dir = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let state = dir.path().join("state");
    let mut yaml = cohort::demo::DEMO_ROLLOUT_YAML.to_string();
    for (from, to) in [
        (
            "127.0.0.1:8080".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ),
        ("127.0.0.1:9901".to_string(), admin.to_string()),
        (
            "127.0.0.1:18001".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "127.0.0.1:18002".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "state_dir: /tmp/cohort-demo-rollout".to_string(),
            format!("state_dir: {}", state.display()),
        ),
        ("soak: 15s".to_string(), "soak: 1s".to_string()),
        (
            "min_samples: 200".to_string(),
            "min_samples: 30".to_string(),
        ),
    ] {
        assert!(yaml.contains(&from), "demo-rollout.yaml has {from}");
        yaml = yaml.replace(&from, &to);
    }
    let config = dir.path().join("demo-rollout.yaml");
    std::fs::write(&config, yaml).unwrap();
    let log = dir.path().join("demo.log");
    let out = std::fs::File::create(&log).unwrap();
    let _demo = Child(
        cohort_bin()
            .arg("demo")
            .arg("--config")
            .arg(&config)
            .args([
                "--rollout",
                "--load",
                "100",
                "--canary-errors",
                "50%",
                "--agents-token-ms",
                "1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap(),
    );
    let client = h1_client();
    let rolled_back = async {
        loop {
            if let Ok(resp) = client.request(get(admin, "/rollouts", &[])).await {
                let report = read_all(resp).await.json();
                let r = &report["rollouts"][0];
                let history = r["history"].as_array().cloned().unwrap_or_default();
                if r["state"] == "rolled_back" {
                    return (r.clone(), history);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let Ok((rollout, history)) = tokio::time::timeout(Duration::from_secs(120), rolled_back).await
    else {
        panic!(
            "no rollback within 120 s; the demo printed:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert_eq!(rollout["id"], "demo-rollout");
    assert_eq!(rollout["percent"].as_f64(), Some(0.0));
    let last = history.last().unwrap();
    assert_eq!(last["decision"], "rollback");
    assert!(
        last["reason"].as_str().unwrap().contains("error_rate"),
        "{last}"
    );
    // The screen prints each decision once it has read it, within a second or two.
    let printed = within("the screen to print the rollback", async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.starts_with("decision route=support-agent") && l.contains("rollback"))
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(printed.contains("rollout=demo-rollout"), "{printed}");
}

/// `--canary-first-token-ms` holds the first streamed event back after the head (a floor on
/// time to first token), and `--canary-verbosity` multiplies the completion tokens.
#[tokio::test]
async fn first_token_delay_and_verbosity_reach_the_answer() {
    use http_body_util::BodyExt;
    let mut plain = AgentSpec::canary();
    plain.token_delay = Duration::from_millis(1);
    let slow = agent(plain.clone().talking(Some(2.0), Some(300))).await;
    let plain = agent(plain).await;
    let client = h1_client();
    let path = "/v1/chat/completions";
    let body = chat(true, "hello");
    let started = tokio::time::Instant::now();
    let resp = send(&client, request("POST", slow, path, &[], body.clone())).await;
    let head = started.elapsed();
    let mut body_in = resp.into_body();
    let first = within("the first event", body_in.frame()).await;
    assert!(first.is_some_and(|f| f.is_ok()));
    assert!(
        started.elapsed() >= Duration::from_millis(300)
            && started.elapsed() - head >= Duration::from_millis(250),
        "the first event waits after the head: head {head:?}, first {:?}",
        started.elapsed()
    );
    let tokens = |reply: Reply| {
        let text = reply.text();
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        let usage = events[events.len() - 2];
        let v: serde_json::Value = serde_json::from_str(&usage["data: ".len()..]).unwrap();
        v["usage"]["completion_tokens"].as_u64().unwrap()
    };
    let wordy = tokens(fetch(&client, request("POST", slow, path, &[], body.clone())).await);
    let usual = tokens(fetch(&client, request("POST", plain, path, &[], body)).await);
    assert_eq!(wordy, 2 * usual, "the same request, twice the tokens");
}
