//! Answers the FUSE adapter gives in the kernel request's own thread, without a hop to
//! the async runtime (two context switches and a wake-up each: on a small-file create
//! run they were most of the mount's CPU). Each is the common case of an async
//! operation that needs no request: lookups, attributes and creates in a directory this
//! mount holds, a write that fits the buffer, the close of a file created here, a
//! release with nothing left to do. `None` or `false` always means "take the async
//! operation", which handles every case; these never wait on anything but short locks.

use std::time::Instant;

use plait_proto::{Attr, Ino};

use super::{FsError, PlaitFs, check_name, no_xattr};

impl PlaitFs {
    /// A lookup answered by a held directory (found or not) or a fresh directory
    /// snapshot (found). `None`: ask [`Self::lookup`] (which also reports bad names).
    pub fn lookup_local(&self, parent: Ino, name: &[u8]) -> Option<Result<Attr, FsError>> {
        if matches!(name, b"." | b"..") || check_name(name).is_err() {
            return None;
        }
        if let Some(answer) = self.delegated_lookup(parent, name) {
            return Some(answer);
        }
        match self.statahead_answer(parent, name, Instant::now()) {
            Some(Ok(attr)) => Some(Ok(attr)),
            _ => None,
        }
    }

    /// Attributes this mount knows without asking: a held directory's, a file's created
    /// here and not committed. `None`: ask [`Self::getattr`].
    pub fn getattr_local(&self, ino: Ino) -> Option<Attr> {
        self.delegated_attr(ino)
    }

    /// An open of a file whose first window is kept under a held directory (see
    /// `held_windows`): no request. `None`: take [`Self::open`] (also for O_TRUNC, and for
    /// a file created here and not committed, or whose commit failed unreported).
    pub fn open_local(&self, ino: Ino, truncate: bool) -> Option<u64> {
        if truncate || self.pending_dir(ino).is_some() || self.has_failure(ino) {
            return None;
        }
        self.open_held(ino)
    }

    /// An xattr this mount knows is absent (ENODATA). `None`: ask [`Self::getxattr`].
    pub fn getxattr_local(&self, ino: Ino, name: &[u8]) -> Option<FsError> {
        (super::check_xattr_name(name).is_ok() && self.xattr_absent_here(ino, name))
            .then(|| no_xattr(name))
    }

    /// A write buffered at once when it fits the buffer bounds (no flush needed first).
    /// `None`: take [`Self::write`].
    pub fn write_local(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Option<Result<u32, FsError>> {
        let written = match self.check_write(ino, fh, offset, data) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let entry = self.inode_entry(ino)?;
        if !self.has_room(&entry, u64::from(written)) {
            return None;
        }
        self.buffer_write(ino, &entry, offset, data);
        Some(Ok(written))
    }

    /// The FLUSH of a file created here by an owner without locks: queued for the
    /// directory's next batch. False: take [`Self::flush`] (and the lock release).
    pub fn flush_local(&self, ino: Ino, owner: u64) -> bool {
        self.config.close_behind
            && self
                .with_idle_owner(ino, owner, || self.queue_close(ino))
                .unwrap_or(false)
    }

    /// A RELEASE with nothing to commit, no lock to drop and no orphan to reap. False:
    /// take [`Self::release`] (and the lock release).
    pub fn release_local(&self, ino: Ino, fh: u64, owner: Option<u64>) -> bool {
        let release = || {
            if self.check_file(ino, fh).is_err() || self.needs_queueing(ino) {
                return false;
            }
            if let Some(entry) = self.inode_entry(ino) {
                let Ok(_no_flush) = entry.flush_lock.try_lock() else {
                    return false;
                };
                {
                    let st = entry.lock();
                    if !st.is_clean() || (st.reap_on_last_release && st.open_handles <= 1) {
                        return false;
                    }
                }
                self.forget_handle(fh);
                let mut st = entry.lock();
                st.open_handles = st.open_handles.saturating_sub(1);
            } else {
                self.forget_handle(fh);
            }
            self.forget_if_idle(ino);
            true
        };
        match owner {
            Some(owner) => self.with_idle_owner(ino, owner, release).unwrap_or(false),
            None => release(),
        }
    }
}
