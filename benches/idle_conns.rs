//! The client half of `benches/idle_conns.sh`: opens N HTTP/1.1 connections to a proxy, sends
//! one request on each and reads its answer to the end (so each is a served, kept-alive
//! connection), then holds them all open and idle until its standard input closes, SIGTERM or
//! SIGINT arrives, or `--max-hold-secs` pass.
//!
//!     idle_conns --target 127.0.0.1:18710 --connections 10000
//!
//! It prints `ready OK FAILED` once every connection is open and answered, and on leaving,
//! how many of the held connections the server had closed meanwhile. Run without `--target`
//! (as a plain `cargo bench` does) it only says where to look and exits.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

#[derive(Parser)]
#[command(about = "Open N kept-alive HTTP/1.1 connections and hold them idle")]
struct Args {
    /// The proxy's public address, as `host:port`.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// How many connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at once. Kept small so the proxy's upstream pool stays small
    /// (it grows to the number of requests in flight) and the figure is the client side's.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The path of the one request sent on each connection.
    #[arg(long, default_value = "/v1/chat")]
    path: String,
    /// Open the connections but send nothing on them (a diagnostic: what a connection costs
    /// before its first request, while the server is still detecting its protocol).
    #[arg(long)]
    no_request: bool,
    /// Leave after this long even if nobody says so.
    #[arg(long, default_value_t = 600)]
    max_hold_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One served connection: the handle to send on (never used again) and the task driving it.
struct Held {
    sender: SendRequest<Empty<Bytes>>,
    _conn: JoinHandle<()>,
}

async fn open_one(target: SocketAddr, path: &str, i: usize, send: bool) -> Result<Held, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    if !send {
        return Ok(Held {
            sender,
            _conn: conn,
        });
    }
    let req = Request::get(path)
        .header(header::HOST, target.to_string())
        .header("x-user-id", format!("idle-{i}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(Held {
        sender,
        _conn: conn,
    })
}

/// Resolves when standard input reaches its end (or fails).
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    rx
}

async fn run(args: Args, target: SocketAddr) -> std::process::ExitCode {
    let workers = args.concurrency.clamp(1, args.connections.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (path, n, send) = (args.path.clone(), args.connections, !args.no_request);
        tasks.spawn(async move {
            let (mut held, mut errors) = (Vec::new(), Vec::new());
            for i in (w..n).step_by(workers) {
                match open_one(target, &path, i, send).await {
                    Ok(h) => held.push(h),
                    Err(e) => errors.push(e),
                }
            }
            (held, errors)
        });
    }
    let (mut held, mut errors) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (h, e) = done.expect("an opening task panicked");
        held.extend(h);
        errors.extend(e);
    }
    if let Some(first) = errors.first() {
        eprintln!(
            "idle_conns: {} connections failed; the first: {first}",
            errors.len()
        );
    }
    println!("ready {} {}", held.len(), errors.len());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = stdin_closed() => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(args.max_hold_secs)) => {}
    }
    // Let the connection tasks notice a close the server sent while we waited.
    tokio::task::yield_now().await;
    let closed = held.iter().filter(|h| h.sender.is_closed()).count();
    println!("closed by the server while held: {closed}");
    if errors.is_empty() && closed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let Some(target) = args.target else {
        eprintln!("idle_conns: a client for benches/idle_conns.sh (give --target HOST:PORT)");
        return std::process::ExitCode::SUCCESS;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(args, target))
}
