//! The serving layout: thread per core. Each worker is an OS thread with its own
//! single-threaded tokio runtime, accepting on its own copy of every listener; the copies share
//! the address through `SO_REUSEPORT`, so the kernel spreads new connections over the workers
//! and a connection, its upstream connections and its timers stay on one thread.
//!
//! Owns: binding the listener copies, starting worker threads and their runtimes, and which
//! worker the current thread is. Must not touch: what a worker serves (`server`), start-up and
//! shutdown order (`app`).
//!
//! Why not tokio's multi-threaded runtime: its work stealing moves a connection's tasks between
//! threads, and every wake-up across threads costs a futex or an eventfd write. A proxy's
//! connections are independent, so nothing is gained by sharing them out after accept.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is: 0 on the thread that started the proxy and on any thread
/// that is not a worker.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Listening sockets for `address`, one per worker. Several copies share the address through
/// `SO_REUSEPORT`; a single copy is bound without it, so no other process can join it.
/// Port 0 is resolved by the first copy; the others bind the port it got.
pub fn bind(address: SocketAddr, copies: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let shared = copies > 1;
    let first = listen(address, shared)?;
    let actual = first.local_addr()?;
    let mut all = Vec::with_capacity(copies);
    all.push(first);
    for _ in 1..copies {
        all.push(listen(actual, shared)?);
    }
    Ok(all)
}

fn listen(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As std's and tokio's bind do: a restart need not wait for the old sockets' TIME_WAIT.
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    // The backlog tokio's `TcpListener::bind` asks for.
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Starts worker `index` on its own thread: a single-threaded runtime running `work` to its
/// end. `work` is built on that thread, so what it creates (listeners, timers) registers
/// with that runtime.
pub fn spawn<F, Fut>(index: usize, work: F) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(format!("cohort-worker-{index}"))
        .spawn(move || {
            INDEX.with(|i| i.set(index));
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work()),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a worker runtime")
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_one_port() {
        let copies = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = copies[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for c in &copies {
            assert_eq!(c.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn a_single_copy_keeps_its_port_to_itself() {
        let one = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let taken = one[0].local_addr().unwrap();
        assert!(bind(taken, 1).is_err());
        assert!(bind(taken, 2).is_err());
    }

    #[test]
    fn workers_know_their_index() {
        assert_eq!(current(), 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = spawn(3, move || async move {
            let _ = tx.send(current());
        })
        .unwrap();
        t.join().unwrap();
        assert_eq!(rx.recv().unwrap(), 3);
    }
}
