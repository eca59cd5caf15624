//! The lock table of a file this mount holds a delegation for: while no other session
//! locks the file, the group lets the mount grant and release its processes' locks
//! itself, with the same lock manager the group runs (`plait-locks`), so an uncontended
//! lock or unlock costs no network round trip. When another session wants the file the
//! group recalls the delegation and the mount gives the table's held locks back; its own
//! queued requests then start over against the group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use plait_proto::lock::{
    FileLocks, Grant, LockError, LockKind, LockOwner, LockRange, LockRequest, LockSpec, SessionId,
    SetOutcome, WaitMode,
};
use tokio::sync::oneshot;

/// Most delegations one mount holds; past it, lock requests go to the group.
pub(crate) const DELEGATIONS_MAX: usize = 4096;

/// A delegation with no lock held for this long is given back, in milliseconds.
pub(crate) const DELEGATION_IDLE_MS: u64 = 30_000;

/// What a queued local request learns.
#[derive(Debug)]
pub(crate) enum Wake {
    /// It holds the lock now.
    Granted,
    /// It was let through but could not be recorded (the file's lock bound).
    Failed(LockError),
    /// The delegation was given back: ask the group instead.
    Retry,
}

/// A delegated file: the session it was delegated to and its lock table.
#[derive(Debug)]
pub(crate) struct Delegated {
    /// The session the group delegated the file to.
    pub(crate) session: SessionId,
    /// The table; also serializes every change of the delegation (lock, unlock, return).
    pub(crate) table: tokio::sync::Mutex<Table>,
    /// Set with `Table::returned`, readable without waiting for the table.
    gone: AtomicBool,
}

impl Delegated {
    pub(crate) fn new(session: SessionId) -> Self {
        Self {
            session,
            table: tokio::sync::Mutex::new(Table {
                locks: FileLocks::new(),
                returned: false,
                waiters: HashMap::new(),
                last_used: Instant::now(),
            }),
            gone: AtomicBool::new(false),
        }
    }

    /// Whether the delegation was given back or lost.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Marks the delegation given back or lost: queued requests start over against the
    /// group.
    pub(crate) fn give_back(&self, table: &mut Table) {
        self.gone.store(true, Ordering::Release);
        table.returned = true;
        for (_, tx) in table.waiters.drain() {
            let _ = tx.send(Wake::Retry);
        }
    }
}

/// Milliseconds since the epoch, for the `since` of local locks.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The locks of a delegated file and the local requests waiting in it.
#[derive(Debug)]
pub(crate) struct Table {
    locks: FileLocks,
    /// Given back (or lost with the session): every request goes to the group.
    pub(crate) returned: bool,
    /// Queued local requests by waiter id.
    waiters: HashMap<u64, oneshot::Sender<Wake>>,
    /// Last lock or unlock through the table.
    pub(crate) last_used: Instant,
}

impl Table {
    fn wake(&mut self, grants: Vec<Grant>) {
        for g in grants {
            if let Some(tx) = self.waiters.remove(&g.waiter_id) {
                let wake = match g.result {
                    Ok(()) => Wake::Granted,
                    Err(e) => Wake::Failed(e),
                };
                // A waiter that went away meanwhile was cancelled first; nothing to tell.
                let _ = tx.send(wake);
            }
        }
    }

    /// Takes a lock for `session`'s `spec` owner; with `wait`, a conflicting request is
    /// queued and its wake-up returned.
    pub(crate) fn set(
        &mut self,
        session: SessionId,
        spec: &LockSpec,
        wait: Option<u64>,
    ) -> Result<(SetOutcome, Option<oneshot::Receiver<Wake>>), LockError> {
        self.last_used = Instant::now();
        let request = LockRequest {
            kind: spec.kind,
            owner: LockOwner::new(session, spec.owner),
            lock_type: spec.lock_type,
            range: spec.range,
            pid: spec.pid,
        };
        let mode = match wait {
            Some(waiter_id) => WaitMode::Wait { waiter_id },
            None => WaitMode::NoWait,
        };
        let reply = self.locks.set(request, mode, now_ms())?;
        let rx = match (reply.outcome, wait) {
            (SetOutcome::Queued, Some(waiter_id)) => {
                let (tx, rx) = oneshot::channel();
                self.waiters.insert(waiter_id, tx);
                Some(rx)
            }
            _ => None,
        };
        self.wake(reply.grants);
        Ok((reply.outcome, rx))
    }

