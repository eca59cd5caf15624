//! The Raft state machine: applies committed commands through the pure `plait_meta::apply`
//! and writes the resulting mutations, with the applied log id, in one atomic batch.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use plait_meta::Mutation;
use plait_proto::MetaReply;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{CF_SM, CF_STATE, Db, DbView, DurableLog, StoreError, dec, enc};
use crate::raft_types::{ApplyResult, TypeConfig};

type SResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;

pub(super) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Largest snapshot we accept from disk or a peer, in bytes.
const SNAPSHOT_MAX_BYTES: usize = 8 * 1024 * 1024 * 1024;

/// A full copy of the state machine, as shipped to a lagging follower.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, BasicNode>,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn snapshot_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<SNAPSHOT_MAX_BYTES>()
}

/// The state machine; clones share the database and the snapshot file.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    snapshot_path: PathBuf,
    /// Bumped after every batch of applied entries (and installed snapshot), so long
    /// polls re-read the state at once instead of waiting for Raft's metrics.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// How far the local log is fsynced: nothing is applied before it is.
    durable: DurableLog,
}

impl StateMachine {
    /// A state machine over `db`, keeping its latest snapshot at `snapshot_path`;
    /// applies an entry only once `durable` says the local log holds it fsynced.
    pub fn new(db: Arc<Db>, snapshot_path: PathBuf, durable: DurableLog) -> Self {
        Self {
            db,
            snapshot_path,
            applied: Arc::new(tokio::sync::watch::Sender::new(0)),
            durable,
        }
    }

    /// Changes after every batch of applied entries: subscribe, then read the state.
    pub fn applied(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.applied.clone()
    }

    fn read_sm<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let cf = self.db.cf(CF_SM)?;
        match self.db.raw().get_cf(cf, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(dec(&b)?)),
        }
    }

    fn apply_one(&self, entry: Entry<TypeConfig>) -> Result<ApplyResult, StoreError> {
        let state_cf = self.db.cf(CF_STATE)?;
        let sm_cf = self.db.cf(CF_SM)?;
        let mut batch = WriteBatch::default();
        let log_id = entry.log_id;
        let reply = match entry.payload {
            EntryPayload::Blank => Ok(MetaReply::Empty),
            EntryPayload::Normal(cmd) => {
                let view = DbView::live(&self.db)?;
                let (mutations, reply) = plait_meta::apply(&view, &cmd)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                for m in mutations {
                    match m {
                        Mutation::Put(k, v) => batch.put_cf(state_cf, k, v),
                        Mutation::Delete(k) => batch.delete_cf(state_cf, k),
                    }
                }
                reply
            }
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(log_id), m);
                batch.put_cf(sm_cf, KEY_MEMBERSHIP, enc(&stored)?);
                Ok(MetaReply::Empty)
            }
        };
        batch.put_cf(sm_cf, KEY_LAST_APPLIED, enc(&Some(log_id))?);
        // Not fsynced: the log is, and a lost tail of applies is replayed from it.
        self.db.raw().write(batch)?;
        Ok(reply)
    }

    /// Writes a snapshot of the applied state to the snapshot file, streaming: the state
    /// is read twice from one RocksDB snapshot (to count, then to write each pair), so
    /// memory does not grow with the number of files. The returned `Snapshot` carries no
    /// data: openraft 0.9 keeps only the meta of a built snapshot (`sm::worker`) and asks
    /// `get_current_snapshot` for the data when it must send one.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let raw = self.db.raw();
        let snap = raw.snapshot();
        let read = |cf, key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            Ok(raw.get_cf_opt(cf, key, &ro)?)
        };
        let sm_cf = self.db.cf(CF_SM)?;
        let last_applied: Option<LogId<u64>> = match read(sm_cf, KEY_LAST_APPLIED)? {
            Some(b) => dec(&b)?,
            None => None,
        };
        let membership: Membership = match read(sm_cf, KEY_MEMBERSHIP)? {
            Some(b) => dec(&b)?,
            None => Membership::default(),
        };
        let state_cf = self.db.cf(CF_STATE)?;
        let pairs_iter = || {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            raw.iterator_cf_opt(state_cf, ro, IteratorMode::Start)
        };
        let mut count: u64 = 0;
        for item in pairs_iter() {
            item?;
            count += 1;
        }
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, count),
            None => format!("0-0-{count}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        // The same bytes `SnapshotFile` encodes to: the meta, the pair count, the pairs.
        let tmp = self.snapshot_path.with_extension("tmp");
        let io = |e: std::io::Error| StoreError::Corrupt(format!("snapshot file: {e}"));
        let codec = |e: bincode::error::EncodeError| StoreError::Corrupt(e.to_string());
        {
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut w = std::io::BufWriter::new(file);
            bincode::serde::encode_into_std_write(&meta, &mut w, snapshot_config())
                .map_err(codec)?;
            bincode::serde::encode_into_std_write(count, &mut w, snapshot_config())
                .map_err(codec)?;
            let mut written: u64 = 0;
            for item in pairs_iter() {
                let (k, v) = item?;
                let pair = (k.to_vec(), v.to_vec());
                bincode::serde::encode_into_std_write(&pair, &mut w, snapshot_config())
                    .map_err(codec)?;
                written += 1;
            }
            if written != count {
                return Err(StoreError::Corrupt(format!(
                    "snapshot changed while written: {count} pairs counted, {written} written"
                )));
            }
            let file = w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.snapshot_path).map_err(io)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }

    /// Stores a received snapshot as the current one (temporary file, fsync, rename).
    fn save_current(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.snapshot_path.with_extension("tmp");
        let io = |e: std::io::Error| StoreError::Corrupt(format!("snapshot file: {e}"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.snapshot_path).map_err(io)?;
        Ok(())
    }

    fn install(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let (file, _): (SnapshotFile, usize) =
            bincode::serde::decode_from_slice(bytes, snapshot_config())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let state_cf = self.db.cf(CF_STATE)?;
        let sm_cf = self.db.cf(CF_SM)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(state_cf, [0u8].as_slice(), [0xFFu8; 16].as_slice());
        for (k, v) in &file.pairs {
            batch.put_cf(state_cf, k, v);
        }
        batch.put_cf(sm_cf, KEY_LAST_APPLIED, enc(&file.meta.last_log_id)?);
        batch.put_cf(sm_cf, KEY_MEMBERSHIP, enc(&file.meta.last_membership)?);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.raw().write_opt(batch, &wo)?;
        self.save_current(bytes)
    }

    /// The current snapshot, read from its file (only needed to send it to a follower
    /// that fell behind the log, so it is not kept in memory).
    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let bytes = match std::fs::read(&self.snapshot_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Corrupt(format!("snapshot file: {e}"))),
        };
        let (meta, _): (SnapshotMeta<u64, BasicNode>, usize) =
            bincode::serde::decode_from_slice(&bytes, snapshot_config())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

