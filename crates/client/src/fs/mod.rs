//! [`PlaitFs`]: the filesystem a mount serves, independent of FUSE.
//!
//! Inode numbers here are the cluster's (volume) inode numbers; the FUSE adapter maps the
//! kernel's root inode 1 to [`PlaitFs::root`] and back.
//!
//! # Consistency
//!
//! - Metadata is not cached here: every lookup and getattr asks the leader, and the
//!   kernel caches what we return for `attr_timeout_ms` / `entry_timeout_ms`.
//! - Data is close-to-open: `open` forgets the cached extent map, so a file opened after
//!   another mount closed (flushed) it sees that mount's writes. Chunk bytes are cached
//!   without invalidation: a chunk id is the hash of its bytes, so it is never stale.
//! - Writes are buffered per inode and committed on flush, fsync and release (and when a
//!   bound is passed). Reads and getattr overlay the buffered bytes, so this mount always
//!   sees its own writes; other mounts see them once they are flushed.
//! - A failed flush keeps the bytes and reports the error (EIO, ENOSPC...) to the flush,
//!   fsync or close that asked for it: nothing acknowledged is dropped silently.

mod cache;
mod chunk_io;
mod data;
mod delegation;
mod dir;
mod dir_delegation;
mod dirty;
mod extents;
mod fast;
mod held_windows;
mod inode;
mod locks;
mod names;
mod statahead;
mod write_behind;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use plait_proto::meta::{NewKind, RenameMode, SetAttr, XattrMode};
use plait_proto::{
    Attr, DirEntry, ErrorCode, FsStats, Ino, MetaOp, MetaQuery, MetaReply, RpcError,
};
use tracing::{debug, warn};

pub use cache::{ChunkCache, ChunkData};
pub use dir::{DirListing, DirSlot};
pub use dirty::{DirtyBuffer, Piece};
pub use extents::{EXTENT_WINDOW_BYTES, ExtentWindow, assemble, chunks_needed, window_for};
pub use locks::LockCall;
pub use names::{
    NewFile, OpenIntent, check_name, check_symlink_target, check_xattr_name, may_open,
};

use crate::{ClusterClient, Replication};
use chunk_io::ChunkIo;
use dir_delegation::CommitWait;
use inode::InodeEntry;
use statahead::{Answer, Statahead};

/// Orphan reaps one mount runs in the background at once.
const REAPS_IN_FLIGHT_MAX: usize = 32;

/// Times an open waits for a queued unlink-behind of its file to commit before it gives
/// up (EAGAIN); each wait is bounded by the operation timeout.
const UNLINK_RACE_ROUNDS_MAX: usize = 3;

/// Entries asked for per `ReadDir` page. The metadata service caps a page at 1024
/// entries too (`plait_meta::READDIR_MAX_ENTRIES`), so a shorter page is the last one.
pub const READDIR_PAGE_ENTRIES: u32 = 1024;

/// Most extents committed by one `MetaOp::Write` (`plait_meta::WRITE_MAX_EXTENTS`); a
/// flush with more is committed in several ops.
pub const WRITE_EXTENTS_MAX: usize = 1024;

/// Tunables of a mount's filesystem layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// How long the kernel may cache attributes we return, in milliseconds.
    pub attr_timeout_ms: u64,
    /// How long the kernel may cache name lookups we return, in milliseconds.
    pub entry_timeout_ms: u64,
    /// Bound of the chunk cache, in bytes.
    pub data_cache_bytes: u64,
    /// Dirty bytes one file may buffer; a write that would pass it flushes first.
    pub dirty_max_bytes: u64,
    /// Dirty bytes all files may buffer together; a write that would pass it flushes the
    /// files holding the most first.
    pub dirty_total_max_bytes: u64,
    /// Ask for directories in which this mount creates files in a run, and create them
    /// locally with one commit per file while holding them (see `dir_delegation`).
    pub delegate_dirs: bool,
    /// Let a close of a file created under a held directory return once the file is
    /// queued for the directory's next batch commit (many files per commit). `false`:
    /// every close returns after its commit (`plait mount --close-durable`).
    pub close_behind: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            attr_timeout_ms: 1_000,
            entry_timeout_ms: 1_000,
            data_cache_bytes: 256 * MIB,
            dirty_max_bytes: 64 * MIB,
            dirty_total_max_bytes: 256 * MIB,
            delegate_dirs: true,
            close_behind: true,
        }
    }
}

