//! Lock service messages: sessions (a mount's lease) and POSIX/flock lock requests.
//!
//! The lock types themselves come from `plait-locks`, the sans-IO lock manager, so the
//! wire and the state machine share one definition.

use serde::{Deserialize, Serialize};

pub use plait_locks::{
    Conflict, FileLocks, Grant, HeldLock, LockError, LockKind, LockRange, LockRequest, LockType,
    OFFSET_MAX, Owner as LockOwner, SetOutcome, WaitMode, Waiter,
};

use crate::{Ino, Timestamp};

/// A mount's session id, handed out by the metadata group.
pub type SessionId = u64;

/// Shortest lease a session may ask for, in milliseconds.
pub const LEASE_MIN_MS: u64 = 1_000;

/// Longest lease a session may ask for, in milliseconds.
pub const LEASE_MAX_MS: u64 = 600_000;

/// Longest client label of a session, in bytes.
pub const SESSION_CLIENT_MAX_BYTES: usize = 256;

/// A session as the metadata group records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// Lease length in milliseconds: the session expires this long after its last renewal.
    pub lease_ms: u64,
    /// Who holds it (host name and mount process id), for `plait lock list`.
    pub client: String,
    /// When it was opened.
    pub opened: Timestamp,
    /// When it expires unless renewed.
    pub expires: Timestamp,
}

/// One lock request: who, what kind, which bytes, for which process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    /// POSIX (fcntl) or flock.
    pub kind: LockKind,
    /// The kernel's lock owner (per process for POSIX, per open file for flock).
    pub owner: u64,
    /// Shared or exclusive.
    pub lock_type: LockType,
    /// The bytes (ignored for flock).
    pub range: LockRange,
    /// The requesting process, reported by F_GETLK.
    pub pid: u32,
}

/// Where a queued lock request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitState {
    /// Still waiting in the file's queue.
    Queued,
    /// Granted: the owner holds the lock now.
    Granted,
    /// Neither queued nor held: cancelled, refused, or its session expired.
    Gone,
}

/// A file's lock delegation: one session manages the file's locks itself until it is
/// asked to give them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationInfo {
    /// The file.
    pub ino: Ino,
    /// The session holding it.
    pub session: SessionId,
    /// When it was handed out.
    pub since: Timestamp,
    /// When another session asked for it back (`None`: not recalled).
    pub recalled: Option<Timestamp>,
}

/// The locks of one file, for `plait lock list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLockInfo {
    /// The file.
    pub ino: Ino,
    /// Held locks.
    pub holders: Vec<HeldLock>,
    /// Queued requests, oldest first.
    pub waiters: Vec<Waiter>,
}

/// The id under which a session's blocked request `seq` waits in a file's queue: unique
/// across sessions as long as session ids stay below 2^32 (4 billion mounts).
pub fn waiter_id(session: SessionId, seq: u32) -> u64 {
    (session << 32) | u64::from(seq)
}

/// The error code a lock manager error is reported with (ENOLCK for a full table, EINVAL
/// for a bad request), the same on the group and on a mount managing a delegated file.
pub fn error_code(e: &LockError) -> crate::ErrorCode {
    match e {
        LockError::TooManyLocks | LockError::TooManyWaiters => crate::ErrorCode::NoLocks,
        LockError::InvalidRange { .. } | LockError::WaiterIdInUse(_) => {
            crate::ErrorCode::InvalidArgument
        }
    }
}