fn sm_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> SResult<(Option<LogId<u64>>, Membership)> {
        let last: Option<Option<LogId<u64>>> = self
            .read_sm(KEY_LAST_APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let membership: Option<Membership> = self
            .read_sm(KEY_MEMBERSHIP)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok((last.flatten(), membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // A leader's own entries may reach here before its fsync (see `store::durable`):
        // nobody may see their effects before they are durable here too.
        if let Some(last) = entries.last().map(|e| e.log_id) {
            self.durable
                .wait_for(last)
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        let mut replies = Vec::new();
        for entry in entries {
            replies.push(self.apply_one(entry).map_err(sm_err)?);
        }
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let this = self.clone();
        let bytes = snapshot.into_inner();
        tokio::task::spawn_blocking(move || this.install(&bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(sm_err)?;
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable;

    /// A durability watch that already covers any entry the test applies.
    fn durable_now() -> DurableLog {
        let far = LogId::new(openraft::CommittedLeaderId::new(u64::MAX, 0), u64::MAX);
        durable::channel(Some(far)).1
    }

    #[tokio::test]
    async fn an_entry_is_applied_only_once_the_local_log_holds_it_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (tx, durable) = durable::channel(None);
        let mut sm = StateMachine::new(db, dir.path().join("snapshot.bin"), durable);
        let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        let apply = tokio::spawn(async move { sm.apply([entry]).await.map(|r| r.len()) });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!apply.is_finished(), "applied before its fsync");
        tx.send_modify(|d| d.last = Some(log_id));
        assert_eq!(apply.await.unwrap().unwrap(), 1);
    }

    #[test]
    fn a_streamed_snapshot_decodes_and_installs_to_the_same_state() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let a = Db::open(d1.path()).unwrap();
        let cf = a.cf(CF_STATE).unwrap();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
            .map(|i| {
                (
                    format!("I{i:08}").into_bytes(),
                    vec![i as u8; (i % 300) as usize],
                )
            })
            .collect();
        for (k, v) in &pairs {
            a.raw().put_cf(cf, k, v).unwrap();
        }
        let sm = StateMachine::new(a.clone(), d3.path().join("snapshot.bin"), durable_now());
        let built = sm.build().unwrap();
        assert!(built.meta.snapshot_id.ends_with("-5000"));

        // The streamed file is exactly a `SnapshotFile`.
        let bytes = std::fs::read(d3.path().join("snapshot.bin")).unwrap();
        let (file, used): (SnapshotFile, usize) =
            bincode::serde::decode_from_slice(&bytes, snapshot_config()).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(file.pairs, pairs);
        let current = sm.current_snapshot().unwrap().unwrap();
        assert_eq!(current.meta, built.meta);

        // A follower installing it ends with the same state.
        let b = Db::open(d2.path()).unwrap();
        let follower = StateMachine::new(b.clone(), d2.path().join("snapshot.bin"), durable_now());
        follower.install(&bytes).unwrap();
        assert_eq!(a.state_digest().unwrap().hex, b.state_digest().unwrap().hex);
    }
}
