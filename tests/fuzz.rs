//! Randomised inputs (proptest) for everything that reads text cohort did not write: config
//! loading, cohort key extraction, path normalisation, the request-head checks, override
//! verification, and usage scanning of response bodies. Nothing may panic on any input; where there is a simple rule to hold the
//! answer to, it is checked too.
//!
//! `cargo test` runs proptest's default number of cases; `PROPTEST_CASES=200000 cargo test
//! --test fuzz` runs a long campaign (see the README's Fuzzing section for what was run).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use cohort::edge::hygiene;
use cohort::routing::key::{cookie_value, extract_key, query_value, KeySource};
use cohort::routing::signed::{self, Rejection};
use cohort::routing::table::{Policy, Underscores};
use cohort::usage::{self, Dialects, Framing, Scanner, Usage};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Config loading
// ---------------------------------------------------------------------------------------------

/// The shipped configs, read from config/ so their relative TLS and secret paths resolve.
const BASES: [&str; 3] = ["minimal.yaml", "cohort.yaml", "demo.yaml"];

fn config_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

fn base_text(i: usize) -> String {
    std::fs::read_to_string(config_path(BASES[i % BASES.len()])).unwrap()
}

/// Parses and validates `text` as a file in config/; the answer may be anything but a panic.
fn load(name: &str, text: String) -> Result<(), String> {
    let loaded = cohort::config::parse(&config_path(name), text).map_err(|e| e.to_string())?;
    let metrics = cohort::telemetry::Metrics::new();
    let table = cohort::routing::table::from_loaded(&loaded, &metrics, None, 1)
        .map_err(|e| e.to_string())?;
    let _ = table.warnings();
    Ok(())
}

#[test]
fn the_mutation_bases_load() {
    for (i, name) in BASES.iter().enumerate() {
        assert_eq!(load(name, base_text(i)), Ok(()), "{name}");
    }
}

/// One edit of a config's text.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, len: usize, text: String },
    DuplicateLine(usize),
    DropLine(usize),
    SwapLines(usize, usize),
}

/// Text that means something to YAML or to cohort's fields.
fn snippet() -> impl Strategy<Value = String> {
    let special = prop_oneof![
        Just(": "),
        Just("\n"),
        Just("- "),
        Just("  "),
        Just("\t"),
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(", "),
        Just("&a "),
        Just("*a"),
        Just("<<: *a"),
        Just("!!binary "),
        Just("!!str "),
        Just("~"),
        Just("null"),
        Just("? "),
        Just("|"),
        Just(">"),
        Just("#"),
        Just("\""),
        Just("'"),
        Just("---\n"),
        Just("...\n"),
        Just("-1"),
        Just("0"),
        Just("1e400"),
        Just("100.001"),
        Just("18446744073709551616"),
        Just("0x10"),
        Just(".inf"),
        Just(".nan"),
        Just("0s"),
        Just("99999999999999h"),
        Just("[::1]:0"),
        Just("0.0.0.0:0"),
        Just("http://"),
        Just("https://[::1]"),
        Just("*."),
        Just("percent: 50"),
        Just("cohort: canary"),
        Just("fallback: random"),
        Just("path_prefix: /"),
        Just("client_ip: true"),
        Just("override_header: x"),
        Just("protocol: http2"),
        Just("\u{feff}"),
        Just("é☃"),
        Just("\0"),
    ]
    .prop_map(String::from);
    prop_oneof![
        3 => special,
        1 => "\\PC{0,12}",
        1 => "[ -~\n]{0,12}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), snippet()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 1usize..12, snippet()).prop_map(|(at, len, text)| Mutation::Replace {
            at,
            len,
            text
        }),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::DropLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// The char boundary at or before `at` (taken modulo the text's length).
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, m: &Mutation) {
    match m {
        Mutation::Delete { at, len } => {
            let start = boundary(text, *at);
            let end = boundary(text, start + len.min(&(text.len() - start)));
            text.replace_range(start..end.max(start), "");
        }
        Mutation::Insert { at, text: t } => {
            let i = boundary(text, *at);
            text.insert_str(i, t);
        }
        Mutation::Replace { at, len, text: t } => {
            let start = boundary(text, *at);
            let end = boundary(text, start + len.min(&(text.len() - start)));
            text.replace_range(start..end.max(start), t);
        }
        Mutation::DuplicateLine(i) | Mutation::DropLine(i) | Mutation::SwapLines(i, _) => {
            let mut lines: Vec<String> = text.split('\n').map(String::from).collect();
            let n = lines.len();
            let a = i % n;
            match m {
                Mutation::DuplicateLine(_) => lines.insert(a, lines[a].clone()),
                Mutation::DropLine(_) => {
                    lines.remove(a);
                }
                Mutation::SwapLines(_, j) => lines.swap(a, j % n),
                _ => unreachable!(),
            }
            *text = lines.join("\n");
        }
    }
}

