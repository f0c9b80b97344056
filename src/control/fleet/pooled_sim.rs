//! The fleet simulator (placeholder)
