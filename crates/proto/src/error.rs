//! Error codes that travel on the wire. Each maps to exactly one errno at the mount, so
//! that a user sees what a local filesystem would have told them.

use serde::{Deserialize, Serialize};

/// Why a request failed. Kept small and closed: the mount maps each to one errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// ENOENT
    NotFound,
    /// EEXIST
    Exists,
    /// ENOTDIR
    NotDir,
    /// EISDIR
    IsDir,
    /// ENOTEMPTY
    NotEmpty,
    /// ENAMETOOLONG
    NameTooLong,
    /// EINVAL
    InvalidArgument,
    /// EACCES
    AccessDenied,
    /// EPERM
    NotPermitted,
    /// ENOSPC
    NoSpace,
    /// EIO: a disk error, a corrupt chunk, an internal failure.
    Io,
    /// ENODATA: no such extended attribute.
    NoAttr,
    /// ERANGE
    Range,
    /// EXDEV: rename or link across volumes.
    CrossDevice,
    /// EMLINK
    TooManyLinks,
    /// EFBIG
    FileTooBig,
    /// ELOOP
    Loop,
    /// ESTALE: the inode no longer exists.
    Stale,
    /// EROFS: metadata has no majority, writes cannot be committed.
    ReadOnly,
    /// EAGAIN/ETIMEDOUT at the mount: try again (no leader yet, timeout).
    Unavailable,
    /// This node is not the metadata leader; `RpcError::leader_hint` may say who is.
    NotLeader,
    /// The peer sent a message that could not be decoded, or of another protocol version.
    Protocol,
    /// EAGAIN: a non-blocking lock request met a conflicting lock.
    WouldBlock,
    /// EDEADLK: a blocking lock request would deadlock.
    Deadlock,
    /// ENOLCK: too many locks or waiters on one file.
    NoLocks,
    /// EINTR: a blocking lock wait was interrupted by a signal.
    Interrupted,
    /// EIO: the mount's session (its lease) expired: its locks are gone, and writes under
    /// them are refused (fencing).
    SessionExpired,
}

impl ErrorCode {
    /// The Linux errno a local filesystem would return for this condition.
    pub fn errno(self) -> i32 {
        // Numbers from Linux's asm-generic/errno-base.h and errno.h (x86_64 and aarch64 agree).
        match self {
            ErrorCode::NotFound => 2,         // ENOENT
            ErrorCode::Exists => 17,          // EEXIST
            ErrorCode::NotDir => 20,          // ENOTDIR
            ErrorCode::IsDir => 21,           // EISDIR
            ErrorCode::NotEmpty => 39,        // ENOTEMPTY
            ErrorCode::NameTooLong => 36,     // ENAMETOOLONG
            ErrorCode::InvalidArgument => 22, // EINVAL
            ErrorCode::AccessDenied => 13,    // EACCES
            ErrorCode::NotPermitted => 1,     // EPERM
            ErrorCode::NoSpace => 28,         // ENOSPC
            ErrorCode::Io => 5,               // EIO
            ErrorCode::NoAttr => 61,          // ENODATA
            ErrorCode::Range => 34,           // ERANGE
            ErrorCode::CrossDevice => 18,     // EXDEV
            ErrorCode::TooManyLinks => 31,    // EMLINK
            ErrorCode::FileTooBig => 27,      // EFBIG
            ErrorCode::Loop => 40,            // ELOOP
            ErrorCode::Stale => 116,          // ESTALE
            ErrorCode::ReadOnly => 30,        // EROFS
            ErrorCode::Unavailable => 5,      // EIO: the operation timed out without a majority
            ErrorCode::NotLeader => 5,        // EIO: only seen if redirects are exhausted
            ErrorCode::Protocol => 71,        // EPROTO
            ErrorCode::WouldBlock => 11,      // EAGAIN
            ErrorCode::Deadlock => 35,        // EDEADLK
            ErrorCode::NoLocks => 37,         // ENOLCK
            ErrorCode::Interrupted => 4,      // EINTR
            ErrorCode::SessionExpired => 5,   // EIO
        }
    }
}

/// A failed request: the code, a human-readable message and, for
/// [`ErrorCode::NotLeader`], the address of the node that may be the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    /// What went wrong, as the mount will report it.
    pub code: ErrorCode,
    /// Detail for logs and the admin CLI.
    pub message: String,
    /// For `NotLeader`: the leader's QUIC address, when known.
    pub leader_hint: Option<String>,
}

impl RpcError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            leader_hint: None,
        }
    }
}
