//! [`ChunkIo`]: chunk reads through the cache with one fetch per chunk at a time, and chunk
//! writes that leave small chunks in the cache for the reads that usually follow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use plait_proto::{ChunkId, ErrorCode, RpcError};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::cache::{ChunkCache, ChunkData};
use crate::{ClusterClient, Replication, StoredChunk};

/// Chunk fetches of one read in flight at once.
const FETCH_IN_FLIGHT_MAX: usize = 4;

/// Chunks written by this mount up to this size are also put in the cache (small files
/// are typically read back soon; big sequential writes would only flush the cache).
const WRITE_CACHE_CHUNK_MAX_BYTES: usize = 1024 * 1024;

/// One fetch of a chunk that concurrent readers of the same chunk wait on.
type InFlight = Arc<OnceCell<ChunkData>>;

/// Chunk I/O shared by all reads and flushes of one mount.
#[derive(Debug)]
pub(crate) struct ChunkIo {
    client: Arc<ClusterClient>,
    replication: Replication,
    cache: ChunkCache,
    in_flight: Mutex<HashMap<ChunkId, InFlight>>,
}

impl ChunkIo {
    /// Chunk I/O through `client`, writing chunks with `replication`, caching up to
    /// `cache_bytes` of chunk data.
    pub(crate) fn new(
        client: Arc<ClusterClient>,
        replication: Replication,
        cache_bytes: u64,
    ) -> Self {
        Self {
            client,
            replication,
            cache: ChunkCache::new(cache_bytes),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The verified bytes of chunk `id`: from the cache, or fetched (once, however many
    /// readers ask at the same time) and then cached.
    pub(crate) async fn get(&self, id: ChunkId) -> Result<ChunkData, RpcError> {
        if let Some(data) = self.cache.get(&id) {
            return Ok(data);
        }
        let cell = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let result = cell
            .get_or_try_init(|| async {
                let bytes = self.client.get_chunk(id).await?;
                let data: ChunkData = Arc::new(bytes);
                self.cache.insert(id, data.clone());
                Ok::<_, RpcError>(data)
            })
            .await
            .cloned();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&id);
        }
        result
    }

    /// The bytes of every chunk in `ids`, fetching up to [`FETCH_IN_FLIGHT_MAX`] at once.
    pub(crate) async fn get_many(
        self: &Arc<Self>,
        ids: Vec<ChunkId>,
    ) -> Result<HashMap<ChunkId, ChunkData>, RpcError> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.cache.get(&id) {
                Some(data) => {
                    out.insert(id, data);
                }
                None => missing.push(id),
            }
        }
        if missing.len() <= 1 {
            for id in missing {
                out.insert(id, self.get(id).await?);
            }
            return Ok(out);
        }
        let mut set = JoinSet::new();
        let mut queue = missing.into_iter();
        loop {
            while set.len() < FETCH_IN_FLIGHT_MAX {
                let Some(id) = queue.next() else { break };
                let io = Arc::clone(self);
                set.spawn(async move { io.get(id).await.map(|data| (id, data)) });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (id, data) = joined.map_err(|e| {
                RpcError::new(ErrorCode::Io, format!("chunk fetch task failed: {e}"))
            })??;
            out.insert(id, data);
        }
        Ok(out)
    }

    /// Stores `data` as a chunk (at its write quorum); small chunks are also cached.
    pub(crate) async fn put(&self, data: Vec<u8>) -> Result<StoredChunk, RpcError> {
        let keep = (data.len() <= WRITE_CACHE_CHUNK_MAX_BYTES).then(|| Arc::new(data.clone()));
        let stored = self.client.put_chunk(data, self.replication).await?;
        if let Some(data) = keep {
            self.cache.insert(stored.id, data);
        }
        Ok(stored)
    }

    /// Caches `data` as chunk `id` (bytes this mount committed inline, which reads of
    /// other windows may need again). The caller guarantees that `data` hashes to `id`.
    pub(crate) fn remember(&self, id: ChunkId, data: ChunkData) {
        self.cache.insert(id, data);
    }

    /// The chunk cache (for statistics and tests).
    pub(crate) fn cache(&self) -> &ChunkCache {
        &self.cache
    }
}
