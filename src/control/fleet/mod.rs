//! Fleets (issue 16): several replicas of cohort run each route's rollout as one, coordinated
//! through a key-value engine (NATS JetStream KV), off the request path.
//!
//! Owns: the validated `fleet` section (`spec`), the narrow engine trait every back end
//! implements (`engine`), its NATS JetStream implementation (`nats`), the judge's lease with
//! its fencing epoch (`lease`), the shared rollout record and its pure transitions
//! (`record`), and the pooled evidence with the split of alpha (`pooled`). Must not touch:
//! the request path (which keeps reading only atomic counters and the table), the serving table (every change goes through `door`, as
//! the single process's do), or sockets of the data plane.
//!
//! How it runs (`run`): a task per process watches the bucket and applies each route's record
//! through `door` at its effective time (within a second of seeing it), heartbeats the
//! versions it serves, publishes its step's counts, writes its own rollbacks and new rollout
//! ids, and, while it holds the lease, judges the pooled counts (`judge`) and writes the
//! verdicts; without contact for `stale_after` every canary goes to 0% here. It also shares
//! the percent history each record change put in force (`history`), which late outcomes are
//! attributed with. Every write of
//! a record goes through `shared::Fleet::write` (read, `record::propose`, compare-and-swap),
//! operators' actions too. The key layout is in `keys`.
//!
//! Arrows: `lease` -> `engine`; `nats` -> `engine` and `spec`; `run` -> everything here and
//! `rollout` (through `rollout::follow` and `rollout::judge::Judged`); nothing here imports
//! `reload` or `admin` (they import this).

pub mod engine;
pub mod history;
pub mod judge;
pub mod keys;
pub mod lease;
pub mod nats;
pub mod pooled;
pub mod record;
pub mod run;
pub mod shared;
pub mod spec;
