//! The data path of [`PlaitFs`]: open, create, read, write, flush, release, truncation.

use std::collections::HashMap;
use std::sync::Arc;

use plait_proto::meta::{DirBatchOp, NewKind, SetAttr, TimeSet};
use plait_proto::{
    Attr, CHUNK_MAX_BYTES, ChunkId, ErrorCode, Extent, FILE_MAX_BYTES, INLINE_BATCH_MAX_BYTES,
    INLINE_CHUNK_MAX_BYTES, Ino, MetaOp, MetaQuery, MetaReply, MissingCopy,
};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::cache::ChunkData;
use super::dir_delegation::CommitWait;
use super::dirty::{DirtyBuffer, Piece};
use super::extents::{EXTENT_WINDOW_BYTES, ExtentWindow, assemble, chunks_needed, window_for};
use super::inode::{InodeData, InodeEntry};
use super::names::{NewFile, OpenIntent, check_name, may_open};
use super::write_behind::WRITE_BEHIND_MIN_CHUNKS;
use crate::{ClusterClient, StoredChunk};

use super::{FsError, PlaitFs, WRITE_EXTENTS_MAX, expect_attr, lock, unexpected};

/// Extent windows a sequential reader fetches ahead of the one it reads.
pub(super) const READ_AHEAD_WINDOWS: u64 = 4;

/// Chunk uploads of one flush in flight at once.
const PUT_IN_FLIGHT_MAX: usize = 4;

/// Most flushes one write may run to get the mount's total of buffered bytes under its
/// bound before it buffers its bytes anyway.
const TOTAL_FLUSH_ROUNDS_MAX: usize = 8;

impl PlaitFs {
    /// Opens file `ino` and returns the handle; `truncate` (O_TRUNC) empties it first.
    ///
    /// The cached extent map of the inode is dropped (close-to-open) and the first window
    /// fetched at once, which the first read then uses. That request also proves the inode
    /// still exists: if another mount deleted it while the kernel still trusted a cached
    /// name, the open fails with ESTALE, on which the kernel looks the name up again and
    /// retries (so `open(O_CREAT)` of a name recreated elsewhere creates or opens the
    /// current file instead of handing out a dead one).
    pub async fn open(&self, ino: Ino, truncate: bool) -> Result<u64, FsError> {
        self.settle_pending(ino).await?;
        if !truncate && let Some(fh) = self.open_held(ino) {
            return Ok(fh);
        }
        let fh = self.register_file_unless_unlinking(ino).await?;
        let checked = if truncate {
            self.truncate_for_open(ino).await.map(|_| ())
        } else {
            self.prefetch_window(ino).await
        };
        if let Err(e) = checked {
            lock(&self.files).remove(&fh);
            self.close_inode(ino).await;
            if e.is_gone() {
                // The kernel looks the name up again: that lookup must not come from a
                // snapshot taken before the file went.
                self.statahead.invalidate();
                return Err(FsError::code(
                    ErrorCode::Stale,
                    format!("inode {ino} no longer exists"),
                ));
            }
            return Err(e);
        }
        Ok(fh)
    }

    /// The committed size of `ino` as the cached extent window has it (fetched by the
    /// last open or read), if one is cached.
    pub fn cached_size(&self, ino: Ino) -> Option<u64> {
        let entry = self.inode_entry(ino)?;
        let st = entry.lock();
        st.extents.as_ref().map(|w| w.size)
    }

    /// An open that needs no request: the file's first window is kept because a
    /// directory this mount holds guards its content (see `held_windows`). `None`: ask.
    pub(super) fn open_held(&self, ino: Ino) -> Option<u64> {
        self.held_window(ino)?;
        let fh = self.register_file(ino);
        let entry = self.inode_entry_or_new(ino);
        let generation = entry.lock().extent_gen;
        // Looked up again once registered: an unlink-behind of the file drops its window
        // before it checks that the file is open nowhere here, so either it sees this
        // handle or this sees the window gone.
        let Some(window) = self.held_window(ino) else {
            self.unregister_file(ino, fh);
            return None;
        };
        let mut st = entry.lock();
        if st.extent_gen != generation {
            // A change of this mount's committed meanwhile: ask the group.
            drop(st);
            self.unregister_file(ino, fh);
            return None;
        }
        st.extents = Some(window);
        Some(fh)
    }

    /// Fetches and caches the first extent window of `ino` (see [`Self::open`]), and
    /// keeps it for later opens if a directory this mount holds guards the file.
    async fn prefetch_window(&self, ino: Ino) -> Result<(), FsError> {
        let entry = self.inode_entry_or_new(ino);
        let generation = entry.lock().extent_gen;
        let epoch = self.window_epoch();
        let (window, guard_dir) = self.load_window(ino, &entry, generation, 0, 1).await?;
        self.keep_window(ino, guard_dir, &window, epoch);
        Ok(())
    }

