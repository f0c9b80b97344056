//! Thread per core (`--workers N`): every worker accepts on its own SO_REUSEPORT copy of the
//! listener, keeps its own upstream connections, and shares the connection cap and shutdown.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn workers(n: usize) -> cohort::app::Options {
    cohort::app::Options {
        workers: n,
        ..Default::default()
    }
}

fn to_backend(endpoint: std::net::SocketAddr) -> Config {
    Config::new().upstream("backend", endpoint).route(
        Route::new("agent")
            .key("header: x-user-id")
            .single("backend"),
    )
}

const ONE_REQUEST: &str =
    "GET /w HTTP/1.1\r\nhost: a\r\nx-user-id: u1\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn connections_spread_over_workers_each_with_its_own_upstream_connection() {
    let mock = MockUpstream::json("backend").await;
    let p = to_backend(mock.addr).start_with(workers(3)).await;
    // One request per client connection, one at a time: the kernel hashes each new connection
    // to one of the three listener copies, and that worker reuses its pooled connection.
    for _ in 0..40 {
        let answer = raw_exchange(p.public, ONE_REQUEST).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    assert_eq!(mock.request_count(), 40);
    let upstream = mock.connections();
    assert!(
        (2..=3).contains(&upstream),
        "one upstream connection per worker that served (3 workers), got {upstream}"
    );
    assert!(within("shutdown", p.running.shutdown()).await);
}

#[tokio::test]
async fn max_connections_counts_the_connections_of_every_worker() {
    let mock = MockUpstream::json("backend").await;
    let p = to_backend(mock.addr)
        .top("limits: {max_connections: 3}")
        .start_with(workers(3))
        .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = within("connect", TcpStream::connect(p.public))
            .await
            .unwrap();
        let keep = ONE_REQUEST.replace("connection: close\r\n", "");
        within("write", tcp.write_all(keep.as_bytes()))
            .await
            .unwrap();
        let answer = read_response(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        open.push(tcp);
    }
    // Whichever worker accepts it, the fourth is over the listener's cap.
    let refused = raw_exchange(p.public, ONE_REQUEST).await;
    assert!(
        refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{refused}"
    );
    assert!(refused.ends_with("too many connections\n"), "{refused}");
    drop(open);
    assert!(within("shutdown", p.running.shutdown()).await);
}

#[tokio::test]
async fn shutdown_lets_requests_on_every_worker_finish() {
    let gate = Gate::new();
    let mock = MockUpstream::builder()
        .respond_with(Respond::Gated(gate.clone()))
        .start()
        .await;
    let p = to_backend(mock.addr).start_with(workers(3)).await;
    let mut pending = Vec::new();
    for _ in 0..12 {
        let public = p.public;
        pending.push(tokio::spawn(async move {
            raw_exchange(public, ONE_REQUEST).await
        }));
    }
    within("the requests to reach the backend", async {
        while mock.request_count() < 12 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let TestProxy {
        running, dir: _dir, ..
    } = p;
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the requests");
    for _ in 0..12 {
        gate.release();
    }
    for answer in pending {
        let answer = within("an in-flight response", answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    assert!(within("shutdown", shutdown).await.unwrap(), "drained");
}