impl FsConfig {
    /// [`Self::attr_timeout_ms`] as a duration.
    pub fn attr_ttl(&self) -> Duration {
        Duration::from_millis(self.attr_timeout_ms)
    }

    /// [`Self::entry_timeout_ms`] as a duration.
    pub fn entry_ttl(&self) -> Duration {
        Duration::from_millis(self.entry_timeout_ms)
    }
}

/// Why a filesystem call failed; [`FsError::errno`] is what the kernel gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The cluster refused or could not serve the request, or a local check failed with
    /// an error that has a wire code.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The file or directory handle is not open on this mount (EBADF).
    #[error("unknown handle {0}")]
    BadHandle(u64),
    /// The operation or mode is not supported (EOPNOTSUPP).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
}

impl FsError {
    /// An error with a wire code and a message.
    pub fn code(code: ErrorCode, message: impl Into<String>) -> Self {
        FsError::Rpc(RpcError::new(code, message))
    }

    /// The Linux errno to report.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Rpc(e) => e.code.errno(),
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
        }
    }

    /// True if the inode no longer exists (ENOENT or ESTALE).
    pub fn is_gone(&self) -> bool {
        matches!(self, FsError::Rpc(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::Stale))
    }
}

/// ENODATA for xattr `name`.
fn no_xattr(name: &[u8]) -> FsError {
    FsError::code(
        ErrorCode::NoAttr,
        format!("no xattr {:?}", String::from_utf8_lossy(name)),
    )
}

/// A reply of an unexpected variant: the peer speaks another dialect.
fn unexpected(what: &str, reply: &MetaReply) -> FsError {
    FsError::code(
        ErrorCode::Protocol,
        format!("unexpected reply to {what}: {}", reply_kind(reply)),
    )
}

/// The variant name of a reply, for error messages (never the payload).
fn reply_kind(reply: &MetaReply) -> &'static str {
    match reply {
        MetaReply::Empty => "Empty",
        MetaReply::Attr(_) => "Attr",
        MetaReply::Removed { .. } => "Removed",
        MetaReply::Entries { .. } => "Entries",
        MetaReply::Extents { .. } => "Extents",
        _ => "another reply",
    }
}

