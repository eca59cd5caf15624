//! Conversions between Plait's wire types and the kernel's (fuser's) types: inode numbers,
//! attributes, times, file types, mknod modes, rename and xattr flags.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, RenameFlags, TimeOrNow};
use plait_proto::meta::{NewKind, RenameMode, TimeSet, XattrMode};
use plait_proto::{Attr, FileKind, Ino, Timestamp};

/// The kernel's inode number of a FUSE mount's root directory.
pub const FUSE_ROOT_INO: u64 = 1;

/// Block size reported to `stat`, in bytes.
pub const BLOCK_SIZE_BYTES: u32 = 4096;

/// Unit of `st_blocks`, in bytes.
const STAT_BLOCK_BYTES: u64 = 512;

/// Translates inode numbers between the kernel (root is 1) and the volume (root is the
/// volume's root inode).
///
/// The volume root and 1 swap places; every other number is the same on both sides. The
/// swap (rather than a one-way map) keeps the translation a bijection even if some inode
/// of the volume happened to be numbered 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InoMap {
    root: Ino,
}

impl InoMap {
    /// The translation for a volume whose root directory is `root`.
    pub fn new(root: Ino) -> Self {
        Self { root }
    }

    fn swap(self, ino: u64) -> u64 {
        if ino == FUSE_ROOT_INO {
            self.root
        } else if ino == self.root {
            FUSE_ROOT_INO
        } else {
            ino
        }
    }

    /// The volume inode the kernel means by `ino`.
    pub fn to_volume(self, ino: INodeNo) -> Ino {
        self.swap(ino.0)
    }

    /// The kernel's number for volume inode `ino`.
    pub fn to_fuse(self, ino: Ino) -> INodeNo {
        INodeNo(self.swap(ino))
    }
}

/// A Plait timestamp as a `SystemTime` (the epoch if it cannot be represented).
pub fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let time = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    time.and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

/// A `SystemTime` as a Plait timestamp (saturating far outside the representable range).
pub fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            let sec = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => Timestamp { sec: -sec, nsec: 0 },
                n => Timestamp {
                    sec: (-sec).saturating_sub(1),
                    nsec: 1_000_000_000 - n,
                },
            }
        }
    }
}

/// A setattr time from the kernel.
pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timestamp(t)),
    }
}

/// The kernel's file type for a Plait file kind.
pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// Attributes as the kernel wants them: kernel inode number, 4 KiB blksize, `st_blocks`
/// from the bytes the file's extents reference, times with nanoseconds.
pub fn file_attr(attr: &Attr, inos: InoMap) -> FileAttr {
    FileAttr {
        ino: inos.to_fuse(attr.ino),
        size: attr.size,
        blocks: attr.allocated_bytes.div_ceil(STAT_BLOCK_BYTES),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.crtime),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_SIZE_BYTES,
        flags: 0,
    }
}

/// Placeholder attributes for the `.` and `..` entries of READDIRPLUS, which the kernel
/// skips (it never instantiates inodes from them).
pub fn dot_attr(ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE_BYTES,
        flags: 0,
    }
}

/// Permission bits of a new node: `mode` without what `umask` masks and without the
/// file type bits.
pub fn new_perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

/// What mknod(2) `mode` (with device `rdev`) creates; EINVAL for a directory or an
/// unknown type (the kernel sends directories through mkdir).
pub fn mknod_kind(mode: u32, rdev: u32) -> Result<NewKind, Errno> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Ok(NewKind::File),
        libc::S_IFIFO => Ok(NewKind::Fifo),
        libc::S_IFSOCK => Ok(NewKind::Socket),
        libc::S_IFCHR => Ok(NewKind::CharDev { rdev }),
        libc::S_IFBLK => Ok(NewKind::BlockDev { rdev }),
        _ => Err(Errno::EINVAL),
    }
}

/// The rename mode for renameat2 flags; RENAME_WHITEOUT (overlayfs only) and
/// NOREPLACE together with EXCHANGE are EINVAL.
pub fn rename_mode(flags: RenameFlags) -> Result<RenameMode, Errno> {
    let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
    let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
    if flags.contains(RenameFlags::RENAME_WHITEOUT) || (noreplace && exchange) {
        return Err(Errno::EINVAL);
    }
    if !(flags - RenameFlags::RENAME_NOREPLACE - RenameFlags::RENAME_EXCHANGE).is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(match (noreplace, exchange) {
        (true, _) => RenameMode::NoReplace,
        (_, true) => RenameMode::Exchange,
        _ => RenameMode::Replace,
    })
}

/// The xattr mode for setxattr(2) flags (XATTR_CREATE, XATTR_REPLACE, or neither).
pub fn xattr_mode(flags: i32) -> Result<XattrMode, Errno> {
    let create = flags & libc::XATTR_CREATE != 0;
    let replace = flags & libc::XATTR_REPLACE != 0;
    if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 || (create && replace) {
        return Err(Errno::EINVAL);
    }
    Ok(match (create, replace) {
        (true, _) => XattrMode::Create,
        (_, true) => XattrMode::Replace,
        _ => XattrMode::Upsert,
    })
}

