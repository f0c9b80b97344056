//! What rollouts keep on disk, in `state_dir`: one state file per route
//! (`rollout-<route>.json`) and the audit log (`audit.jsonl`, one JSON line appended per
//! decision). A state file carries a checksum of its contents; one that does not parse, does
//! not match its checksum or does not make sense is reported as corrupt and never trusted.
//!
//! Owns: nothing of its own: the file format is `format`, the directory `store`. Must not
//! touch: decisions (`machine`), the table.

mod format;
mod store;

pub use format::{Decision, Position, Saved, SavedTally};
pub use store::{StateError, Store, AUDIT_FILE};

#[cfg(test)]
mod tests;
