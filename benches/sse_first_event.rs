//! What cohort adds to the first event of an SSE stream: the time from sending a request to
//! holding the first event's bytes, going straight to an SSE backend and going through
//! `cohort run` in front of the same backend.
//!
//!     cargo bench --bench sse_first_event -- --requests 2000
//!     benches/sse_first_event.sh 2000          # the same, built first
//!
//! The backend (in this process, on its own thread) answers each request with one event at
//! once and a second one `--second-event-ms` later, as an agent streams its reply. cohort runs
//! as a child process (the release build cargo made for this bench, or `--cohort PATH`) on a
//! generated config, pinned with `taskset` to the last CPU while this process keeps the others,
//! as in ../shared/bench/peers.py. Requests are sequential, each on a kept-alive connection
//! (`--new-connections`: a fresh one each, connect included), and alternate direct and
//! proxied so drift on a noisy machine hits both alike. Each answer is checked to carry both
//! events, the second well after the first (a proxy that buffered would fail that).

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::{header, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const EVENT_ONE: &[u8] = b"event: token\ndata: {\"token\":\"Hello\"}\n\n";
const EVENT_TWO: &[u8] = b"event: token\ndata: {\"token\":\" world\"}\n\ndata: [DONE]\n\n";

#[derive(Parser)]
#[command(about = "Time to the first SSE event, direct and through cohort")]
struct Args {
    /// Measured requests per side (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Unmeasured requests per side first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// The backend's pause between the first and the second event.
    #[arg(long, default_value_t = 10)]
    second_event_ms: u64,
    /// Open a new connection for each request (its connect counted) instead of keeping one.
    #[arg(long)]
    new_connections: bool,
    /// The cohort binary (default: the one cargo built beside this bench).
    #[arg(long)]
    cohort: Option<PathBuf>,
    /// Extra arguments for `cohort run`, such as `--workers 2`.
    #[arg(long, allow_hyphen_values = true, num_args = 1.., value_name = "ARG")]
    cohort_args: Vec<String>,
    /// Leave CPU affinity alone (no taskset).
    #[arg(long)]
    no_pin: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The backend's answer: event one at once, event two after `gap`, then the end.
struct Sse {
    step: u8,
    gap: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Sse {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.step {
            0 => {
                this.step = 1;
                this.timer = Some(Box::pin(tokio::time::sleep(this.gap)));
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(EVENT_ONE)))))
            }
            1 => match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Pending) => Poll::Pending,
                _ => {
                    this.step = 2;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(EVENT_TWO)))))
                }
            },
            _ => Poll::Ready(None),
        }
    }
}

