//! HTTP/2 abuse written as raw frames over TCP (prior knowledge, h2c): a rapid-reset flood
//! (HEADERS then RST_STREAM, over and over, CVE-2023-44487) and an endless CONTINUATION
//! sequence (CVE-2024-27316 style). The proxy must answer GOAWAY (or at least close the
//! connection) instead of working or buffering without bound, and keep serving everyone
//! else.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first` (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// "Literal Header Field without Indexing — New Name", no Huffman (RFC 7541 §6.2.2): the
/// decoder's dynamic table is never touched, so every block stands alone.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A GET request's header block.
fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, ":method", "GET");
    hpack_literal(&mut block, ":scheme", "http");
    hpack_literal(&mut block, ":authority", authority);
    hpack_literal(&mut block, ":path", path);
    block
}

struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

/// The next frame, or `None` when the connection closes (or resets).
async fn read_frame(r: &mut OwnedReadHalf) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        payload,
    })
}

/// How the server ended the conversation.
#[derive(Debug, PartialEq, Eq)]
enum End {
    GoAway { error: u32, debug: String },
    Closed,
}

/// Reads frames until a GOAWAY (or the connection closes), skipping everything else.
async fn until_goaway(mut r: OwnedReadHalf) -> End {
    while let Some(f) = read_frame(&mut r).await {
        if f.kind == GOAWAY && f.payload.len() >= 8 {
            let error = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
            let debug = String::from_utf8_lossy(&f.payload[8..]).into_owned();
            return End::GoAway { error, debug };
        }
    }
    End::Closed
}

/// Connects and completes the opening: preface, our empty SETTINGS, the server's SETTINGS
/// acknowledged.
async fn open(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    w.write_all(&hello).await.unwrap();
    within("the server's SETTINGS", async {
        loop {
            let f = read_frame(&mut r).await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
    })
    .await;
    w.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    (r, w)
}

/// Writes the batches `next` makes until the server ends the conversation (GOAWAY or
/// close), stops reading (a write stalls for `WAIT`), or `max_batches` have gone out. Returns
/// how the server ended it (within `WAIT` of the last write) and how many batches went out.
async fn flood(
    mut w: OwnedWriteHalf,
    r: OwnedReadHalf,
    max_batches: u32,
    mut next: impl FnMut() -> Vec<u8>,
) -> (End, u32) {
    let reader = tokio::spawn(until_goaway(r));
    let mut batches = 0;
    while !reader.is_finished() && batches < max_batches {
        let written = tokio::time::timeout(WAIT, w.write_all(&next())).await;
        batches += 1;
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    let end = within("GOAWAY or a close after the flood", reader)
        .await
        .unwrap();
    (end, batches)
}

/// `agent` routes /api/ to a backend; the flood's path has no route, so no backend is ever
/// involved.
async fn flood_proxy() -> (TestProxy, MockUpstream) {
    let backend = MockUpstream::json("backend").await;
    let proxy = Config::new()
        .upstream("backend", backend.addr)
        .route(
            Route::new("agent")
                .matching("path_prefix: /api/")
                .single("backend"),
        )
        .start()
        .await;
    (proxy, backend)
}

/// Others are still served: a new h2c connection and a new HTTP/1.1 request.
async fn still_serving(proxy: &TestProxy, backend: &MockUpstream) {
    let before = backend.request_count();
    let mut h2 = H2c::connect(proxy.public).await;
    let req = http::Request::builder()
        .uri(format!("http://{}/api/after", proxy.public))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = h2.fetch(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.json()["path"], "/api/after");
    let reply = proxy.get("/api/after-h1", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.request_count(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_gets_goaway_and_others_are_served() {
    let (proxy, backend) = flood_proxy().await;
    let (r, w) = open(proxy.public).await;

    let authority = proxy.public.to_string();
    let block = request_block(&authority, "/flood");
    let mut stream_id: u32 = 1;
    // Batches of 100 HEADERS+RST_STREAM pairs, 100,000 pairs at most.
    let (end, batches) = flood(w, r, 1_000, || {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block));
            batch.extend(frame(RST_STREAM, 0, stream_id, &CANCEL.to_be_bytes()));
            stream_id += 2;
        }
        batch
    })
    .await;
    let pairs = batches * 100;
    eprintln!("rapid reset: {end:?} after at most {pairs} HEADERS+RST_STREAM pairs");
    assert_eq!(
        end,
        End::GoAway {
            error: ENHANCE_YOUR_CALM,
            debug: "too_many_resets".into()
        }
    );
    assert!(batches < 1_000, "the whole flood was accepted");
    assert_eq!(backend.request_count(), 0, "the flood reached the backend");
    still_serving(&proxy, &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_gets_goaway_and_others_are_served() {
    let (proxy, backend) = flood_proxy().await;
    let (r, mut w) = open(proxy.public).await;

    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block, each
    // a complete small header field so the block stays decodable.
    let authority = proxy.public.to_string();
    let first = request_block(&authority, "/api/never");
    w.write_all(&frame(HEADERS, END_STREAM, 1, &first))
        .await
        .unwrap();
    let mut field = Vec::new();
    hpack_literal(&mut field, "x-flood", &"f".repeat(100));
    let (end, batches) = flood(w, r, 100_000, || {
        let mut batch = Vec::new();
        for _ in 0..10 {
            batch.extend(frame(CONTINUATION, 0, 1, &field));
        }
        batch
    })
    .await;
    let sent = batches * 10;
    eprintln!("continuation: {end:?} after at most {sent} CONTINUATION frames");
    assert_eq!(
        end,
        End::GoAway {
            error: ENHANCE_YOUR_CALM,
            debug: "too_many_continuations".into()
        }
    );
    assert!(batches < 100_000, "the whole flood was accepted");
    assert_eq!(
        backend.request_count(),
        0,
        "a half-sent head reached the backend"
    );
    still_serving(&proxy, &backend).await;
}

/// The raw client itself is sound: one well-formed request over the same frames gets its
/// answer, so the GOAWAYs above are about the abuse, not the encoding.
#[tokio::test]
async fn the_raw_client_gets_a_normal_answer() {
    let (proxy, backend) = flood_proxy().await;
    let (mut r, mut w) = open(proxy.public).await;
    let block = request_block(&proxy.public.to_string(), "/api/raw");
    w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .unwrap();
    let (headers, body) = within("the raw answer", async {
        let mut headers = None;
        let mut body = Vec::new();
        loop {
            let f = read_frame(&mut r).await.expect("a frame");
            match f.kind {
                HEADERS => headers = Some(f.payload),
                DATA => {
                    body.extend_from_slice(&f.payload);
                    if f.flags & END_STREAM != 0 {
                        return (headers, body);
                    }
                }
                GOAWAY => panic!("GOAWAY for a normal request: {:?}", f.payload),
                _ => {}
            }
        }
    })
    .await;
    assert!(headers.is_some());
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/api/raw");
    assert_eq!(backend.request_count(), 1);
}
