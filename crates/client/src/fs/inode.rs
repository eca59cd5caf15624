//! Per-inode state of a mount: open handle count, write buffers, the cached extent window
//! and a pending reap. Exists while the inode is open here or still holds dirty bytes.

use std::sync::{Arc, Mutex, MutexGuard};

use super::dirty::DirtyBuffer;
use super::extents::ExtentWindow;

/// The state of one inode, shared by the tasks serving it.
#[derive(Debug, Default)]
pub(crate) struct InodeEntry {
    /// Everything but the flush lock; held only briefly, never across an await.
    state: Mutex<InodeData>,
    /// Serializes flushes (and truncation, which must not race one) of this inode.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
}

impl InodeEntry {
    /// Locks the state (a poisoned lock is recovered: the data stays consistent because
    /// every critical section is a few plain assignments).
    pub(crate) fn lock(&self) -> MutexGuard<'_, InodeData> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The mutable part of [`InodeEntry`].
#[derive(Debug, Default)]
pub(crate) struct InodeData {
    /// Open file handles of this mount on the inode.
    pub(crate) open_handles: u32,
    /// When this mount created the inode, if it did and has not changed its extended
    /// attributes since: it then had none (see [`crate::fs::PlaitFs::getxattr`]).
    pub(crate) created_here_at: Option<std::time::Instant>,
    /// The inode was orphaned (unlinked) while open: reap it at the last release.
    pub(crate) reap_on_last_release: bool,
    /// Bytes written and not yet being flushed.
    pub(crate) dirty: DirtyBuffer,
    /// Bytes a flush is uploading and committing right now.
    pub(crate) flushing: Option<Arc<DirtyBuffer>>,
    /// A flush of whole chunks behind the writer is queued (see
    /// [`crate::fs::PlaitFs::serve_write_behind`]); cleared when any flush starts.
    pub(crate) write_behind_queued: bool,
    /// The last extent window a read fetched, valid until `extent_gen` changes.
    pub(crate) extents: Option<Arc<ExtentWindow>>,
    /// Bumped whenever the committed extents may have changed (open, flush, truncate);
    /// a read only caches a window if the generation did not move while it fetched it.
    pub(crate) extent_gen: u64,
    /// Start of the furthest window a read-ahead was started for (see
    /// [`crate::fs::PlaitFs::read`]): each window is fetched ahead once.
    pub(crate) read_ahead_from: Option<u64>,
}

impl InodeData {
    /// Buffered bytes, dirty and being flushed (what counts against the dirty bounds).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.dirty.total_bytes() + self.flushing.as_ref().map_or(0, |f| f.total_bytes())
    }

    /// One past the last buffered byte, if any.
    pub(crate) fn dirty_end(&self) -> Option<u64> {
        let flushing = self.flushing.as_ref().and_then(|f| f.end());
        self.dirty.end().max(flushing)
    }

    /// True if nothing is buffered or being flushed.
    pub(crate) fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.flushing.is_none()
    }

    /// Forgets the cached extents; reads fetch them again.
    pub(crate) fn invalidate_extents(&mut self) {
        self.extents = None;
        self.read_ahead_from = None;
        self.extent_gen = self.extent_gen.wrapping_add(1);
    }

    /// The buffered bytes of `[offset, offset + len)`, newest winning, as a standalone
    /// buffer a read can overlay without holding the lock.
    pub(crate) fn overlay_for(&self, offset: u64, len: u64) -> DirtyBuffer {
        let mut out = match &self.flushing {
            Some(f) => f.copy_range(offset, len),
            None => DirtyBuffer::new(),
        };
        if !self.dirty.is_empty() {
            out.absorb_newer(&self.dirty.copy_range(offset, len));
        }
        out
    }
}
