//! What rollouts keep on disk, in `state_dir`: one state file per route
//! (`rollout-<route>.json`) and the audit log (`audit.jsonl`, one JSON line appended per
//! decision). A state file carries a checksum of its contents; one that does not parse, does
//! not match its checksum or does not make sense is reported as corrupt and never trusted.
//!
//! Owns: what becomes of a rollout whose file is not trusted ([`UNTRUSTED`]); the file format
//! is `format`'s, the directory `store`'s. Must not touch: decisions (`machine`), the table.

mod format;
mod store;

pub use format::{Decision, Position, Saved, SavedTally};
pub use store::{StateError, Store, AUDIT_FILE};

#[cfg(test)]
mod tests;

/// What becomes of a rollout whose state file is not trusted, in startup's log line and in
/// `cohort check`'s warning, which must say the same.
pub const UNTRUSTED: &str =
    "the canary stays at 0% until an operator resumes, promotes or rolls back";
