//! Write-behind: a file written sequentially has its whole chunks stored and committed
//! while the writer goes on filling the next ones, instead of all at once when it closes
//! or passes the dirty bound. Without it a large write alternates between filling the
//! buffer and waiting for the whole buffer's upload; with it the upload runs the whole
//! time and the writer only waits when it gets a full buffer ahead of the upload.
//!
//! Only whole aligned chunks go early ([`DirtyBuffer::take_full_blocks`]), so a file
//! written sequentially is stored as the same chunks as if it were flushed at close, and
//! the tail is left for the close. A flush behind the writer is an ordinary flush of those
//! bytes: it takes the inode's flush lock (so flushes of one file commit in order), keeps
//! the bytes readable while it runs, and on failure puts them back under any newer writes,
//! so the next flush (the close, or `fsync`) retries them and reports the error.
//!
//! [`DirtyBuffer::take_full_blocks`]: super::DirtyBuffer::take_full_blocks

use std::sync::{Arc, Mutex};

use plait_proto::{CHUNK_MAX_BYTES, Ino};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use super::{PlaitFs, lock};

/// Inodes waiting for a flush behind their writer; past it a writer's request is dropped
/// (it asks again after its next write once the queue drains).
pub(crate) const WRITE_BEHIND_QUEUE_MAX: usize = 64;

/// Flushes behind writers running at once across the mount (each one uploads up to
/// `PUT_IN_FLIGHT_MAX` chunks at a time).
pub(crate) const WRITE_BEHIND_FLUSHES_MAX: usize = 2;

/// Flushes one request runs back to back while the writer keeps completing chunks.
pub(crate) const WRITE_BEHIND_ROUNDS_MAX: usize = 64;

/// Whole chunks a file must have buffered in one range before they are flushed behind
/// its writer.
pub(crate) const WRITE_BEHIND_MIN_CHUNKS: u64 = 1;

/// The queue between writers and [`PlaitFs::serve_write_behind`].
#[derive(Debug)]
pub(crate) struct WriteBehind {
    tx: mpsc::Sender<Ino>,
    /// Taken by the one task that serves the queue.
    rx: Mutex<Option<mpsc::Receiver<Ino>>>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(WRITE_BEHIND_QUEUE_MAX);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl WriteBehind {
    /// Queues a flush of `ino`'s whole chunks; false if the queue is full.
    pub(crate) fn request(&self, ino: Ino) -> bool {
        self.tx.try_send(ino).is_ok()
    }
}

impl PlaitFs {
    /// Serves the write-behind queue until the mount ends (run as a task): flushes the
    /// whole chunks of each queued inode, at most [`WRITE_BEHIND_FLUSHES_MAX`] at once.
    /// Without this task nothing is flushed early: writes are flushed at close, at
    /// `fsync` and when a dirty bound is passed, as before.
    pub async fn serve_write_behind(self: Arc<Self>) {
        let Some(mut queue) = lock(&self.write_behind.rx).take() else {
            warn!("write-behind is already served by another task");
            return;
        };
        let slots = Arc::new(Semaphore::new(WRITE_BEHIND_FLUSHES_MAX));
        while let Some(ino) = queue.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let fs = self.clone();
            // Not tied to this task: a flush that started finishes even when the serving
            // task is stopped, so its bytes are never left half-way.
            tokio::spawn(async move {
                fs.flush_behind(ino).await;
                drop(slot);
            });
        }
    }

    /// Flushes the whole chunks buffered for `ino`, and again while the writer completed
    /// more meanwhile (its writes do not queue a request while a flush runs), at most
    /// [`WRITE_BEHIND_ROUNDS_MAX`] times; what is left waits for the next request or the
    /// close.
    async fn flush_behind(&self, ino: Ino) {
        for _ in 0..WRITE_BEHIND_ROUNDS_MAX {
            let Some(entry) = self.inode_entry(ino) else {
                return;
            };
            if let Err(e) = self.flush_whole_chunks(ino, &entry).await {
                warn!(ino, error = %e, "flush behind the writer failed; the next flush retries");
                return;
            }
            debug!(ino, "flushed behind the writer");
            if !entry.lock().dirty.has_full_block(CHUNK_MAX_BYTES as u64) {
                return;
            }
        }
    }
}
