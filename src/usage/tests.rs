//! The scanner on bodies shaped as OpenAI and Anthropic send them, whole, split at every byte
//! boundary, and byte by byte; the header grammar; the framing of content types.

use super::*;

/// Feeds `chunks` in order; returns the usage and the events counted.
fn scan(framing: Framing, dialects: Dialects, chunks: &[&[u8]]) -> (Option<Usage>, u32) {
    let mut s = Scanner::new(framing, dialects);
    let events = chunks.iter().map(|c| s.feed(c)).sum();
    (s.finish(), events)
}

fn whole(framing: Framing, body: &str) -> (Option<Usage>, u32) {
    scan(framing, Dialects::AUTO, &[body.as_bytes()])
}

fn usage(input: u64, output: u64, cached_input: u64) -> Option<Usage> {
    Some(Usage {
        input,
        output,
        cached_input,
    })
}

pub(super) const CHAT_JSON: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "The image shows a wooden boardwalk path running through a lush green field.",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {
      "cached_tokens": 1024,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;

pub(super) const CHAT_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" \\\"world\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// The same stream without `stream_options.include_usage`: no chunk has a usage.
const CHAT_SSE_NO_USAGE: &str = concat!(
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
);

pub(super) const RESPONSES_JSON: &str = r#"{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response","created_at":1741476542,"status":"completed","error":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","id":"msg_67ccd2bf17f0","status":"completed","role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove beneath a silver moon...","annotations":[]}]}],"parallel_tool_calls":true,"temperature":1.0,"tool_choice":"auto","tools":[],"top_p":1.0,"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null,"metadata":{}}"#;

pub(super) const RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\" there\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":4,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there\"}]}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":5},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":48}}}\n\n",
);

pub(super) const ANTHROPIC_JSON: &str = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hi! My name is Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":1800,"output_tokens":503,"service_tier":"standard"}}"#;

pub(super) const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\r\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\r\n\r\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
    "event: ping\r\n",
    "data: {\"type\": \"ping\"}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! \\\"usage\\\": {\\\"output_tokens\\\": 9}\"}}\r\n\r\n",
    "event: content_block_stop\r\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
    "event: message_delta\r\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
    "event: message_stop\r\n",
    "data: {\"type\":\"message_stop\"}\r\n\r\n",
);

#[test]
fn openai_chat_json() {
    assert_eq!(whole(Framing::Json, CHAT_JSON), (usage(1117, 46, 1024), 0));
}

#[test]
fn openai_chat_sse_with_include_usage() {
    assert_eq!(whole(Framing::Sse, CHAT_SSE), (usage(19, 10, 0), 6));
}

#[test]
fn openai_chat_sse_without_usage() {
    assert_eq!(whole(Framing::Sse, CHAT_SSE_NO_USAGE), (None, 4));
}

#[test]
fn openai_responses_json_and_sse() {
    assert_eq!(whole(Framing::Json, RESPONSES_JSON), (usage(36, 87, 12), 0));
    assert_eq!(whole(Framing::Sse, RESPONSES_SSE), (usage(37, 11, 5), 5));
}

#[test]
fn anthropic_json_adds_cache_tokens_to_input() {
    let u = usage(2095 + 100 + 1800, 503, 1800);
    assert_eq!(whole(Framing::Json, ANTHROPIC_JSON), (u, 0));
}

#[test]
fn anthropic_sse_output_is_the_last_cumulative_count() {
    // message_start: 25 input (+5 written, +10 read), 1 output; message_delta: 15 output.
    assert_eq!(whole(Framing::Sse, ANTHROPIC_SSE), (usage(40, 15, 10), 8));
}

#[test]
fn usage_elsewhere_does_not_count() {
    let in_array = r#"{"choices":[{"usage":{"prompt_tokens":5,"completion_tokens":6}}]}"#;
    assert_eq!(whole(Framing::Json, in_array).0, None);
    let in_string = r#"{"text":"\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}"}"#;
    assert_eq!(whole(Framing::Json, in_string).0, None);
    let nested = r#"{"data":{"usage":{"prompt_tokens":5,"completion_tokens":6}}}"#;
    assert_eq!(whole(Framing::Json, nested).0, None);
    let escaped_key = r#"{"usag\u0065":{"prompt_tokens":5,"completion_tokens":6}}"#;
    assert_eq!(whole(Framing::Json, escaped_key).0, None);
    let top_array = r#"[{"usage":{"prompt_tokens":5,"completion_tokens":6}}]"#;
    assert_eq!(whole(Framing::Json, top_array).0, None);
    let not_a_number = r#"{"usage":{"prompt_tokens":"5","completion_tokens":{"n":6}}}"#;
    assert_eq!(whole(Framing::Json, not_a_number).0, None);
}

