//! The values the lock manager takes and returns: kinds, types, owners, ranges, held
//! locks, waiters, outcomes and errors.

use serde::{Deserialize, Serialize};

/// The most held lock records one file may carry, over all owners and both kinds.
///
/// A record is one contiguous range of one owner (a POSIX owner with holes in its locked
/// area holds several). The bound keeps the per-inode value in the state machine small
/// and every operation's cost bounded; going over it fails with
/// [`LockError::TooManyLocks`] (`ENOLCK`), as the kernel does when it cannot allocate a
/// lock.
pub const LOCKS_PER_FILE_MAX: usize = 4096;

/// The most queued (blocked) lock requests one file may carry.
///
/// Going over it fails with [`LockError::TooManyWaiters`] (`ENOLCK`).
pub const WAITERS_PER_FILE_MAX: usize = 1024;

/// The kernel's `OFFSET_MAX` (`i64::MAX`): the `end` FUSE uses for a lock that runs to the
/// end of the file. [`LockRange::from_fuse`] and [`LockRange::fuse_end`] translate between
/// it and this crate's `u64::MAX`.
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// Linux errno values for the failures of this crate, so that it needs no `libc`.
pub mod errno {
    /// Resource temporarily unavailable: a non-blocking request met a conflicting lock.
    pub const EAGAIN: i32 = 11;
    /// Invalid argument: a range whose start lies after its end, or a reused waiter id.
    pub const EINVAL: i32 = 22;
    /// Resource deadlock would occur: a blocking POSIX request would close a wait cycle.
    pub const EDEADLK: i32 = 35;
    /// No locks available: a bound ([`LOCKS_PER_FILE_MAX`](super::LOCKS_PER_FILE_MAX),
    /// [`WAITERS_PER_FILE_MAX`](super::WAITERS_PER_FILE_MAX)) would be exceeded.
    pub const ENOLCK: i32 = 37;
}

/// Which of the two lock namespaces a lock lives in.
///
/// As on Linux, POSIX (`fcntl`) record locks and BSD `flock` locks are independent: a lock
/// of one kind never conflicts with a lock of the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// `fcntl` record lock (`F_SETLK`/`F_SETLKW`/`F_GETLK`), owned by a FUSE `lock_owner`.
    Posix,
    /// `flock(2)` whole-file lock, owned by an open file description.
    Flock,
}

/// Shared or exclusive. Unlocking is an operation ([`FileLocks::unlock`]), not a type.
///
/// [`FileLocks::unlock`]: crate::FileLocks::unlock
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockType {
    /// Shared (`F_RDLCK`, `LOCK_SH`): conflicts only with write locks of other owners.
    Read,
    /// Exclusive (`F_WRLCK`, `LOCK_EX`): conflicts with every lock of other owners.
    Write,
}

/// Who holds or waits for a lock. Two owners are the same only if both fields are equal.
///
/// For [`LockKind::Posix`] `owner` is the FUSE `lock_owner`; for [`LockKind::Flock`] it
/// identifies the open file description (the caller passes the file handle id). `session`
/// is the client session, so that all of a client's locks can go when its lease expires
/// ([`FileLocks::release_session`](crate::FileLocks::release_session)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The client session the owner belongs to.
    pub session: u64,
    /// The lock owner (POSIX) or file handle (flock) within the session.
    pub owner: u64,
}

impl Owner {
    /// The owner `owner` of session `session`.
    pub const fn new(session: u64, owner: u64) -> Self {
        Self { session, owner }
    }
}

/// A byte range `start..=end`, both ends inclusive; `end == u64::MAX` means "to the end of
/// the file, however long it grows".
///
/// A `LockRange` is never empty or reversed: [`LockRange::new`] (and deserialization)
/// refuse `start > end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRange")]
pub struct LockRange {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// The unchecked wire form of a [`LockRange`], validated on deserialization.
#[derive(Deserialize)]
struct RawRange {
    start: u64,
    end: u64,
}

impl TryFrom<RawRange> for LockRange {
    type Error = LockError;

    fn try_from(raw: RawRange) -> Result<Self, LockError> {
        Self::new(raw.start, raw.end)
    }
}

impl LockRange {
    /// The whole file, `0..=u64::MAX`: the range of every flock lock.
    pub const WHOLE: LockRange = LockRange {
        start: 0,
        end: u64::MAX,
    };

