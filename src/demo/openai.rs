//! The mock agent's OpenAI-compatible `POST /v1/chat/completions`: reading the request,
//! composing a deterministic reply (text and token usage) and writing it as one
//! `chat.completion` JSON or as a `chat.completion.chunk` SSE stream, one event per frame.
//!
//! Owns: the protocol's JSON shapes and the token arithmetic. Must not touch: the agent's
//! knobs (read from [`AgentSpec`], `spec`) or its connection handling (`agent`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::spec::{AgentSpec, ChannelBody};

/// A chat request is a few messages: anything larger is not what the demo sends.
const MAX_BODY: usize = 1 << 20;
/// Below this many prompt tokens OpenAI caches nothing; above, in multiples of `CACHE_BLOCK`.
const CACHE_MIN: u64 = 1024;
const CACHE_BLOCK: u64 = 64;

/// The reply's text, cycled through as word pieces (see [`pieces`]).
const REPLY: &str =
    "Thanks for reaching out. I have reset your password; check your inbox for a link \
    that expires in one hour. If it does not arrive, look in the spam folder or ask me to send \
    it again. Is there anything else I can help with?";

/// `REPLY` cut before each space and punctuation mark: each piece is one streamed token, as a
/// real model streams them (a leading space belongs to the word after it).
fn pieces() -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut from = 0;
    for (i, c) in REPLY.char_indices().skip(1) {
        if c == ' ' || c.is_ascii_punctuation() {
            out.push(&REPLY[from..i]);
            from = i;
        }
    }
    out.push(&REPLY[from..]);
    out
}

/// What the mock reads of a chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// Characters of all the messages' content.
    pub content_chars: usize,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct RawRequest {
    model: String,
    messages: Vec<RawMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[allow(dead_code)] // required by the protocol, read for validation only
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Characters of a message's content: a string, or the text of an array of parts.
fn chars(content: &serde_json::Value) -> usize {
    match content {
        serde_json::Value::String(s) => s.chars().count(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
    }
}

/// Reads a request body; the error is the message of the 400 it gets.
pub fn parse(body: &[u8]) -> Result<ChatRequest, String> {
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a chat completion request: {e}"))?;
    if raw.messages.is_empty() {
        return Err("'messages' must hold at least one message".into());
    }
    Ok(ChatRequest {
        model: raw.model,
        content_chars: raw.messages.iter().map(|m| chars(&m.content)).sum(),
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: Details,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Details {
    pub cached_tokens: u64,
}

/// One reply, composed before any of it is sent.
#[derive(Debug, Clone)]
pub struct Reply {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// One per completion token.
    pub pieces: Vec<&'static str>,
    pub usage: Usage,
}

/// FNV-1a: a seed that is the same for the same request on every run and platform.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The reply `spec` gives `req` (whose body was `body`): the same request to the same agent
/// gets the same id, text and counts, so a reply can be compared through the proxy.
pub fn compose(spec: &AgentSpec, req: &ChatRequest, body: &[u8], created: u64) -> Reply {
    let mut rng = fastrand::Rng::with_seed(fnv(&[spec.name.as_bytes(), b"\0", body]));
    let prompt = (req.content_chars as u64 / 4 + 12).max(1);
    let (lo, hi) = spec.completion_tokens;
    let drawn = f64::from(rng.u32(lo.min(hi)..=hi.max(lo)));
    let completion = ((drawn * spec.verbosity).round() as u64).max(1);
    // Two prompts in three that are long enough hit the cache for most of their prefix.
    let cached = if prompt >= CACHE_MIN && rng.u8(..3) != 0 {
        (prompt * 3 / 4 / CACHE_BLOCK * CACHE_BLOCK).max(CACHE_MIN)
    } else {
        0
    };
    let id: String = (0..24)
        .map(|_| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.usize(..62)],
            )
        })
        .collect();
    Reply {
        id: format!("chatcmpl-{id}"),
        created,
        model: req.model.clone(),
        pieces: pieces()
            .into_iter()
            .cycle()
            .take(completion as usize)
            .collect(),
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Details {
                cached_tokens: cached,
            },
        },
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless usage was asked for; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }

    /// The non-streamed answer: one `chat.completion` object.
    pub fn json(&self) -> String {
        let text = self.text();
        let body = Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: &text,
                },
                finish_reason: "stop",
            }],
            usage: self.usage,
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    fn chunk(
        &self,
        delta: Delta<'_>,
        finish: Option<&'static str>,
        usage: Option<Option<Usage>>,
    ) -> String {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }],
            usage,
        };
        format!(
            "data: {}\n\n",
            serde_json::to_string(&chunk).unwrap_or_default()
        )
    }

    /// The streamed answer, event by event: the role, one chunk per token (the last with
    /// `finish_reason: "stop"`), the usage chunk when asked for, then `[DONE]`.
    pub fn events(&self, include_usage: bool) -> Vec<String> {
        let null = include_usage.then_some(None);
        let mut out = Vec::with_capacity(self.pieces.len() + 3);
        out.push(self.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            None,
            null,
        ));
        let last = self.pieces.len().saturating_sub(1);
        for (i, piece) in self.pieces.iter().enumerate() {
            let delta = Delta {
                role: None,
                content: Some(piece),
            };
            out.push(self.chunk(delta, (i == last).then_some("stop"), null));
        }
        if include_usage {
            let chunk = Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(Some(self.usage)),
            };
            out.push(format!(
                "data: {}\n\n",
                serde_json::to_string(&chunk).unwrap_or_default()
            ));
        }
        out.push("data: [DONE]\n\n".into());
        out
    }
}

