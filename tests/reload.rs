//! Live reconfiguration: every trigger, validate-then-swap, nothing dropped, pools and
//! counters carried over.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cohort::control::reload::Outcome;
use support::*;

/// A 95/5 or 90/10 stable/canary split on `x-user-id`, with extra top-level lines.
fn split_yaml(
    stable: &MockUpstream,
    canary: &MockUpstream,
    canary_pct: u32,
    top: &[&str],
) -> String {
    let mut c = Config::new();
    for t in top {
        c = c.top(t);
    }
    c.upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(Route::new("agent").key("header: x-user-id").split(&[
            ("stable", "stable", &(100 - canary_pct).to_string()),
            ("canary", "canary", &canary_pct.to_string()),
        ]))
        .yaml()
}

/// Replaces `path` the way careful tools do: a new file renamed over the old one.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn canary_weight(p: &TestProxy) -> u32 {
    let t = p.running.control.current();
    t.route("agent").unwrap().cohorts[1].weight
}

async fn wait_for_generation(p: &TestProxy, generation: u64) {
    within("the new generation", async {
        while p.running.control.current().generation < generation {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn mocks() -> (MockUpstream, MockUpstream) {
    (
        MockUpstream::json("stable").await,
        MockUpstream::json("canary").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_under_load_fail_nothing() {
    let (stable, canary) = mocks().await;
    let five = split_yaml(&stable, &canary, 5, &[]);
    let ten = split_yaml(&stable, &canary, 10, &[]);
    let p = Arc::new(TestProxy::start(&five).await);
    let path = p.dir.path().join("cohort.yaml");
    // A token, not a Notify: a client between two requests when the reloads end must still
    // see the stop (notify_waiters reaches only futures that already exist).
    let stop = tokio_util::sync::CancellationToken::new();
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    let mut clients = Vec::new();
    for worker in 0..4 {
        let (p, stop, ok, bad) = (
            Arc::clone(&p),
            stop.clone(),
            Arc::clone(&ok),
            Arc::clone(&bad),
        );
        clients.push(tokio::spawn(async move {
            let client = h1_client();
            let mut i = 0u64;
            loop {
                let key = format!("w{worker}-user-{i}");
                i += 1;
                let req = get(p.public, "/chat", &[("x-user-id", key.as_str())]);
                let reply = tokio::select! {
                    r = fetch(&client, req) => r,
                    _ = stop.cancelled() => return,
                };
                let at5 = contract_cohort(
                    "agent",
                    key.as_bytes(),
                    &[("stable", 9500), ("canary", 500)],
                );
                let at10 = contract_cohort(
                    "agent",
                    key.as_bytes(),
                    &[("stable", 9000), ("canary", 1000)],
                );
                let got = reply.header("x-cohort").unwrap_or("none").to_string();
                if reply.status == 200
                    && (got == at5 || got == at10)
                    && reply.upstream_saw().0 == got
                {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!(
                        "bad reply for {key}: {} {got} (5%: {at5}, 10%: {at10})",
                        reply.status
                    );
                    bad.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    for n in 0..200 {
        let (text, weight) = if n % 2 == 0 {
            (&ten, 1000)
        } else {
            (&five, 500)
        };
        write_atomic(&path, text);
        // The watcher may apply it first; either way the serving split must now be the file's.
        let outcome = p.running.reload("test").await;
        assert!(
            matches!(outcome, Outcome::Applied { .. } | Outcome::Unchanged),
            "reload {n}: {outcome:?}"
        );
        assert_eq!(canary_weight(&p), weight, "after reload {n}");
    }
    stop.cancel();
    for c in clients {
        within("a client task", c).await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "requests that failed or got an impossible cohort"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 0,
        "no request completed during the reloads"
    );
    assert!(
        p.running.control.current().generation > 200,
        "every reload was a new generation"
    );
    let s = p.scrape().await;
    assert_eq!(
        s.metric("cohort_config_reloads_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(
        s.metric("cohort_config_generation", &[]),
        p.running.control.current().generation as f64
    );
}

/// The Kubernetes ConfigMap layout: `cohort.yaml -> ..data/cohort.yaml`, `..data -> ..<ts>`.
fn configmap_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ts = dir.path().join("..2026_11_26_08_00_00.1");
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("cohort.yaml"), text).unwrap();
    std::os::unix::fs::symlink("..2026_11_26_08_00_00.1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cohort.yaml", dir.path().join("cohort.yaml")).unwrap();
    let path = dir.path().join("cohort.yaml");
    (dir, path)
}

/// What kubelet does on an update: a new timestamped directory, `..data_tmp` pointing at it,
/// renamed over `..data`, the old directory removed.
fn configmap_update(dir: &Path, text: &str) {
    let ts = dir.join("..2026_11_26_08_05_00.2");
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("cohort.yaml"), text).unwrap();
    std::os::unix::fs::symlink("..2026_11_26_08_05_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_26_08_00_00.1")).unwrap();
}

async fn start_at(path: &Path) -> cohort::app::Running {
    within("the proxy to start", cohort::app::start(path))
        .await
        .expect("proxy starts")
}

async fn configmap_swap_is_applied(watch: bool) {
    let (stable, canary) = mocks().await;
    let top = format!("reload: {{poll_interval: 300ms, watch: {watch}}}");
    let (dir, path) = configmap_dir(&split_yaml(&stable, &canary, 5, &[&top]));
    let running = start_at(&path).await;
    assert_eq!(
        running.control.current().route("agent").unwrap().cohorts[1].weight,
        500
    );
    configmap_update(dir.path(), &split_yaml(&stable, &canary, 25, &[&top]));
    within("the ConfigMap update to be applied", async {
        while running.control.current().generation < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        running.control.current().route("agent").unwrap().cohorts[1].weight,
        2500
    );
    running.shutdown().await;
}

#[tokio::test]
async fn configmap_symlink_swap_is_applied_by_the_watcher() {
    configmap_swap_is_applied(true).await;
}

#[tokio::test]
async fn configmap_symlink_swap_is_applied_by_the_poll_alone() {
    configmap_swap_is_applied(false).await;
}

#[tokio::test]
async fn vim_style_rename_save_is_applied() {
    let (stable, canary) = mocks().await;
    let p = TestProxy::start(&split_yaml(
        &stable,
        &canary,
        5,
        &["reload: {poll_interval: 1h}"],
    ))
    .await;
    let path = p.dir.path().join("cohort.yaml");
    // vim with `backupcopy=no`: the old file becomes the backup, the new one is written fresh.
    std::fs::rename(&path, p.dir.path().join("cohort.yaml~")).unwrap();
    std::fs::write(p.dir.path().join(".cohort.yaml.swp"), b"swap").unwrap();
    std::fs::write(
        &path,
        split_yaml(&stable, &canary, 10, &["reload: {poll_interval: 1h}"]),
    )
    .unwrap();
    std::fs::remove_file(p.dir.path().join(".cohort.yaml.swp")).unwrap();
    wait_for_generation(&p, 2).await;
    assert_eq!(canary_weight(&p), 1000);
}

#[tokio::test]
async fn truncated_file_is_rejected_then_the_completed_file_applied() {
    let (stable, canary) = mocks().await;
    let p = TestProxy::start(&split_yaml(&stable, &canary, 5, &[])).await;
    let path = p.dir.path().join("cohort.yaml");
    let full = split_yaml(&stable, &canary, 20, &[]);
    // Cut inside the last cohort: the split no longer sums to 100.
    let cut = full.rfind("canary").unwrap();
    std::fs::write(&path, &full[..cut]).unwrap();
    let outcome = p.running.reload("test").await;
    let Outcome::Rejected(message) = outcome else {
        panic!("truncated file accepted: {outcome:?}")
    };
    assert!(message.contains("cohort.yaml:"), "{message}");
    assert_eq!(canary_weight(&p), 500);
    assert_eq!(p.running.control.current().generation, 1);

    std::fs::write(&path, &full).unwrap();
    assert!(matches!(
        p.running.reload("test").await,
        Outcome::Applied { generation: 2 } | Outcome::Unchanged
    ));
    wait_for_generation(&p, 2).await;
    assert_eq!(canary_weight(&p), 2000);
}

#[tokio::test]
async fn bad_reload_keeps_the_old_split_exactly() {
    let (stable, canary) = mocks().await;
    // Only this test's explicit reload may run, so the failure count is exact.
    let manual = ["reload: {watch: false, poll_interval: 1h}"];
    let p = TestProxy::start(&split_yaml(&stable, &canary, 5, &manual)).await;
    let before = p.admin("GET", "/routes").await.json();
    let keys: Vec<String> = (0..300).map(|i| format!("keep-{i}")).collect();
    let mut assigned = Vec::new();
    for k in &keys {
        assigned.push(
            p.get("/", &[("x-user-id", k)])
                .await
                .header("x-cohort")
                .unwrap()
                .to_string(),
        );
    }

    let bad = split_yaml(&stable, &canary, 5, &manual).replace("percent: 5\n", "percent: 6\n");
    std::fs::write(p.dir.path().join("cohort.yaml"), &bad).unwrap();
    let Outcome::Rejected(message) = p.running.reload("test").await else {
        panic!("sum 101 accepted")
    };
    assert!(
        message.contains("routes[0].split: percents sum to 101, not exactly 100"),
        "{message}"
    );

    let after = p.admin("GET", "/routes").await.json();
    assert_eq!(after["routes"], before["routes"]);
    assert_eq!(after["generation"], 1);
    let last = after["last_reload_error"]["message"].as_str().unwrap();
    assert!(
        last.contains("cohort.yaml:") && last.contains("routes[0].split"),
        "{last}"
    );
    for (k, was) in keys.iter().zip(&assigned) {
        assert_eq!(
            p.get("/", &[("x-user-id", k)]).await.header("x-cohort"),
            Some(was.as_str()),
            "{k}"
        );
    }
    let s = p.scrape().await;
    assert_eq!(
        s.metric("cohort_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        s.metric("cohort_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert_eq!(s.metric("cohort_config_generation", &[]), 1.0);
}

#[tokio::test]
async fn listener_changes_need_a_restart() {
    let (stable, canary) = mocks().await;
    let p = TestProxy::start(&split_yaml(&stable, &canary, 5, &[])).await;
    let moved = split_yaml(&stable, &canary, 50, &[]).replace("name: public", "name: renamed");
    std::fs::write(p.dir.path().join("cohort.yaml"), moved).unwrap();
    let Outcome::Rejected(message) = p.running.reload("test").await else {
        panic!("listener change applied")
    };
    assert!(
        message.contains(cohort::control::reload::NEEDS_RESTART),
        "{message}"
    );
    assert_eq!(
        canary_weight(&p),
        500,
        "the split change in the same file is not applied half-way"
    );
}

#[tokio::test]
async fn reloads_open_no_upstream_connections_and_keep_counters() {
    let (stable, canary) = mocks().await;
    let five = split_yaml(&stable, &canary, 5, &[]);
    let ten = split_yaml(&stable, &canary, 10, &[]);
    let p = TestProxy::start(&five).await;
    let path = p.dir.path().join("cohort.yaml");
    // user-1 (bucket 9341) is stable at 5% and canary at 10%; alice (2871) is always stable;
    // user-3 (9955) is always canary.
    let fixed = [("alice", "stable"), ("user-3", "canary")];
    for (k, c) in fixed {
        assert_eq!(
            p.get("/", &[("x-user-id", k)]).await.header("x-cohort"),
            Some(c)
        );
    }
    let conns = (stable.connections(), canary.connections());
    assert_eq!(
        conns,
        (1, 1),
        "one pooled connection per upstream after warm-up"
    );

    for n in 0..50 {
        write_atomic(&path, if n % 2 == 0 { &ten } else { &five });
        p.running.reload("test").await;
        for (k, c) in fixed {
            // The upstream connection goes back to the pool just after the client has the
            // last byte; give it that moment so a new connection could only be the reload's.
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(
                p.get("/", &[("x-user-id", k)]).await.header("x-cohort"),
                Some(c)
            );
        }
    }
    assert_eq!(
        (stable.connections(), canary.connections()),
        conns,
        "reloads opened upstream connections"
    );
    let s = p.scrape().await;
    let two = [
        ("route", "agent"),
        ("cohort", "stable"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        s.metric("cohort_requests_total", &two),
        51.0,
        "counters never reset across reloads"
    );
}
