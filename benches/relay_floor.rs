//! The floor under any tokio proxy's CPU per request: a TCP relay that does no HTTP work.
//!
//! ```text
//! relay_floor LISTEN_ADDR UPSTREAM_ADDR
//! ```
//!
//! On a single-threaded (current_thread) tokio runtime, each accepted client connection gets
//! one upstream connection of its own, and `tokio::io::copy_bidirectional` copies bytes both
//! ways, with TCP_NODELAY on both sockets. Nothing is parsed, routed or pooled: a kept-alive
//! request costs it the four socket operations every proxy makes (read the request from the
//! client, write it upstream, read the response, write it back) and tokio's event loop around
//! them, nothing else.
//!
//! Why it exists: `benches/floor.sh` runs it beside cohort, nginx and HAProxy, each pinned to
//! one core under the same load, and reads their CPU time per request. What the relay spends is
//! what the kernel path and the event loop take before any HTTP work, so no tokio proxy can
//! spend less; set against the better peer, it shows how much a CPU-per-request target (such
//! as "at most 0.85x nginx's") leaves for all the HTTP work. It is a plain program
//! (`harness = false`), built with `cargo build --release --bench relay_floor`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: relay_floor LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay_floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `listen`, resolves `upstream` once, and relays every accepted connection until killed.
async fn serve(listen: &str, upstream: &str) -> std::io::Result<()> {
    let upstream = tokio::net::lookup_host(upstream)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{upstream}: no address")))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {listen}: {e}")))?;
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(relay(client, upstream));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                eprintln!("relay_floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One client connection: its own upstream connection, bytes copied both ways until either
/// side closes. A failed connect drops the client connection.
async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("relay_floor: connect {upstream}: {e}; dropping the client connection");
            return;
        }
    };
    for socket in [&client, &server] {
        if let Err(e) = socket.set_nodelay(true) {
            eprintln!("relay_floor: TCP_NODELAY: {e}");
        }
    }
    // A reset on either side ends the relay; there is nothing more to do with either socket.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
