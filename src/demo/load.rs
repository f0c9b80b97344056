//! The demo's load generator: a steady request rate from random users against a proxy (or any
//! URL), as OpenAI-style chat completions (about half of them streamed, with usage), tallying
//! what comes back by the `x-cohort` response header; and the tiny HTTP probe behind `cohort
//! healthcheck`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::table::{Counts, Snapshot};

/// Requests past this many in flight wait, so a stuck backend cannot grow the load unbounded.
const MAX_IN_FLIGHT: usize = 2048;
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The route label the tally files its cohorts under (the client does not know the route).
pub const ROUTE: &str = "load";

#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `http://host:port`, where the requests go.
    pub base: String,
    /// Where the chat completions go (`/v1/chat/completions`).
    pub path: String,
    /// Requests per second.
    pub rps: f64,
    /// Stop after this many requests; `None` runs until the process ends.
    pub requests: Option<u64>,
    /// Users are `user-1` ..= `user-{users}`, drawn at random for each request.
    pub users: u32,
}

/// What the load generator has seen so far.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<Snapshot>,
    /// Requests that got no response (connect error, reset, timeout).
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub done: AtomicU64,
    /// Set once every request of a bounded run has been sent and answered.
    pub finished: AtomicBool,
}

impl Tally {
    /// A copy of the counts, by (`ROUTE`, cohort).
    pub fn snapshot(&self) -> Snapshot {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(
        &self,
        cohort: String,
        status: StatusCode,
        outcome: Option<String>,
        ttfb: f64,
        total: f64,
    ) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c: &mut Counts = counts
            .cohorts
            .entry((ROUTE.to_string(), cohort))
            .or_default();
        c.requests += 1.0;
        if status.is_server_error() {
            c.errors += 1.0;
        }
        if let Some(o) = outcome {
            *c.outcomes.entry(o).or_default() += 1.0;
        }
        c.ttfb.observe(ttfb);
        c.duration.observe(total);
    }

    /// One `total ...` line per cohort with exact counts, then one for failures.
    pub fn totals(&self) -> Vec<String> {
        let snap = self.snapshot();
        let mut lines: Vec<String> = snap
            .cohorts
            .iter()
            .map(|((_, cohort), c)| {
                let mut l = format!(
                    "total cohort={cohort} requests={} errors={}",
                    c.requests, c.errors
                );
                for (o, n) in &c.outcomes {
                    l.push_str(&format!(" {o}={n}"));
                }
                l
            })
            .collect();
        lines.push(format!(
            "total sent={} answered={} failed={}",
            self.sent.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed) - self.failed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        ));
        lines
    }
}

type LoadClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Starts the load in the background; the tally fills as answers arrive.
pub fn spawn(spec: LoadSpec) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    tokio::spawn(drive(spec, Arc::clone(&tally)));
    tally
}

async fn drive(spec: LoadSpec, tally: Arc<Tally>) {
    let client: LoadClient = Client::builder(TokioExecutor::new()).build_http();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Ticks of at least 10 ms; each sends the requests the rate owes since the last one.
    let period = Duration::from_secs_f64((1.0 / spec.rps).max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut owed) = (Instant::now(), 1.0f64);
    let limit = spec.requests.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while sent < limit {
        tick.tick().await;
        let now = Instant::now();
        owed += spec.rps * now.duration_since(last).as_secs_f64();
        last = now;
        while owed >= 1.0 && sent < limit {
            owed -= 1.0;
            sent += 1;
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let (client, tally, spec) = (client.clone(), Arc::clone(&tally), spec.clone());
            tasks.spawn(async move {
                one(&client, &spec, &tally).await;
                tally.done.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
    tally.finished.store(true, Ordering::Release);
}

/// What users ask, from a line to a paragraph.
const QUESTIONS: &[&str] = &[
    "I forgot my password",
    "How do I change the email address on my account?",
    "My invoice for last month shows the same charge twice. Can you refund one of them and tell me why it happened?",
    "I am moving to another country next month. Will my subscription keep working there, do prices change, and do I need to update my billing address before or after the move?",
    "The app logs me out every few minutes on my phone, but not on my laptop. I have reinstalled it twice, cleared the cache, and checked that the clock is right. What else can I try before I give up on it?",
];

/// A support agent's instructions, long enough (about 1,100 tokens) for a provider to cache.
fn system_prompt() -> String {
    "You are the support agent of an online service. Answer briefly and politely, ask for \
     the account's email address before changing anything, never reveal another user's data, \
     and hand the conversation to a human when the user asks for one. "
        .repeat(20)
}

/// An OpenAI chat completion request: one to three user turns, a long system prompt in a
/// quarter of them, streamed (with usage) about half the time.
fn chat_body(stream: bool) -> String {
    let mut messages = Vec::new();
    if fastrand::u8(..4) == 0 {
        messages.push(serde_json::json!({"role": "system", "content": system_prompt()}));
    }
    for turn in 0..fastrand::usize(1..=3) {
        if turn > 0 {
            messages.push(
                serde_json::json!({"role": "assistant", "content": "Could you tell me more?"}),
            );
        }
        let q = QUESTIONS[fastrand::usize(..QUESTIONS.len())];
        let order = fastrand::u32(1000..100_000);
        messages
            .push(serde_json::json!({"role": "user", "content": format!("{q} (order {order})")}));
    }
    let mut body =
        serde_json::json!({"model": "gpt-4o-mini", "messages": messages, "stream": stream});
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

async fn one(client: &LoadClient, spec: &LoadSpec, tally: &Tally) {
    let user = fastrand::u32(1..=spec.users.max(1));
    let stream = fastrand::bool();
    let Ok(req) = Request::post(format!("{}{}", spec.base, spec.path))
        .header("x-user-id", format!("user-{user}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(stream))))
    else {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let start = Instant::now();
    let exchange = async {
        let resp = client.request(req).await.ok()?;
        let (parts, mut body) = resp.into_parts();
        let mut ttfb = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if ttfb.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                ttfb = Some(start.elapsed());
            }
        }
        let total = start.elapsed();
        Some((parts, ttfb.unwrap_or(total), total))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Some((parts, ttfb, total))) => {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let cohort = header("x-cohort").unwrap_or_else(|| "-".into());
            let outcome = header("x-agent-outcome");
            tally.record(
                cohort,
                parts.status,
                outcome,
                ttfb.as_secs_f64(),
                total.as_secs_f64(),
            );
        }
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The health probe is production's: `cohort healthcheck` and the demo's containers run the same GET.
pub use crate::control::healthcheck::probe;
