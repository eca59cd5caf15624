//! Plait's lock manager for one file: POSIX record locks (`fcntl`) and BSD `flock` locks,
//! with Linux semantics, pure and deterministic (sans-IO).
//!
//! A [`FileLocks`] value is the whole lock state of one inode. The metadata state machine
//! stores it (serialized with serde; the caller picks the encoding) as one value per inode
//! and calls one method per committed lock command. No method does I/O, reads a clock
//! (time comes in as `now_ms`, chosen by the proposer of the command), draws random
//! numbers or depends on hash-map order, so every replica reaches the same state.
//!
//! Semantics, as on Linux:
//! - POSIX and flock locks are separate namespaces ([`LockKind`]); one never conflicts
//!   with the other.
//! - Locks of one [`Owner`] never conflict with each other. Locks of different owners
//!   conflict if they overlap and at least one is a write lock.
//! - Ranges are inclusive; `end == u64::MAX` runs to the end of file (FUSE's `OFFSET_MAX`
//!   is translated by [`LockRange::from_fuse`] / [`LockRange::fuse_end`]).
//! - Setting a POSIX lock replaces the owner's locks over the range: it splits records of
//!   the other type and merges records of the same type that overlap or touch
//!   (`[0,9] + [10,19] = [0,19]`). Conversions are atomic: read to write only if no other
//!   owner's lock conflicts, write to read always.
//! - An owner holds at most one flock lock, always over the whole file. Converting it is
//!   not atomic: the old lock goes first, so a conversion that does not go through loses it
//!   (as `flock(2)` documents for Linux).
//! - A request that conflicts with no held lock is granted at once, even if others wait.
//!   A blocking request that conflicts is queued (FIFO). When locks are removed or
//!   downgraded, the queue is scanned oldest first and every waiter that no longer
//!   conflicts with a held lock gets its lock; an earlier waiter's new lock can block a
//!   later one, so the oldest wins.
//! - A blocking POSIX request that would wait (transitively) for its own owner fails with
//!   `EDEADLK` ([`SetOutcome::Deadlock`]). Only waits on this file are known: deadlocks
//!   through several files are not detected. Flock requests are never checked (Linux does
//!   not either).
//!
//! Known differences from Linux:
//! - Deadlock detection follows every owner a waiter conflicts with, not only the first
//!   blocker found with a depth limit of 10 as Linux does, and it is per file. Linux does
//!   not check open-file-description (OFD) locks at all; here every POSIX owner is checked.
//! - Linux wakes all waiters blocked on a released lock and lets them race; here the scan
//!   is deterministic and the oldest waiter wins.
//! - Bounds ([`LOCKS_PER_FILE_MAX`], [`WAITERS_PER_FILE_MAX`]) make requests fail with
//!   `ENOLCK` where Linux would only fail on memory exhaustion or `RLIMIT_LOCKS` (leases).
//! - `F_GETLK` reports the first conflicting record in (kind, owner, offset) order; when
//!   several records conflict, Linux may report another one.
//!
//! A failed operation (`Err`) changes nothing.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod file_locks;
mod types;

#[cfg(test)]
mod tests;

#[cfg(all(test, target_os = "linux"))]
mod kernel_diff;

pub use file_locks::FileLocks;
pub use types::{
    Conflict, Grant, HeldLock, LOCKS_PER_FILE_MAX, LockError, LockKind, LockRange, LockRequest,
    LockType, OFFSET_MAX, Owner, Released, SetOutcome, SetReply, WAITERS_PER_FILE_MAX, WaitMode,
    Waiter, errno,
};
