//! Units for the sample ratio check: which keys a rollout step has already counted, so that
//! each cohort's unit counter (in its [`super::Cells`]) counts distinct keys, not requests.
//!
//! Owns: the slot array, the key's slot hash and the epoch that tells one step's marks from
//! another's. Must not touch: the cohort a key is in (the bands, `routing`), the test
//! (`control::rollout::srm`). Recording takes no lock and allocates nothing: one hash and one
//! atomic swap into memory allocated when the rollout's entry was.
//!
//! Why this stays unbiased: a key's slot comes from a hash with its own fixed seed, so it is
//! independent of the key's bucket, hence of its cohort. Two keys that share a slot lose the
//! later one for the step, and a key is lost that way with the same chance in either cohort:
//! the counted units are a cohort-blind sample of the step's units.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Cells;

/// Slots per rollout: 2^17 two-byte slots (256 KiB). Past about this many distinct keys in a
/// step, more and more new keys land on marked slots and go uncounted (in both cohorts alike).
pub const UNIT_SLOTS: usize = 1 << 17;

/// The slot hash's seed: any fixed value other than a route's band seed (`xxh3_64(salt)`), so
/// that slot and bucket are unrelated. Changing it changes nothing users rely on.
const SLOT_SEED: u64 = 0x6c7d_2a91_e4b3_5f08;

/// The hash that places a key in a slot.
#[inline]
pub fn unit_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, SLOT_SEED)
}

/// A rollout's slots: each holds the epoch of the last step that counted a key there.
pub struct Seen {
    slots: Box<[AtomicU16]>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            slots: (0..UNIT_SLOTS).map(|_| AtomicU16::new(0)).collect(),
        }
    }
}

impl Seen {
    /// Marks `unit`'s slot for `epoch`: whether it was not marked for it yet (a new unit).
    #[inline]
    pub fn first(&self, unit: u64, epoch: u16) -> bool {
        let slot = &self.slots[(unit as usize) & (UNIT_SLOTS - 1)];
        // A plain load first: a key already counted (most requests) writes nothing, so its
        // cache line stays shared between cores.
        slot.load(Ordering::Relaxed) != epoch && slot.swap(epoch, Ordering::Relaxed) != epoch
    }
}

/// What a table's route carries for the check: the rollout's slots and its step's epoch.
#[derive(Clone)]
pub struct Units {
    pub seen: Arc<Seen>,
    pub epoch: u16,
}

impl Units {
    /// Counts `unit` in `cells` (the cohort that serves it) when the step has not seen it.
    #[inline]
    pub fn record(&self, unit: u64, cells: &Cells) {
        if self.seen.first(unit, self.epoch) {
            cells.count_unit();
        }
    }
}