proptest! {
    #[test]
    fn config_from_arbitrary_bytes(bytes in vec(any::<u8>(), 0..600)) {
        let _ = load("fuzz.yaml", String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn config_from_yaml_alphabet(text in "[a-z_:{}\\[\\],\\-\n #&*!|>'\"0-9./ ]{0,400}") {
        let _ = load("fuzz.yaml", text);
    }

    #[test]
    fn config_from_mutated_valid_files(base in 0usize..BASES.len(), edits in vec(mutation(), 1..5)) {
        let mut text = base_text(base);
        for m in &edits {
            apply(&mut text, m);
        }
        let _ = load(BASES[base], text);
    }
}

/// Inputs a generator rarely finds: deep nesting (a recursive parser or tree walk overflows
/// the stack, which aborts the process rather than panicking), alias bombs, huge scalars.
#[test]
fn config_pathological_inputs() {
    let mut deep: Vec<String> = Vec::new();
    for n in [200, 5_000, 100_000] {
        deep.push("- ".repeat(n));
        deep.push(format!("{}x{}", "[".repeat(n), "]".repeat(n)));
        deep.push(format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)));
        deep.push(format!("listeners:\n{}", "  - ".repeat(n)));
        deep.push(format!("routes: {}{}", "[".repeat(n), "]".repeat(n)));
        deep.push(format!("routes: [{}", "{a: [".repeat(n)));
    }
    deep.push(
        (0..3_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect(),
    );
    for text in deep {
        let err = load("fuzz.yaml", text).unwrap_err();
        assert!(err.contains("recursion limit exceeded"), "{err}");
    }
    let mut cases: Vec<String> = Vec::new();
    // Billion laughs: each level doubles ten times over.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    cases.push(bomb.clone());
    cases.push(format!("listeners: *i\n{bomb}"));
    cases.push(format!("listeners:\n  - name: {}\n", "x".repeat(1_000_000)));
    cases.push("listeners: []\nroutes: []\n".repeat(10_000));
    cases.push("---\n".repeat(10_000));
    cases.push("\0\0\0".into());
    cases.push("\u{feff}listeners: []".into());
    for text in cases {
        let _ = load("fuzz.yaml", text);
    }
}

// ---------------------------------------------------------------------------------------------
// Key extraction
// ---------------------------------------------------------------------------------------------

fn headers_with(name: &str, values: &[Vec<u8>]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(name.clone(), v);
        }
    }
    h
}

/// A cookie pair as a browser or an attacker might write it.
fn cookie_pair() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[a-z]{1,3}", "[a-z0-9]{0,4}").prop_map(|(k, v)| format!("{k}={v}")),
        ("[a-z]{1,3}", "[a-z0-9]{0,4}").prop_map(|(k, v)| format!(" {k} = \"{v}\" ")),
        "[ -~]{0,10}",
        Just(String::new()),
        Just("=".into()),
        Just("\"".into()),
    ]
}

