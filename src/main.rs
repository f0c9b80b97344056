//! The `cohort` command: wiring only. Parses arguments, sets up logging, and calls the library.

use std::alloc::{GlobalAlloc, Layout};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libmimalloc_sys as mi;

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path
/// (measured with benches/instructions.sh; see the README's performance section).
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked through its plain entry points wherever the layout's alignment is one every
/// mimalloc block has (a machine word: blocks are whole words from an aligned page start).
/// `mimalloc::MiMalloc` always takes the aligned ones, and there a block over 1 KiB whose size
/// class is not a power of two (the request's boxed future, hyper's 8 KiB read buffers) goes
/// through an over-allocating path, several times a request: this way a proxied request costs
/// about 780 instructions fewer (benches/instructions.sh).
struct Mimalloc;

/// The alignment of every mimalloc block.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes either kind);
// the plain entry points serve only layouts aligned to at most a word, which every block is.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[derive(Parser)]
#[command(
    name = "cohort",
    version,
    about = "A weighted reverse proxy for canary releases of AI agents"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT, then drain. SIGHUP reloads the config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Runtime threads. 1 runs everything on one single-threaded runtime (no cross-thread
        /// wake-ups: the fastest choice on one core). Default: the CPUs this process may use.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config: exit 0 when good, 1 with the errors on stderr when not.
    Check { file: PathBuf },
    /// Print `KEY BUCKET COHORT` for each key, as the proxy would assign it.
    Assign {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// The cohort each key had at this time (RFC 3339 or unix seconds), read from the
        /// percent history in the config's state_dir, as late outcomes are attributed.
        #[arg(long)]
        at: Option<String>,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run the proxy on config/demo.yaml with built-in stable and canary mock agents, until
    /// SIGTERM, SIGINT or SIGHUP (its terminal closing).
    Demo {
        /// Defaults to config/demo.yaml, or the built-in copy when that file is absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: cohort::demo::DemoArgs,
    },
    /// Serve one demo mock agent (for containers: the stable and canary behind `cohort run`).
    DemoAgent(cohort::demo::AgentArgs),
    /// Drive the demo's load (random users, steady rate) against a running proxy.
    DemoLoad(cohort::demo::LoadArgs),
    /// Print a signed cohort override (for a route's `override_header`) valid for `--ttl`.
    SignOverride {
        /// The route's `override_secret_file`; trailing whitespace is ignored, as the proxy
        /// ignores it.
        #[arg(long)]
        secret_file: PathBuf,
        /// The cohort the value forces.
        #[arg(long)]
        cohort: String,
        /// How long the value stays valid, such as `1h` or `30m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// GET a URL (the admin /healthz by default): exit 0 on a 2xx answer, 1 otherwise.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live table owns the terminal: its log lines print above it (`demo::logs`).
    let tabled = matches!(cli.command, Command::Demo { .. } | Command::DemoLoad(_));
    init_logging(cli.log_format, tabled && std::io::stdout().is_terminal());
    // Parked connections free their buffers; mimalloc hands the pages back only when told.
    // Forced: unforced, it keeps pages freed within its purge delay, and when parks come in one
    // burst no later collection comes to purge them (10,000 idle connections then kept 20.9
    // KiB each instead of 4.1; benches/idle_conns.sh).
    cohort::edge::server::release_freed_memory_with(|| {
        // SAFETY: mi_collect walks the calling thread's mimalloc heap, the global allocator's.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cohort: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, held: bool) {
    if held {
        init_logging_to(format, cohort::demo::logs::Logs);
    } else {
        init_logging_to(format, std::io::stderr);
    }
}

fn init_logging_to<W>(format: LogFormat, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The proxy's runtime: single-threaded when one CPU (or one worker) is all there is, since
/// a work-stealing pool on one core only adds wake-ups between its threads.
fn serving_runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = workers.unwrap_or(cpus).max(1);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, workers } => {
            let rt = serving_runtime(workers)?;
            let served = rt.block_on(cohort::app::run(&config));
            // Dropping a runtime waits for its blocking tasks without bound (a reload stuck
            // reading a file); the final checkpoint is written, so exit all the same.
            rt.shutdown_timeout(cohort::app::ABORT_GRACE);
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => Ok(check(&file)),
        Command::Assign {
            config,
            route,
            at: None,
            keys,
        } => assign(&config, &route, &keys),
        Command::Assign {
            config,
            route,
            at: Some(at),
            keys,
        } => assign_at(&config, &route, &at, &keys),
        Command::Demo { config, args } => {
            let (path, _keep) = match (config, args.rollout) {
                (None, true) => {
                    let (path, dir) = cohort::demo::rollout_config()
                        .context("cannot write the demo's rollout config")?;
                    (path, Some(dir))
                }
                (config, _) => demo_config(config)?,
            };
            let rt = runtime()?;
            let served = rt.block_on(cohort::demo::run(&path, &args));
            rt.shutdown_timeout(cohort::app::ABORT_GRACE);
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoAgent(args) => {
            let address = std::net::SocketAddr::new(args.bind, args.port);
            runtime()?
                .block_on(cohort::demo::agent::run_agent(address, args.spec()))
                .with_context(|| format!("cannot serve the demo agent on {address}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoLoad(args) => {
            runtime()?.block_on(cohort::demo::run_load(&args));
            Ok(ExitCode::SUCCESS)
        }
        Command::SignOverride {
            secret_file,
            cohort,
            ttl,
        } => {
            println!("{}", sign_override(&secret_file, &cohort, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url, timeout } => {
            match runtime()?.block_on(cohort::control::healthcheck::probe(&url, timeout)) {
                Ok(status) if status.is_success() => Ok(ExitCode::SUCCESS),
                Ok(status) => {
                    eprintln!("cohort: {url} answered {status}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("cohort: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn check(file: &Path) -> ExitCode {
    let metrics = cohort::telemetry::Metrics::new();
    match cohort::control::reload::check(file, &metrics) {
        Ok((table, state)) => {
            for w in table.warnings().iter().chain(&state.warnings) {
                eprintln!("warning: {w}");
            }
            for n in &state.notes {
                eprintln!("note: {n}");
            }
            println!("{}: ok ({} routes)", file.display(), table.routes.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn assign(config: &Path, route: &str, keys: &[String]) -> anyhow::Result<ExitCode> {
    let loaded = cohort::config::load(config)?;
    let table =
        cohort::routing::table::from_loaded(&loaded, &cohort::telemetry::Metrics::new(), None, 1)?;
    let Some(r) = table.route(route) else {
        let names: Vec<_> = table.routes.iter().map(|r| r.name.as_str()).collect();
        anyhow::bail!(
            "no route {route:?} in {} (routes: {})",
            config.display(),
            names.join(", ")
        );
    };
    for key in keys {
        let bucket = cohort::routing::bands::bucket(key.as_bytes(), r.seed);
        println!("{key} {bucket} {}", r.cohorts[r.bands.lookup(bucket)].name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cohort assign --at`: the cohort of each key under the split `route` served at `at`, from
/// the percent history in the config's `state_dir` (as `POST /outcomes` attributes).
fn assign_at(config: &Path, route: &str, at: &str, keys: &[String]) -> anyhow::Result<ExitCode> {
    let loaded = cohort::config::load(config)?;
    let table =
        cohort::routing::table::from_loaded(&loaded, &cohort::telemetry::Metrics::new(), None, 1)?;
    let at_ms = cohort::control::late::event::rfc3339_ms(at)
        .or_else(|| {
            at.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
                .map(|s| (s * 1000.0).round() as u64)
        })
        .with_context(|| format!("--at {at:?} is not an RFC 3339 time or unix seconds"))?;
    let dir = table.state_dir.as_deref().with_context(|| {
        format!(
            "{} sets no state_dir, so no percent history is kept",
            config.display()
        )
    })?;
    let (history, _) = cohort::control::late::file::read(dir)?;
    let entry = history.at(route, at_ms).map_err(|_| {
        anyhow::anyhow!(
            "no split of route {route:?} is recorded at or before {at} in {}",
            dir.join(cohort::control::late::file::HISTORY_FILE)
                .display()
        )
    })?;
    for key in keys {
        let (bucket, cohort) = entry.assign(key.as_bytes());
        println!("{key} {bucket} {cohort}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cohort::routing::signed::sign` over the secret as the proxy reads it, expiring `ttl` from now.
fn sign_override(
    secret_file: &Path,
    name: &str,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    let mut secret = std::fs::read(secret_file)
        .with_context(|| format!("cannot read {}", secret_file.display()))?;
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    anyhow::ensure!(
        secret.len() >= cohort::routing::signed::MIN_SECRET_BYTES,
        "{}: the secret must hold at least {} bytes",
        secret_file.display(),
        cohort::routing::signed::MIN_SECRET_BYTES
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let expires = now.checked_add(ttl).context("--ttl is too long")?.as_secs();
    Ok(cohort::routing::signed::sign(&secret, name, expires))
}

/// The demo config path; writes the built-in copy to a temporary file when none is on disk.
fn demo_config(given: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(p) = given {
        return Ok((p, None));
    }
    let local = PathBuf::from("config/demo.yaml");
    if local.exists() {
        return Ok((local, None));
    }
    let dir =
        tempfile::tempdir().context("cannot create a temporary directory for the demo config")?;
    let path = dir.path().join("demo.yaml");
    std::fs::write(&path, cohort::demo::DEMO_YAML).context("cannot write the demo config")?;
    Ok((path, Some(dir)))
}
