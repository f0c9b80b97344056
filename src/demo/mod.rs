//! `cohort demo`: two built-in mock agents (stable and canary) and the proxy in front of them,
//! optionally with its own load and a live table comparing the cohorts; and the pieces the
//! container setup reuses: `cohort demo-agent` (one mock agent) and `cohort demo-load` (the
//! load generator against any proxy).
//!
//! Owns: the mock agent (`agent`, speaking OpenAI's chat completions through `openai`), the
//! load generator (`load`, which also re-exports `control::healthcheck::probe`, the health
//! probe production runs), the live table (`table`), the rollout's screen (`rollout`) and the
//! demo's printed guide. Must not touch: the proxy's own modules
//! beyond starting it through `app` and reading its metrics.

pub mod agent;
mod args;
pub mod load;
pub mod logs;
pub mod openai;
pub mod rollout;
mod spec;
pub mod table;

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

pub use agent::{serve_agent, AgentSpec, ChannelBody};
pub use args::{parse_rate, AgentArgs, DemoArgs, LoadArgs};
use load::{LoadSpec, Tally};
use table::{Snapshot, Window};

/// The demo configuration, built in so `cohort demo` works from any directory.
pub const DEMO_YAML: &str = include_str!("../../config/demo.yaml");

/// `cohort demo --rollout`'s configuration: demo.yaml with a rollout of the canary.
pub const DEMO_ROLLOUT_YAML: &str = include_str!("../../config/demo-rollout.yaml");

