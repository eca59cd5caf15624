//! The Raft log in RocksDB. An entry is fsynced before anything depends on it: a
//! follower acknowledges an append only after its fsync, and a leader's own entries are
//! acknowledged, applied and announced as committed only after theirs
//! ([`super::durable`] explains why the leader reports its appends flushed early).
//!
//! A follower's append is written and fsynced in place (openraft waits for it before it
//! does anything else). A leader's own append is written and handed to the WAL syncer
//! thread, which fsyncs the write-ahead log once for every append queued meanwhile
//! (group commit) and publishes the last durable log id.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::durable::{self, DurableLog, DurableSender};
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
    node_id: u64,
    /// The vote last saved, so an append knows whether it is this leader's own.
    vote: Arc<Mutex<Option<Vote<u64>>>>,
    /// The leader's own appends, written but not yet fsynced, for the syncer thread.
    syncs: std::sync::mpsc::SyncSender<LogId<u64>>,
    durable: DurableLog,
    /// Publishes what an append fsynced in place (the syncer publishes the rest).
    durable_tx: Arc<DurableSender>,
}

/// Fsyncs the WAL once for every batch of queued appends (each named by its last log
/// id), then publishes the last durable log id. Ends when every sender is gone.
fn sync_wal_forever(
    db: Arc<Db>,
    queue: std::sync::mpsc::Receiver<LogId<u64>>,
    durable: Arc<DurableSender>,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < SYNC_QUEUE_MAX
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        let synced = db.raw().flush_wal(true);
        record_sync(&durable, &synced, batch.iter().max().copied());
    }
}

/// Publishes the outcome of an fsync that covered the log up to `last`: the new durable
/// log id, or that the log can no longer be trusted durable (applying stops).
fn record_sync(
    durable: &DurableSender,
    synced: &Result<(), rocksdb::Error>,
    last: Option<LogId<u64>>,
) {
    match synced {
        Ok(()) => durable.send_modify(|d| d.last = d.last.max(last)),
        Err(e) => {
            tracing::error!(error = %e, "fsync of the Raft log failed");
            durable.send_modify(|d| d.failed = true);
        }
    }
}

impl LogStore {
    /// The log store of node `node_id` over its database; fsyncs what an earlier
    /// process left unsynced and starts the WAL syncer thread.
    pub fn new(db: Arc<Db>, node_id: u64) -> Result<Self, StorageError<u64>> {
        db.raw()
            .flush_wal(true)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let (syncs, queue) = std::sync::mpsc::sync_channel(SYNC_QUEUE_MAX);
        let (durable_tx, durable) = durable::channel(None);
        let durable_tx = Arc::new(durable_tx);
        let store = Self {
            db: db.clone(),
            node_id,
            vote: Arc::new(Mutex::new(None)),
            syncs,
            durable,
            durable_tx: durable_tx.clone(),
        };
        let vote = store.get_meta::<Vote<u64>>(KEY_VOTE)?;
        *store.vote_slot() = vote;
        let last = store.last_entry_log_id()?;
        durable_tx.send_modify(|d| d.last = last);
        std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || sync_wal_forever(db, queue, durable_tx))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(store)
    }

    /// How far this node's log is fsynced.
    pub fn durable(&self) -> DurableLog {
        self.durable.clone()
    }

    fn vote_slot(&self) -> std::sync::MutexGuard<'_, Option<Vote<u64>>> {
        self.vote.lock().unwrap_or_else(|p| p.into_inner())
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
            .map_err(|e| StorageIOError::write_vote(&e))?;
        *self.vote_slot() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<u64>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> SResult<()> {
        // A hint for restart (entries up to it may be applied without a new commit):
        // losing the latest value only means re-learning it from the leader, so it is not
        // fsynced. It is written after the entries it names, to the same write-ahead log,
        // so whatever of it survives a crash, those entries survived too (and the log is
        // fsynced at start, before anything is applied).
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let fast = durable::fast_append(self.node_id, self.vote_slot().as_ref(), &entries);
        let cf = self
            .db
            .cf(CF_LOG)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        for entry in &entries {
            let bytes = enc(entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        if !fast {
            // A follower's append (or a membership entry): openraft waits for it before
            // doing anything else, so nothing could join a group commit; write it fsynced
            // here and save the syncer thread's two wake-ups.
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let synced = self.db.raw().write_opt(batch, &wo);
            record_sync(&self.durable_tx, &synced, Some(last));
            return match synced {
                Ok(()) => {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    Err(StorageIOError::write_logs(&e).into())
                }
            };
        }
        // The leader's own entries: reported written now, made durable by the syncer
        // thread (group commit) while they are replicated.
        if let Err(e) = self.db.raw().write_opt(batch, &WriteOptions::default()) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        if self.syncs.send(last).is_err() {
            // The syncer is gone (only at shutdown): sync here instead.
            let synced = self.db.raw().flush_wal(true);
            record_sync(&self.durable_tx, &synced, Some(last));
        }
        callback.log_io_completed(Ok(()));
        Ok(())
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
