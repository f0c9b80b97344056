//! cohort: a weighted reverse proxy for canary releases of AI agents.
//!
//! Each request is hashed by a user or session key into a sticky cohort (see [`cohort`]),
//! forwarded to that cohort's upstream, and measured per (route, cohort). The routing table
//! is immutable and swapped whole on reload (see [`reload`]).

pub mod admin;
pub mod app;
pub mod body;
pub mod cohort;
pub mod config;
pub mod demo;
mod exposition;
pub mod framing;
pub mod hygiene;
pub mod locate;
pub mod metrics;
pub mod overrides;
pub mod pool;
pub mod proxy;
pub mod reload;
mod retired;
pub mod rollout;
pub mod server;
pub mod signed;
pub mod table;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod watch;