/// Serves the SSE backend on `listener` on a thread of its own, for as long as the process.
fn start_backend(listener: StdListener, gap: Duration) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = TcpListener::from_std(listener).expect("backend listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| async move {
                        let mut resp = Response::new(Sse {
                            step: 0,
                            gap,
                            timer: None,
                        });
                        let h = resp.headers_mut();
                        h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
                        h.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The CPUs this process may use, from /proc/self/status (`Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("");
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Kills cohort when the bench ends, however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_cohort(
    args: &Args,
    dir: &std::path::Path,
    backend: SocketAddr,
    public: SocketAddr,
    proxy_cpu: Option<usize>,
) -> Proxy {
    let config = dir.join("cohort.yaml");
    let yaml = format!(
        "listeners: [{{name: public, address: \"{public}\"}}]\n\
         admin: {{address: \"127.0.0.1:{admin}\"}}\n\
         upstreams:\n  agent: {{endpoints: [\"{backend}\"]}}\n\
         routes:\n  - name: agent\n    cohort_key: [{{header: x-user-id}}]\n    split:\n\
         \x20     - {{cohort: stable, upstream: agent, percent: 100}}\n",
        admin = free_port(),
    );
    std::fs::write(&config, yaml).expect("write the config");
    let bin = args
        .cohort
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cohort")));
    let mut cmd = match proxy_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(&args.cohort_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("cohort.log")).expect("log file"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Proxy(child)
}

async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One side of the comparison: where it sends, and its kept-alive connection.
struct Side {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    micros: Vec<f64>,
}

impl Side {
    /// Sends one request; returns the time to the first event, having read the whole answer
    /// and checked it.
    async fn once(&mut self, fresh: bool, user: usize, gap: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        if fresh || self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(self.addr).await.map_err(|e| e.to_string())?);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get("/v1/chat/stream")
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT, "text/event-stream")
            .header("x-user-id", format!("user-{user}"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut got = BytesMut::new();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                got.extend_from_slice(&data);
                if first.is_none() && got.len() >= EVENT_ONE.len() {
                    first = Some(start.elapsed());
                }
            }
        }
        let total = start.elapsed();
        let first = first.ok_or("the stream ended before its first event")?;
        if got[..] != [EVENT_ONE, EVENT_TWO].concat()[..] {
            return Err(format!("unexpected stream: {got:?}"));
        }
        if total < first + gap / 2 {
            return Err(format!(
                "the first event came with the second ({first:?}, {total:?}): buffered?"
            ));
        }
        Ok(first)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn measure(args: &Args, direct: SocketAddr, proxied: SocketAddr) -> Result<(), String> {
    let gap = Duration::from_millis(args.second_event_ms);
    let mut sides = [direct, proxied].map(|addr| Side {
        addr,
        sender: None,
        micros: Vec::with_capacity(args.requests),
    });
    for i in 0..args.warmup + args.requests {
        // Alternate which side goes first, so neither always follows the other.
        for k in [i % 2, 1 - i % 2] {
            let took = sides[k].once(args.new_connections, i, gap).await?;
            if i >= args.warmup {
                sides[k].micros.push(took.as_secs_f64() * 1e6);
            }
        }
    }
    println!(
        "first SSE event: {} requests per side after {} warm-up, sequential, {}; second event {} ms later",
        args.requests,
        args.warmup,
        if args.new_connections {
            "a new connection each (connect included)"
        } else {
            "on a kept-alive connection"
        },
        args.second_event_ms
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut p = [[0.0; 5]; 2];
    for (k, name) in ["direct", "cohort"].into_iter().enumerate() {
        let v = &mut sides[k].micros;
        v.sort_by(f64::total_cmp);
        p[k] = [50.0, 90.0, 99.0, 99.9, 100.0].map(|q| percentile(v, q) / 1000.0);
        println!(
            "{name:<8} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            p[k][0], p[k][1], p[k][2], p[k][3], p[k][4]
        );
    }
    println!(
        "cohort adds: p50 {:+.3} ms, p99 {:+.3} ms, p99.9 {:+.3} ms (target: p99 at most +1 ms)",
        p[1][0] - p[0][0],
        p[1][2] - p[0][2],
        p[1][3] - p[0][3]
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Pinning as in peers.py: cohort on the last CPU, this process (client and backend) on the
    // others. `taskset -a -p` before any thread starts, so every later thread inherits it.
    let cpus = allowed_cpus();
    let pin = !args.no_pin && cpus.len() > 1 && Command::new("taskset").arg("-V").output().is_ok();
    let proxy_cpu = if pin { cpus.last().copied() } else { None };
    if pin {
        let rest = cpu_list(&cpus[..cpus.len() - 1]);
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", &rest, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("sse_first_event: could not pin this process to CPUs {rest}");
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("cohort-sse-")
        .tempdir()
        .expect("temp dir");
    let backend_listener = StdListener::bind("127.0.0.1:0").expect("backend port");
    let backend = backend_listener.local_addr().expect("backend address");
    start_backend(
        backend_listener,
        Duration::from_millis(args.second_event_ms),
    );
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut proxy = start_cohort(&args, dir.path(), backend, public, proxy_cpu);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(public).await.is_err() {
            if Instant::now() > deadline || proxy.0.try_wait().ok().flatten().is_some() {
                return Err("cohort did not start listening".to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match proxy_cpu {
            Some(cpu) => println!("cohort pinned to CPU {cpu}; client and backend on the others"),
            None => println!("no pinning"),
        }
        measure(&args, backend, public).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let log = std::fs::read_to_string(dir.path().join("cohort.log")).unwrap_or_default();
            eprintln!("sse_first_event: {e}\ncohort's log:\n{log}");
            std::process::ExitCode::FAILURE
        }
    }
}
