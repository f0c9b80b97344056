//! Cleartext connections that stop partway through the bytes that could be the h2c preface
//! (`P`, then nothing): the proxy waits for them without spending CPU, closes them at
//! `header_read_timeout`, and keeps serving everyone else.

mod support;

use std::time::Duration;

use support::process::Process;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partial_prefaces_cost_no_cpu_and_close_at_header_read_timeout() {
    let agent = MockUpstream::json("agent").await;
    let yaml = Config::new()
        .top("limits: {header_read_timeout: 4s}")
        .upstream("agent", agent.addr)
        .route(Route::new("chat").single("agent"))
        .yaml();
    let proxy = Process::start("run", &yaml, None).await;

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut tcp = within("connect", TcpStream::connect(proxy.public))
            .await
            .unwrap();
        tcp.write_all(b"P").await.unwrap();
        clients.push(tcp);
    }
    // Well inside header_read_timeout: every client is waiting, none has been answered.
    let spent = proxy.cpu_during(Duration::from_millis(1500)).await;
    // Waiting costs nothing per connection; polling every few ms cost about 0.5 s of CPU
    // per second here. The bound is generous for a loaded machine.
    eprintln!("{CLIENTS} partial prefaces: {spent:?} of CPU in 1.5 s");
    assert!(
        spent < Duration::from_millis(150),
        "{CLIENTS} idle partial prefaces cost {spent:?} of CPU in 1.5 s"
    );
    let mut byte = [0u8; 1];
    for tcp in &clients {
        assert!(
            matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "closed or answered before header_read_timeout"
        );
    }

    within("every partial preface to be closed", async {
        for tcp in &mut clients {
            // Closed without an answer: nothing tells an HTTP/1.1 client from an h2c one yet.
            assert_eq!(tcp.read(&mut byte).await.unwrap_or(0), 0);
        }
    })
    .await;
    let reply = fetch(&h1_client(), get(proxy.public, "/", &[])).await;
    assert_eq!(reply.status, 200);
}

/// The bytes read while they could still have been the preface go to whichever protocol
/// they turn out to start.
#[tokio::test]
async fn a_preface_or_a_request_sent_in_pieces_is_served() {
    let agent = MockUpstream::json("agent").await;
    let proxy = Config::new()
        .upstream("agent", agent.addr)
        .route(Route::new("chat").single("agent"))
        .start()
        .await;
    let pause = || tokio::time::sleep(Duration::from_millis(100));

    let mut h1 = TcpStream::connect(proxy.public).await.unwrap();
    h1.write_all(b"P").await.unwrap();
    pause().await;
    h1.write_all(b"OST /chat HTTP/1.1\r\nHost: cohort.test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let reply = within("the HTTP/1.1 answer", read_response(&mut h1)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(agent.only_request().target, "/chat");

    let mut h2 = TcpStream::connect(proxy.public).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    pause().await;
    // The rest of the preface, then an empty SETTINGS frame.
    h2.write_all(b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    within("the server's SETTINGS", h2.read_exact(&mut frame))
        .await
        .unwrap();
    assert_eq!(frame[3], 0x04, "an HTTP/2 SETTINGS frame: {frame:?}");
}