    async fn truncate_for_open(&self, ino: Ino) -> Result<Attr, FsError> {
        let set = SetAttr {
            size: Some(0),
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        self.setattr(ino, set).await
    }

    /// Creates and opens regular file `parent/name`.
    ///
    /// If another mount created the name first and `intent` is not exclusive (no O_EXCL),
    /// the existing file is opened instead, as open(2) with O_CREAT would; since the kernel
    /// did not check permissions on that file, they are checked here against `uid`/`gid`.
    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
        intent: OpenIntent,
    ) -> Result<(Attr, u64), FsError> {
        check_name(name)?;
        let new = NewFile {
            parent,
            name,
            perm,
            uid,
            gid,
            intent,
        };
        if let Some(created) = self.create_delegated(&new).await? {
            return Ok(created);
        }
        let op = MetaOp::Create {
            parent,
            name: name.to_vec(),
            kind: NewKind::File,
            perm: perm & 0o7777,
            uid,
            gid,
        };
        let attr = match self.commit_create(parent, name, op).await {
            Ok(reply) => expect_attr("Create", reply)?,
            Err(e) if e.code == ErrorCode::Exists && !intent.exclusive => {
                return self.open_existing(parent, name, uid, gid, intent).await;
            }
            Err(e) => return Err(e.into()),
        };
        let fh = self.open_created(&attr);
        Ok((attr, fh))
    }

    /// Opens the file this mount just created: its extents are known (none, size 0, as
    /// committed by the create), so no request is needed to start reading.
    pub(super) fn open_created(&self, attr: &Attr) -> u64 {
        let fh = self.register_file(attr.ino);
        let (start, end) = window_for(0, 1);
        let empty = ExtentWindow {
            start,
            end,
            size: attr.size,
            extents: Vec::new(),
            inline: HashMap::new(),
        };
        let entry = self.inode_entry_or_new(attr.ino);
        let mut st = entry.lock();
        st.extents = Some(Arc::new(empty));
        st.created_here_at = Some(std::time::Instant::now());
        fh
    }

    /// Opens the file another mount created under `parent/name` while we tried to.
    async fn open_existing(
        &self,
        parent: Ino,
        name: &[u8],
        uid: u32,
        gid: u32,
        intent: OpenIntent,
    ) -> Result<(Attr, u64), FsError> {
        let attr = self.lookup_fresh(parent, name).await?;
        match attr.kind {
            plait_proto::FileKind::File => {}
            plait_proto::FileKind::Dir => {
                return Err(FsError::code(ErrorCode::IsDir, "exists as a directory"));
            }
            _ => return Err(FsError::code(ErrorCode::Exists, "exists as a special file")),
        }
        let write = intent.write || intent.truncate;
        if !may_open(&attr, uid, gid, intent.read, write) {
            return Err(FsError::code(ErrorCode::AccessDenied, "permission denied"));
        }
        debug!(
            parent,
            ino = attr.ino,
            "create raced with another mount; opening its file"
        );
        let fh = self.open(attr.ino, intent.truncate).await?;
        if intent.truncate {
            return Ok((self.getattr(attr.ino).await?, fh));
        }
        Ok((attr, fh))
    }