    /// The range `start..=end`; [`LockError::InvalidRange`] (`EINVAL`) if `start > end`.
    pub const fn new(start: u64, end: u64) -> Result<Self, LockError> {
        if start > end {
            return Err(LockError::InvalidRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// The range from `start` to the end of the file.
    pub const fn to_eof(start: u64) -> Self {
        Self {
            start,
            end: u64::MAX,
        }
    }

    /// The range of a FUSE lock request (`fuse_file_lock`'s `start`/`end`), where an `end`
    /// of [`OFFSET_MAX`] or more means to the end of the file.
    pub const fn from_fuse(start: u64, end: u64) -> Result<Self, LockError> {
        let end = if end >= OFFSET_MAX { u64::MAX } else { end };
        Self::new(start, end)
    }

    /// The first byte of the range.
    pub const fn start(self) -> u64 {
        self.start
    }

    /// The last byte of the range (inclusive); `u64::MAX` for a range to the end of file.
    pub const fn end(self) -> u64 {
        self.end
    }

    /// The `end` to report to the kernel through FUSE: [`OFFSET_MAX`] for a range to the
    /// end of file (the kernel rejects larger values with `EIO`), `end` otherwise.
    pub const fn fuse_end(self) -> u64 {
        if self.end >= OFFSET_MAX {
            OFFSET_MAX
        } else {
            self.end
        }
    }

    /// Whether the range runs to the end of the file.
    pub const fn is_to_eof(self) -> bool {
        self.end == u64::MAX
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: LockRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Whether the two ranges overlap or are adjacent (one ends right before the other
    /// starts), i.e. whether their union is one range.
    pub(crate) const fn touches(self, other: LockRange) -> bool {
        self.end.saturating_add(1) >= other.start && other.end.saturating_add(1) >= self.start
    }

    /// The smallest range covering both; meaningful when they [`touch`](Self::touches).
    pub(crate) fn hull(self, other: LockRange) -> LockRange {
        LockRange {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// What a lock request asks for; the `range` of a flock request is ignored (flock locks
/// always cover the whole file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// The namespace of the lock.
    pub kind: LockKind,
    /// Who asks.
    pub owner: Owner,
    /// Shared or exclusive.
    pub lock_type: LockType,
    /// The bytes to lock (POSIX only).
    pub range: LockRange,
    /// The process id to report to `F_GETLK` callers that meet this lock.
    pub pid: u32,
}

/// Whether a conflicting request fails at once or waits in the file's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitMode {
    /// `F_SETLK` / `LOCK_NB`: fail with [`SetOutcome::WouldBlock`] (`EAGAIN`).
    NoWait,
    /// `F_SETLKW` / blocking `flock`: queue the request under `waiter_id`, chosen by the
    /// caller and unique among the file's waiters, which later [`Grant`]s name.
    Wait {
        /// The caller's name for the queued request.
        waiter_id: u64,
    },
}

/// One held lock record: a contiguous range of one owner and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    /// Who holds it.
    pub owner: Owner,
    /// Its namespace.
    pub kind: LockKind,
    /// Shared or exclusive.
    pub lock_type: LockType,
    /// The bytes it covers ([`LockRange::WHOLE`] for flock).
    pub range: LockRange,
    /// The process id reported to `F_GETLK` callers.
    pub pid: u32,
    /// When (caller's clock, milliseconds) the owner has held this record since; a record
    /// merged from several keeps the earliest.
    pub since_ms: u64,
}

/// One queued (blocked) lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The caller's name for the request (see [`WaitMode::Wait`]).
    pub waiter_id: u64,
    /// Who waits.
    pub owner: Owner,
    /// The namespace of the awaited lock.
    pub kind: LockKind,
    /// Shared or exclusive.
    pub lock_type: LockType,
    /// The awaited bytes ([`LockRange::WHOLE`] for flock).
    pub range: LockRange,
    /// The process id the lock will carry once granted.
    pub pid: u32,
    /// When (caller's clock, milliseconds) the request was queued.
    pub queued_ms: u64,
}

impl Waiter {
    /// The request this waiter stands for.
    pub const fn request(&self) -> LockRequest {
        LockRequest {
            kind: self.kind,
            owner: self.owner,
            lock_type: self.lock_type,
            range: self.range,
            pid: self.pid,
        }
    }
}

/// The lock of another owner that stands in a request's way (the `F_GETLK` answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The owner holding the conflicting lock.
    pub owner: Owner,
    /// Its type.
    pub lock_type: LockType,
    /// Its whole range (not only the part that overlaps the request), as `F_GETLK` reports.
    pub range: LockRange,
    /// The process id recorded with it.
    pub pid: u32,
}

/// The result of [`FileLocks::set`](crate::FileLocks::set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetOutcome {
    /// The lock is held now.
    Granted,
    /// A conflicting lock is held and the request did not wait (`EAGAIN`).
    WouldBlock,
    /// A conflicting lock is held and the request was queued; a later [`Grant`] with its
    /// waiter id answers it.
    Queued,
    /// A blocking POSIX request would wait for an owner that (transitively) waits for the
    /// requester (`EDEADLK`). Nothing was queued.
    Deadlock,
}

impl SetOutcome {
    /// The errno to reply with, if the outcome is a failure.
    pub const fn errno(self) -> Option<i32> {
        match self {
            SetOutcome::Granted | SetOutcome::Queued => None,
            SetOutcome::WouldBlock => Some(errno::EAGAIN),
            SetOutcome::Deadlock => Some(errno::EDEADLK),
        }
    }
}

/// The reply of [`FileLocks::set`](crate::FileLocks::set): its outcome, and the waiters
/// the change woke up (a downgrade from write to read, or a flock conversion, which drops
/// the old lock first, can let queued requests through).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReply {
    /// What became of the request itself.
    pub outcome: SetOutcome,
    /// Queued requests answered by this change, in the order they were served.
    pub grants: Vec<Grant>,
}

/// A queued request that an operation answered: it now holds its lock (`result` is
/// `Ok`), or applying it failed (only [`LockError::TooManyLocks`]) and it left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The caller's name for the request.
    pub waiter_id: u64,
    /// Who waited.
    pub owner: Owner,
    /// The namespace of the lock.
    pub kind: LockKind,
    /// Shared or exclusive.
    pub lock_type: LockType,
    /// The requested range ([`LockRange::WHOLE`] for flock).
    pub range: LockRange,
    /// The process id recorded with the lock.
    pub pid: u32,
    /// `Ok` if the lock is now held; the error to reply with otherwise.
    pub result: Result<(), LockError>,
}

/// The reply of [`FileLocks::release_owner`](crate::FileLocks::release_owner) and
/// [`FileLocks::release_session`](crate::FileLocks::release_session).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Waiters of other owners that the release let through, in the order served.
    pub grants: Vec<Grant>,
    /// The released owner's (or session's) own queued requests, removed without being
    /// granted; the caller answers them (if anyone still listens) with an error.
    pub dropped_waiters: Vec<Waiter>,
}

