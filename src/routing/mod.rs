//! Routing: the validated, immutable table that every request is matched against.
//!
//! Owns: building the table from the raw config (`table`, including the rollout spec), hashing
//! keys into cohort bands (`bands`), reading a request's key (`key`), per-request cohort
//! overrides and conversation pins (`overrides`), their signatures (`signed`) and the pin
//! format (`pin`). Must not touch: sockets, the swap,
//! or the rollouts that rewrite percents (they live above, in `control`); it names `upstream`
//! below it to build each cohort's upstream.

pub mod bands;
pub mod history;
pub mod key;
pub(crate) mod overrides;
pub mod pin;
pub mod signed;
pub mod table;
