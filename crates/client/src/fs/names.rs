//! Checks done before a request is sent (the server checks too, but a bad name should
//! fail fast with the errno Linux gives), open intents, and the permission check for the
//! one open the kernel did not check itself.

use plait_proto::{
    Attr, ErrorCode, Ino, NAME_MAX_BYTES, RpcError, SYMLINK_MAX_BYTES, XATTR_NAME_MAX_BYTES,
};

/// Checks a file name component: 1..=255 bytes, no `/`, no NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<(), RpcError> {
    if name.len() > NAME_MAX_BYTES {
        return Err(RpcError::new(
            ErrorCode::NameTooLong,
            format!("name of {} bytes exceeds {NAME_MAX_BYTES}", name.len()),
        ));
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(RpcError::new(ErrorCode::InvalidArgument, "invalid name"));
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return Err(RpcError::new(
            ErrorCode::InvalidArgument,
            "name contains '/' or NUL",
        ));
    }
    Ok(())
}

/// Checks a symlink target: 1..=4096 bytes (as symlink(2): empty is ENOENT).
pub fn check_symlink_target(target: &[u8]) -> Result<(), RpcError> {
    if target.is_empty() {
        return Err(RpcError::new(ErrorCode::NotFound, "empty symlink target"));
    }
    if target.len() > SYMLINK_MAX_BYTES {
        return Err(RpcError::new(
            ErrorCode::NameTooLong,
            format!(
                "symlink target of {} bytes exceeds {SYMLINK_MAX_BYTES}",
                target.len()
            ),
        ));
    }
    Ok(())
}

/// Checks an extended attribute name: 1..=255 bytes (else ERANGE, as Linux).
pub fn check_xattr_name(name: &[u8]) -> Result<(), RpcError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX_BYTES {
        return Err(RpcError::new(
            ErrorCode::Range,
            format!("xattr name of {} bytes", name.len()),
        ));
    }
    Ok(())
}

/// A regular file a create asks for: `name` in `parent`, with permission bits (the umask
/// applied), owner, and what the open asks for.
#[derive(Debug, Clone, Copy)]
pub struct NewFile<'a> {
    /// The directory.
    pub parent: Ino,
    /// The name.
    pub name: &'a [u8],
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group (the directory's if it is setgid).
    pub gid: u32,
    /// The open flags.
    pub intent: OpenIntent,
}

/// What an `open`/`create` asks for, decoded from the open(2) flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenIntent {
    /// Opened for reading (O_RDONLY or O_RDWR).
    pub read: bool,
    /// Opened for writing (O_WRONLY or O_RDWR).
    pub write: bool,
    /// O_EXCL: creating must not open an existing file.
    pub exclusive: bool,
    /// O_TRUNC: the file is truncated to 0 bytes on open (also with O_RDONLY, as Linux
    /// does; the kernel checked write permission).
    pub truncate: bool,
}

impl OpenIntent {
    /// Decodes open(2) flags.
    pub fn from_flags(flags: i32) -> Self {
        let (read, write) = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => (false, true),
            libc::O_RDWR => (true, true),
            _ => (true, false),
        };
        Self {
            read,
            write,
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// Whether a caller (`uid`, primary `gid`) may open a file with these attributes for
/// `read`/`write`, by its owner/group/other permission bits; root may always.
///
/// Only used when `create` finds that another mount created the file first, where the
/// kernel checked the directory but not the file. Supplementary groups are not known
/// here, so this may refuse (EACCES) an open the kernel would have allowed.
pub fn may_open(attr: &Attr, uid: u32, gid: u32, read: bool, write: bool) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if uid == attr.uid {
        attr.perm >> 6
    } else if gid == attr.gid {
        attr.perm >> 3
    } else {
        attr.perm
    } & 0o7;
    (!read || bits & 0o4 != 0) && (!write || bits & 0o2 != 0)
}

#[cfg(test)]
mod tests {
    use plait_proto::{FileKind, Timestamp};

    use super::*;

    fn attr(perm: u16, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 9,
            kind: FileKind::File,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            size: 0,
            allocated_bytes: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
        }
    }

    #[test]
    fn names() {
        assert!(check_name(b"ok").is_ok());
        assert_eq!(
            check_name(&[b'a'; 256]).unwrap_err().code,
            ErrorCode::NameTooLong
        );
        assert!(check_name(&[b'a'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(
                check_name(bad).unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        assert_eq!(check_xattr_name(b"").unwrap_err().code, ErrorCode::Range);
        assert!(check_xattr_name(b"user.x").is_ok());
        assert_eq!(
            check_symlink_target(&[b'a'; 4097]).unwrap_err().code,
            ErrorCode::NameTooLong
        );
    }

    #[test]
    fn intents() {
        let i = OpenIntent::from_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
        assert_eq!(
            i,
            OpenIntent {
                read: false,
                write: true,
                exclusive: false,
                truncate: true
            }
        );
        // O_TRUNC with O_RDONLY is unspecified by POSIX; Linux truncates (the kernel checked
        // write permission), and so do we.
        assert!(OpenIntent::from_flags(libc::O_RDONLY | libc::O_TRUNC).truncate);
        assert!(OpenIntent::from_flags(libc::O_RDWR | libc::O_EXCL).exclusive);
    }

    #[test]
    fn permission_bits() {
        let a = attr(0o640, 1000, 100);
        assert!(may_open(&a, 1000, 1, true, true));
        assert!(may_open(&a, 2000, 100, true, false));
        assert!(!may_open(&a, 2000, 100, true, true));
        assert!(!may_open(&a, 2000, 200, true, false));
        assert!(may_open(&a, 0, 0, true, true));
    }
}
