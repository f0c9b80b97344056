//! The official `openai` and `anthropic` Python clients through cohort (issue 17): each
//! makes a streamed and a non-streamed call to mock agents that send known usage, and reads
//! back what it parsed; the test then checks that the client got the agent's content and
//! usage, that its first streamed event was not held back, and that cohort's token and cost
//! counters are exact.
//!
//! Needs `python3` with `pip install openai anthropic`; without them the test prints SKIPPED
//! and passes, unless COHORT_REQUIRE_CLIENTS=1 (as `.ci/run` sets).

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::bodies::{chat_stream, ANTHROPIC_JSON, ANTHROPIC_STREAM, CHAT_JSON};
use support::{Config, Frames, MockUpstream, Respond, Route, TestProxy};

const SCRIPT: &str = r#"
import json, sys, time
import anthropic, openai

base = sys.argv[1]
out = {}
o = openai.OpenAI(base_url=base + "/openai-json/v1", api_key="k", max_retries=0)
r = o.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
out["openai_json"] = {"content": r.choices[0].message.content, "usage": r.usage.model_dump()}

o = openai.OpenAI(base_url=base + "/openai-sse/v1", api_key="k", max_retries=0)
start = time.monotonic()
stream = o.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                   stream=True, stream_options={"include_usage": True})
first, text, usage, chunks = None, "", None, 0
for c in stream:
    chunks += 1
    if first is None:
        first = time.monotonic() - start
    if c.choices and c.choices[0].delta.content:
        text += c.choices[0].delta.content
    if c.usage:
        usage = c.usage.model_dump()
out["openai_sse"] = {"content": text, "usage": usage, "chunks": chunks,
                     "first": first, "total": time.monotonic() - start}

a = anthropic.Anthropic(base_url=base + "/anthropic-json", api_key="k", max_retries=0)
m = a.messages.create(model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
out["anthropic_json"] = {"content": m.content[0].text, "usage": m.usage.model_dump()}

a = anthropic.Anthropic(base_url=base + "/anthropic-sse", api_key="k", max_retries=0)
with a.messages.stream(model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
out["anthropic_sse"] = {"content": text, "usage": final.usage.model_dump()}
print(json.dumps(out))
"#;

fn clients_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("COHORT_REQUIRE_CLIENTS").is_some() {
        panic!("COHORT_REQUIRE_CLIENTS is set but python3 cannot import openai and anthropic");
    }
    ok
}

/// The SSE `body` as two frames: its first event, then, `gap` later, the rest.
fn first_then_rest(body: &str, gap: Duration) -> Frames {
    let first = body.find("\n\n").unwrap() + 2;
    Frames {
        gap,
        ..Frames::cut("text/event-stream", body.as_bytes(), &[first])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_and_anthropic_clients_get_the_agents_answers_and_cohort_counts_their_usage() {
    if !clients_available() {
        eprintln!("SKIPPED: python3 with the openai and anthropic packages is not available");
        return;
    }
    let hold = Duration::from_millis(1500);
    let mocks = [
        (
            "openai-json",
            Frames::cut("application/json", CHAT_JSON.as_bytes(), &[40]),
        ),
        ("openai-sse", first_then_rest(&chat_stream(20), hold)),
        (
            "anthropic-json",
            Frames::cut("application/json", ANTHROPIC_JSON.as_bytes(), &[]),
        ),
        (
            "anthropic-sse",
            first_then_rest(ANTHROPIC_STREAM, Duration::ZERO),
        ),
    ];
    let mut config = Config::new();
    let mut upstreams = Vec::new();
    for (name, frames) in mocks {
        let mock = MockUpstream::with(name, Respond::Frames(Arc::new(frames))).await;
        let price = "price: {input_per_million: 2.5, output_per_million: 10, cached_input_per_million: 1.25}";
        config = config.upstream_with(name, mock.addr, &[price]).route(
            Route::new(name)
                .matching(&format!("path_prefix: /{name}/"))
                .single(name),
        );
        upstreams.push(mock);
    }
    let p = TestProxy::start(&config.yaml()).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("clients.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let base = format!("http://{}", p.public);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(&base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the clients failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    // What each client parsed is what its agent sent.
    let oj = &got["openai_json"];
    assert_eq!(oj["content"], "Your order ships today. {\"usage\": 9}");
    assert_eq!(
        (
            &oj["usage"]["prompt_tokens"],
            &oj["usage"]["completion_tokens"]
        ),
        (&812.into(), &164.into())
    );
    let os = &got["openai_sse"];
    let text: String = (0..20).map(|i| format!("tok{i} ")).collect();
    assert_eq!(os["content"], text.as_str());
    assert_eq!(os["chunks"], 22, "{os}");
    assert_eq!(os["usage"]["completion_tokens"], 17);
    // The first event reached the client before the agent had sent the rest.
    let (first, total) = (os["first"].as_f64().unwrap(), os["total"].as_f64().unwrap());
    assert!(
        first + 1.0 < total,
        "first event at {first} s of {total} s: held back"
    );
    for k in ["anthropic_json", "anthropic_sse"] {
        assert_eq!(got[k]["content"], "Hello there", "{k}");
        let u = &got[k]["usage"];
        assert_eq!(
            (
                &u["input_tokens"],
                &u["output_tokens"],
                &u["cache_read_input_tokens"]
            ),
            (&25.into(), &15.into(), &10.into()),
            "{k}"
        );
    }

    // And cohort counted each answer's usage exactly.
    let expect = [
        ("openai-json", 812.0, 164.0, 256.0),
        ("openai-sse", 40.0, 17.0, 0.0),
        ("anthropic-json", 40.0, 15.0, 10.0),
        ("anthropic-sse", 40.0, 15.0, 10.0),
    ];
    for (route, input, output, cached) in expect {
        let labels = |kind: &'static str| [("route", route), ("cohort", route), ("kind", kind)];
        p.expect_metric("cohort_tokens_total", &labels("output"), output)
            .await;
        let s = p.scrape().await;
        assert_eq!(
            s.metric("cohort_tokens_total", &labels("input")),
            input,
            "{route}"
        );
        assert_eq!(
            s.metric("cohort_tokens_total", &labels("cached_input")),
            cached,
            "{route}"
        );
        let cost = s.metric(
            "cohort_answer_cost_sum",
            &[("route", route), ("cohort", route)],
        );
        let want = ((input - cached) * 2.5 + cached * 1.25 + output * 10.0) / 1e6;
        assert!(
            (cost - want).abs() < 1e-12,
            "{route}: {cost} against {want}"
        );
    }
    let s = p.scrape().await;
    s.assert_well_formed();
    let sse = [("route", "openai-sse"), ("cohort", "openai-sse")];
    assert_eq!(
        s.metric("cohort_time_to_first_token_seconds_count", &sse),
        1.0
    );
    assert_eq!(s.metric("cohort_inter_token_seconds_count", &sse), 22.0);
}
