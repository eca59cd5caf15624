//! Plait's metadata state machine: pure, deterministic and free of I/O (sans-IO, in the
//! manner of quinn-proto).
//!
//! The node feeds every committed Raft entry to [`apply`] together with a read view of the
//! current state ([`KvRead`]); `apply` returns the [`Mutation`]s to write atomically and
//! the reply for the client. Reads are served by [`query`]. Neither function writes, reads
//! a clock, draws random numbers or depends on hash-map iteration order: the result is a
//! function of the state and the command alone, so every replica that applies the same log
//! reaches the same state byte for byte. All time comes from [`Command::now`], chosen by
//! the leader when it proposed the command.
//!
//! The state is one ordered key space (see `docs/architecture.md`, "State machine keys"):
//! inodes (`I`), directory entries (`D`), extents (`E`), extended attributes (`X`), chunk
//! reference counts (`C`), garbage chunks (`G`), volumes (`V`), orphans (`O`) and counters
//! (`N`). Integers in keys are big-endian so that scans come out in numeric order.
//!
//! Replies of [`apply`], by op: `CreateVolume` → `Volume`; `Create`, `Link`, `SetAttr`,
//! `Write` → `Attr` of the inode concerned; `Unlink`, `Rmdir`, `Rename` → `Removed` (with
//! the inode left without links, if any, which the caller reaps once it holds no open
//! handle); `SetXattr`, `RemoveXattr`, `Reap` → `Empty`.
//!
//! A failed operation ([`RpcError`]) changes nothing: `apply` then returns no mutations.
//! A [`StoreError`] means the store itself failed or holds bytes this crate did not write;
//! the node must not commit anything for that entry.

#![warn(missing_docs)]

mod apply;
mod keys;
mod mem;
mod query;
mod read;
mod records;
mod txn;
mod validate;

#[cfg(test)]
mod testutil;

pub use apply::members::{JOIN_REFUSED, join_token_valid};
pub use mem::MemKv;

use plait_proto::{ChunkId, HealEntry, MetaOp, MetaQuery, MetaReply, NodeId, RpcError, Timestamp};

/// Most hard links to one non-directory inode (ext4's limit); more fail with EMLINK.
pub const NLINK_MAX: u32 = 65_000;

/// Deepest directory chain walked when checking that a rename does not move a directory
/// into its own subtree; a deeper tree makes such a rename fail with EINVAL.
pub const DIR_DEPTH_MAX: usize = 4096;

/// Most entries returned by one `ReadDir` query, whatever limit the caller asked for.
pub const READDIR_MAX_ENTRIES: usize = 1024;

/// Most extents returned by one `Extents` query. When the reply holds this many, the
/// caller asks again from the end of the last extent returned.
pub const EXTENTS_MAX_PER_QUERY: usize = 4096;

/// Most extents accepted in one `Write` op.
pub const WRITE_MAX_EXTENTS: usize = 1024;

/// Most missing copies one `Write` or `MarkUnderReplicated` may record (every extent's
/// chunk missing on every other replica).
pub const MISSING_COPIES_MAX: usize = WRITE_MAX_EXTENTS * REPLICAS_MAX as usize;

/// Most chunks one `HealDone` may name.
pub const HEAL_DONE_MAX: usize = 1024;

/// Most heal-index entries returned by one `HealPending` query.
pub const HEAL_PENDING_MAX_PER_QUERY: usize = 1024;

/// Most chunk ids one `ForgetGarbage` may name.
pub const FORGET_GARBAGE_MAX: usize = 1024;

/// Largest total size of the names returned by `ListXattr`, counting one NUL per name
/// (XATTR_LIST_MAX on Linux); a longer list fails with ERANGE.
pub const XATTR_LIST_MAX_BYTES: usize = 64 * 1024;

/// Inode budget reported by statfs: `files_free` is this minus the inodes in use.
pub const INODES_MAX: u64 = 1 << 32;

/// Longest volume name, in bytes.
pub const VOLUME_NAME_MAX_BYTES: usize = 64;

/// Most copies of a chunk a volume may ask for.
pub const REPLICAS_MAX: u32 = 5;

/// The size reported for every directory, in bytes (as ext4 reports one block).
pub const DIR_SIZE_BYTES: u64 = 4096;

