//! Tests of the mock's OpenAI shapes: the request read, the counts composed, and the JSON and
//! SSE bodies parsed back as a client would.

use serde_json::Value;

use super::*;

const REQ: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You help."},{"role":"user","content":"I forgot my password"}],"stream":true,"stream_options":{"include_usage":true}}"#;

fn reply_to(body: &str) -> Reply {
    let req = parse(body.as_bytes()).expect("a valid request");
    compose(&AgentSpec::stable(), &req, body.as_bytes(), 1_700_000_000)
}

#[test]
fn reads_a_chat_request_and_refuses_others() {
    let req = parse(REQ.as_bytes()).unwrap();
    assert_eq!(
        req,
        ChatRequest {
            model: "gpt-4o-mini".into(),
            content_chars: 29,
            stream: true,
            include_usage: true,
        }
    );
    let plain = parse(
        br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"abcd"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        (plain.stream, plain.include_usage, plain.content_chars),
        (false, false, 4)
    );
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"model":"m","messages":[]}"#,
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
    ] {
        assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    let err: Value = serde_json::from_str(&error_json("nope", "invalid_request_error")).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(err["error"]["message"], "nope");
}

#[test]
fn counts_are_deterministic_per_request_and_realistic() {
    let (a, b) = (reply_to(REQ), reply_to(REQ));
    assert_eq!(
        (a.id.clone(), a.usage, a.text()),
        (b.id.clone(), b.usage, b.text())
    );
    assert!(
        a.id.starts_with("chatcmpl-") && a.id.len() == 9 + 24,
        "{}",
        a.id
    );
    assert_eq!(a.usage.prompt_tokens, 29 / 4 + 12);
    assert!((120..=260).contains(&a.usage.completion_tokens));
    assert_eq!(a.pieces.len() as u64, a.usage.completion_tokens);
    assert_eq!(
        a.usage.total_tokens,
        a.usage.prompt_tokens + a.usage.completion_tokens
    );
    assert_eq!(
        a.usage.prompt_tokens_details.cached_tokens, 0,
        "short prompts are not cached"
    );
    let other = reply_to(&REQ.replace("password", "passphrase"));
    assert_ne!(other.id, a.id, "another request, another reply");

    let long = REQ.replace("You help.", &"x".repeat(8000));
    let (mut cached, mut seen) = (0, 0);
    for i in 0..30 {
        let r = reply_to(&long.replace("gpt-4o-mini", &format!("m{i}")));
        let (p, k) = (
            r.usage.prompt_tokens,
            r.usage.prompt_tokens_details.cached_tokens,
        );
        assert!(
            k == 0 || (k % 64 == 0 && (1024..=p).contains(&k)),
            "{k} of {p}"
        );
        cached += usize::from(k > 0);
        seen += 1;
    }
    assert!(
        cached > 0 && cached < seen,
        "some long prompts hit the cache: {cached}/{seen}"
    );
}

#[test]
fn verbosity_multiplies_completion_tokens() {
    let req = parse(REQ.as_bytes()).unwrap();
    let plain = compose(&AgentSpec::canary(), &req, REQ.as_bytes(), 0);
    let wordy = AgentSpec::canary().talking(Some(2.0), None);
    let more = compose(&wordy, &req, REQ.as_bytes(), 0);
    assert_eq!(
        more.usage.completion_tokens,
        2 * plain.usage.completion_tokens
    );
}

#[test]
fn the_json_answer_has_openais_shape() {
    let r = reply_to(REQ);
    let v: Value = serde_json::from_str(&r.json()).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&v),
        ["choices", "created", "id", "model", "object", "usage"]
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        (v["created"].as_u64(), v["model"].as_str()),
        (Some(1_700_000_000), Some("gpt-4o-mini"))
    );
    let choice = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(
        (choice["index"].as_u64(), choice["finish_reason"].as_str()),
        (Some(0), Some("stop"))
    );
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"].as_str(),
        Some(r.text().as_str())
    );
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"].as_u64(), Some(r.usage.prompt_tokens));
    assert_eq!(
        u["completion_tokens"].as_u64(),
        Some(r.usage.completion_tokens)
    );
    assert_eq!(u["total_tokens"].as_u64(), Some(r.usage.total_tokens));
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(0)
    );
}

/// The events of an SSE body, as a client splits them, each `data:` payload as JSON (or the
/// literal `[DONE]`).
fn parse_sse(body: &str) -> Vec<Result<Value, String>> {
    assert!(body.ends_with("\n\n"), "an event ends with a blank line");
    body.split_terminator("\n\n")
        .map(|ev| {
            let data = ev.strip_prefix("data: ").expect("a data line");
            serde_json::from_str(data).map_err(|_| data.to_string())
        })
        .collect()
}

#[test]
fn the_stream_has_one_chunk_per_token_then_usage_then_done() {
    let r = reply_to(REQ);
    let c = r.usage.completion_tokens as usize;
    for include_usage in [true, false] {
        let events = r.events(include_usage);
        let parsed = parse_sse(&events.concat());
        assert_eq!(parsed.len(), events.len(), "each event is one frame");
        assert_eq!(
            parsed.last(),
            Some(&Err("[DONE]".to_string())),
            "[DONE] is last"
        );
        let chunks: Vec<&Value> = parsed[..parsed.len() - 1]
            .iter()
            .map(|e| e.as_ref().expect("JSON before [DONE]"))
            .collect();
        for ch in &chunks {
            assert_eq!(ch["object"], "chat.completion.chunk");
            assert_eq!(
                (ch["id"].as_str(), ch["model"].as_str()),
                (Some(r.id.as_str()), Some("gpt-4o-mini"))
            );
        }
        let with_choice: Vec<&&Value> = chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .collect();
        assert_eq!(with_choice[0]["choices"][0]["delta"]["role"], "assistant");
        let content: Vec<&str> = with_choice[1..]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(content.len(), c, "one content chunk per completion token");
        assert_eq!(content.concat(), r.text());
        let finish: Vec<Option<&str>> = with_choice
            .iter()
            .map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish.last(), Some(&Some("stop")));
        assert!(finish[..finish.len() - 1].iter().all(Option::is_none));
        let usage: Vec<&&Value> = chunks
            .iter()
            .filter(|c| c["choices"].as_array().unwrap().is_empty())
            .collect();
        if include_usage {
            assert_eq!(usage.len(), 1, "one usage chunk");
            assert!(
                chunks[chunks.len() - 1]["choices"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "the usage chunk comes last"
            );
            assert_eq!(
                usage[0]["usage"]["completion_tokens"].as_u64(),
                Some(c as u64)
            );
            assert!(with_choice
                .iter()
                .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
        } else {
            assert!(usage.is_empty());
            assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        }
    }
}

#[test]
fn pieces_are_the_reply_cut_before_words_and_punctuation() {
    let p = pieces();
    assert_eq!(p.concat(), REPLY);
    assert_eq!(&p[..6], ["Thanks", " for", " reaching", " out", ".", " I"]);
    assert!(p.iter().all(|w| !w.is_empty() && w.len() < 12), "{p:?}");
}
