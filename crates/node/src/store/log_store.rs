//! The Raft log in RocksDB. Appends are fsynced before openraft is told they are durable:
//! an entry acknowledged to the leader survives a crash of this node.
//!
//! An append is written to RocksDB at once (so the leader can replicate it while its own
//! copy is being made durable) and its completion is handed to the WAL syncer thread,
//! which fsyncs the write-ahead log once for every append queued meanwhile and then
//! reports them durable, in order (group commit). The Raft core never waits for a disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{CF_LOG, CF_RAFT, Db, dec, enc};
use crate::raft_types::TypeConfig;

type SResult<T> = Result<T, StorageError<u64>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Most appends waiting for the WAL syncer; a full queue makes appends wait.
const SYNC_QUEUE_MAX: usize = 4096;

/// Raft log storage; cheap to clone (openraft asks for separate readers).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// Completions of appends written but not yet fsynced, for the syncer thread.
    syncs: std::sync::mpsc::SyncSender<LogFlushed<TypeConfig>>,
}

/// Fsyncs the WAL for every batch of queued appends, then reports each durable in order.
/// Ends when every sender is gone.
fn sync_wal_forever(db: Arc<Db>, queue: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < SYNC_QUEUE_MAX
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        let synced = db.raw().flush_wal(true).map_err(|e| e.to_string());
        if let Err(e) = &synced {
            tracing::error!(error = %e, "fsync of the Raft log failed");
        }
        for done in batch {
            done.log_io_completed(synced.clone().map_err(std::io::Error::other));
        }
    }
}

impl LogStore {
    /// A log store over the node's database; starts its WAL syncer thread.
    pub fn new(db: Arc<Db>) -> std::io::Result<Self> {
        let (syncs, queue) = std::sync::mpsc::sync_channel(SYNC_QUEUE_MAX);
        let syncer_db = db.clone();
        std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || sync_wal_forever(syncer_db, queue))?;
        Ok(Self { db, syncs })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> SResult<Option<T>> {
        let cf = self.db.cf(CF_RAFT).map_err(|e| StorageIOError::read(&e))?;
        match self
            .db
            .raw()
            .get_cf(cf, key)
            .map_err(|e| StorageIOError::read(&e))?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(dec(&bytes).map_err(|e| StorageIOError::read(&e))?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> SResult<()> {
        let cf = self.db.cf(CF_RAFT).map_err(|e| StorageIOError::write(&e))?;
        let bytes = enc(value).map_err(|e| StorageIOError::write(&e))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .raw()
            .put_cf_opt(cf, key, bytes, &wo)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> SResult<Option<LogId<u64>>> {
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let mut it = self.db.raw().iterator_cf(cf, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry<TypeConfig> =
                    dec(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let key = index_key(start);
        let it = self
            .db
            .raw()
            .iterator_cf(cf, IteratorMode::From(&key, Direction::Forward));
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let Ok(kb) = <[u8; 8]>::try_from(&k[..]) else {
                return Err(
                    StorageIOError::read_logs(&std::io::Error::other("bad log key")).into(),
                );
            };
            if !range.contains(&u64::from_be_bytes(kb)) {
                break;
            }
            out.push(dec(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> SResult<()> {
        self.put_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<u64>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> SResult<()> {
        // A hint for restart (entries up to it may be applied without a new commit):
        // losing the latest value only means re-learning it from the leader, so it is not
        // fsynced; every entry it names was fsynced before it could be committed.
        let cf = self.db.cf(CF_RAFT).map_err(|e| StorageIOError::write(&e))?;
        let bytes = enc(&committed).map_err(|e| StorageIOError::write(&e))?;
        self.db
            .raw()
            .put_cf(cf, KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<u64>>> {
        Ok(self
            .get_meta::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = enc(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        // Not synced here: the syncer thread makes it durable before reporting it.
        let res = self.db.raw().write_opt(batch, &WriteOptions::default());
        match res {
            Ok(()) => {
                if let Err(unsent) = self.syncs.send(callback) {
                    // The syncer is gone (only at shutdown): sync here instead.
                    let synced = self
                        .db
                        .raw()
                        .flush_wal(true)
                        .map_err(|e| std::io::Error::other(e.to_string()));
                    unsent.0.log_io_completed(synced);
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> SResult<()> {
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .raw()
            .write_opt(batch, &wo)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> SResult<()> {
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db
            .raw()
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
