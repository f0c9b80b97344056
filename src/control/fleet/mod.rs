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
//! The plan, in the order it is built:
//! 1. The config: without a `fleet` section nothing changes; with one, `cohort check` and
//!    startup validate it into a [`spec::FleetSpec`].
//! 2. The engine: get, create and update by compare-and-swap on a key's revision, watch a
//!    prefix, delete. Errors say whether a write lost a race (`Conflict`) or the engine is
//!    away (`Unavailable`), which the fleet treats differently: a conflict is re-read and
//!    retried, an absence starts the `stale_after` clock.
//! 3. The lease: one judge per fleet, renewed every heartbeat, taken over by CAS once expired;
//!    its epoch is the fencing token that every write of the record carries, so a former
//!    holder's writes are refused.
//! 4. The record (another branch): one per route's rollout, written only by CAS, with state
//!    that only moves forward so a lost or replayed write can delay an advance but never undo
//!    a rollback; and the pooled samples every replica publishes.
//! 5. The wiring (after both branches merge): a fleet task per process that watches the
//!    records and applies them through `door` within a second, heartbeats its applied
//!    version, publishes its samples, judges when it holds the lease, and falls back to 0%
//!    canary after `stale_after` without contact.
//!
//! Arrows: `lease` -> `engine`; `nats` -> `engine` and `spec`; nothing here imports
//! `reload`, `admin` or `rollout` (they will import this).

pub mod engine;
pub mod lease;
pub mod nats;
pub mod pooled;
pub mod record;
pub mod spec;
