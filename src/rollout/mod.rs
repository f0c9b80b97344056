//! Progressive delivery: a route's rollout ramps its canary by steps, judges it against the
//! baseline with sequential tests, and rolls it back or advances it.
//!
//! Owns: the samples the request path records for the guards (`cells`).

pub mod cells;

pub use cells::Cells;