/// `config/demo-rollout.yaml` (its built-in copy when that file is absent) written with its
/// `state_dir` in a fresh temporary directory, so that each `cohort demo --rollout` starts
/// the rollout over instead of resuming the last run's (a rollback is final for its id).
pub fn rollout_config() -> std::io::Result<(PathBuf, tempfile::TempDir)> {
    let text = std::fs::read_to_string("config/demo-rollout.yaml")
        .unwrap_or_else(|_| DEMO_ROLLOUT_YAML.to_string());
    let dir = tempfile::tempdir()?;
    let state = serde_json::Value::from(dir.path().join("state").display().to_string());
    let yaml: String = text
        .lines()
        .map(|l| match l.starts_with("state_dir:") {
            // A JSON string is a YAML double-quoted scalar.
            true => format!("state_dir: {state}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    let path = dir.path().join("demo-rollout.yaml");
    std::fs::write(&path, yaml)?;
    Ok((path, dir))
}

/// The table compares cohorts over this much recent time.
const WINDOW: Duration = Duration::from_secs(10);

/// The address a demo upstream endpoint (`ip:port` or `http://ip:port[/]`) names.
fn endpoint_addr(endpoint: &str) -> Option<SocketAddr> {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    rest.strip_suffix('/').unwrap_or(rest).parse().ok()
}

/// Runs the demo: the mock agents on the upstream addresses of `config` (stable and canary),
/// then the proxy, until SIGTERM, SIGINT or SIGHUP; with `--load` or `--table`, the load and the table.
pub async fn run(config: &Path, args: &DemoArgs) -> Result<(), DemoError> {
    let loaded = crate::config::load(config)?;
    for (name, spec) in [("stable", args.stable()), ("canary", args.canary())] {
        let Some(up) = loaded.raw.upstreams.get(name) else {
            return Err(DemoError::Missing(name));
        };
        for ep in &up.endpoints {
            let addr = endpoint_addr(ep)
                .ok_or_else(|| DemoError::Agent(ep.clone(), "not an ip:port".into()))?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| DemoError::Agent(ep.clone(), e.to_string()))?;
            tokio::spawn(serve_agent(listener, spec.clone()));
        }
    }
    let running = crate::app::start(config).await?;
    print_guide(&running);
    let public = running.listeners.first().map(|(_, a)| *a);
    let rps = args.load_rps();
    let tally = match (rps, public) {
        (Some(rps), Some(public)) => Some(load::spawn(LoadSpec {
            base: format!("http://{public}"),
            path: "/v1/chat/completions".into(),
            rps,
            requests: args.requests,
            users: args.users,
        })),
        _ => None,
    };
    if rps.is_some() || args.table {
        let control = Arc::clone(&running.control);
        let rollouts = args
            .rollout
            .then(|| rollout::Source::new(format!("http://{}/rollouts", running.admin_address)));
        let title = match rps {
            Some(rps) => format!(
                "cohort demo: {rps} req/s from random users; last {}s",
                WINDOW.as_secs()
            ),
            None => format!("cohort demo: last {}s", WINDOW.as_secs()),
        };
        tokio::spawn(report(
            move || {
                let table = control.current();
                let order = table
                    .routes
                    .iter()
                    .flat_map(|r| r.cohorts.iter().map(|c| (r.name.clone(), c.name.clone())))
                    .collect();
                (Snapshot::from_scrape(&control.metrics.render()), order)
            },
            title,
            Duration::from_secs(1),
            tally,
            rollouts,
        ));
    }
    // Closing the demo's terminal ends it, ports and all.
    crate::app::wait_for_signals(&running, crate::app::Hangup::Stop).await;
    logs::release();
    running.shutdown().await;
    Ok(())
}

/// `cohort demo-load`: drives `args` until SIGTERM/SIGINT, or until a bounded run is done.
pub async fn run_load(args: &LoadArgs) {
    let tally = load::spawn(LoadSpec {
        base: args.target.trim_end_matches('/').to_string(),
        path: args.path.clone(),
        rps: args.rps,
        requests: args.requests,
        users: args.users,
    });
    let title = format!(
        "cohort demo-load: {} req/s to {}; last {}s",
        args.rps,
        args.target,
        WINDOW.as_secs()
    );
    let every = if std::io::stdout().is_terminal() {
        1
    } else {
        args.report_every.max(1)
    };
    let view = Arc::clone(&tally);
    let reporter = tokio::spawn(report(
        move || (view.snapshot(), Vec::new()),
        title,
        Duration::from_secs(every),
        Some(Arc::clone(&tally)),
        None,
    ));
    let finished = async {
        while !tally.finished.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = finished => {}
        _ = stop_signal() => {}
    }
    reporter.abort();
    logs::release();
    if !std::io::stdout().is_terminal() || !tally.finished.load(Ordering::Acquire) {
        for l in tally.totals() {
            println!("{l}");
        }
    }
}

/// Every `every`, reads counts from `source` and prints the table (on a terminal, redrawn in
/// place) or plain lines, and below it the rollout read from `rollouts`; once a bounded load
/// is done, its exact totals.
async fn report<F>(
    source: F,
    title: String,
    every: Duration,
    tally: Option<Arc<Tally>>,
    rollouts: Option<rollout::Source>,
) where
    F: Fn() -> (Snapshot, Vec<(String, String)>) + Send + 'static,
{
    let tty = std::io::stdout().is_terminal();
    if tty {
        logs::hold();
    }
    let started = Instant::now();
    let mut window = Window::new(WINDOW);
    let mut tick = tokio::time::interval(every);
    let (mut drawn, mut totals_printed) = (0, false);
    let mut decisions_printed = HashSet::new();
    loop {
        tick.tick().await;
        let report = match &rollouts {
            Some(r) => Some(r.fetch().await),
            None => None,
        };
        let (snap, order) = source();
        let rows = window.push(Instant::now(), snap, &order);
        let finished = tally
            .as_ref()
            .filter(|t| t.finished.load(Ordering::Acquire));
        let mut out = std::io::stdout().lock();
        if tty {
            // Held log lines go above the table: up over the old table, clear it, print them,
            // then the table again below them.
            let held = logs::take();
            if !held.is_empty() {
                if drawn > 0 {
                    let _ = write!(out, "\x1b[{drawn}A\x1b[J");
                }
                let _ = out.write_all(&held);
                drawn = 0;
            }
            let mut lines = table::render(&title, &rows);
            lines.push(String::new());
            lines.extend(table::tokens(&rows));
            if let Some(report) = &report {
                lines.push(String::new());
                lines.extend(rollout::render(report.as_ref()));
            }
            if let Some(t) = finished {
                lines.push("load finished:".into());
                lines.extend(t.totals());
            }
            let _ = out.write_all(table::redraw(drawn, &lines).as_bytes());
            drawn = lines.len();
        } else {
            for l in table::plain(started.elapsed(), &rows) {
                let _ = writeln!(out, "{l}");
            }
            if let Some(report) = &report {
                let elapsed = started.elapsed();
                for l in rollout::plain(elapsed, report.as_ref(), &mut decisions_printed) {
                    let _ = writeln!(out, "{l}");
                }
            }
            if let (Some(t), false) = (finished, totals_printed) {
                let _ = writeln!(out, "load finished");
                for l in t.totals() {
                    let _ = writeln!(out, "{l}");
                }
                totals_printed = true;
            }
        }
        let _ = out.flush();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn print_guide(running: &crate::app::Running) {
    let public = running
        .listeners
        .first()
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    let admin = running.admin_address;
    println!(
        "\ncohort demo is serving on http://{public} (admin on http://{admin})\n\
         stable and canary mock agents are running; the split is in config/demo.yaml.\n\n\
         Try:\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-user-id: alice'          # sticky: alice always gets the same cohort\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-user-id: user-3'\n\
         \x20 curl -sN http://{public}/v1/chat/stream -H 'x-user-id: bob'     # an SSE token stream\n\
         \x20 curl -sN http://{public}/v1/chat/completions -H 'x-user-id: carol' \\\n\
         \x20     -d '{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"stream_options\":{{\"include_usage\":true}},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n\
         \x20 curl -si http://{public}/v1/chat -H 'x-cohort-override: canary' # forced cohort (trusted peers only)\n\
         \x20 cargo run --release -- assign --config config/demo.yaml --route support-agent alice bob\n\
         \x20 curl -s http://{admin}/routes\n\
         \x20 curl -s http://{admin}/metrics | grep ^cohort_\n\n\
         Press Ctrl-C to stop.\n"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error("the demo config needs an upstream called {0:?}")]
    Missing(&'static str),
    #[error("cannot start the mock agent on {0}: {1}")]
    Agent(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_endpoints_are_socket_addresses() {
        assert_eq!(
            endpoint_addr("127.0.0.1:18001"),
            Some(([127, 0, 0, 1], 18001).into())
        );
        assert_eq!(
            endpoint_addr("http://127.0.0.1:18002/"),
            Some(([127, 0, 0, 1], 18002).into())
        );
        assert_eq!(endpoint_addr("http://agent.svc:80"), None);
    }
}