fn expect_attr(what: &str, reply: MetaReply) -> Result<Attr, FsError> {
    match reply {
        MetaReply::Attr(attr) => Ok(attr),
        other => Err(unexpected(what, &other)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filesystem of one mounted volume: the cluster client, the volume's root inode, open
/// handles, per-inode write buffers and the chunk cache.
#[derive(Debug)]
pub struct PlaitFs {
    client: Arc<ClusterClient>,
    root: Ino,
    config: FsConfig,
    chunks: Arc<ChunkIo>,
    /// Inodes open on this mount or holding buffered bytes.
    inodes: Mutex<HashMap<Ino, Arc<InodeEntry>>>,
    /// Open file handles → inode.
    files: Mutex<HashMap<u64, Ino>>,
    /// Open directory handles → their listing.
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    next_handle: AtomicU64,
    /// Sum of all inodes' buffered bytes (dirty and being flushed).
    dirty_total_bytes: AtomicU64,
    /// The session and the lock owners of this mount.
    locks: locks::MountLocks,
    /// Directory snapshots that answer runs of lookups.
    statahead: Statahead,
    /// Inodes whose whole chunks wait to be flushed behind their writer.
    write_behind: write_behind::WriteBehind,
    /// Slots of the orphan reaps running in the background.
    reaps: Arc<tokio::sync::Semaphore>,
    /// Directories this mount holds and the files it created in them.
    dir_delegations: dir_delegation::DirDelegations,
}

impl PlaitFs {
    /// The filesystem of the volume whose root directory is `root`, writing chunks with
    /// `replication` (the volume's replicas and write quorum).
    pub fn new(
        client: Arc<ClusterClient>,
        root: Ino,
        replication: Replication,
        config: FsConfig,
    ) -> Self {
        let statahead = Statahead::new(config.attr_ttl().min(config.entry_ttl()));
        let chunks = Arc::new(ChunkIo::new(
            client.clone(),
            replication,
            config.data_cache_bytes,
        ));
        Self {
            client,
            root,
            config,
            chunks,
            inodes: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            dirty_total_bytes: AtomicU64::new(0),
            locks: locks::MountLocks::default(),
            statahead,
            write_behind: write_behind::WriteBehind::default(),
            reaps: Arc::new(tokio::sync::Semaphore::new(REAPS_IN_FLIGHT_MAX)),
            dir_delegations: dir_delegation::DirDelegations::default(),
        }
    }

    /// Proposes `op` to the metadata group. Every change (and every attempt: it may have
    /// failed because another mount changed the same names) drops the directory
    /// snapshots, so this mount never answers a lookup from before its own change.
    async fn commit(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        self.statahead.invalidate();
        self.meta_waiting(op).await
    }

    /// Proposes `op`, which changes only the attributes (and data) of one inode and is
    /// answered with its new attributes: like [`Self::commit`], except that snapshots are
    /// kept and updated with those attributes (a run of `create, write, close` in one
    /// directory keeps its snapshot).
    ///
    /// A content change (`Write`, a size `SetAttr`) of a file whose directory another
    /// mount holds waits for that directory to be given back (the group answers
    /// `DirRecalling`); whatever its outcome, this mount's kept window of the file goes.
    async fn commit_attr_change(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        let generation = self.statahead.begin_change();
        let changed = match &op {
            MetaOp::Write { ino, .. } => Some(*ino),
            MetaOp::SetAttr { ino, set, .. } if set.size.is_some() => Some(*ino),
            _ => None,
        };
        let reply = self.meta_recalling(op).await;
        if let Some(ino) = changed {
            self.content_changed(ino, reply.is_err());
        }
        match &reply {
            Ok(MetaReply::Attr(attr)) => self.statahead.updated(generation, attr),
            _ => self.statahead.invalidate(),
        }
        reply
    }

    /// Proposes `op`, which creates `parent/name`: like [`Self::commit`], except that a
    /// snapshot of `parent` is kept and gains the new entry (a run of creates in one
    /// directory then looks its names up locally).
    async fn commit_create(
        &self,
        parent: Ino,
        name: &[u8],
        op: MetaOp,
    ) -> Result<MetaReply, RpcError> {
        let kept = self.statahead.invalidate_except(parent);
        let reply = self.meta_waiting(op).await;
        match &reply {
            Ok(MetaReply::Attr(attr)) => self.statahead.created(kept, parent, name, attr),
            _ => self.statahead.invalidate(),
        }
        reply
    }

    /// Looks the volume up by name and returns its filesystem.
    pub async fn open_volume(
        client: Arc<ClusterClient>,
        volume: &str,
        config: FsConfig,
    ) -> Result<Self, FsError> {
        let reply = client
            .query(MetaQuery::Volume {
                name: volume.to_string(),
            })
            .await?;
        match reply {
            MetaReply::Volume(info) => {
                let replication = Replication {
                    replicas: info.replicas,
                    write_quorum: info.write_quorum,
                };
                tracing::info!(
                    volume,
                    replicas = info.replicas,
                    write_quorum = info.write_quorum,
                    "opened volume"
                );
                Ok(Self::new(client, info.root, replication, config))
            }
            other => Err(unexpected("Volume", &other)),
        }
    }

    /// The volume's root directory inode.
    pub fn root(&self) -> Ino {
        self.root
    }

    /// The tunables this filesystem runs with.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The cluster client.
    pub fn client(&self) -> &Arc<ClusterClient> {
        &self.client
    }

    /// Bytes buffered across all files (dirty and being flushed).
    pub fn dirty_total_bytes(&self) -> u64 {
        self.dirty_total_bytes.load(Ordering::Relaxed)
    }

    /// Bytes held by the chunk cache.
    pub fn cached_bytes(&self) -> u64 {
        self.chunks.cache().used_bytes()
    }

    // ----- namespace -------------------------------------------------------------------

    /// Resolves `name` in directory `parent` (`.` and `..` included, for NFS export).
    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, FsError> {
        match name {
            b"." => return self.getattr(parent).await,
            b".." => {
                let grandparent = self.parent_of(parent).await?;
                return self.getattr(grandparent).await;
            }
            _ => check_name(name)?,
        }
        if let Some(answer) = self.delegated_lookup(parent, name) {
            return answer;
        }
        let now = Instant::now();
        if let Some(answer) = self.statahead_answer(parent, name, now) {
            return answer;
        }
        if self.statahead.note_miss(parent, now) {
            match self.fetch_snapshot(parent).await {
                Ok(()) => {
                    if let Some(answer) = self.statahead_answer(parent, name, Instant::now()) {
                        return answer;
                    }
                }
                Err(e) => debug!(parent, error = %e, "statahead listing failed"),
            }
        }
        self.lookup_fresh(parent, name).await
    }

    /// The answer of a fresh directory snapshot to a lookup, if there is one (only ever
    /// "found": see [`Answer`]).
    fn statahead_answer(
        &self,
        parent: Ino,
        name: &[u8],
        now: Instant,
    ) -> Option<Result<Attr, FsError>> {
        match self.statahead.answer(parent, name, now) {
            Answer::Found(attr) => Some(Ok(self.with_dirty_size(attr))),
            Answer::Unknown => None,
        }
    }

    /// `name` in `parent` as the metadata group has it now (no snapshot).
    async fn lookup_fresh(&self, parent: Ino, name: &[u8]) -> Result<Attr, FsError> {
        let reply = self
            .query_names(MetaQuery::Lookup {
                parent,
                name: name.to_vec(),
                session: self.asker(),
            })
            .await?;
        Ok(self.with_dirty_size(expect_attr("Lookup", reply)?))
    }

    /// Lists directory `dir` for statahead, up to [`statahead::SNAPSHOT_ENTRIES_MAX`]
    /// entries, and keeps the snapshot (or the mark that it is too large).
    async fn fetch_snapshot(&self, dir: Ino) -> Result<(), FsError> {
        let generation = self.statahead.generation();
        let fetched_at = Instant::now();
        let entries = self
            .read_dir_all(dir, statahead::SNAPSHOT_ENTRIES_MAX)
            .await?;
        debug!(
            dir,
            entries = entries.as_ref().map(Vec::len),
            "statahead snapshot"
        );
        self.statahead.store(dir, generation, entries, fetched_at);
        Ok(())
    }

    /// Every entry of directory `dir`, page by page, or `None` as soon as there are more
    /// than `max_entries`.
    async fn read_dir_all(
        &self,
        dir: Ino,
        max_entries: usize,
    ) -> Result<Option<Vec<DirEntry>>, FsError> {
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let reply = self
                .query_names(MetaQuery::ReadDir {
                    ino: dir,
                    after: after.take(),
                    limit: READDIR_PAGE_ENTRIES,
                    session: self.asker(),
                })
                .await?;
            let MetaReply::Entries { entries: page, .. } = reply else {
                return Err(unexpected("ReadDir", &reply));
            };
            let last_page = page.len() < READDIR_PAGE_ENTRIES as usize;
            after = page.last().map(|e| e.name.clone());
            entries.extend(page);
            if entries.len() > max_entries {
                return Ok(None);
            }
            if last_page || after.is_none() {
                return Ok(Some(entries));
            }
        }
    }

    /// The parent directory of directory `dir` (the root is its own parent).
    async fn parent_of(&self, dir: Ino) -> Result<Ino, FsError> {
        if dir == self.root {
            return Ok(dir);
        }
        let reply = self
            .client
            .query(MetaQuery::ReadDir {
                ino: dir,
                after: None,
                limit: 1,
                // Only the parent is wanted: no recall of a delegated directory.
                session: None,
            })
            .await?;
        match reply {
            MetaReply::Entries { parent, .. } => Ok(parent),
            other => Err(unexpected("ReadDir", &other)),
        }
    }

    /// Attributes of `ino`; the size includes bytes buffered on this mount.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        if let Some(attr) = self.delegated_attr(ino) {
            return Ok(attr);
        }
        let reply = self.client.query(MetaQuery::GetAttr { ino }).await?;
        Ok(self.with_dirty_size(expect_attr("GetAttr", reply)?))
    }

    /// Target of symlink `ino`.
    pub async fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        match self.client.query(MetaQuery::ReadLink { ino }).await? {
            MetaReply::Link(target) => Ok(target),
            other => Err(unexpected("ReadLink", &other)),
        }
    }

    /// Creates `name` in `parent` (file, directory, symlink, device, fifo or socket) with
    /// permission bits `perm` (already masked by the umask) owned by `uid`/`gid`.
    pub async fn create_node(
        &self,
        parent: Ino,
        name: &[u8],
        kind: NewKind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        check_name(name)?;
        if let NewKind::Symlink { target } = &kind {
            check_symlink_target(target)?;
        }
        let op = MetaOp::Create {
            parent,
            name: name.to_vec(),
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
        };
        expect_attr("Create", self.commit(op).await?)
    }

    /// Removes the non-directory `name` from `parent`; reaps the inode if that was its
    /// last link and this mount has it open nowhere. Under a held directory the name goes
    /// at once and its removal is committed with the directory's next batch.
    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        check_name(name)?;
        if self.unlink_delegated(parent, name).await? {
            return Ok(());
        }
        let reply = self
            .commit(MetaOp::Unlink {
                parent,
                name: name.to_vec(),
            })
            .await?;
        self.after_removal(reply).await;
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        check_name(name)?;
        let reply = self
            .commit(MetaOp::Rmdir {
                parent,
                name: name.to_vec(),
            })
            .await?;
        self.after_removal(reply).await;
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name` with renameat2 semantics `mode`; a
    /// replaced target that lost its last link is reaped as by [`Self::unlink`].
    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        check_name(name)?;
        check_name(new_name)?;
        let reply = self
            .commit(MetaOp::Rename {
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                mode,
            })
            .await?;
        self.after_removal(reply).await;
        Ok(())
    }

    /// Adds the hard link `new_parent/new_name` to `ino`.
    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr, FsError> {
        check_name(new_name)?;
        self.settle_pending(ino).await?;
        let reply = self
            .commit(MetaOp::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
            })
            .await?;
        Ok(self.with_dirty_size(expect_attr("Link", reply)?))
    }

    /// Handles the reply of a removing op: an orphan is reaped now if this mount does not
    /// have it open, else at its last release.
    async fn after_removal(&self, reply: MetaReply) {
        if let MetaReply::Removed { orphan: Some(ino) } = reply {
            if self.defer_reap_if_open(ino) {
                debug!(ino, "orphan is open here; reaping at last release");
            } else {
                self.reap(ino).await;
            }
        }
    }

    /// True if a handle of `ino` is open on this mount.
    fn is_open_here(&self, ino: Ino) -> bool {
        let entry = lock(&self.inodes).get(&ino).cloned();
        entry.is_some_and(|e| e.lock().open_handles > 0)
    }

    /// Marks `ino` for reaping at its last release if it is open here (returns true);
    /// otherwise drops whatever is still buffered for it (the file is gone).
    fn defer_reap_if_open(&self, ino: Ino) -> bool {
        let entry = lock(&self.inodes).get(&ino).cloned();
        let Some(entry) = entry else {
            return false;
        };
        {
            let mut st = entry.lock();
            if st.open_handles > 0 {
                st.reap_on_last_release = true;
                return true;
            }
            let before = st.held_bytes();
            st.dirty = DirtyBuffer::new();
            self.account(before, st.held_bytes());
        }
        self.forget_if_idle(ino);
        false
    }

    /// Deletes orphan `ino` on the cluster, in the background: the unlink, rename or
    /// release that led here has succeeded, and nothing reaches an orphan by name, so
    /// that call need not wait for a second commit. At most [`REAPS_IN_FLIGHT_MAX`] run
    /// at once (past it the caller waits for a slot); [`Self::flush_all`] waits for them.
    /// A failure is logged, not reported: the orphan stays until cleaned up.
    async fn reap(&self, ino: Ino) {
        let Ok(slot) = self.reaps.clone().acquire_owned().await else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            match client.meta(MetaOp::Reap { ino }).await {
                Ok(_) => debug!(ino, "orphan reaped"),
                Err(e) => {
                    warn!(ino, error = %e, "could not reap orphan; it stays until cleaned up")
                }
            }
            drop(slot);
        });
    }

    /// Waits until no reap runs in the background (at unmount).
    async fn reaps_finished(&self) {
        let all = REAPS_IN_FLIGHT_MAX as u32;
        if let Ok(slots) = self.reaps.acquire_many(all).await {
            drop(slots);
        }
    }

    // ----- directories -------------------------------------------------------------------

    /// Lists directory `ino` completely and returns a handle serving that snapshot.
    pub async fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let listing = Arc::new(self.list_dir(ino).await?);
        let fh = self.new_handle();
        lock(&self.dirs).insert(fh, listing);
        Ok(fh)
    }

    /// The snapshot served by directory handle `fh`.
    pub fn dir_listing(&self, fh: u64) -> Result<Arc<DirListing>, FsError> {
        lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) -> Result<(), FsError> {
        lock(&self.dirs)
            .remove(&fh)
            .map(|_| ())
            .ok_or(FsError::BadHandle(fh))
    }

    /// All entries of directory `ino`, fetched page by page.
    async fn list_dir(&self, ino: Ino) -> Result<DirListing, FsError> {
        self.settle_dir(ino).await?;
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut parent;
        loop {
            let reply = self
                .query_names(MetaQuery::ReadDir {
                    ino,
                    after: after.take(),
                    limit: READDIR_PAGE_ENTRIES,
                    session: self.asker(),
                })
                .await?;
            let MetaReply::Entries {
                parent: p,
                entries: page,
            } = reply
            else {
                return Err(unexpected("ReadDir", &reply));
            };
            parent = p;
            let last_page = page.len() < READDIR_PAGE_ENTRIES as usize;
            after = page.last().map(|e| e.name.clone());
            entries.extend(page.into_iter().map(|mut e| {
                e.attr = self.with_dirty_size(e.attr);
                e
            }));
            if last_page || after.is_none() {
                break;
            }
        }
        if ino == self.root {
            parent = ino;
        }
        Ok(DirListing {
            ino,
            parent,
            entries,
        })
    }

    // ----- attributes --------------------------------------------------------------------

    /// Changes attributes. Buffered bytes are committed first, so that a later flush cannot
    /// undo a truncation or overwrite an explicitly set mtime; a size change also drops
    /// buffered bytes past the new size.
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr, FsError> {
        self.settle_pending(ino).await?;
        let Some(entry) = self.inode_entry(ino) else {
            return self.setattr_remote(ino, set).await;
        };
        let guard = entry.flush_lock.lock().await;
        let resize = set.size;
        if let Some(size) = resize {
            self.trim_dirty(&entry, size);
        }
        let result = match self.flush_locked(ino, &entry, CommitWait::Committed).await {
            Ok(()) => self.setattr_remote(ino, set).await,
            Err(e) => Err(e),
        };
        if resize.is_some() {
            entry.lock().invalidate_extents();
        }
        drop(guard);
        self.forget_if_idle(ino);
        result
    }

    async fn setattr_remote(&self, ino: Ino, set: SetAttr) -> Result<Attr, FsError> {
        let reply = self
            .commit_attr_change(MetaOp::SetAttr {
                ino,
                set,
                session: self.asker(),
            })
            .await?;
        Ok(self.with_dirty_size(expect_attr("SetAttr", reply)?))
    }

    /// Filesystem figures for statfs.
    pub async fn statfs(&self) -> Result<FsStats, FsError> {
        match self.client.query(MetaQuery::FsStats).await? {
            MetaReply::FsStats(stats) => Ok(stats),
            other => Err(unexpected("FsStats", &other)),
        }
    }

    /// Sets extended attribute `name` of `ino`.
    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<(), FsError> {
        check_xattr_name(name)?;
        self.settle_pending(ino).await?;
        self.xattrs_changed(ino);
        self.commit(MetaOp::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            mode,
        })
        .await?;
        Ok(())
    }

    /// Value of extended attribute `name` of `ino` (ENODATA if absent).
    ///
    /// `security.capability` of a file this mount created within the attribute timeout
    /// and whose attributes it has not changed is answered here (absent): the kernel asks
    /// for it before the first write of every file, and it cannot exist unless another
    /// mount set it in that moment (the staleness the attribute timeout allows).
    pub async fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, FsError> {
        check_xattr_name(name)?;
        if self.xattr_absent_here(ino, name) {
            return Err(no_xattr(name));
        }
        let reply = self
            .client
            .query(MetaQuery::GetXattr {
                ino,
                name: name.to_vec(),
            })
            .await?;
        match reply {
            MetaReply::Xattr(value) => Ok(value),
            other => Err(unexpected("GetXattr", &other)),
        }
    }

    /// True if this mount created `ino` less than an attribute timeout ago and has not
    /// changed its extended attributes since.
    /// True if this mount knows `ino` has no xattr `name` without asking: a file created
    /// here and not committed has none (setting one commits it first), and one created
    /// here within the attribute timeout has no `security.capability` (asked by the
    /// kernel before its first write).
    fn xattr_absent_here(&self, ino: Ino, name: &[u8]) -> bool {
        self.pending_dir(ino).is_some()
            || (name == b"security.capability" && self.created_here_recently(ino))
    }

    fn created_here_recently(&self, ino: Ino) -> bool {
        self.inode_entry(ino).is_some_and(|entry| {
            entry
                .lock()
                .created_here_at
                .is_some_and(|at| at.elapsed() < self.config.attr_ttl())
        })
    }

    /// Forgets that `ino` was created here without extended attributes.
    fn xattrs_changed(&self, ino: Ino) {
        if let Some(entry) = self.inode_entry(ino) {
            entry.lock().created_here_at = None;
        }
    }

    /// Names of the extended attributes of `ino`.
    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, FsError> {
        if self.pending_dir(ino).is_some() {
            // Created here and not committed: it has none.
            return Ok(Vec::new());
        }
        match self.client.query(MetaQuery::ListXattr { ino }).await? {
            MetaReply::XattrNames(names) => Ok(names),
            other => Err(unexpected("ListXattr", &other)),
        }
    }

    /// Removes extended attribute `name` of `ino` (ENODATA if absent).
    pub async fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<(), FsError> {
        check_xattr_name(name)?;
        self.settle_pending(ino).await?;
        self.xattrs_changed(ino);
        self.commit(MetaOp::RemoveXattr {
            ino,
            name: name.to_vec(),
        })
        .await?;
        Ok(())
    }

    // ----- handles and inode state -------------------------------------------------------

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// The state of `ino`, if this mount has any.
    fn inode_entry(&self, ino: Ino) -> Option<Arc<InodeEntry>> {
        lock(&self.inodes).get(&ino).cloned()
    }

    /// The state of `ino`, created if needed.
    fn inode_entry_or_new(&self, ino: Ino) -> Arc<InodeEntry> {
        lock(&self.inodes).entry(ino).or_default().clone()
    }

    /// Registers a new file handle on `ino` and forgets its cached extents (close-to-open).
    fn register_file(&self, ino: Ino) -> u64 {
        {
            let mut inodes = lock(&self.inodes);
            let entry = inodes.entry(ino).or_default();
            let mut st = entry.lock();
            st.open_handles += 1;
            st.invalidate_extents();
        }
        let fh = self.new_handle();
        lock(&self.files).insert(fh, ino);
        fh
    }

    /// Undoes [`Self::register_file`] of an open that did not happen.
    fn unregister_file(&self, ino: Ino, fh: u64) {
        self.forget_handle(fh);
        if let Some(entry) = self.inode_entry(ino) {
            let mut st = entry.lock();
            st.open_handles = st.open_handles.saturating_sub(1);
        }
        self.forget_if_idle(ino);
    }

    /// Registers an open of `ino`, first letting a queued unlink-behind of it commit: that
    /// unlink reaps the file in its commit because it found it open nowhere here, so an
    /// open racing it must not get a handle before it is decided (the open then finds the
    /// file gone, ESTALE, or kept if the unlink was refused).
    async fn register_file_unless_unlinking(&self, ino: Ino) -> Result<u64, FsError> {
        for _ in 0..UNLINK_RACE_ROUNDS_MAX {
            let fh = self.register_file(ino);
            if !self.unlink_queued(ino) {
                return Ok(fh);
            }
            self.unregister_file(ino, fh);
            self.wait_unlinked(ino).await?;
        }
        Err(FsError::code(
            ErrorCode::WouldBlock,
            format!("inode {ino} is being unlinked"),
        ))
    }

    /// Drops file handle `fh` (its inode's handle count is the caller's).
    fn forget_handle(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// Checks that file handle `fh` is open on `ino`.
    fn check_file(&self, ino: Ino, fh: u64) -> Result<(), FsError> {
        match lock(&self.files).get(&fh) {
            Some(open) if *open == ino => Ok(()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    /// Drops one open handle of `ino`; at the last one, reaps it if it was orphaned.
    async fn close_inode(&self, ino: Ino) {
        let Some(entry) = self.inode_entry(ino) else {
            return;
        };
        let reap = {
            let mut st = entry.lock();
            st.open_handles = st.open_handles.saturating_sub(1);
            let reap = st.open_handles == 0 && st.reap_on_last_release;
            if reap {
                st.reap_on_last_release = false;
                let before = st.held_bytes();
                st.dirty = DirtyBuffer::new();
                self.account(before, st.held_bytes());
            }
            reap
        };
        self.forget_if_idle(ino);
        if reap {
            self.reap(ino).await;
        }
    }

    /// Removes the state of `ino` if it is neither open nor holding bytes.
    fn forget_if_idle(&self, ino: Ino) {
        let mut inodes = lock(&self.inodes);
        let idle = inodes.get(&ino).is_some_and(|entry| {
            let st = entry.lock();
            st.open_handles == 0 && st.is_clean()
        });
        if idle {
            inodes.remove(&ino);
        }
    }

    /// The size a file has for this mount: the committed size or the end of its buffered
    /// bytes, whichever is larger.
    fn with_dirty_size(&self, mut attr: Attr) -> Attr {
        if let Some(entry) = self.inode_entry(attr.ino)
            && let Some(end) = entry.lock().dirty_end()
        {
            attr.size = attr.size.max(end);
        }
        attr
    }

    /// Adds the change of one inode's buffered bytes to the mount's total.
    fn account(&self, before: u64, after: u64) {
        if after >= before {
            self.dirty_total_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.dirty_total_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
