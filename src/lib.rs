//! cohort: a weighted reverse proxy for canary releases of AI agents.
//!
//! Each request is hashed by a user or session key into a sticky cohort (see [`cohort`]),
//! forwarded to that cohort's upstream, and measured per (route, cohort). The routing table
//! is immutable and swapped whole on reload (see [`reload`]).

pub mod app;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub mod failure;
pub mod lifecycle;
pub mod proxy;
pub mod routing;
pub mod samples;
pub mod telemetry;
pub mod tls;
pub mod upstream;
