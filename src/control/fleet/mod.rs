//! Fleets: one rollout across every replica (stub: the engine's branch owns the real one).
pub mod pooled;
pub mod record;
