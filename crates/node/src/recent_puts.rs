//! [`RecentPuts`]: the chunks this process stored most recently from a put.
//!
//! A writer commits once W of R copies are durable and records the other placed nodes
//! in the heal index; with a busy node the last copy usually lands a moment after the
//! commit. The heal pass then found the copy present, but only after reading the whole
//! chunk back and hashing it. A put has already checked the hash of the bytes it stored
//! and fsynced them, so for a chunk in this set heal only checks that its file is still
//! there (GC may have removed it since). A copy found corrupt is forgotten at once, so
//! the heal it asks for reads and replaces it. Bounded: the oldest ids are forgotten
//! first, and a restart forgets everything (heal then verifies by reading, as before).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use plait_proto::ChunkId;

/// Ids remembered (32 bytes each, held twice: about 0.5 MiB), enough for 32 GiB of 4 MiB
/// chunks written between two heal passes.
pub const RECENT_PUTS_MAX: usize = 8_192;

/// A bounded set of chunk ids, forgetting the oldest insertion first.
#[derive(Debug, Default)]
pub struct RecentPuts {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<ChunkId>,
    /// Insertion order, at most [`RECENT_PUTS_MAX`] long. Holds every id of `ids`, and
    /// may still hold ids forgotten since (they leave when their turn comes; one that was
    /// inserted again meanwhile is then forgotten early, which only costs a read).
    order: VecDeque<ChunkId>,
}

impl RecentPuts {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a put stored (or found intact) a verified copy of `id`.
    pub fn insert(&self, id: ChunkId) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.ids.insert(id) {
            return;
        }
        inner.order.push_back(id);
        while inner.order.len() > RECENT_PUTS_MAX {
            if let Some(old) = inner.order.pop_front() {
                inner.ids.remove(&old);
            }
        }
        debug_assert!(inner.ids.len() <= inner.order.len());
    }

    /// Forgets `id`: its copy was found corrupt, so its put's hash check no longer holds.
    pub fn forget(&self, id: &ChunkId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .remove(id);
    }

    /// Whether a put of `id` was recorded and not forgotten yet.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ChunkId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        ChunkId(bytes)
    }

    #[test]
    fn remembers_the_newest_ids_up_to_the_bound() {
        let recent = RecentPuts::new();
        let total = RECENT_PUTS_MAX as u64 + 10;
        for n in 0..total {
            recent.insert(id(n));
            // A repeated put does not count twice.
            recent.insert(id(n));
        }
        for n in 0..10 {
            assert!(!recent.contains(&id(n)), "id {n} should be forgotten");
        }
        for n in 10..total {
            assert!(recent.contains(&id(n)), "id {n} should be remembered");
        }
        let inner = recent.inner.lock().unwrap();
        assert_eq!(inner.ids.len(), RECENT_PUTS_MAX);
        assert_eq!(inner.order.len(), RECENT_PUTS_MAX);
    }

    #[test]
    fn a_forgotten_id_is_not_remembered_and_the_bound_holds() {
        let recent = RecentPuts::new();
        recent.insert(id(1));
        recent.forget(&id(1));
        assert!(!recent.contains(&id(1)));
        recent.insert(id(1));
        assert!(recent.contains(&id(1)));
        for n in 2..(RECENT_PUTS_MAX as u64 * 2) {
            recent.insert(id(n));
            recent.forget(&id(n - 1));
        }
        let inner = recent.inner.lock().unwrap();
        assert!(inner.order.len() <= RECENT_PUTS_MAX);
        assert!(inner.ids.len() <= inner.order.len());
    }
}