#[test]
fn dialects_choose_the_keys() {
    let only = |openai, anthropic| Dialects {
        openai,
        anthropic,
        header: true,
    };
    let none = only(false, false);
    assert_eq!(scan(Framing::Json, none, &[CHAT_JSON.as_bytes()]).0, None);
    // The events are still counted when nothing is read.
    assert_eq!(scan(Framing::Sse, none, &[CHAT_SSE.as_bytes()]), (None, 6));
    let off = Dialects::OFF;
    assert!(!off.any() && Dialects::AUTO.any());
    assert_eq!(scan(Framing::Sse, off, &[ANTHROPIC_SSE.as_bytes()]).0, None);

    let openai = only(true, false);
    assert_eq!(
        scan(Framing::Json, openai, &[CHAT_JSON.as_bytes()]).0,
        usage(1117, 46, 1024)
    );
    // The shared input/output keys are read, Anthropic's cache keys and prefix are not.
    assert_eq!(
        scan(Framing::Json, openai, &[ANTHROPIC_JSON.as_bytes()]).0,
        usage(2095, 503, 0)
    );
    assert_eq!(
        scan(Framing::Sse, openai, &[ANTHROPIC_SSE.as_bytes()]).0,
        usage(0, 15, 0)
    );

    let anthropic = only(false, true);
    assert_eq!(
        scan(Framing::Json, anthropic, &[CHAT_JSON.as_bytes()]).0,
        None
    );
    assert_eq!(
        scan(Framing::Sse, anthropic, &[RESPONSES_SSE.as_bytes()]).0,
        None
    );
    assert_eq!(
        scan(Framing::Sse, anthropic, &[ANTHROPIC_SSE.as_bytes()]).0,
        usage(40, 15, 10)
    );
}

#[test]
fn json_must_be_one_valid_document() {
    let good = r#"{"usage":{"input_tokens":3,"output_tokens":4}}"#;
    assert_eq!(whole(Framing::Json, good).0, usage(3, 4, 0));
    assert_eq!(
        whole(Framing::Json, &format!(" {good} \r\n")).0,
        usage(3, 4, 0)
    );
    for bad in [
        format!("{good} x"),
        format!("{good}{good}"),
        good[..good.len() - 1].to_string(),
        good.replace(":4}", ":4,}"),
        good.replace(":3,", ":03,"),
        good.replace(":3,", ":3.,"),
        good.replace(":3,", ":-,"),
        good.replace("{\"input", "{input"),
        good.replace("}}", "}]"),
        good.replace(":4", ":4 5"),
        String::new(),
    ] {
        assert_eq!(whole(Framing::Json, &bad).0, None, "{bad}");
    }
}

