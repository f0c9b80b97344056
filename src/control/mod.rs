//! The control plane: everything that changes what the request path serves, off the request
//! path.
//!
//! Owns: reading and swapping configurations (`reload`), watching files (`watch`), the admin
//! listener (`admin`), the rollouts that move canaries step by step (`rollout`), the one door
//! to the serving table (`door`), the `cohort healthcheck` client (`healthcheck`), and fleets
//! of replicas coordinated through NATS (`fleet`, which names `rollout`, never the reverse),
//! and late outcomes with the percent history they are attributed by (`late`).
//! Must not touch: sockets of the data plane (`edge`), the request path (`proxy`). Every change
//! reaches the request path as one store of a new table through `door`, whoever makes it.
//!
//! Arrows point one way: `admin` and `watch` -> `reload` -> `rollout` -> `door`; `admin` also
//! names `rollout`'s actions, `reload` also uses `door` and `fleet`; `admin` and `reload` ->
//! `late` -> `door` (whose `Observer` it is). No module here imports one that imports it.

pub mod admin;
pub(crate) mod door;
pub mod fleet;
pub mod healthcheck;
pub mod late;
pub mod reload;
pub mod rollout;
pub(crate) mod watch;