/// Why a lock operation was refused. A refused operation changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LockError {
    /// The range starts after it ends (`EINVAL`).
    #[error("invalid lock range: start {start} is after end {end}")]
    InvalidRange {
        /// The requested first byte.
        start: u64,
        /// The requested last byte.
        end: u64,
    },
    /// The file would hold more than [`LOCKS_PER_FILE_MAX`] lock records (`ENOLCK`).
    #[error("too many locks on one file (at most {LOCKS_PER_FILE_MAX} records)")]
    TooManyLocks,
    /// The file would queue more than [`WAITERS_PER_FILE_MAX`] requests (`ENOLCK`).
    #[error("too many blocked lock requests on one file (at most {WAITERS_PER_FILE_MAX})")]
    TooManyWaiters,
    /// A blocking request named a waiter id that is already queued (`EINVAL`): a bug in
    /// the caller, which must keep waiter ids unique per file.
    #[error("waiter id {0} is already queued on this file")]
    WaiterIdInUse(u64),
}

impl LockError {
    /// The Linux errno for this error.
    pub const fn errno(self) -> i32 {
        match self {
            LockError::InvalidRange { .. } | LockError::WaiterIdInUse(_) => errno::EINVAL,
            LockError::TooManyLocks | LockError::TooManyWaiters => errno::ENOLCK,
        }
    }
}