#[test]
fn numbers_that_are_not_counts_are_ignored() {
    for (value, expect) in [
        ("-3", None),
        ("3.0", None),
        ("3e2", None),
        ("3E+2", None),
        ("0", Some(0)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("99999999999999999999999", None),
        ("null", None),
        ("true", None),
    ] {
        let body = format!(r#"{{"usage":{{"output_tokens":7,"input_tokens":{value}}}}}"#);
        let got = whole(Framing::Json, &body).0;
        assert_eq!(got, usage(expect.unwrap_or(0), 7, 0), "{value}");
    }
}

#[test]
fn the_last_value_wins() {
    let body = r#"{"usage":{"input_tokens":1,"output_tokens":2},"usage":{"output_tokens":9}}"#;
    assert_eq!(whole(Framing::Json, body).0, usage(1, 9, 0));
    // An ignored value leaves the earlier one standing.
    let body = r#"{"usage":{"input_tokens":1,"output_tokens":2,"output_tokens":-1}}"#;
    assert_eq!(whole(Framing::Json, body).0, usage(1, 2, 0));
}

#[test]
fn cached_never_exceeds_input() {
    let body = r#"{"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":9}}}"#;
    assert_eq!(whole(Framing::Json, body).0, usage(5, 1, 5));
    let body = format!(
        r#"{{"usage":{{"input_tokens":{},"cache_read_input_tokens":1,"output_tokens":1}}}}"#,
        u64::MAX
    );
    assert_eq!(whole(Framing::Json, &body).0, None);
}

#[test]
fn sse_lines_and_fields() {
    let chunk = r#"{"usage":{"input_tokens":3,"output_tokens":4}}"#;
    // A bad event after a good one leaves its usage standing.
    let stream = format!("data: {chunk}\n\ndata: {{\"usage\":{{\"output_tokens\":5\n\n");
    assert_eq!(whole(Framing::Sse, &stream), (usage(3, 4, 0), 2));
    // Data lines are joined with a line feed; comments, other fields and CR line ends.
    let stream = ": keep-alive\r\nid: 7\rretry: 10\nevent: x\ndata:{\"usage\":\ndata:  {\"input_tokens\":3,\r\ndata:\"output_tokens\":4}}\n\n";
    assert_eq!(whole(Framing::Sse, stream), (usage(3, 4, 0), 1));
    // An event the body does not end with a blank line is dropped.
    assert_eq!(whole(Framing::Sse, &format!("data: {chunk}\n")), (None, 1));
    // Two documents in one event are not one document.
    let stream = format!("data: {chunk}\ndata: {chunk}\n\n");
    assert_eq!(whole(Framing::Sse, &stream), (None, 1));
    // Field names are exact: `Data:` and `datum:` are other fields; `data` alone is data.
    let stream = format!("Data: {chunk}\ndatum: {chunk}\n\ndata\n\n");
    assert_eq!(whole(Framing::Sse, &stream), (None, 1));
    // One byte order mark at the start is dropped; a partial one is a line of its own.
    let stream = format!("\u{feff}data: {chunk}\n\n");
    assert_eq!(whole(Framing::Sse, &stream), (usage(3, 4, 0), 1));
    let stream = format!("\u{feff}\u{feff}data: {chunk}\n\n");
    assert_eq!(whole(Framing::Sse, &stream), (None, 0));
    let stream = [
        b"\xEF\xBB",
        format!("data: {chunk}\n\ndata: {chunk}\n\n").as_bytes(),
    ]
    .concat();
    assert_eq!(
        scan(Framing::Sse, Dialects::AUTO, &[&stream]),
        (usage(3, 4, 0), 1)
    );
    // Blank lines without data dispatch nothing.
    assert_eq!(whole(Framing::Sse, "\n\n\r\n: x\n\n"), (None, 0));
}

#[test]
fn other_framings_read_nothing() {
    let (u, n) = scan(Framing::None, Dialects::AUTO, &[CHAT_JSON.as_bytes()]);
    assert_eq!((u, n), (None, 0));
}

#[test]
fn event_counts() {
    let events: String = (0..5)
        .map(|i| format!("event: e\ndata: {{\"n\":{i}}}\n\n"))
        .collect();
    assert_eq!(whole(Framing::Sse, &events).1, 5);

    let mut s = Scanner::new(Framing::Sse, Dialects::AUTO);
    let counts: Vec<u32> = events.bytes().map(|b| s.feed(&[b])).collect();
    assert_eq!(counts.iter().sum::<u32>(), 5);
    let first = counts.iter().position(|&n| n > 0);
    assert_eq!(first, Some("event: e\ndata:".len() - 1));
    assert_eq!(counts.iter().filter(|&&n| n > 0).count(), 5);
}

/// Every way of cutting `body` in two, and in three for a short one, and byte by byte, reads
/// what feeding it whole reads.
fn same_at_every_split(framing: Framing, body: &str, pairs: bool) {
    let b = body.as_bytes();
    let want = whole(framing, body);
    for i in 0..=b.len() {
        let got = scan(framing, Dialects::AUTO, &[&b[..i], &b[i..]]);
        assert_eq!(got, want, "split at {i}");
        if pairs {
            for j in i..=b.len() {
                let got = scan(framing, Dialects::AUTO, &[&b[..i], &b[i..j], &b[j..]]);
                assert_eq!(got, want, "split at {i} and {j}");
            }
        }
    }
    let bytes: Vec<&[u8]> = b.chunks(1).collect();
    assert_eq!(scan(framing, Dialects::AUTO, &bytes), want, "byte by byte");
}

#[test]
fn split_points_do_not_matter() {
    for (framing, body) in [
        (Framing::Json, CHAT_JSON),
        (Framing::Sse, CHAT_SSE),
        (Framing::Json, RESPONSES_JSON),
        (Framing::Sse, RESPONSES_SSE),
        (Framing::Json, ANTHROPIC_JSON),
        (Framing::Sse, ANTHROPIC_SSE),
    ] {
        assert!(whole(framing, body).0.is_some());
        same_at_every_split(framing, body, false);
    }
    let short = "\u{feff}data:{\"usage\":\r\ndata: {\"input_tokens\":12,\"output_tokens\":3e0,\"output_tokens\":34}}\r\n\r\ndata: [DONE]\r\r";
    assert_eq!(whole(Framing::Sse, short), (usage(12, 34, 0), 2));
    same_at_every_split(Framing::Sse, short, true);
    let short = r#"{"usage":{"prompt_tokens":12,"completion_tokens":34}, "s":"\\\"\u00e9"}"#;
    assert_eq!(whole(Framing::Json, short).0, usage(12, 34, 0));
    same_at_every_split(Framing::Json, short, true);
}

#[test]
fn deep_nesting_is_bounded() {
    let deep = "[".repeat(100_000);
    assert_eq!(whole(Framing::Json, &deep).0, None);
    // 64 levels are read (the object and 63 arrays), 65 are not.
    let ok = format!(
        "{{\"usage\":{{\"input_tokens\":1,\"output_tokens\":2}},\"x\":{}{}}}",
        "[".repeat(63),
        "]".repeat(63)
    );
    assert_eq!(whole(Framing::Json, &ok).0, usage(1, 2, 0));
    let too_deep = ok.replace("[]", "[[]]");
    assert_eq!(whole(Framing::Json, &too_deep).0, None);
}

#[test]
fn the_json_body_is_bounded() {
    let mut s = Scanner::new(Framing::Json, Dialects::AUTO);
    s.feed(br#"{"usage":{"input_tokens":1,"output_tokens":2},"pad":""#);
    let pad = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        s.feed(&pad);
    }
    s.feed(br#""}"#);
    assert_eq!(s.finish(), None);
}

#[test]
fn the_scanner_is_small() {
    assert!(
        std::mem::size_of::<Scanner>() <= 256,
        "{}",
        std::mem::size_of::<Scanner>()
    );
}

#[test]
fn content_types() {
    for (ct, want) in [
        ("text/event-stream", Framing::Sse),
        ("Text/Event-Stream; charset=utf-8", Framing::Sse),
        (" text/event-stream ;", Framing::Sse),
        ("application/json", Framing::Json),
        ("APPLICATION/JSON;charset=UTF-8", Framing::Json),
        ("application/problem+json", Framing::Json),
        ("application/vnd.api+JSON; x=y", Framing::Json),
        ("application/+json", Framing::None),
        ("+json", Framing::None),
        ("application/jsonl", Framing::None),
        ("application/x-ndjson", Framing::None),
        ("text/plain", Framing::None),
        ("", Framing::None),
    ] {
        assert_eq!(framing(Some(ct.as_bytes())), want, "{ct}");
    }
    assert_eq!(framing(None), Framing::None);
}

#[test]
fn usage_header() {
    for (value, want) in [
        ("input=812, output=164, cached=100", usage(812, 164, 100)),
        ("output=164,input=812", usage(812, 164, 0)),
        (
            " input = 812 ,output=164 , model=gpt-x ",
            usage(812, 164, 0),
        ),
        ("INPUT=1, Output=2, Cached=1", usage(1, 2, 1)),
        ("input=0,output=0", usage(0, 0, 0)),
        ("input=812", None),
        ("output=164", None),
        ("input=812, output=164, cached=900", None),
        ("input=812, output=-1", None),
        ("input=812, output=1.5", None),
        ("input=812, output=", None),
        ("input=812, output=1 2", None),
        ("input=812, output=99999999999999999999999", None),
        ("input=812, output=164, input=1", None),
        ("input=812, output=164,", None),
        ("input=812; output=164", None),
        ("input 812, output=164", None),
        ("=5, input=1, output=2", None),
        ("", None),
    ] {
        assert_eq!(parse_usage_header(value.as_bytes()), want, "{value}");
    }
    assert_eq!(USAGE_HEADER, "x-agent-usage");
}