fn key_source() -> impl Strategy<Value = KeySource> {
    prop_oneof![
        "[a-z][a-z-]{0,6}"
            .prop_map(|n| KeySource::Header(HeaderName::from_bytes(n.as_bytes()).unwrap())),
        "\\PC{0,6}".prop_map(KeySource::Cookie),
        "\\PC{0,6}".prop_map(KeySource::Query),
        Just(KeySource::ClientIp),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

proptest! {
    #[test]
    fn cookie_value_on_arbitrary_headers(values in vec(vec(any::<u8>(), 0..120), 0..4), name in "\\PC{0,8}") {
        let h = headers_with("cookie", &values);
        if let Some(v) = cookie_value(&h, &name) {
            prop_assert!(!v.is_empty());
        }
    }

    /// Against a plain reading of the rule: the first pair named `name` (both sides trimmed)
    /// whose value, trimmed and unquoted, is not empty.
    #[test]
    fn cookie_value_matches_the_rule(headers in vec(vec(cookie_pair(), 0..5), 0..3), name in "[a-z]{1,3}") {
        let lines: Vec<Vec<u8>> = headers.iter().map(|pairs| pairs.join(";").into_bytes()).collect();
        let h = headers_with("cookie", &lines);
        let expected = h.get_all("cookie").iter().flat_map(|v| v.as_bytes().split(|&b| b == b';')).find_map(|pair| {
            let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            let v = v[1..].trim_ascii();
            let v = if v.len() >= 2 && v.starts_with(b"\"") && v.ends_with(b"\"") { &v[1..v.len() - 1] } else { v };
            (k.trim_ascii() == name.as_bytes() && !v.is_empty()).then_some(v)
        });
        prop_assert_eq!(cookie_value(&h, &name), expected);
    }

    #[test]
    fn query_value_on_arbitrary_queries(query in "\\PC{0,200}", name in "\\PC{0,8}") {
        if let Some(v) = query_value(&query, &name) {
            prop_assert!(!v.is_empty());
        }
    }

    #[test]
    fn query_value_on_encoded_queries(
        pairs in vec(("[a-z%0-9+]{0,6}", "[a-zA-Z0-9%+=&;]{0,8}"), 0..6),
        name in "[a-z]{1,2}",
    ) {
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(v) = query_value(&query.join("&"), &name) {
            prop_assert!(!v.is_empty());
        }
    }

    #[test]
    fn extract_key_never_panics(
        sources in vec(key_source(), 0..5),
        headers in vec(("[a-z][a-z-]{0,6}", vec(any::<u8>(), 0..40)), 0..6),
        target in "[ -~]{0,80}",
        client in ip(),
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
            }
        }
        let uri: Uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
        let key = extract_key(&sources, &h, &uri, client);
        if let Some(k) = &key {
            prop_assert!(!k.is_empty());
        }
        if sources.is_empty() {
            prop_assert!(key.is_none());
        }
        if sources.first() == Some(&KeySource::ClientIp) {
            let text = client.to_string();
            prop_assert_eq!(key.as_deref(), Some(text.as_bytes()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Path normalisation and request-head checks
// ---------------------------------------------------------------------------------------------

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "/[a-z./%2eEfF5cC\\\\]{0,60}",
        "(/(\\.|\\.\\.|%2e|%2E%2e|%2f|%5C|a|b|)){0,12}",
        vec(any::<u8>(), 0..80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Normal form: rooted, no empty or dot segments (spelt with `%2e` or not) but a final `/`.
fn assert_normal(n: &str) {
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//"), "{n:?}");
    for seg in n.split('/') {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        assert!(s != "." && s != "..", "{n:?}");
    }
}

proptest! {
    #[test]
    fn normalize_never_panics_and_is_normal(path in path(), reject in any::<bool>()) {
        let Some(n) = hygiene::normalize(&path, reject) else { return Ok(()) };
        if path == "*" {
            prop_assert_eq!(n.as_ref(), "*");
            return Ok(());
        }
        assert_normal(&n);
        prop_assert!(n.len() <= path.len().max(1), "{:?} -> {:?}", path, n);
        prop_assert!(!n.contains('\\'));
        if reject {
            let lower = n.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{:?}", n);
        }
        let again = hygiene::normalize(&n, reject).map(Cow::into_owned);
        prop_assert_eq!(again.as_deref(), Some(n.as_ref()));
    }

    #[test]
    fn check_never_panics_and_keeps_its_promises(
        target in prop_oneof!["[ -~]{1,80}", path().prop_map(|p| format!("/{p}")), "http://[a-z@:.]{1,12}/[ -~]{0,40}"],
        headers in vec(("[a-zA-Z_][a-zA-Z0-9_-]{0,8}", vec(any::<u8>(), 0..30)), 0..12),
        host in proptest::option::of("[a-zA-Z0-9.:@\\[\\]-]{0,16}"),
        http2 in any::<bool>(),
        max_header_bytes in 0usize..400,
        max_headers in 0usize..14,
        max_uri_bytes in 0usize..120,
        underscores in prop_oneof![Just(Underscores::Reject), Just(Underscores::Drop), Just(Underscores::Allow)],
        normalize_path in any::<bool>(),
        reject_encoded_slashes in any::<bool>(),
    ) {
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
        let mut req = Request::new(());
        *req.uri_mut() = uri;
        *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        for (name, value) in &headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                req.headers_mut().append(k, v);
            }
        }
        if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            req.headers_mut().append(http::header::HOST, h);
        }
        let policy = Policy { max_header_bytes, max_headers, max_uri_bytes, underscores, normalize_path, reject_encoded_slashes };
        let before = req.clone();
        let checked = hygiene::check(&mut req, &policy);
        let (parts, ()) = req.into_parts();
        let (before, ()) = before.into_parts();
        match checked {
            Err(_) => {}
            Ok(routed) => {
                prop_assert!(parts.headers.len() <= max_headers);
                if underscores != Underscores::Allow {
                    prop_assert!(parts.headers.keys().all(|k| !k.as_str().contains('_')));
                }
                if underscores == Underscores::Allow {
                    prop_assert_eq!(&parts.headers, &before.headers);
                }
                match (&routed, normalize_path) {
                    (Some(n), true) => {
                        prop_assert_eq!(parts.uri.path(), n.as_str());
                        prop_assert_eq!(parts.uri.query(), before.uri.query());
                        prop_assert_eq!(parts.uri.authority(), before.uri.authority());
                    }
                    _ => prop_assert_eq!(&parts.uri, &before.uri),
                }
                if let Some(n) = &routed {
                    assert_normal(n);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Override verification
// ---------------------------------------------------------------------------------------------

const SECRET: &[u8] = b"fuzz-override-secret-0123456789";

/// Values shaped like `<cohort>.<expiry>.<signature>` with something off.
fn near_signed() -> impl Strategy<Value = Vec<u8>> {
    (
        "\\PC{0,10}",
        prop_oneof!["[0-9]{0,22}", "\\PC{0,6}"],
        prop_oneof!["[A-Za-z0-9_-]{0,50}", "[ -~]{0,50}"],
    )
        .prop_map(|(c, e, s)| format!("{c}.{e}.{s}").into_bytes())
}

proptest! {
    #[test]
    fn verify_never_panics_or_accepts_garbage(
        value in prop_oneof![vec(any::<u8>(), 0..200), near_signed()],
        secret in vec(any::<u8>(), 0..64),
        now in any::<u64>(),
    ) {
        prop_assert!(signed::verify(SECRET, &value, now).is_err());
        let _ = signed::verify(&secret, &value, now);
        let _ = signed::looks_signed(&value);
    }

    #[test]
    fn signed_values_round_trip(cohort in "\\PC{1,30}", expires in any::<u64>(), now in any::<u64>()) {
        let v = signed::sign(SECRET, &cohort, expires);
        prop_assert!(signed::looks_signed(v.as_bytes()));
        let got = signed::verify(SECRET, v.as_bytes(), now);
        if now < expires {
            prop_assert_eq!(got, Ok(cohort.as_str()));
        } else {
            prop_assert_eq!(got, Err(Rejection::Expired));
        }
        prop_assert_eq!(signed::verify(b"another-secret-0123456789abcdef", v.as_bytes(), 0), Err(Rejection::Forged));
    }

    #[test]
    fn edited_signed_values_are_refused(
        cohort in "[a-z][a-z0-9.-]{0,12}",
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let v = signed::sign(SECRET, &cohort, u64::MAX / 2).into_bytes();
        let mut w = v.clone();
        for (at, byte) in &edits {
            let i = at % w.len();
            w[i] = *byte;
        }
        if let Some(c) = cut {
            w.truncate(c % (w.len() + 1));
        }
        prop_assume!(w != v);
        prop_assert!(signed::verify(SECRET, &w, 0).is_err(), "{:?}", String::from_utf8_lossy(&w));
    }
}

// ---------------------------------------------------------------------------------------------
// Usage scanning
// ---------------------------------------------------------------------------------------------

const FRAMINGS: [Framing; 3] = [Framing::Sse, Framing::Json, Framing::None];

fn dialects(bits: u8) -> Dialects {
    Dialects {
        openai: bits & 1 != 0,
        anthropic: bits & 2 != 0,
        header: bits & 4 != 0,
    }
}

/// Feeds `body` cut at `cuts` (positions taken modulo its length); the usage and event count.
fn scan_cut(framing: Framing, d: Dialects, body: &[u8], cuts: &[usize]) -> (Option<Usage>, u32) {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    at.sort_unstable();
    let mut s = Scanner::new(framing, d);
    let mut events = 0;
    let mut from = 0;
    for to in at.into_iter().chain([body.len()]) {
        events += s.feed(&body[from..to]);
        from = to;
    }
    (s.finish(), events)
}

/// A value written where a count goes: a count, or something that must be ignored.
fn count_text() -> impl Strategy<Value = (String, Option<u64>)> {
    prop_oneof![
        any::<u64>().prop_map(|n| (n.to_string(), Some(n))),
        (0u64..100_000).prop_map(|n| (n.to_string(), Some(n))),
        Just(("99999999999999999999999".to_string(), None)),
        Just(("18446744073709551616".to_string(), None)),
        (1u64..1000).prop_map(|n| (format!("-{n}"), None)),
        (0u64..1000).prop_map(|n| (format!("{n}.5"), None)),
        (0u64..1000).prop_map(|n| (format!("{n}e2"), None)),
        Just(("null".to_string(), None)),
    ]
}

/// `{"usage":{...}}` objects, one per list, with OpenAI Chat keys; what last-wins gives.
fn repeated_usage() -> impl Strategy<Value = (String, Option<Usage>)> {
    vec(vec((any::<bool>(), count_text()), 0..4), 1..4).prop_map(|objects| {
        let (mut input, mut output) = (None, None);
        let mut parts = Vec::new();
        for pairs in objects {
            let fields: Vec<String> = pairs
                .into_iter()
                .map(|(is_input, (text, value))| {
                    let slot = if is_input { &mut input } else { &mut output };
                    if value.is_some() {
                        *slot = value;
                    }
                    let name = if is_input {
                        "prompt_tokens"
                    } else {
                        "completion_tokens"
                    };
                    format!("\"{name}\": {text}")
                })
                .collect();
            parts.push(format!("\"usage\":{{{}}}", fields.join(",")));
        }
        let want = (input.is_some() || output.is_some()).then(|| Usage {
            input: input.unwrap_or(0),
            output: output.unwrap_or(0),
            cached_input: 0,
        });
        (
            format!("{{\"id\":\"chatcmpl-1\",{}}}", parts.join(",")),
            want,
        )
    })
}

proptest! {
    #[test]
    fn scanning_never_panics_and_cuts_do_not_matter(
        body in prop_oneof![
            vec(any::<u8>(), 0..400),
            vec(prop_oneof![
                Just(b"data:".to_vec()), Just(b"\r\n".to_vec()), Just(b"\n\n".to_vec()),
                Just(b"{\"usage\":{".to_vec()), Just(b"\"input_tokens\":12,".to_vec()),
                Just(b"\"output_tokens\":7}".to_vec()), Just(b"}".to_vec()), Just(b"[".to_vec()),
                Just(b"\"\\u00".to_vec()), Just(b"\\\"".to_vec()), vec(any::<u8>(), 0..8),
            ], 0..40).prop_map(|parts| parts.concat()),
        ],
        framing in 0usize..3,
        bits in 0u8..8,
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let (framing, d) = (FRAMINGS[framing], dialects(bits));
        let whole = scan_cut(framing, d, &body, &[]);
        prop_assert_eq!(scan_cut(framing, d, &body, &cuts), whole);
        let data_lines = body.windows(4).filter(|w| w == b"data").count();
        prop_assert!(whole.1 as usize <= data_lines);
        if framing != Framing::Sse {
            prop_assert_eq!(whole.1, 0);
        }
        let _ = usage::parse_usage_header(&body);
    }

    #[test]
    fn the_last_usable_value_wins((body, want) in repeated_usage(), cuts in vec(any::<usize>(), 0..4)) {
        prop_assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, body.as_bytes(), &cuts).0, want);
        let sse = format!("data: {body}\n\ndata: [DONE]\n\n");
        prop_assert_eq!(scan_cut(Framing::Sse, Dialects::AUTO, sse.as_bytes(), &cuts), (want, 2));
    }

    #[test]
    fn truncated_json_bodies_give_nothing((body, _) in repeated_usage(), cut in any::<usize>()) {
        let cut = cut % body.len();
        prop_assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, &body.as_bytes()[..cut], &[]).0, None);
        // An SSE event cut short is never dispatched.
        let sse = format!("data: {}", &body[..cut]);
        prop_assert_eq!(scan_cut(Framing::Sse, Dialects::AUTO, sse.as_bytes(), &[]).0, None);
    }

    #[test]
    fn what_is_not_json_gives_nothing(
        prefix in "[A-Za-z<#'\\]}:,]\\PC{0,40}",
        (body, _) in repeated_usage(),
    ) {
        let text = format!("{prefix}{body}");
        prop_assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, text.as_bytes(), &[]).0, None);
        let sse = format!("data: {}\n\n", text.replace(['\r', '\n'], " "));
        prop_assert_eq!(scan_cut(Framing::Sse, Dialects::AUTO, sse.as_bytes(), &[]).0, None);
    }

    #[test]
    fn deep_nesting_gives_nothing(opens in vec(prop_oneof![Just(b'['), Just(b'{')], 65..4_000)) {
        // Keys where objects want them, so only the depth is wrong (a hundred thousand levels
        // are a plain test below: proptest makes such vectors slowly).
        let mut body = Vec::with_capacity(opens.len() * 6);
        for &b in &opens {
            body.push(b);
            if b == b'{' {
                body.extend_from_slice(b"\"usage\":");
            }
        }
        prop_assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, &body, &[]).0, None);
        let mut sse = b"data: ".to_vec();
        sse.extend_from_slice(&body);
        sse.extend_from_slice(b"\n\n");
        prop_assert_eq!(scan_cut(Framing::Sse, Dialects::AUTO, &sse, &[]), (None, 1));
    }
}

