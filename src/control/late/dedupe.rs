//! Event ids accepted recently, so a replayed event counts once: bounded by a window and a cap.
//!
//! Owns: the remembered ids. Must not touch: what an event means, metrics (the caller counts
//! evictions).
//!
//! When the cap is reached the oldest id is forgotten first: an event is never refused for
//! want of room, at the price that a replay arriving after more than `cap` newer events may
//! count again (`cohort_late_outcomes_ids_evicted_total` says when that can happen).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Dedupe {
    /// Id -> when it was accepted (ms).
    seen: HashMap<Arc<str>, u64>,
    /// Ids in the order they were accepted, for expiry and eviction.
    order: VecDeque<(Arc<str>, u64)>,
}

/// What [`Dedupe::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// New: remembered now; `evicted` older ids were forgotten to make room.
    New { evicted: usize },
    /// Accepted before, within the window.
    Replay,
}

impl Dedupe {
    /// Forgets the ids accepted `window_ms` or more before `now_ms`.
    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((id, at)) = self.order.front() {
            if at.saturating_add(window_ms) > now_ms {
                break;
            }
            if self.seen.get(id) == Some(at) {
                self.seen.remove(id);
            }
            self.order.pop_front();
        }
    }

    /// Whether `id` is new; a new one is remembered until `window_ms` after `now_ms`, among at
    /// most `cap` ids.
    pub fn admit(&mut self, id: &str, now_ms: u64, window_ms: u64, cap: usize) -> Admit {
        self.expire(now_ms, window_ms);
        if self.seen.contains_key(id) {
            return Admit::Replay;
        }
        let mut evicted = 0;
        while self.seen.len() >= cap.max(1) {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
                evicted += 1;
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(Arc::clone(&id), now_ms);
        self.order.push_back((id, now_ms));
        Admit::New { evicted }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_counts_once_within_the_window() {
        let mut d = Dedupe::default();
        assert_eq!(d.admit("a", 0, 1000, 10), Admit::New { evicted: 0 });
        assert_eq!(d.admit("a", 999, 1000, 10), Admit::Replay);
        assert_eq!(d.admit("a", 1000, 1000, 10), Admit::New { evicted: 0 });
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_full_memory_forgets_the_oldest_first() {
        let mut d = Dedupe::default();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(d.admit(id, i as u64, 1000, 3), Admit::New { evicted: 0 });
        }
        assert_eq!(d.admit("d", 5, 1000, 3), Admit::New { evicted: 1 });
        assert_eq!(d.len(), 3);
        assert_eq!(d.admit("b", 6, 1000, 3), Admit::Replay);
        // "a" was forgotten: its replay is new again.
        assert_eq!(d.admit("a", 7, 1000, 3), Admit::New { evicted: 1 });
        assert_eq!(d.admit("b", 8, 1000, 3), Admit::New { evicted: 1 });
    }
}
