//! cohort: a weighted reverse proxy for canary releases of AI agents.
//!
//! Each request is hashed by a user or session key into a sticky cohort, forwarded to that
//! cohort's upstream, and measured per (route, cohort); rollouts move the canary's share step by
//! step and roll it back when a guard fails. The routing table is immutable and swapped whole.
//!
//! The library exists for the `cohort` binary, its tests and its benchmarks. What it offers
//! them, and nothing more, is public:
//! - [`app`]: start, run and stop a proxy from a config file (what `cohort run` does);
//! - [`config`]: load and parse a config file, with errors located at file, line, column and
//!   field;
//! - [`routing`]: build the validated table from a config, the contract's hash (`bands`), key
//!   extraction (`key`) and signed overrides (`signed`);
//! - [`control`]: reload and `cohort check`, the admin endpoints, the health probe, and rollout
//!   state and judging;
//! - [`edge`]: the hygiene and framing checks (for the fuzz tests and benches) and the server's
//!   memory release;
//! - [`telemetry`]: metric names and the per-instance registry;
//! - [`demo`]: the demo's agents, load and live table.
//!
//! Layers, highest first: wiring (`app`, and `demo` above it), `control`, `edge`, `proxy`,
//! `routing`, `upstream`, `config`, the leaves (`samples`, `lifecycle`, `failure`, `tls`,
//! `usage`), and `telemetry`. A module names only its own layer and those below it, and no two modules name
//! each other; `tests/architecture` checks both.

pub mod app;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub(crate) mod failure;
pub(crate) mod lifecycle;
pub(crate) mod proxy;
pub mod routing;
pub(crate) mod samples;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
pub mod usage;
