//! The fleet end to end (issue 16): three `cohort run` processes (replicas r1, r2, r3, each
//! with its own state directory) in front of two upstreams that name themselves, coordinated
//! through a real three-node NATS JetStream cluster, with fast timings (heartbeat 200 ms,
//! lease 2 s, stale_after 4 s, switch_delay 500 ms). Everything is observed from outside:
//! requests with per-request timestamps, `GET /rollouts`, `/metrics`, and processes killed,
//! stopped and restarted.
//!
//! The tests print what they measure (switch windows, rollback propagation, samples to a
//! rollback, takeover time); run them with `--nocapture --test-threads=1` to read it.
//!
//! Without a `nats-server` these tests print SKIPPED and pass, unless COHORT_REQUIRE_NATS=1.
//!
//! The tests are split by what they put the fleet through: `walk` (steps and a rollback),
//! `takeover` (a judge killed, a replica restarted), `outage` (NATS nodes down) and `srm` (a
//! broken split halts the fleet), `history` (late outcomes attributed alike through the shared
//! percent history); `common`
//! holds the checks they share.

#[path = "../support/mod.rs"]
mod support;

mod common;
mod history;
mod outage;
mod srm;
mod takeover;
mod walk;