/// OpenAI's error body.
pub fn error_json(message: &str, kind: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": kind}}).to_string()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers one chat completion request as `spec` behaves.
pub(super) async fn serve(spec: &AgentSpec, req: Request<Incoming>) -> Response<ChannelBody> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("cannot read the request body: {e}");
            return spec.respond(
                StatusCode::BAD_REQUEST,
                "error",
                error_json(&msg, "invalid_request_error"),
            );
        }
    };
    let chat = match parse(&body) {
        Ok(c) => c,
        Err(msg) => {
            tracing::debug!(agent = %spec.name, %msg, "demo agent: bad chat request");
            let json = error_json(&msg, "invalid_request_error");
            return spec.respond(StatusCode::BAD_REQUEST, "error", json);
        }
    };
    let think = spec.think_time();
    if !think.is_zero() {
        tokio::time::sleep(think).await;
    }
    if spec.fails() {
        let json = error_json("the agent failed (demo error rate)", "server_error");
        return spec.respond(StatusCode::INTERNAL_SERVER_ERROR, "error", json);
    }
    let outcome = spec.outcome();
    let reply = compose(spec, &chat, &body, now_unix());
    if !chat.stream {
        // A model answers whole only once it has generated every token: as long as the
        // stream would take. Answering at once would make a step's first finished samples
        // all non-streamed, and a latency guard compare those with the other cohort's streams.
        let tokens = u32::try_from(reply.pieces.len().saturating_sub(1)).unwrap_or(u32::MAX);
        tokio::time::sleep(spec.first_token_delay + spec.token_delay.saturating_mul(tokens)).await;
        return spec.respond(StatusCode::OK, outcome, reply.json());
    }
    let (tx, body) = ChannelBody::new(4);
    let mut resp = spec.head(StatusCode::OK, outcome, body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let (first, delay) = (spec.first_token_delay, spec.token_delay);
    let events = reply.events(chat.include_usage);
    tokio::spawn(async move {
        if !first.is_zero() {
            tokio::time::sleep(first).await;
        }
        // The role chunk and the first token go out together, then a token every `delay`.
        let tokens = 1..=reply.pieces.len();
        for (i, ev) in events.into_iter().enumerate() {
            if i > 1 && tokens.contains(&i) && delay > Duration::ZERO {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Frame::data(Bytes::from(ev))).await.is_err() {
                return;
            }
        }
    });
    resp
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