/// One key-value entry as returned by [`KvRead`] scans: `(key, value)`. An alias, so
/// implementations may spell the tuple out.
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// A read view of the state: RocksDB in the node, [`MemKv`] in tests and snapshots.
///
/// Every `after` and `key` argument this crate passes starts with the `prefix` it passes
/// along with it, so an implementation may position a cursor on it directly.
pub trait KvRead {
    /// The value stored under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries whose key starts with `prefix`, with key > `after` when given, ascending,
    /// at most `limit`.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError>;

    /// The entry with the greatest key <= `key` among keys starting with `prefix`.
    fn seek_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError>;
}

impl<T: KvRead + ?Sized> KvRead for &T {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        (**self).scan(prefix, after, limit)
    }

    fn seek_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        (**self).seek_prev(prefix, key)
    }
}

/// The store could not serve a read, or holds bytes this crate cannot make sense of.
/// Either way the entry being applied must not be committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying store failed (disk error, closed database...).
    #[error("state store I/O error: {0}")]
    Io(String),
    /// A key or value does not decode as what this crate writes there, or the records
    /// contradict each other (an entry pointing to a missing inode, a reference count
    /// going below zero...).
    #[error("state store is corrupt: {0}")]
    Corrupt(String),
}

/// One write produced by [`apply`]; the node writes all of an entry's mutations in one
/// atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (which may already be absent).
    Delete(Vec<u8>),
}

/// A command as stored in the Raft log: the leader's clock at proposal time and the op.
///
/// Carrying the time in the entry is what keeps [`apply`] deterministic: every replica
/// stamps the same times, whenever it applies the entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Command {
    /// The leader's wall clock when it proposed the op; used for every time the op sets.
    pub now: Timestamp,
    /// The change to apply.
    pub op: MetaOp,
}

/// Applies one committed command to the state seen through `state`.
///
/// Returns the mutations to write (in ascending key order, empty when the op failed) and
/// the reply for the client. `Err` means the store failed or is corrupt, not that the op
/// was refused: refusals are the inner `Err(RpcError)`.
pub fn apply(
    state: &impl KvRead,
    cmd: &Command,
) -> Result<(Vec<Mutation>, Result<MetaReply, RpcError>), StoreError> {
    apply::apply(state, cmd)
}

/// Answers a metadata read from the state seen through `state`. Never writes.
pub fn query(
    state: &impl KvRead,
    q: &MetaQuery,
) -> Result<Result<MetaReply, RpcError>, StoreError> {
    query::query(state, q)
}

/// Chunk ids in the garbage set (`G` keys) with the time each became unreferenced, after
/// `after` (exclusive) in id order, at most `limit`. The GC worker pages through this.
pub fn garbage(
    state: &impl KvRead,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<(ChunkId, Timestamp)>, StoreError> {
    query::garbage(state, after, limit)
}

/// The heal-index entries of `node` after chunk `after` (exclusive), at most `limit`: the
/// copies that node must make. Read by the node's heal worker from its own applied state.
pub fn heal_pending(
    state: &impl KvRead,
    node: NodeId,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<HealEntry>, StoreError> {
    query::heal_pending(state, node, after, limit)
}

/// Whether some extent references `chunk` (its copies are worth keeping and healing).
pub fn is_referenced(state: &impl KvRead, chunk: &ChunkId) -> Result<bool, StoreError> {
    Ok(read::refcount(state, chunk)? > 0)
}

/// All chunk ids referenced by some extent (the `C` keys) with their reference counts,
/// after `after` (exclusive) in id order, at most `limit` (for scrub and verification).
pub fn referenced_chunks(
    state: &impl KvRead,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<(ChunkId, u64)>, StoreError> {
    query::referenced_chunks(state, after, limit)
}

/// Why an op stopped: refused (nothing is written) or the store failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The op is refused; the client gets this error.
    Rpc(RpcError),
    /// The store failed or is corrupt.
    Store(StoreError),
}

impl From<RpcError> for Fail {
    fn from(e: RpcError) -> Self {
        Fail::Rpc(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// Result of an internal step that may be refused or fail.
pub(crate) type OpResult<T> = Result<T, Fail>;

/// Shorthand for a refusal with `code` and `message`.
pub(crate) fn refuse(code: plait_proto::ErrorCode, message: impl Into<String>) -> Fail {
    Fail::Rpc(RpcError::new(code, message))
}

/// Splits an internal result into the public shape: refusals become the inner error.
pub(crate) fn split<T>(r: OpResult<T>) -> Result<Result<T, RpcError>, StoreError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Fail::Rpc(e)) => Ok(Err(e)),
        Err(Fail::Store(e)) => Err(e),
    }
}
