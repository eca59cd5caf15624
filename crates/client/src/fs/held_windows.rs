//! Opens answered without a request: the first extent windows of files whose content a
//! directory this mount holds guards.
//!
//! While a session holds a directory, the group refuses every other session's content
//! change (`Write`, a size `SetAttr`) of a file whose guarding directory it is
//! (`plait_meta::apply::dir_delegation`): the change recalls the directory and waits for
//! it to be given back. So the first window of such a file, as this mount committed it
//! or fetched it while holding the directory, stays the committed one until this mount
//! changes the file itself or gives the directory back, and an open (close-to-open) can
//! take it instead of asking the group.
//!
//! Invariants: a window is only kept for a directory held (and not leaving) at the time
//! it was fetched and still held when it is kept ([`HeldWindows::epoch`] moves on every
//! grant, every give-back and every commit of this mount's own content changes, and a
//! window fetched across a move is dropped); a give-back drops the directory's windows
//! before anything is committed on its way out; a content change of this mount drops the
//! file's window once the change's outcome is known.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use plait_proto::Ino;

use super::extents::ExtentWindow;

/// Most windows kept across the mount.
pub(crate) const HELD_WINDOWS_MAX: usize = 65_536;

/// Most inline bytes the kept windows hold across the mount; past it a window is not
/// kept (its open asks the group).
pub(crate) const HELD_WINDOW_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Files whose own content change had an unknown outcome that the mount remembers; past
/// it no window is kept any more (for the mount's life).
pub(crate) const UNTRUSTED_MAX: usize = 4096;

/// Bytes a window is counted for besides its inline bodies (its extents and the entry).
const WINDOW_OVERHEAD_BYTES: usize = 128;

/// The kept windows.
#[derive(Debug, Default)]
pub(crate) struct HeldWindows {
    /// File → (its guarding directory, its first window).
    windows: HashMap<Ino, (Ino, Arc<ExtentWindow>)>,
    /// What `windows` holds, counted by [`cost_bytes`].
    held_bytes: usize,
    /// Moves whenever a fetched window may no longer be kept (see the module doc).
    epoch: u64,
    /// Files a change of this mount's may still reach the group for (its request failed
    /// with an unknown outcome): a window fetched now could be outdated by it later.
    untrusted: HashSet<Ino>,
    /// More files than [`UNTRUSTED_MAX`] were untrusted: nothing is kept any more.
    saturated: bool,
}

/// What a window is counted for.
fn cost_bytes(window: &ExtentWindow) -> usize {
    let inline: usize = window.inline.values().map(|b| b.len()).sum();
    let extents = window
        .extents
        .len()
        .saturating_mul(std::mem::size_of::<plait_proto::Extent>());
    inline
        .saturating_add(extents)
        .saturating_add(WINDOW_OVERHEAD_BYTES)
}

impl HeldWindows {
    /// The current epoch: take it before fetching a window that may be kept.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Something changed that windows fetched before now must not outlive.
    pub(crate) fn bump(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// The kept window of `ino` and its guarding directory.
    pub(crate) fn get(&self, ino: Ino) -> Option<(Ino, Arc<ExtentWindow>)> {
        self.windows.get(&ino).cloned()
    }

    /// Keeps `window` as `ino`'s, guarded by `dir`; false (nothing kept) if the epoch
    /// moved since `epoch` or a bound would be passed. The caller checked that `dir` is
    /// held.
    pub(crate) fn keep(
        &mut self,
        ino: Ino,
        dir: Ino,
        window: Arc<ExtentWindow>,
        epoch: u64,
    ) -> bool {
        debug_assert!(window.start == 0, "only first windows are kept");
        if epoch != self.epoch
            || window.start != 0
            || self.saturated
            || self.untrusted.contains(&ino)
        {
            return false;
        }
        self.forget(ino);
        let cost = cost_bytes(&window);
        if self.windows.len() >= HELD_WINDOWS_MAX
            || self.held_bytes.saturating_add(cost) > HELD_WINDOW_BYTES_MAX
        {
            return false;
        }
        self.held_bytes += cost;
        self.windows.insert(ino, (dir, window));
        true
    }

    /// A change of `ino`'s content by this mount may still be applied (its request
    /// failed without an answer): `ino`'s windows are never kept again.
    pub(crate) fn distrust(&mut self, ino: Ino) {
        self.forget(ino);
        if self.untrusted.len() < UNTRUSTED_MAX {
            self.untrusted.insert(ino);
        } else if !self.untrusted.contains(&ino) {
            self.saturated = true;
            let all: Vec<Ino> = self.windows.keys().copied().collect();
            for ino in all {
                self.forget(ino);
            }
        }
    }

    /// Drops `ino`'s window.
    pub(crate) fn forget(&mut self, ino: Ino) {
        if let Some((_, old)) = self.windows.remove(&ino) {
            self.held_bytes = self.held_bytes.saturating_sub(cost_bytes(&old));
        }
    }

    /// Drops the windows `dir` guards (it is being given back) and moves the epoch.
    pub(crate) fn forget_dir(&mut self, dir: Ino) {
        let mut freed = 0usize;
        self.windows.retain(|_, (d, w)| {
            let keep = *d != dir;
            if !keep {
                freed = freed.saturating_add(cost_bytes(w));
            }
            keep
        });
        self.held_bytes = self.held_bytes.saturating_sub(freed);
        self.bump();
    }

    /// Windows kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.windows.len()
    }

