//! Durable state of a node in one RocksDB database, in four column families:
//! `log` (Raft log entries by index), `raft` (vote, committed, last purged),
//! `state` (the metadata state machine's keys) and `sm` (last applied log id and
//! membership, written in the same batch as the state they describe).

pub mod digest;
mod durable;
mod kv;
mod log_store;
mod state_machine;

pub use durable::{DurableLog, clamp_commit};
pub use kv::DbView;
pub use log_store::LogStore;
pub use state_machine::StateMachine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_SM: &str = "sm";

/// Size of each column family's memtable, in bytes.
const MEMTABLE_BYTES: usize = 8 * 1024 * 1024;

/// RocksDB's block cache for the metadata state, in bytes: the state a leader answers
/// lookups, opens and listings from stays in the process (as a metadata server's
/// should) instead of depending on the kernel's page cache.
const STATE_BLOCK_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Bloom filter bits per key of the state: a lookup of an absent name (every create
/// asks one) mostly skips the table files.
const STATE_BLOOM_BITS_PER_KEY: f64 = 10.0;

/// The state's table option that puts blocks of freshly flushed tables in the block
/// cache as they are written (RocksDB 7.8's C API has no setter; its options string does).
const STATE_PREPOPULATE_OPTION: (&str, &str) = (
    "block_based_table_factory",
    "{prepopulate_block_cache=kFlushOnly;}",
);

/// Errors opening or using the node's database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A column family is missing (the database was not created by plaitd).
    #[error("column family {0} missing")]
    MissingCf(&'static str),
    /// A stored value could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Reading the state through the state machine's read interface failed.
    #[error("state read: {0}")]
    Read(#[from] plait_meta::StoreError),
}

/// The node's database, shared by the log store, the state machine and readers.
pub struct Db {
    db: DB,
}

impl Db {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bound memory: small write buffers, a few background jobs on our 2 cores.
        opts.set_max_background_jobs(2);
        let state_cache = Cache::new_lru_cache(STATE_BLOCK_CACHE_BYTES)?;
        let cfs = [CF_LOG, CF_RAFT, CF_STATE, CF_SM].into_iter().map(|name| {
            let mut cf_opts = Options::default();
            // Small memtables: metadata ops rewrite and delete the same keys often, and
            // iterators must step over every shadowed version still in the memtable.
            cf_opts.set_write_buffer_size(MEMTABLE_BYTES);
            if name == CF_STATE {
                let mut table = BlockBasedOptions::default();
                table.set_block_cache(&state_cache);
                table.set_bloom_filter(STATE_BLOOM_BITS_PER_KEY, false);
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        for name in [CF_LOG, CF_RAFT, CF_STATE, CF_SM] {
            if db.cf_handle(name).is_none() {
                return Err(StoreError::MissingCf(name));
            }
        }
        // State written recently is then read from memory even after the kernel dropped
        // its page cache.
        if let Some(cf) = db.cf_handle(CF_STATE)
            && let Err(e) = db.set_options_cf(cf, &[STATE_PREPOPULATE_OPTION])
        {
            tracing::warn!(error = %e, "could not enable block cache prepopulation");
        }
        Ok(Arc::new(Self { db }))
    }

    pub(crate) fn raw(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or(StoreError::MissingCf(name))
    }

    /// A consistent read view of the metadata state (a RocksDB snapshot).
    pub fn view(&self) -> Result<DbView<'_>, StoreError> {
        DbView::snapshot(self)
    }
}

/// Encodes a record stored on disk.
pub(crate) fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    plait_proto::encode(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decodes a record read from disk; corruption is an error, never a panic.
pub(crate) fn dec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    plait_proto::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_cache_options_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let cf = db.cf(CF_STATE).unwrap();
        db.raw()
            .set_options_cf(cf, &[STATE_PREPOPULATE_OPTION])
            .unwrap();
    }
}
