//! [`DirListing`]: the snapshot of a directory that one open directory handle serves.

use plait_proto::{DirEntry, Ino};

/// A directory's entries as listed at `opendir`, served by position: 0 is `.`, 1 is `..`,
/// `i + 2` is `entries[i]`. Offsets handed to the kernel are positions + 1, so a
/// `readdir` that resumes at an offset continues exactly where the last one stopped, even
/// if the directory changed in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirListing {
    /// The listed directory.
    pub ino: Ino,
    /// Its parent (itself for the volume root).
    pub parent: Ino,
    /// Entries in name order, with their attributes (for READDIRPLUS).
    pub entries: Vec<DirEntry>,
}

/// One position of a [`DirListing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSlot<'a> {
    /// `.`: the directory itself.
    Dot(Ino),
    /// `..`: the parent directory.
    DotDot(Ino),
    /// A real entry.
    Entry(&'a DirEntry),
}

impl DirListing {
    /// Number of positions, `.` and `..` included.
    pub fn len(&self) -> usize {
        self.entries.len() + 2
    }

    /// Never empty: `.` and `..` are always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The entry at `position`, if any.
    pub fn slot(&self, position: usize) -> Option<DirSlot<'_>> {
        match position {
            0 => Some(DirSlot::Dot(self.ino)),
            1 => Some(DirSlot::DotDot(self.parent)),
            n => self.entries.get(n - 2).map(DirSlot::Entry),
        }
    }
}

/// A directory entry of a regular file of `size_bytes` with otherwise fixed attributes
/// (for tests of the listing and statahead code).
#[cfg(test)]
pub(crate) fn file_entry(name: &str, ino: Ino, size_bytes: u64) -> DirEntry {
    use plait_proto::{Attr, FileKind, Timestamp};
    DirEntry {
        name: name.as_bytes().to_vec(),
        attr: Attr {
            ino,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: size_bytes,
            allocated_bytes: size_bytes,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: Ino) -> DirEntry {
        file_entry(name, ino, 0)
    }

    #[test]
    fn positions_start_with_dot_and_dotdot() {
        let l = DirListing {
            ino: 5,
            parent: 2,
            entries: vec![entry("a", 10), entry("b", 11)],
        };
        assert_eq!(l.len(), 4);
        assert_eq!(l.slot(0), Some(DirSlot::Dot(5)));
        assert_eq!(l.slot(1), Some(DirSlot::DotDot(2)));
        assert!(matches!(l.slot(2), Some(DirSlot::Entry(e)) if e.name == b"a"));
        assert!(matches!(l.slot(3), Some(DirSlot::Entry(e)) if e.attr.ino == 11));
        assert_eq!(l.slot(4), None);
    }
}
