//! The edge: where client connections arrive and leave.
//!
//! Owns: listeners and connection handling (`server`), request hygiene (`hygiene`), the
//! HTTP/1.x framing check (`framing`), and upgraded tunnels (`tunnel`). Must not touch: route
//! matching, cohorts or upstreams (`proxy`, `routing`, `upstream`), which it reaches only
//! through the proxy's one entry point.

pub mod framing;
pub mod hygiene;
pub mod server;
pub(crate) mod tunnel;