#[test]
fn huge_counts_are_ignored() {
    let body = br#"{"usage":{"prompt_tokens":99999999999999999999999,"completion_tokens":5}}"#;
    let want = Some(Usage {
        input: 0,
        output: 5,
        cached_input: 0,
    });
    assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, body, &[]).0, want);
    let body = br#"{"usage":{"prompt_tokens":99999999999999999999999}}"#;
    assert_eq!(scan_cut(Framing::Json, Dialects::AUTO, body, &[]).0, None);
}

#[test]
fn a_hundred_thousand_opens_give_nothing() {
    for open in [b"[", b"{"] {
        let body = open.repeat(100_000);
        for framing in FRAMINGS {
            assert_eq!(scan_cut(framing, Dialects::AUTO, &body, &[]).0, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversation pins
// ---------------------------------------------------------------------------------------------

const PIN_SECRETS: [&[u8]; 2] = [
    b"fuzz-pin-secret-new-0123456789",
    b"fuzz-pin-secret-old-0123456789",
];

/// Values shaped like a pin (`v1~route~cohort~rollout~issued~expires~tag`) with fields off.
fn near_pin() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("v1".to_string()), "\\PC{0,3}"],
        vec(prop_oneof!["[a-z0-9.:_-]{0,10}", "\\PC{0,6}"], 3),
        vec(prop_oneof!["[0-9]{0,22}", "\\PC{0,6}"], 2),
        prop_oneof!["[A-Za-z0-9_-]{0,50}", "[ -~]{0,50}"],
    )
        .prop_map(|(v, names, times, tag)| {
            format!("{v}~{}~{}~{tag}", names.join("~"), times.join("~")).into_bytes()
        })
}

proptest! {
    #[test]
    fn pins_never_panic_or_accept_garbage(
        value in prop_oneof![vec(any::<u8>(), 0..300), near_pin()],
        now in any::<u64>(),
    ) {
        prop_assert!(cohort::routing::pin::verify(&PIN_SECRETS, &value, now).is_err());
    }

    #[test]
    fn pins_round_trip_with_either_secret(
        route in "[a-z][a-z0-9.:_-]{0,20}",
        cohort in "[a-z][a-z0-9.:_-]{0,20}",
        rollout in "[a-z0-9.:_-]{0,20}",
        issued in any::<u64>(),
        expires in any::<u64>(),
        now in any::<u64>(),
        which in 0usize..2,
    ) {
        use cohort::routing::pin::{mint, verify, Pin, Rejection};
        let pin = Pin { route: &route, cohort: &cohort, rollout: &rollout, issued, expires };
        let v = mint(PIN_SECRETS[which], &pin);
        let got = verify(&PIN_SECRETS, v.as_bytes(), now);
        if now < expires {
            prop_assert_eq!(got, Ok(pin));
        } else {
            prop_assert_eq!(got, Err(Rejection::Expired));
        }
        prop_assert_eq!(verify(&PIN_SECRETS[1 - which..2 - which], v.as_bytes(), 0), Err(Rejection::Forged));
    }
}