    /// F_GETLK against the table.
    pub(crate) fn test(
        &self,
        session: SessionId,
        spec: &LockSpec,
    ) -> Option<plait_proto::lock::Conflict> {
        self.locks.test(
            spec.kind,
            LockOwner::new(session, spec.owner),
            spec.lock_type,
            spec.range,
        )
    }

    /// Unlocks part of an owner's locks and lets waiters through.
    pub(crate) fn unlock(
        &mut self,
        session: SessionId,
        owner: u64,
        range: LockRange,
    ) -> Result<(), LockError> {
        self.last_used = Instant::now();
        let grants = self.locks.unlock(
            LockKind::Posix,
            LockOwner::new(session, owner),
            range,
            now_ms(),
        )?;
        self.wake(grants);
        Ok(())
    }

    /// Drops an owner's locks and queued requests (close).
    pub(crate) fn release_owner(&mut self, session: SessionId, owner: u64) {
        self.last_used = Instant::now();
        let released =
            self.locks
                .release_owner(LockKind::Posix, LockOwner::new(session, owner), now_ms());
        for dropped in released.dropped_waiters {
            if let Some(tx) = self.waiters.remove(&dropped.waiter_id) {
                let _ = tx.send(Wake::Retry);
            }
        }
        self.wake(released.grants);
    }

    /// Withdraws a queued request; `false` if it is no longer queued (granted or given
    /// back meanwhile: its wake-up says which).
    pub(crate) fn cancel(&mut self, waiter_id: u64) -> bool {
        self.waiters.remove(&waiter_id);
        self.locks.cancel_waiter(waiter_id).is_some()
    }

    /// Whether no lock is held or queued.
    pub(crate) fn is_idle(&self) -> bool {
        self.locks.is_empty()
    }

    /// Every held record, as the group's `ReturnDelegation` takes them.
    pub(crate) fn holders(&self) -> Vec<LockSpec> {
        self.locks
            .holders()
            .map(|h| LockSpec {
                kind: h.kind,
                owner: h.owner.owner,
                lock_type: h.lock_type,
                range: h.range,
                pid: h.pid,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plait_proto::lock::LockType;

    fn spec(owner: u64, lock_type: LockType) -> LockSpec {
        LockSpec {
            kind: LockKind::Posix,
            owner,
            lock_type,
            range: LockRange::WHOLE,
            pid: 7,
        }
    }

    #[tokio::test]
    async fn a_local_waiter_is_woken_by_unlock_and_told_to_retry_on_give_back() {
        let d = Delegated::new(5);
        let mut t = d.table.lock().await;
        let (o, rx) = t.set(5, &spec(1, LockType::Write), None).unwrap();
        assert_eq!(o, SetOutcome::Granted);
        assert!(rx.is_none());
        let (o, rx) = t.set(5, &spec(2, LockType::Write), Some(11)).unwrap();
        assert_eq!(o, SetOutcome::Queued);
        let rx = rx.unwrap();
        t.unlock(5, 1, LockRange::WHOLE).unwrap();
        assert!(matches!(rx.await, Ok(Wake::Granted)));
        assert_eq!(t.holders(), vec![spec(2, LockType::Write)]);

        let (o, rx) = t.set(5, &spec(3, LockType::Read), Some(12)).unwrap();
        assert_eq!(o, SetOutcome::Queued);
        d.give_back(&mut t);
        assert!(matches!(rx.unwrap().await, Ok(Wake::Retry)));
        assert!(t.returned && d.is_gone());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_is_not_granted() {
        let d = Delegated::new(5);
        let mut t = d.table.lock().await;
        t.set(5, &spec(1, LockType::Write), None).unwrap();
        let (_, rx) = t.set(5, &spec(2, LockType::Write), Some(11)).unwrap();
        assert!(t.cancel(11));
        assert!(!t.cancel(11));
        t.release_owner(5, 1);
        assert!(t.is_idle());
        assert!(rx.unwrap().await.is_err());
    }
}