    /// Bytes counted now.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use plait_proto::{ChunkId, Extent};

    use super::*;

    fn window(body: &[u8]) -> Arc<ExtentWindow> {
        let id = ChunkId::of(body);
        Arc::new(ExtentWindow {
            start: 0,
            end: super::super::EXTENT_WINDOW_BYTES,
            size: body.len() as u64,
            extents: vec![Extent {
                file_offset: 0,
                len: body.len() as u64,
                chunk: id,
                chunk_offset: 0,
            }],
            inline: HashMap::from([(id, Arc::new(body.to_vec()))]),
        })
    }

    #[test]
    fn a_window_fetched_across_an_epoch_move_is_not_kept() {
        let mut w = HeldWindows::default();
        let before = w.epoch();
        w.bump();
        assert!(!w.keep(5, 1, window(b"old"), before));
        assert!(w.get(5).is_none());
        assert!(w.keep(5, 1, window(b"new"), w.epoch()));
        assert_eq!(w.get(5).map(|(d, win)| (d, win.size)), Some((1, 3)));
    }

    #[test]
    fn a_file_whose_change_had_no_answer_is_never_kept_again() {
        let mut w = HeldWindows::default();
        assert!(w.keep(5, 1, window(b"a"), w.epoch()));
        w.distrust(5);
        assert!(w.get(5).is_none());
        assert!(!w.keep(5, 1, window(b"b"), w.epoch()));
        assert!(w.keep(6, 1, window(b"c"), w.epoch()));
        for ino in 100..100 + UNTRUSTED_MAX as u64 {
            w.distrust(ino);
        }
        assert_eq!(w.len(), 0, "past the bound nothing is kept");
        assert!(!w.keep(7, 1, window(b"d"), w.epoch()));
    }

    #[test]
    fn giving_a_directory_back_drops_its_windows_and_their_bytes() {
        let mut w = HeldWindows::default();
        let e = w.epoch();
        assert!(w.keep(5, 1, window(b"aaaa"), e));
        assert!(w.keep(6, 1, window(b"bb"), e));
        assert!(w.keep(7, 2, window(b"c"), e));
        w.forget_dir(1);
        assert_eq!(w.len(), 1);
        assert!(w.get(7).is_some());
        assert_ne!(w.epoch(), e, "a give-back moves the epoch");
        w.forget(7);
        assert_eq!((w.len(), w.held_bytes()), (0, 0));
    }

    #[test]
    fn the_byte_bound_holds_and_replacing_a_window_recounts_it() {
        let mut w = HeldWindows::default();
        let e = w.epoch();
        let big = vec![7u8; HELD_WINDOW_BYTES_MAX / 2];
        assert!(w.keep(1, 9, window(&big), e));
        let mut other = big.clone();
        other[0] = 8;
        assert!(!w.keep(2, 9, window(&[other.as_slice(), b"x"].concat()), e));
        assert!(w.keep(1, 9, window(&other), e), "a replacement fits");
        assert_eq!(w.len(), 1);
        assert!(w.held_bytes() <= HELD_WINDOW_BYTES_MAX);
    }
}
