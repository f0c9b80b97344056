//! The cost of reading token usage from response bodies as they pass: a real-sized OpenAI Chat
//! stream (400 content chunks of about 150 bytes and a usage chunk), an Anthropic Messages
//! stream of the same length, and an OpenAI Chat JSON body, fed in 1 KiB frames as hyper
//! would hand them over, each through a fresh scanner.
//!
//!     cargo bench --bench usage_scan -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cohort::usage::{Dialects, Framing, Scanner};

const CHUNKS: usize = 400;
const FRAME: usize = 1024;

/// Words of varying length, some with escapes, as model output reads.
fn word(i: usize) -> &'static str {
    const WORDS: [&str; 8] = [
        " the",
        " agent",
        " returned",
        " a \\\"quoted\\\" value",
        ",",
        " tokens\\n",
        " canary",
        " rollout",
    ];
    WORDS[i % WORDS.len()]
}

fn openai_stream() -> String {
    let mut s = String::new();
    for i in 0..CHUNKS {
        s += &format!(
            "data: {{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
            word(i)
        );
    }
    s += "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":1117,\"completion_tokens\":400,\"total_tokens\":1517,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\ndata: [DONE]\n\n";
    s
}

fn anthropic_stream() -> String {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..CHUNKS {
        s += &format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            word(i)
        );
    }
    s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
          event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":400}}\n\n\
          event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    s
}

fn openai_json() -> String {
    let content: String = (0..CHUNKS).map(word).collect();
    format!(
        "{{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion\",\"created\":1741570283,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\",\"refusal\":null}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":1117,\"completion_tokens\":400,\"total_tokens\":1517,\"prompt_tokens_details\":{{\"cached_tokens\":1024}}}}}}"
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_scan");
    for (name, framing, body) in [
        ("openai_chat_sse", Framing::Sse, openai_stream()),
        ("anthropic_sse", Framing::Sse, anthropic_stream()),
        ("openai_chat_json", Framing::Json, openai_json()),
    ] {
        let frames: Vec<&[u8]> = body.as_bytes().chunks(FRAME).collect();
        let mut s = Scanner::new(framing, Dialects::AUTO);
        for f in &frames {
            s.feed(f);
        }
        assert!(s.finish().is_some(), "{name} has a usage");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = Scanner::new(framing, Dialects::AUTO);
                let mut events = 0;
                for f in &frames {
                    events += s.feed(black_box(f));
                }
                black_box((events, s.finish()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
