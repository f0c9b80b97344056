//! A request head with both Transfer-Encoding and Content-Length, written as raw bytes on
//! cleartext and TLS connections: answered 400 with the connection closed, never forwarded,
//! counted as `te_and_cl`, wherever it comes on the connection; the requests before it on the
//! same connection are served as usual.

mod support;

use support::tls::{handshake, TestCa, TlsConn};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TE_CL: &str = "POST /bad HTTP/1.1\r\nHost: agent.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
const CL_TE: &str = "POST /bad HTTP/1.1\r\nHost: agent.test\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
/// A request that must never be read: it follows a refused one on the same connection.
const AFTER: &str = "GET /smuggled HTTP/1.1\r\nHost: agent.test\r\n\r\n";
const GET: &str = "GET /ok HTTP/1.1\r\nHost: agent.test\r\n\r\n";
/// Upgrades the upstream does not grant, or that never asked in Connection: the tracker stops
/// at such a head, so its answer must close the connection.
const UPGRADE_ASKED: &str =
    "GET /ok HTTP/1.1\r\nHost: agent.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
const UPGRADE_ALONE: &str = "GET /ok HTTP/1.1\r\nHost: agent.test\r\nUpgrade: websocket\r\n\r\n";
/// Bodies that mention both headers: only heads count.
const CHUNKED: &str = "POST /ok HTTP/1.1\r\nHost: agent.test\r\nTransfer-Encoding: chunked\r\n\r\n1c;ext=1\r\nContent-Length: 4\r\n\r\nabcdefg\r\n0\r\nx-trailer: 1\r\n\r\n";
const LENGTH: &str = "POST /ok HTTP/1.1\r\nHost: agent.test\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n";

/// One case: what is written, in writes each followed by reading this many responses; then
/// the connection must close. `forwarded` is how many of its requests reach the upstream.
struct Case {
    name: String,
    writes: Vec<(String, usize)>,
    statuses: &'static [u16],
    forwarded: usize,
    /// Whether the bad head is read and refused (else the connection closes before it).
    refused: bool,
}

fn cases() -> Vec<Case> {
    let case = |name: &str, writes: &[(&str, usize)], statuses, forwarded| Case {
        name: name.to_string(),
        writes: writes.iter().map(|(w, n)| (w.to_string(), *n)).collect(),
        statuses,
        forwarded,
        refused: true,
    };
    let mut out = Vec::new();
    for (order, bad) in [("TE then CL", TE_CL), ("CL then TE", CL_TE)] {
        let start = out.len();
        out.extend([
            case("first request", &[(bad, 1)][..], &[400][..], 0),
            case(
                "first request, a request after it",
                &[(&format!("{bad}{AFTER}"), 1)],
                &[400],
                0,
            ),
            case(
                "keep-alive after a chunked body",
                &[(CHUNKED, 1), (bad, 1)],
                &[200, 400],
                1,
            ),
            case(
                "keep-alive after a Content-Length body",
                &[(LENGTH, 1), (bad, 1)],
                &[200, 400],
                1,
            ),
            case(
                "pipelined after a GET",
                &[(&format!("{GET}{bad}{AFTER}"), 2)],
                &[200, 400],
                1,
            ),
            case(
                "pipelined after a chunked body",
                &[(&format!("{CHUNKED}{bad}"), 2)],
                &[200, 400],
                1,
            ),
        ]);
        for (what, upgrade) in [("asked", UPGRADE_ASKED), ("alone", UPGRADE_ALONE)] {
            let name = format!("pipelined after an Upgrade {what}, not granted");
            let mut c = case(&name, &[(&format!("{upgrade}{bad}{AFTER}"), 1)], &[200], 1);
            c.refused = false;
            out.push(c);
        }
        for c in &mut out[start..] {
            c.name = format!("{order}, {}", c.name);
        }
    }
    out
}

/// Reads one response (each has a Content-Length) from `s` into `buf`; its status, or `None`
/// if the connection closed with nothing pending.
async fn next_status<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap_or_else(|| panic!("a response without content-length: {head}"))
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                buf.drain(..end + 4 + len);
                return Some(status);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = within("a response", s.read(&mut chunk)).await.unwrap_or(0);
        if n == 0 {
            assert!(buf.is_empty(), "closed mid-response: {buf:?}");
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Plays `case` on `s`: the statuses read, and whether the connection then closed.
async fn play<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, case: &Case) -> (Vec<u16>, bool) {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    for (bytes, responses) in &case.writes {
        within("write", s.write_all(bytes.as_bytes()))
            .await
            .unwrap();
        for _ in 0..*responses {
            statuses.extend(next_status(s, &mut buf).await);
        }
    }
    let closed = next_status(s, &mut buf).await.is_none();
    (statuses, closed)
}

async fn run_all(tls: Option<&TestCa>) {
    let mock = MockUpstream::json("backend").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new()
        .upstream("backend", mock.addr)
        .route(Route::new("agent").single("backend"));
    if let Some(ca) = tls {
        let (cert, key) = ca.leaf(&["agent.test"]).write(dir.path(), "leaf");
        config = config.certificate(&cert, &key, &[]);
    }
    let proxy = config.start().await;
    let (mut forwarded, mut refused) = (0, 0.0);
    for case in cases() {
        let tcp = within("connect", TcpStream::connect(proxy.public))
            .await
            .unwrap();
        let (statuses, closed) = match tls {
            None => play(&mut { tcp }, &case).await,
            Some(ca) => {
                drop(tcp);
                let config = ca.client_config(&["http/1.1"]);
                play(
                    &mut handshake(proxy.public, config, "agent.test").await,
                    &case,
                )
                .await
            }
        };
        assert_eq!(statuses, case.statuses, "{}", case.name);
        assert!(closed, "{}: the connection stays open", case.name);
        forwarded += case.forwarded;
        refused += f64::from(u8::from(case.refused));
        let seen = mock.requests();
        assert_eq!(seen.len(), forwarded, "{}: {seen:?}", case.name);
        assert!(
            seen.iter().all(|r| r.target == "/ok"),
            "{}: {seen:?}",
            case.name
        );
        proxy
            .expect_metric(
                "cohort_rejected_requests_total",
                &[("reason", "te_and_cl")],
                refused,
            )
            .await;
    }
    // Everyone else is still served.
    let after = match tls {
        None => proxy.get("/ok", &[]).await,
        Some(ca) => {
            let config = ca.client_config(&["http/1.1"]);
            let mut conn = TlsConn::connect(proxy.public, config, "agent.test").await;
            conn.get("/ok", &[]).await
        }
    };
    assert_eq!(after.status, 200);
}

#[tokio::test]
async fn refused_on_cleartext_wherever_it_comes() {
    run_all(None).await;
}

#[tokio::test]
async fn refused_over_tls_wherever_it_comes() {
    run_all(Some(&TestCa::new("cohort test CA"))).await;
}