/// Extended attribute names as listxattr(2) returns them: each followed by a NUL.
pub fn xattr_list(names: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for name in names {
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

/// What a getxattr/listxattr reply carries for a caller buffer of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrAnswer {
    /// A size probe (`size == 0`): answer with the length.
    Size(u32),
    /// The value fits: answer with it.
    Data,
    /// The value does not fit (ERANGE).
    TooSmall,
}

/// Decides how to answer a getxattr/listxattr of a value of `len` bytes.
pub fn xattr_answer(size: u32, len: usize) -> XattrAnswer {
    match u32::try_from(len) {
        Ok(len) if size == 0 => XattrAnswer::Size(len),
        Ok(len) if len <= size => XattrAnswer::Data,
        _ => XattrAnswer::TooSmall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_swaps_with_one_and_nothing_else_moves() {
        let m = InoMap::new(42);
        assert_eq!(m.to_volume(INodeNo(1)), 42);
        assert_eq!(m.to_fuse(42), INodeNo(1));
        assert_eq!(m.to_volume(INodeNo(42)), 1);
        assert_eq!(m.to_fuse(1), INodeNo(42));
        assert_eq!(m.to_volume(INodeNo(7)), 7);
        assert_eq!(m.to_fuse(7), INodeNo(7));
        let identity = InoMap::new(1);
        assert_eq!(identity.to_volume(INodeNo(1)), 1);
        assert_eq!(identity.to_fuse(5), INodeNo(5));
        for ino in 0..100u64 {
            assert_eq!(m.to_volume(m.to_fuse(ino)), ino);
        }
    }

    #[test]
    fn times_round_trip_with_nanoseconds() {
        for t in [
            Timestamp { sec: 0, nsec: 0 },
            Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timestamp {
                sec: -1,
                nsec: 500_000_000,
            },
            Timestamp {
                sec: -86_400,
                nsec: 0,
            },
        ] {
            assert_eq!(timestamp(system_time(t)), t, "{t:?}");
        }
    }

    #[test]
    fn attrs_use_kernel_inos_and_512_byte_blocks() {
        let attr = Attr {
            ino: 42,
            kind: FileKind::File,
            perm: 0o640,
            nlink: 1,
            uid: 5,
            gid: 6,
            rdev: 0,
            size: 1000,
            allocated_bytes: 1000,
            atime: Timestamp { sec: 1, nsec: 2 },
            mtime: Timestamp { sec: 3, nsec: 4 },
            ctime: Timestamp { sec: 5, nsec: 6 },
            crtime: Timestamp { sec: 7, nsec: 8 },
        };
        let f = file_attr(&attr, InoMap::new(42));
        assert_eq!(f.ino, INodeNo(1));
        assert_eq!(f.blocks, 2);
        assert_eq!(f.blksize, 4096);
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!(f.mtime, UNIX_EPOCH + Duration::new(3, 4));
    }

    #[test]
    fn modes_and_flags() {
        assert_eq!(new_perm(0o100666, 0o022), 0o644);
        assert_eq!(new_perm(0o4755, 0), 0o4755);
        assert_eq!(mknod_kind(libc::S_IFREG | 0o644, 0), Ok(NewKind::File));
        assert_eq!(
            mknod_kind(libc::S_IFCHR | 0o600, 0x0103),
            Ok(NewKind::CharDev { rdev: 0x0103 })
        );
        assert_eq!(mknod_kind(libc::S_IFDIR | 0o755, 0), Err(Errno::EINVAL));
        assert_eq!(rename_mode(RenameFlags::empty()), Ok(RenameMode::Replace));
        assert_eq!(
            rename_mode(RenameFlags::RENAME_NOREPLACE),
            Ok(RenameMode::NoReplace)
        );
        assert_eq!(
            rename_mode(RenameFlags::RENAME_EXCHANGE),
            Ok(RenameMode::Exchange)
        );
        assert_eq!(
            rename_mode(RenameFlags::RENAME_WHITEOUT),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            rename_mode(RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE),
            Err(Errno::EINVAL)
        );
        assert_eq!(xattr_mode(0), Ok(XattrMode::Upsert));
        assert_eq!(xattr_mode(libc::XATTR_CREATE), Ok(XattrMode::Create));
        assert_eq!(xattr_mode(libc::XATTR_REPLACE), Ok(XattrMode::Replace));
        assert_eq!(
            xattr_mode(libc::XATTR_CREATE | libc::XATTR_REPLACE),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn xattr_size_probes() {
        assert_eq!(
            xattr_list(&[b"user.a".to_vec(), b"user.bb".to_vec()]),
            b"user.a\0user.bb\0"
        );
        assert_eq!(xattr_answer(0, 15), XattrAnswer::Size(15));
        assert_eq!(xattr_answer(15, 15), XattrAnswer::Data);
        assert_eq!(xattr_answer(14, 15), XattrAnswer::TooSmall);
        assert_eq!(xattr_answer(0, 0), XattrAnswer::Size(0));
    }
}
