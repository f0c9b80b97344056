//! The control plane: everything that changes what the request path serves, off the request
//! path.
//!
//! Owns: reading and swapping configurations (`reload`), watching files (`watch`), the admin
//! listener (`admin`), and the rollouts that move canaries step by step (`rollout`). Must not
//! touch: sockets of the data plane (`edge`), the request path (`proxy`). Every change reaches
//! the request path as one store of a new table through `reload`'s door.

pub mod admin;
pub mod door;
pub mod healthcheck;
pub mod reload;
pub mod rollout;
pub mod watch;
