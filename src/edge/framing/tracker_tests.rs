use proptest::prelude::*;

use super::Tracker;

const LIMIT: usize = 16 * 1024;

/// How one generated request frames its body.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(Vec<u8>),
    /// Chunks (each non-empty), with an extension on each if set, and trailer lines.
    Chunked(Vec<Vec<u8>>, bool, Vec<String>),
    /// Both headers, in this order (true: Transfer-Encoding first), with a chunked body.
    Both(bool, Vec<Vec<u8>>),
}

/// Text that looks like framing, inside bodies, chunks and trailers.
const DECOYS: [&str; 4] = [
    "Content-Length: 5\r\n\r\n",
    "Transfer-Encoding: chunked\r\n",
    "\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
    "0\r\n\r\n",
];

fn case(name: &str, upper: bool) -> String {
    if upper {
        name.to_ascii_uppercase()
    } else {
        name.to_string()
    }
}

fn chunked_body(chunks: &[Vec<u8>], ext: bool, trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("{:X}", c.len()).as_bytes());
        if ext {
            out.extend_from_slice(b" ;name=\"v;x\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn request(framing: &Framing, upper: bool, extra: &str) -> Vec<u8> {
    let mut head = format!("POST /x HTTP/1.1\r\nHost: a\r\nX-Note: content-length: 9\r\n{extra}");
    let te = format!("{}: chunked\r\n", case("Transfer-Encoding", upper));
    let body = match framing {
        Framing::None => Vec::new(),
        Framing::Length(b) => {
            head += &format!("{}: {}\r\n", case("Content-Length", upper), b.len());
            b.clone()
        }
        Framing::Chunked(chunks, ext, trailers) => {
            head += &te;
            chunked_body(chunks, *ext, trailers)
        }
        Framing::Both(te_first, chunks) => {
            let cl = format!("{}: 4\r\n", case("content-length", upper));
            head += &if *te_first { te + &cl } else { cl + &te };
            chunked_body(chunks, false, &[])
        }
    };
    let mut out = head.into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

fn bytes_with_decoys() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            (0..DECOYS.len()).prop_map(|i| DECOYS[i].as_bytes().to_vec()),
        ],
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

/// Non-empty chunks: an empty one would end the body.
fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let chunk = bytes_with_decoys().prop_map(|c| if c.is_empty() { b"x".to_vec() } else { c });
    prop::collection::vec(chunk, 0..4)
}

fn framing(both: bool) -> impl Strategy<Value = Framing> {
    let trailers = prop::collection::vec(
        prop_oneof![
            Just("Content-Length: 10".to_string()),
            Just("transfer-encoding: chunked".to_string()),
            Just("x-t: 1".to_string()),
        ],
        0..3,
    );
    let valid = prop_oneof![
        Just(Framing::None),
        bytes_with_decoys().prop_map(Framing::Length),
        (chunks(), any::<bool>(), trailers).prop_map(|(c, e, t)| Framing::Chunked(c, e, t)),
    ];
    if both {
        prop_oneof![
            3 => valid,
            1 => (any::<bool>(), chunks()).prop_map(|(f, c)| Framing::Both(f, c)),
        ]
        .boxed()
    } else {
        valid.boxed()
    }
}

/// Feeds `stream` in pieces cut at `cuts` (taken modulo its length); the first flag returned.
fn feed_in_pieces(stream: &[u8], cuts: &[usize]) -> Option<u64> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut t = Tracker::new(LIMIT);
    let mut at = 0;
    let mut flagged = None;
    for p in points {
        if let Some(o) = t.feed(&stream[at..p]) {
            flagged.get_or_insert(o);
        }
        at = p;
    }
    flagged
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Valid streams (each head with at most one of the two headers) are never flagged, and a
    /// head with both is flagged with its ordinal, however the bytes arrive.
    #[test]
    fn flags_exactly_the_heads_with_both(
        reqs in prop::collection::vec((framing(true), any::<bool>(), any::<bool>()), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for (f, upper, blank) in &reqs {
            if *blank {
                // hyper skips empty lines before a request line.
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(&request(f, *upper, ""));
        }
        let first_bad = reqs
            .iter()
            .position(|(f, _, _)| matches!(f, Framing::Both(..)))
            .map(|i| i as u64);
        prop_assert_eq!(feed_in_pieces(&stream, &cuts), first_bad);
    }

    #[test]
    fn never_flags_a_valid_stream(
        reqs in prop::collection::vec((framing(false), any::<bool>()), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(|(f, u)| request(f, *u, "")).collect();
        prop_assert_eq!(feed_in_pieces(&stream, &cuts), None);
    }
}

#[test]
fn both_headers_in_the_first_head_either_order() {
    for te_first in [true, false] {
        let r = request(&Framing::Both(te_first, vec![b"abcd".to_vec()]), false, "");
        assert_eq!(Tracker::new(LIMIT).feed(&r), Some(0));
    }
}

#[test]
fn flags_after_a_length_body_and_a_chunked_body() {
    let mut s = request(
        &Framing::Length(b"Transfer-Encoding: x".to_vec()),
        false,
        "",
    );
    s.extend(request(
        &Framing::Chunked(vec![b"Content-Length: 1".to_vec()], true, vec![]),
        true,
        "",
    ));
    s.extend(request(&Framing::Both(true, vec![]), false, ""));
    for pieces in [1, 3, s.len()] {
        let mut t = Tracker::new(LIMIT);
        let flagged: Vec<u64> = s
            .chunks(s.len().div_ceil(pieces))
            .filter_map(|c| t.feed(c))
            .collect();
        assert_eq!(flagged, [2], "{pieces} pieces");
    }
}

/// Past an upgrade, CONNECT, the h2 preface, an oversized head or a length it cannot read,
/// the tracker stops and flags nothing more.
#[test]
fn stops_where_it_cannot_follow() {
    let bad = request(&Framing::Both(true, vec![]), false, "");
    let heads: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nx",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ];
    for head in heads {
        let mut t = Tracker::new(LIMIT);
        assert_eq!(t.feed(head), None);
        assert_eq!(t.feed(&bad), None, "{}", String::from_utf8_lossy(head));
        assert!(!t.is_following());
    }
    let mut t = Tracker::new(64);
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64));
    assert_eq!(t.feed(long.as_bytes()), None);
    assert!(!t.is_following());
}

#[test]
fn names_must_match_whole() {
    let s = b"POST / HTTP/1.1\r\nContent-Lengthy: 3\r\nX-Transfer-Encoding: chunked\r\nTransfer-Encodings: x\r\ncontent-length: 0\r\n\r\n";
    let mut t = Tracker::new(LIMIT);
    assert_eq!(t.feed(s), None);
    assert!(t.is_following());
}
