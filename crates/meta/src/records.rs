//! The values stored under each key type, and their encoding (the proto crate's bincode
//! codec). These types are private: the on-disk format is this crate's business.

use plait_proto::{Attr, ChunkId, FileKind, Ino, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{DIR_SIZE_BYTES, StoreError};

/// `InodeRec::parent` of a non-directory none of whose names is known to be in a
/// particular directory (inode numbers start at 1).
pub(crate) const NO_PARENT: Ino = 0;

/// An inode (`I` key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InodeRec {
    /// Object kind.
    pub kind: FileKind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    /// Hard links; for directories 2 + the number of subdirectories.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (character and block devices).
    pub rdev: u32,
    /// Size in bytes for files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// Sum of the lengths of this file's extents.
    pub allocated_bytes: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last attribute change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// For directories: the directory holding it (itself for a volume root). For other
    /// inodes: the directory of one of its names (the one it was created, last renamed or
    /// linked under), or [`NO_PARENT`] once that name was removed while others remain.
    /// Exact, not a hint: it names the directory whose delegation guards a file's content
    /// (`apply::dir_delegation`), and the paths shown by `plait lock list`.
    pub parent: Ino,
    /// For symlinks: the target. Empty otherwise.
    pub target: Vec<u8>,
    /// True for the root directory of a volume.
    pub volume_root: bool,
}

impl InodeRec {
    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// The attributes reported to the kernel.
    pub fn attr(&self, ino: Ino) -> Attr {
        let size = match self.kind {
            FileKind::Dir => DIR_SIZE_BYTES,
            _ => self.size,
        };
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            size,
            allocated_bytes: self.allocated_bytes,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
        }
    }

    /// The directory whose delegation guards this file's content: a name of it is there.
    /// `None` for other kinds and when no such directory is known.
    pub fn guard_dir(&self) -> Option<Ino> {
        (self.kind == FileKind::File && self.parent != NO_PARENT).then_some(self.parent)
    }

    /// Sets mtime and ctime to `now`, as any change to a directory's entries does.
    pub fn touch(&mut self, now: Timestamp) {
        self.mtime = now;
        self.ctime = now;
    }
}

/// A directory entry (`D` key): the child and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DentryRec {
    /// The child inode.
    pub ino: Ino,
    /// Its kind (kept so the entry can be checked against the inode).
    pub kind: FileKind,
}

impl DentryRec {
    /// True if the entry names a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

/// An extent (`E` key, which holds the inode and the file offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExtentRec {
    /// Length in bytes, > 0.
    pub len: u64,
    /// The chunk holding the bytes.
    pub chunk: ChunkId,
    /// Offset of the first byte inside the chunk.
    pub chunk_offset: u64,
}

/// A chunk kept in the metadata group (`B` key): its bytes and how many extents
/// reference it. Deleted when the count reaches zero (no garbage entry: no data node has
/// a copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InlineChunkRec {
    /// Extents referencing the chunk, > 0.
    pub refs: u64,
    /// The chunk's bytes, at most [`plait_proto::INLINE_CHUNK_MAX_BYTES`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A volume (`V` key, which holds the name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRec {
    /// Root directory inode.
    pub root: Ino,
    /// Copies of each chunk.
    pub replicas: u32,
    /// Acknowledgements required to commit a write.
    pub write_quorum: u32,
}

/// An orphan marker (`O` key): an inode whose last name is gone, kept until reaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrphanRec {
    /// When it lost its last link.
    pub since: Timestamp,
}

/// A heal-index entry (`H` key, which holds the node and the chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealRec {
    /// The chunk's size in bytes.
    pub size_bytes: u64,
    /// When the entry was recorded; also its version for `HealDone`.
    pub since: Timestamp,
}

/// Encodes a record. Our records are far below the codec's size limit, so a failure means
/// something is badly wrong; it is reported as corruption rather than a panic.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    plait_proto::encode(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

/// Decodes the record stored under `key`.
pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    plait_proto::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable value under key {key:02x?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> InodeRec {
        InodeRec {
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            allocated_bytes: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            parent: 1,
            target: Vec::new(),
            volume_root: true,
        }
    }

    #[test]
    fn inode_round_trips() {
        let rec = dir();
        let bytes = encode(&rec).unwrap();
        assert_eq!(decode::<InodeRec>(b"k", &bytes).unwrap(), rec);
    }

    #[test]
    fn dirs_report_one_block() {
        assert_eq!(dir().attr(1).size, DIR_SIZE_BYTES);
    }

    #[test]
    fn garbage_bytes_are_corrupt_not_panic() {
        for bytes in [&b""[..], &[0xff; 3][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9][..]] {
            assert!(matches!(
                decode::<InodeRec>(b"k", bytes),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
