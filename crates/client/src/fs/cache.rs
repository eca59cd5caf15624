//! [`ChunkCache`]: verified chunk bytes kept in memory, bounded in bytes, least recently
//! used evicted first. Chunks are content-addressed, so a cached chunk is never stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use plait_proto::ChunkId;

/// The bytes of one chunk, shared between the cache and readers.
pub type ChunkData = Arc<Vec<u8>>;

/// A bounded, thread-safe LRU cache of chunks keyed by id.
#[derive(Debug)]
pub struct ChunkCache {
    capacity_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<ChunkId, Entry>,
    /// Last-use tick → chunk, oldest first.
    by_use: BTreeMap<u64, ChunkId>,
    next_tick: u64,
    used_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    data: ChunkData,
    tick: u64,
}

impl Inner {
    fn touch(&mut self, id: ChunkId) -> Option<ChunkData> {
        let tick = self.next_tick;
        let entry = self.entries.get_mut(&id)?;
        self.by_use.remove(&entry.tick);
        entry.tick = tick;
        self.by_use.insert(tick, id);
        self.next_tick += 1;
        Some(entry.data.clone())
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, id)) = self.by_use.pop_first() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&id) {
            self.used_bytes -= entry.data.len() as u64;
        }
        true
    }
}

impl ChunkCache {
    /// A cache holding at most `capacity_bytes` of chunk data (0 disables caching).
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached bytes of `id`, marking them as just used.
    pub fn get(&self, id: &ChunkId) -> Option<ChunkData> {
        self.lock().touch(*id)
    }

    /// Caches `data` as chunk `id`, evicting the least recently used chunks to stay within
    /// the capacity. A chunk larger than the whole capacity is not cached. The caller
    /// guarantees that `data` hashes to `id`.
    pub fn insert(&self, id: ChunkId, data: ChunkData) {
        let size = data.len() as u64;
        if size > self.capacity_bytes {
            return;
        }
        let mut inner = self.lock();
        if inner.touch(id).is_some() {
            return;
        }
        while inner.used_bytes + size > self.capacity_bytes {
            if !inner.evict_oldest() {
                break;
            }
        }
        let tick = inner.next_tick;
        inner.next_tick += 1;
        inner.by_use.insert(tick, id);
        inner.entries.insert(id, Entry { data, tick });
        inner.used_bytes += size;
    }

    /// Bytes of chunk data held.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True if no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured bound, in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (ChunkId, ChunkData) {
        let data = vec![n; len];
        (ChunkId::of(&data), Arc::new(data))
    }

    #[test]
    fn stays_within_capacity_and_evicts_lru() {
        let cache = ChunkCache::new(100);
        let (a, da) = chunk(1, 40);
        let (b, db) = chunk(2, 40);
        let (c, dc) = chunk(3, 40);
        cache.insert(a, da);
        cache.insert(b, db);
        assert_eq!(cache.used_bytes(), 80);
        // Use `a` so that `b` becomes the least recently used.
        assert!(cache.get(&a).is_some());
        cache.insert(c, dc);
        assert!(cache.used_bytes() <= 100);
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&c).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn oversized_chunk_is_not_cached() {
        let cache = ChunkCache::new(10);
        let (a, da) = chunk(1, 11);
        cache.insert(a, da);
        assert!(cache.is_empty());
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let cache = ChunkCache::new(0);
        let (a, da) = chunk(1, 1);
        cache.insert(a, da);
        assert!(cache.get(&a).is_none());
    }

    #[test]
    fn reinsert_does_not_double_count() {
        let cache = ChunkCache::new(100);
        let (a, da) = chunk(1, 30);
        cache.insert(a, da.clone());
        cache.insert(a, da);
        assert_eq!(cache.used_bytes(), 30);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn many_inserts_never_exceed_bound() {
        let cache = ChunkCache::new(1000);
        for i in 0..=255u8 {
            let (id, d) = chunk(i, 10 + usize::from(i % 50));
            cache.insert(id, d);
            assert!(cache.used_bytes() <= 1000);
        }
        // The most recent insert is always present.
        let (last, _) = chunk(255, 10 + 255 % 50);
        assert!(cache.get(&last).is_some());
    }
}
