//! Routing: the validated, immutable table that every request is matched against.
//!
//! Owns: building the table from the raw config (`table`), hashing keys into cohort bands
//! (`bands`), per-request cohort overrides (`overrides`) and their signatures (`signed`). Must
//! not touch: sockets, the swap, or the rollouts that rewrite percents (they live above, in
//! `control`).

pub mod bands;
pub mod key;
pub(crate) mod overrides;
pub mod signed;
pub mod table;