    /// Reads up to `size` bytes at `offset` of file `ino` through handle `fh`: committed
    /// bytes with this mount's buffered bytes on top; holes read as zeros; a read past the
    /// end returns fewer bytes (none at or past the end).
    pub async fn read(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        self.check_file(ino, fh)?;
        let len = u64::from(size);
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.pending_dir(ino).is_some() {
            // A file created here: its (empty) extents are known for the first window;
            // past it, the group must know the file before it can be asked.
            let covered = self.inode_entry(ino).is_some_and(|e| {
                e.lock()
                    .extents
                    .as_ref()
                    .is_some_and(|w| w.covers(offset, offset.saturating_add(len)))
            });
            if !covered {
                self.settle_pending(ino).await?;
            }
        }
        // A transient entry when this mount holds no state (should not happen with a valid
        // handle): the read then simply caches nothing.
        let entry = self.inode_entry(ino).unwrap_or_default();
        // The buffered bytes are captured *before* the extents are fetched: whatever a
        // concurrent flush commits in between is either in this overlay or in the extents.
        let (overlay, dirty_end, generation, cached) = {
            let st = entry.lock();
            let cached = st
                .extents
                .clone()
                .filter(|w| w.covers(offset, offset.saturating_add(len)));
            (
                st.overlay_for(offset, len),
                st.dirty_end(),
                st.extent_gen,
                cached,
            )
        };
        let window = match cached {
            Some(w) => w,
            None => {
                self.load_window(ino, &entry, generation, offset, len)
                    .await?
                    .0
            }
        };
        let file_size = window.size.max(dirty_end.unwrap_or(0));
        let end = offset.saturating_add(len).min(file_size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.read_ahead(ino, &entry, &window, end);
        let mut buf = self.committed_bytes(&window, offset, end).await?;
        buf.resize((end - offset) as usize, 0);
        overlay.overlay(offset, &mut buf);
        Ok(buf)
    }

    /// A read answered without waiting, if one can be: the cached extent window covers
    /// it and every chunk it needs came inline with that window (a small file just
    /// opened) or is in the chunk cache (a sequential reader whose chunks were fetched
    /// ahead), and no read-ahead is due. Lets the mount answer in the kernel request's
    /// own thread; `None` means "ask [`Self::read`]" (which starts the read-ahead).
    pub fn read_local(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        self.check_file(ino, fh).ok()?;
        let len = u64::from(size);
        let entry = self.inode_entry(ino)?;
        let st = entry.lock();
        let window = st
            .extents
            .as_ref()
            .filter(|w| w.covers(offset, offset.saturating_add(len.max(1))))?;
        let file_size = window.size.max(st.dirty_end().unwrap_or(0));
        let end = offset.saturating_add(len).min(file_size);
        if offset >= end {
            return Some(Vec::new());
        }
        if !read_ahead_starts(&st, window, end).is_empty() {
            return None;
        }
        // Every chunk must be at hand; only then are buffered bytes copied.
        let committed_end = end.min(window.size);
        let mut buf = if offset < committed_end {
            let mut chunks = HashMap::new();
            for id in chunks_needed(&window.extents, offset, committed_end) {
                let data = match window.inline.get(&id) {
                    Some(data) => data.clone(),
                    None => self.chunks.cache().get(&id)?,
                };
                chunks.insert(id, data);
            }
            let len = (committed_end - offset) as usize;
            assemble(offset, len, &window.extents, &chunks).ok()?
        } else {
            Vec::new()
        };
        buf.resize((end - offset) as usize, 0);
        st.overlay_for(offset, len).overlay(offset, &mut buf);
        Some(buf)
    }

    /// A read in window `window` that ends at `end`: if the reader looks sequential (it
    /// reached the second half of the window, or this window was itself read ahead) and
    /// the file goes on, starts fetching the chunks of the next [`READ_AHEAD_WINDOWS`]
    /// windows into the cache in the background (each window once), so the reader finds
    /// them there. Chunks are named by their hash, so bytes fetched ahead are never
    /// stale; the extents fetched for it are not kept (a later read asks for them again,
    /// under close-to-open).
    fn read_ahead(&self, ino: Ino, entry: &InodeEntry, window: &ExtentWindow, end: u64) {
        let starts = {
            let mut st = entry.lock();
            let starts = read_ahead_starts(&st, window, end);
            if let Some(last) = starts.last() {
                st.read_ahead_from = Some(*last);
            }
            starts
        };
        for start in starts {
            let (client, chunks) = (self.client.clone(), self.chunks.clone());
            tokio::spawn(async move {
                let end = start + EXTENT_WINDOW_BYTES;
                let ahead = match fetch_window(&client, ino, start, end).await {
                    Ok((w, _)) => w,
                    Err(e) => return debug!(ino, error = %e, "read-ahead: extents failed"),
                };
                let remote: Vec<ChunkId> = chunks_needed(&ahead.extents, start, end)
                    .into_iter()
                    .filter(|id| !ahead.inline.contains_key(id))
                    .collect();
                if let Err(e) = chunks.get_many(remote).await {
                    debug!(ino, error = %e, "read-ahead: chunk fetch failed");
                }
            });
        }
    }

    /// The committed bytes of `[offset, min(end, committed size))`.
    async fn committed_bytes(
        &self,
        window: &ExtentWindow,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, FsError> {
        let committed_end = end.min(window.size);
        if offset >= committed_end {
            return Ok(Vec::new());
        }
        let (inline, remote): (Vec<ChunkId>, Vec<ChunkId>) =
            chunks_needed(&window.extents, offset, committed_end)
                .into_iter()
                .partition(|id| window.inline.contains_key(id));
        let mut chunks = if remote.is_empty() {
            HashMap::new()
        } else {
            self.chunks.get_many(remote).await?
        };
        for id in inline {
            if let Some(data) = window.inline.get(&id) {
                chunks.insert(id, data.clone());
            }
        }
        let len = (committed_end - offset) as usize;
        Ok(assemble(offset, len, &window.extents, &chunks)?)
    }

    /// Fetches the extent window covering `[offset, offset + len)` and caches it unless the
    /// committed extents changed (generation moved) meanwhile; with the directory guarding
    /// the file.
    async fn load_window(
        &self,
        ino: Ino,
        entry: &InodeEntry,
        generation: u64,
        offset: u64,
        len: u64,
    ) -> Result<(Arc<ExtentWindow>, Option<Ino>), FsError> {
        let (start, end) = window_for(offset, len);
        let (window, guard_dir) = fetch_window(&self.client, ino, start, end).await?;
        let window = Arc::new(window);
        let mut st = entry.lock();
        if st.extent_gen == generation {
            st.extents = Some(window.clone());
        }
        Ok((window, guard_dir))
    }

    /// Buffers `data` at `offset` of file `ino` (handle `fh`) and returns its length.
    ///
    /// If the file's buffer or the mount's total would pass its bound, buffered bytes are
    /// flushed first; if that flush fails, the write fails (and buffers nothing).
    pub async fn write(&self, ino: Ino, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let written = self.check_write(ino, fh, offset, data)?;
        let entry = self.inode_entry_or_new(ino);
        self.make_room(ino, &entry, u64::from(written)).await?;
        self.buffer_write(ino, &entry, offset, data);
        Ok(written)
    }

    /// Checks a write of `data` at `offset` through handle `fh`; its length.
    pub(super) fn check_write(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, FsError> {
        self.check_file(ino, fh)?;
        let written = u32::try_from(data.len())
            .map_err(|_| FsError::code(ErrorCode::InvalidArgument, "write larger than 4 GiB"))?;
        if offset
            .checked_add(u64::from(written))
            .is_none_or(|end| end > FILE_MAX_BYTES)
        {
            return Err(FsError::code(
                ErrorCode::FileTooBig,
                "write past the largest file size",
            ));
        }
        Ok(written)
    }

    /// True if `len` more bytes fit under the per-file and the total bound of buffered
    /// bytes (no flush needed first).
    pub(super) fn has_room(&self, entry: &InodeEntry, len: u64) -> bool {
        entry.lock().held_bytes() + len <= self.config.dirty_max_bytes
            && self.dirty_total_bytes() + len <= self.config.dirty_total_max_bytes
    }

    /// Buffers `data` at `offset` (room was made) and queues whole chunks behind the
    /// writer.
    pub(super) fn buffer_write(&self, ino: Ino, entry: &InodeEntry, offset: u64, data: &[u8]) {
        let mut st = entry.lock();
        let before = st.held_bytes();
        st.dirty.write(offset, data);
        self.account(before, st.held_bytes());
        // Whole chunks go behind the writer (see `write_behind`); one request at a time.
        if !st.write_behind_queued
            && st.flushing.is_none()
            && st.dirty.full_blocks_at(offset, CHUNK_MAX_BYTES as u64) >= WRITE_BEHIND_MIN_CHUNKS
        {
            st.write_behind_queued = self.write_behind.request(ino);
        }
    }

    /// A write to a file opened with O_APPEND: the bytes go at the end of the file as the
    /// cluster knows it now (plus this mount's buffered bytes), not at the offset the
    /// kernel chose from its cached size, which another mount may have outgrown. Under a
    /// lock (Monolog's `flock` + append) this appends after the previous holder's lines.
    /// Appends of this mount are serialized with each other and with flushes.
    pub async fn write_append(&self, ino: Ino, fh: u64, data: &[u8]) -> Result<u32, FsError> {
        self.check_file(ino, fh)?;
        let written = u32::try_from(data.len())
            .map_err(|_| FsError::code(ErrorCode::InvalidArgument, "write larger than 4 GiB"))?;
        // The end of the file is asked of the group, which must know the file.
        self.settle_pending(ino).await?;
        let entry = self.inode_entry_or_new(ino);
        {
            let _no_flush = entry.flush_lock.lock().await;
            let committed = match self.client.query(MetaQuery::GetAttr { ino }).await? {
                MetaReply::Attr(a) => a.size,
                other => return Err(super::unexpected("GetAttr", &other)),
            };
            let mut st = entry.lock();
            let offset = committed.max(st.dirty_end().unwrap_or(0));
            if offset
                .checked_add(u64::from(written))
                .is_none_or(|end| end > FILE_MAX_BYTES)
            {
                return Err(FsError::code(
                    ErrorCode::FileTooBig,
                    "append past the largest file size",
                ));
            }
            let before = st.held_bytes();
            st.dirty.write(offset, data);
            self.account(before, st.held_bytes());
        }
        self.make_room(ino, &entry, 0).await?;
        Ok(written)
    }

    /// Flushes until `len` more bytes fit under the per-file and the total bound. For the
    /// file's own bound the whole chunks go first (a flush behind the writer may be
    /// storing some already: this waits for it), and only then everything.
    async fn make_room(&self, ino: Ino, entry: &Arc<InodeEntry>, len: u64) -> Result<(), FsError> {
        let over =
            |entry: &InodeEntry| entry.lock().held_bytes() + len > self.config.dirty_max_bytes;
        if over(entry) {
            self.flush_whole_chunks(ino, entry).await?;
            if over(entry) {
                self.flush_entry(ino, entry, CommitWait::Committed).await?;
            }
        }
        for _ in 0..TOTAL_FLUSH_ROUNDS_MAX {
            if self.dirty_total_bytes() + len <= self.config.dirty_total_max_bytes {
                break;
            }
            let Some((victim, victim_entry)) = self.fullest_inode() else {
                break;
            };
            self.flush_entry(victim, &victim_entry, CommitWait::Committed)
                .await?;
        }
        Ok(())
    }

    /// The inode holding the most buffered bytes, if any holds some.
    fn fullest_inode(&self) -> Option<(Ino, Arc<InodeEntry>)> {
        lock(&self.inodes)
            .iter()
            .map(|(ino, entry)| (entry.lock().held_bytes(), *ino, entry.clone()))
            .filter(|(held, _, _)| *held > 0)
            .max_by_key(|(held, _, _)| *held)
            .map(|(_, ino, entry)| (ino, entry))
    }

    /// Commits the bytes buffered for `ino` (FUSE flush, on every close). A file this
    /// mount created under a held directory may instead be queued for the directory's
    /// next batch (close-behind, see `dir_delegation`); everything else is committed.
    pub async fn flush(&self, ino: Ino) -> Result<(), FsError> {
        match self.inode_entry(ino) {
            Some(entry) => self.flush_entry(ino, &entry, CommitWait::Queued).await,
            None => self.queued_close(ino).await,
        }
    }

    /// Commits the bytes buffered for `ino` and waits for it: once this returns, the
    /// chunks are stored and the extents committed by a majority of the metadata group.
    pub async fn flush_durable(&self, ino: Ino) -> Result<(), FsError> {
        match self.inode_entry(ino) {
            Some(entry) => self.flush_entry(ino, &entry, CommitWait::Committed).await,
            None => self.settle_pending(ino).await,
        }
    }

    /// Makes `ino`'s written bytes durable (fsync(2)), a file created here included.
    pub async fn fsync(&self, ino: Ino) -> Result<(), FsError> {
        self.flush_durable(ino).await
    }

    /// Closes file handle `fh` of `ino`: commits buffered bytes, and reaps the inode if it
    /// was orphaned and this was its last handle. If the commit fails the bytes stay
    /// buffered (a later flush retries) and the error is returned.
    pub async fn release(&self, ino: Ino, fh: u64) -> Result<(), FsError> {
        self.check_file(ino, fh)?;
        self.forget_handle(fh);
        let result = self.flush(ino).await;
        if let Err(e) = &result {
            warn!(ino, error = %e, "flush at release failed; the bytes stay buffered");
        }
        self.close_inode(ino).await;
        result
    }

    /// fallocate(2) mode 0: makes the file at least `offset + len` bytes long.
    pub async fn fallocate(&self, ino: Ino, offset: u64, len: u64) -> Result<(), FsError> {
        let want = offset
            .checked_add(len)
            .filter(|end| *end <= FILE_MAX_BYTES)
            .ok_or_else(|| FsError::code(ErrorCode::FileTooBig, "past the largest file size"))?;
        if want > self.getattr(ino).await?.size {
            let set = SetAttr {
                size: Some(want),
                ..SetAttr::default()
            };
            self.setattr(ino, set).await?;
        }
        Ok(())
    }

    /// Commits every inode's buffered bytes and waits for the orphan reaps running in the
    /// background (at unmount). Returns the first error after trying them all.
    pub async fn flush_all(&self) -> Result<(), FsError> {
        let result = self.flush_every_inode().await;
        let given_back = self.give_back_all_dirs().await;
        self.reaps_finished().await;
        result.and(given_back)
    }

    /// Commits every inode's buffered bytes; the first error after trying them all.
    async fn flush_every_inode(&self) -> Result<(), FsError> {
        let entries: Vec<(Ino, Arc<InodeEntry>)> = lock(&self.inodes)
            .iter()
            .map(|(ino, entry)| (*ino, entry.clone()))
            .collect();
        let mut first_error = None;
        for (ino, entry) in entries {
            if let Err(e) = self.flush_entry(ino, &entry, CommitWait::Committed).await {
                warn!(ino, error = %e, "flush failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Drops buffered bytes of `entry` at or past `size`.
    pub(super) fn trim_dirty(&self, entry: &InodeEntry, size: u64) {
        let mut st = entry.lock();
        let before = st.held_bytes();
        st.dirty.truncate(size);
        self.account(before, st.held_bytes());
    }

    /// Flushes `ino` under its flush lock, then forgets its state if it became idle.
    pub(super) async fn flush_entry(
        &self,
        ino: Ino,
        entry: &Arc<InodeEntry>,
        wait: CommitWait,
    ) -> Result<(), FsError> {
        let guard = entry.flush_lock.lock().await;
        let result = self.flush_locked(ino, entry, wait).await;
        drop(guard);
        self.forget_if_idle(ino);
        result
    }

    /// Flushes only the whole aligned chunks buffered for `ino` (see `write_behind`),
    /// under its flush lock.
    pub(super) async fn flush_whole_chunks(
        &self,
        ino: Ino,
        entry: &Arc<InodeEntry>,
    ) -> Result<(), FsError> {
        let guard = entry.flush_lock.lock().await;
        let result = match begin_flush(self, entry, FlushScope::WholeChunks) {
            Some(snapshot) => {
                self.flush_snapshot(ino, entry, snapshot, CommitWait::Committed)
                    .await
            }
            None => Ok(()),
        };
        drop(guard);
        self.forget_if_idle(ino);
        result
    }

    /// The flush itself; the caller holds `entry.flush_lock`.
    ///
    /// The dirty bytes move to `flushing` (new writes start a fresh buffer), are cut into
    /// chunks, uploaded, and committed as extents. Only then are they dropped; on failure
    /// they go back under the newer writes.
    pub(super) async fn flush_locked(
        &self,
        ino: Ino,
        entry: &InodeEntry,
        wait: CommitWait,
    ) -> Result<(), FsError> {
        match begin_flush(self, entry, FlushScope::All) {
            Some(snapshot) => self.flush_snapshot(ino, entry, snapshot, wait).await,
            // A file created here with no bytes is still committed (or queued).
            None => self.commit_created(ino, Vec::new(), wait).await.map(|_| ()),
        }
    }

    /// The close of a file created here, in the kernel request's thread: its buffered
    /// bytes (all small enough to go inline, one `Write`) are queued with its create for
    /// the directory's next batch. False: nothing was done, or the close must wait for
    /// the commit after all (take [`Self::flush`]).
    pub(super) fn queue_close(&self, ino: Ino) -> bool {
        let Some(entry) = self.inode_entry(ino) else {
            return false;
        };
        let Ok(flush_guard) = entry.flush_lock.try_lock() else {
            return false;
        };
        // Checked under the flush lock: a file is only ever queued under it, so it stays
        // unqueued (and its bytes go with its create) until this returns.
        if !self.close_may_queue(ino) {
            return false;
        }
        // One `Write` of inline bytes (as `write_batches` would cut it).
        let inline_only = {
            let st = entry.lock();
            let pieces = st.dirty.pieces(CHUNK_MAX_BYTES as u64);
            st.flushing.is_none()
                && st.dirty.total_bytes() <= INLINE_BATCH_MAX_BYTES as u64
                && pieces.len() <= WRITE_EXTENTS_MAX
                && pieces
                    .iter()
                    .all(|p| p.len <= INLINE_CHUNK_MAX_BYTES as u64)
        };
        if !inline_only || !matches!(self.write_session(ino), Ok(None)) {
            return false;
        }
        let snapshot = begin_flush(self, &entry, FlushScope::All);
        let stored = snapshot.as_deref().map(inline_extents).unwrap_or_default();
        let batches = write_batches(&stored);
        let writes = batches.iter().map(|b| self.batch_write(ino, b)).collect();
        // Holding the flush lock of a pending, unqueued file: nobody else can queue or
        // commit it, so this queues it with its bytes (`Done` or `Wait`, never
        // `WaitThenOrdinary`, which only an already queued file gets).
        let next = self.queue_created(ino, writes, CommitWait::Queued);
        let result = match next {
            Some(_) => Ok(()),
            None => Err(FsError::code(ErrorCode::Io, "file was not pending")),
        };
        if let Some(snapshot) = snapshot {
            self.finish_flush(ino, &entry, snapshot, &result);
        }
        if result.is_ok() {
            self.remember_inline(&stored);
        }
        drop(flush_guard);
        self.forget_if_idle(ino);
        next.is_some_and(|n| n.is_done())
    }

    /// Stores and commits `snapshot` (already moved to `flushing`), then settles it.
    async fn flush_snapshot(
        &self,
        ino: Ino,
        entry: &InodeEntry,
        snapshot: Arc<DirtyBuffer>,
        wait: CommitWait,
    ) -> Result<(), FsError> {
        let result = self.upload_and_commit(ino, &snapshot, wait).await;
        self.finish_flush(ino, entry, snapshot, &result);
        result
    }

    /// Settles a flush: drops the flushed bytes on success, restores them on failure (or
    /// drops them if the file no longer exists), and forgets the cached extents.
    fn finish_flush(
        &self,
        ino: Ino,
        entry: &InodeEntry,
        snapshot: Arc<DirtyBuffer>,
        result: &Result<(), FsError>,
    ) {
        let mut st = entry.lock();
        let before = st.held_bytes();
        st.flushing = None;
        match result {
            Ok(()) => debug!(ino, bytes = snapshot.total_bytes(), "flushed"),
            Err(e) if e.is_gone() => {
                warn!(ino, error = %e, "file no longer exists; dropping its buffered bytes");
                st.dirty = DirtyBuffer::new();
            }
            Err(_) => {
                let newer = std::mem::take(&mut st.dirty);
                let mut restored = Arc::unwrap_or_clone(snapshot);
                restored.absorb_newer(&newer);
                st.dirty = restored;
            }
        }
        // Even a failed flush may have committed some of its extents.
        st.invalidate_extents();
        self.account(before, st.held_bytes());
    }

    /// Stores the pieces of `snapshot` (small ones inline, the rest as chunks on data
    /// nodes) and commits their extents in `Write` ops of at most [`WRITE_EXTENTS_MAX`]
    /// extents and [`INLINE_BATCH_MAX_BYTES`] of inline bytes.
    async fn upload_and_commit(
        &self,
        ino: Ino,
        snapshot: &Arc<DirtyBuffer>,
        wait: CommitWait,
    ) -> Result<(), FsError> {
        let session = self.write_session(ino)?;
        let stored = self.upload(snapshot).await?;
        let batches = write_batches(&stored);
        if self.pending_dir(ino).is_some() {
            // Created here: its create and (if they fit one batch) its bytes in one commit.
            let fits = batches.len() == 1;
            let (writes, wait) = if fits {
                (
                    batches.iter().map(|b| self.batch_write(ino, b)).collect(),
                    wait,
                )
            } else {
                // The ordinary writes below need the file committed first.
                (Vec::new(), CommitWait::Committed)
            };
            if self.commit_created(ino, writes, wait).await? && fits {
                self.remember_inline(&stored);
                return Ok(());
            }
        }
        for batch in batches {
            let (extents, under_replicated, inline) = write_parts(batch);
            self.commit_attr_change(MetaOp::Write {
                ino,
                extents,
                under_replicated,
                session,
                mount_session: self.asker(),
                inline: inline.iter().map(|(_, b)| b.to_vec()).collect(),
            })
            .await?;
            for (id, body) in inline {
                self.chunks.remember(id, body.clone());
            }
        }
        Ok(())
    }

    /// One batch of a flush as an op of a `DirBatch`.
    fn batch_write(&self, ino: Ino, batch: &[(Extent, Stored)]) -> DirBatchOp {
        let (extents, under_replicated, inline) = write_parts(batch);
        DirBatchOp::Write {
            ino,
            extents,
            under_replicated,
            inline: inline.iter().map(|(_, b)| b.to_vec()).collect(),
        }
    }

    /// Keeps the inline bodies of a committed flush in the chunk cache.
    fn remember_inline(&self, stored: &[(Extent, Stored)]) {
        for (e, s) in stored {
            if let Stored::Inline(body) = s {
                self.chunks.remember(e.chunk, body.clone());
            }
        }
    }

    /// Stores every piece of `snapshot`: pieces of at most [`INLINE_CHUNK_MAX_BYTES`] are
    /// only hashed (they travel inline with the commit), larger ones are uploaded as chunks,
    /// [`PUT_IN_FLIGHT_MAX`] at a time. Returns the extents in offset order.
    async fn upload(&self, snapshot: &Arc<DirtyBuffer>) -> Result<Vec<(Extent, Stored)>, FsError> {
        let pieces = snapshot.pieces(CHUNK_MAX_BYTES as u64);
        let mut extents = Vec::with_capacity(pieces.len());
        let mut set = JoinSet::new();
        let mut queue = pieces.into_iter();
        loop {
            while set.len() < PUT_IN_FLIGHT_MAX {
                let Some(piece) = queue.next() else { break };
                let data = snapshot
                    .piece_bytes(piece)
                    .ok_or_else(|| FsError::code(ErrorCode::Io, "flush piece outside its buffer"))?
                    .to_vec();
                let extent = move |chunk| piece_extent(piece, chunk);
                if data.len() <= INLINE_CHUNK_MAX_BYTES {
                    extents.push((extent(ChunkId::of(&data)), Stored::Inline(Arc::new(data))));
                    continue;
                }
                let chunks = self.chunks.clone();
                set.spawn(async move {
                    let stored = chunks.put(data).await?;
                    Ok::<_, FsError>((extent(stored.id), Stored::Nodes(stored)))
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let extent = joined.map_err(|e| {
                FsError::code(ErrorCode::Io, format!("chunk upload task failed: {e}"))
            })??;
            extents.push(extent);
        }
        extents.sort_by_key(|(e, _)| e.file_offset);
        Ok(extents)
    }
}

/// The extent of a flushed piece stored as `chunk`.
fn piece_extent(piece: Piece, chunk: ChunkId) -> Extent {
    Extent {
        file_offset: piece.file_offset,
        len: piece.len,
        chunk,
        chunk_offset: 0,
    }
}

/// The pieces of `snapshot` as inline extents (the caller checked they are all small
/// enough), in offset order.
fn inline_extents(snapshot: &DirtyBuffer) -> Vec<(Extent, Stored)> {
    snapshot
        .pieces(CHUNK_MAX_BYTES as u64)
        .into_iter()
        .filter_map(|piece| {
            let data = snapshot.piece_bytes(piece)?.to_vec();
            Some((
                piece_extent(piece, ChunkId::of(&data)),
                Stored::Inline(Arc::new(data)),
            ))
        })
        .collect()
}

/// The windows a read in `window` ending at `end` should start fetching ahead: the next
/// [`READ_AHEAD_WINDOWS`] not fetched ahead yet, if the reader looks sequential (it
/// reached the second half of the window, or this window was itself read ahead).
fn read_ahead_starts(st: &InodeData, window: &ExtentWindow, end: u64) -> Vec<u64> {
    let sequential = end >= window.start + EXTENT_WINDOW_BYTES / 2
        || st.read_ahead_from.is_some_and(|from| from >= window.start);
    if !sequential {
        return Vec::new();
    }
    (0..READ_AHEAD_WINDOWS)
        .map(|k| window.end + k * EXTENT_WINDOW_BYTES)
        .take_while(|start| *start < window.size)
        .filter(|start| st.read_ahead_from.is_none_or(|from| from < *start))
        .collect()
}

/// Where a flushed piece's bytes went.
enum Stored {
    /// Uploaded to data nodes.
    Nodes(StoredChunk),
    /// Small enough to travel with the commit and live in the metadata group.
    Inline(ChunkData),
}

/// The parts of the `Write` of one batch: its extents, the placed copies not acknowledged
/// by now (they go into the heal index with the commit), and its inline bodies, each once.
fn write_parts(
    batch: &[(Extent, Stored)],
) -> (Vec<Extent>, Vec<MissingCopy>, Vec<(ChunkId, &ChunkData)>) {
    let mut under_replicated: Vec<MissingCopy> = batch
        .iter()
        .filter_map(|(_, s)| match s {
            Stored::Nodes(chunk) => Some(chunk.missing()),
            Stored::Inline(_) => None,
        })
        .flatten()
        .collect();
    under_replicated.sort_by_key(|m| (m.node, m.chunk));
    under_replicated.dedup_by_key(|m| (m.node, m.chunk));
    let mut inline: Vec<(ChunkId, &ChunkData)> = batch
        .iter()
        .filter_map(|(e, s)| match s {
            Stored::Inline(body) => Some((e.chunk, body)),
            Stored::Nodes(_) => None,
        })
        .collect();
    inline.sort_by_key(|(id, _)| *id);
    inline.dedup_by_key(|(id, _)| *id);
    (
        batch.iter().map(|(e, _)| *e).collect(),
        under_replicated,
        inline,
    )
}

/// Cuts a flush's extents into `Write` batches of at most [`WRITE_EXTENTS_MAX`] extents and
/// [`INLINE_BATCH_MAX_BYTES`] of inline bodies.
fn write_batches(stored: &[(Extent, Stored)]) -> Vec<&[(Extent, Stored)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut inline_bytes = 0usize;
    for (i, (_, s)) in stored.iter().enumerate() {
        let bytes = match s {
            Stored::Inline(body) => body.len(),
            Stored::Nodes(_) => 0,
        };
        let full = i - start >= WRITE_EXTENTS_MAX
            || (i > start && inline_bytes.saturating_add(bytes) > INLINE_BATCH_MAX_BYTES);
        if full {
            out.push(&stored[start..i]);
            start = i;
            inline_bytes = 0;
        }
        inline_bytes = inline_bytes.saturating_add(bytes);
    }
    if start < stored.len() {
        out.push(&stored[start..]);
    }
    out
}

/// Which buffered bytes a flush takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushScope {
    /// Every dirty byte (close, fsync, the bounds).
    All,
    /// Only whole aligned chunks (write-behind).
    WholeChunks,
}

/// Moves the dirty bytes of `entry` in `scope` to `flushing` and returns them, if there
/// are any. The caller holds the flush lock, so nothing is being flushed yet.
fn begin_flush(fs: &PlaitFs, entry: &InodeEntry, scope: FlushScope) -> Option<Arc<DirtyBuffer>> {
    let mut st = entry.lock();
    // Flushes of one inode are serialized, so bytes still marked as flushing belong to a
    // flush that was cancelled half-way: they were never settled, so they are dirty again
    // (under anything written since).
    if let Some(stale) = st.flushing.take() {
        let before = st.held_bytes() + stale.total_bytes();
        let newer = std::mem::take(&mut st.dirty);
        let mut restored = Arc::unwrap_or_clone(stale);
        restored.absorb_newer(&newer);
        st.dirty = restored;
        fs.account(before, st.held_bytes());
    }
    st.write_behind_queued = false;
    let taken = match scope {
        FlushScope::All => std::mem::take(&mut st.dirty),
        FlushScope::WholeChunks => st.dirty.take_full_blocks(CHUNK_MAX_BYTES as u64),
    };
    if taken.is_empty() {
        return None;
    }
    let snapshot = Arc::new(taken);
    st.flushing = Some(snapshot.clone());
    Some(snapshot)
}

/// The extents of `[start, end)` of `ino`, asking again from the end of the last extent
/// while the service returns full pages (it caps the extents per reply), and the
/// directory guarding the file's content (from the last answer).
async fn fetch_window(
    client: &ClusterClient,
    ino: Ino,
    start: u64,
    end: u64,
) -> Result<(ExtentWindow, Option<Ino>), FsError> {
    let mut extents: Vec<Extent> = Vec::new();
    let mut inline: HashMap<ChunkId, ChunkData> = HashMap::new();
    let mut cursor = start;
    loop {
        let reply = client
            .query(MetaQuery::Extents {
                ino,
                offset: cursor,
                len: end - cursor,
            })
            .await?;
        let MetaReply::Extents {
            attr,
            extents: page,
            inline: bodies,
            guard_dir,
        } = reply
        else {
            return Err(unexpected("Extents", &reply));
        };
        // Named by hashing, so a body is only ever used as the bytes of its own id.
        for body in bodies {
            inline.insert(ChunkId::of(&body), Arc::new(body));
        }
        let next = page.last().map_or(cursor, Extent::end);
        extents.extend(page.into_iter().filter(|e| e.end() > cursor));
        if next <= cursor || next >= end || next >= attr.size {
            let window = ExtentWindow {
                start,
                end,
                size: attr.size,
                extents,
                inline,
            };
            return Ok((window, guard_dir));
        }
        cursor = next;
    }
}
