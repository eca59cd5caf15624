//! [`FileLocks`]: the held locks and queued requests of one file, and every operation on
//! them.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::types::{
    Conflict, Grant, HeldLock, LOCKS_PER_FILE_MAX, LockError, LockKind, LockRange, LockRequest,
    LockType, Owner, Released, SetOutcome, SetReply, WAITERS_PER_FILE_MAX, WaitMode, Waiter,
};

/// The POSIX and flock locks of one file (inode): who holds what, and who waits.
///
/// A value of this type is the whole lock state of the file; the state machine stores it
/// (serialized) under the inode and calls one method per committed lock command. Every
/// method is a pure function of the state and its arguments, so all replicas agree.
///
/// Invariants (checked by [`check_invariants`](Self::check_invariants) after every change
/// in debug builds):
/// - the records of one owner and kind never overlap, and its adjacent or overlapping
///   records of one type are merged into one;
/// - no two different owners hold conflicting locks (overlapping, same kind, at least one
///   write);
/// - every waiter conflicts with a lock held by another owner (otherwise it would have been
///   granted);
/// - the bounds [`LOCKS_PER_FILE_MAX`] and [`WAITERS_PER_FILE_MAX`] hold, waiter ids are
///   unique, and every flock record and waiter covers the whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLocks {
    /// Held records sorted by (kind, owner, start): one owner's records of one kind are
    /// contiguous and in offset order.
    holders: Vec<HeldLock>,
    /// Queued requests, oldest first.
    waiters: Vec<Waiter>,
}

/// The range a request of `kind` actually covers: flock locks are whole-file.
fn effective_range(kind: LockKind, range: LockRange) -> LockRange {
    match kind {
        LockKind::Posix => range,
        LockKind::Flock => LockRange::WHOLE,
    }
}

/// Whether two locks of one kind held by different owners would conflict.
fn types_conflict(a: LockType, b: LockType) -> bool {
    a == LockType::Write || b == LockType::Write
}

/// An owner's POSIX records after setting (`new` is `Some`) or unlocking (`None`) `range`,
/// and whether the change removed a lock or turned a write lock into a read lock (which
/// can let waiters through).
///
/// `existing` are the owner's records, sorted, non-overlapping and merged. Records of the
/// new type that overlap or touch the range merge into the new record (which keeps the
/// earliest `since_ms`); records of the other type (or all, when unlocking) lose the
/// overlapped part, leaving at most a piece on each side.
fn posix_rewrite(
    existing: &[HeldLock],
    range: LockRange,
    new: Option<HeldLock>,
) -> (Vec<HeldLock>, bool) {
    let mut records = Vec::with_capacity(existing.len() + 2);
    let mut merged = new;
    let mut freed = false;
    for record in existing {
        if let Some(m) = merged.as_mut()
            && record.lock_type == m.lock_type
            && record.range.touches(range)
        {
            m.range = m.range.hull(record.range);
            m.since_ms = m.since_ms.min(record.since_ms);
            continue;
        }
        if !record.range.overlaps(range) {
            records.push(*record);
            continue;
        }
        // Overlapped by an unlock or by a lock of the other type.
        match merged {
            None => freed = true,
            Some(m) => {
                freed |= record.lock_type == LockType::Write && m.lock_type == LockType::Read
            }
        }
        if record.range.start < range.start {
            records.push(HeldLock {
                range: LockRange {
                    start: record.range.start,
                    end: range.start - 1,
                },
                ..*record
            });
        }
        if record.range.end > range.end {
            records.push(HeldLock {
                range: LockRange {
                    start: range.end + 1,
                    end: record.range.end,
                },
                ..*record
            });
        }
    }
    if let Some(m) = merged {
        records.push(m);
    }
    records.sort_by_key(|record| record.range.start);
    (records, freed)
}

impl FileLocks {
    /// A file with no locks and no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing is held or queued (the caller may then delete the stored value).
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// The held lock records, ordered by kind, owner and start offset.
    pub fn holders(&self) -> std::slice::Iter<'_, HeldLock> {
        self.holders.iter()
    }

    /// The queued requests, oldest first.
    pub fn waiters(&self) -> std::slice::Iter<'_, Waiter> {
        self.waiters.iter()
    }

    /// `F_GETLK`: the first lock of another owner that conflicts with a `lock_type` lock
    /// of `kind` over `range` (ignored for flock) by `owner`, or `None` if such a lock
    /// could be granted now. The owner's own locks never conflict. Queued requests are not
    /// considered (as on Linux).
    pub fn test(
        &self,
        kind: LockKind,
        owner: Owner,
        lock_type: LockType,
        range: LockRange,
    ) -> Option<Conflict> {
        let range = effective_range(kind, range);
        self.conflicts(kind, owner, lock_type, range)
            .next()
            .map(|held| Conflict {
                owner: held.owner,
                lock_type: held.lock_type,
                range: held.range,
                pid: held.pid,
            })
    }

    /// `F_SETLK`/`F_SETLKW`/`flock`: take a lock.
    ///
    /// If no lock of another owner conflicts, the lock is granted at once (even if other
    /// requests wait, as on Linux): for POSIX the owner's locks over the range are
    /// replaced, split and merged as needed (converting read to write or back); for flock
    /// the owner's single lock is replaced. Otherwise the request fails
    /// ([`SetOutcome::WouldBlock`]) or, with [`WaitMode::Wait`], is queued
    /// ([`SetOutcome::Queued`]) unless, for POSIX, that would close a cycle of owners
    /// waiting for each other on this file ([`SetOutcome::Deadlock`]; cycles through other
    /// files are not detected).
    ///
    /// As on Linux, converting a flock lock is not atomic: the owner's old flock lock is
    /// dropped before the new one is looked at, so a conversion that cannot be granted
    /// leaves the owner with no flock lock (see `flock(2)`).
    ///
    /// The reply lists waiters the change let through (a downgrade or a dropped flock
    /// lock can do that).
    ///
    /// Errors (nothing changes): [`LockError::TooManyLocks`] if the owner's records would
    /// push the file over [`LOCKS_PER_FILE_MAX`]; [`LockError::TooManyWaiters`] or
    /// [`LockError::WaiterIdInUse`] if the request should be queued but cannot be.
    pub fn set(
        &mut self,
        request: LockRequest,
        wait: WaitMode,
        now_ms: u64,
    ) -> Result<SetReply, LockError> {
        let request = LockRequest {
            range: effective_range(request.kind, request.range),
            ..request
        };
        let blocked = self
            .conflicts(
                request.kind,
                request.owner,
                request.lock_type,
                request.range,
            )
            .next()
            .is_some();
        if !blocked {
            let freed = self.apply(request, now_ms)?;
            let grants = self.grant_waiters_if(freed, now_ms);
            self.debug_check();
            return Ok(SetReply {
                outcome: SetOutcome::Granted,
                grants,
            });
        }
        if let WaitMode::Wait { waiter_id } = wait {
            if request.kind == LockKind::Posix && self.would_deadlock(request) {
                return Ok(SetReply {
                    outcome: SetOutcome::Deadlock,
                    grants: Vec::new(),
                });
            }
            if self.waiters.len() >= WAITERS_PER_FILE_MAX {
                return Err(LockError::TooManyWaiters);
            }
            if self.waiters.iter().any(|w| w.waiter_id == waiter_id) {
                return Err(LockError::WaiterIdInUse(waiter_id));
            }
        }
        // Linux drops the owner's flock lock before looking for conflicts, so a conversion
        // that does not go through loses the old lock.
        let freed = request.kind == LockKind::Flock
            && self
                .remove_holders(|held| held.kind == LockKind::Flock && held.owner == request.owner)
                > 0;
        let outcome = match wait {
            WaitMode::NoWait => SetOutcome::WouldBlock,
            WaitMode::Wait { waiter_id } => {
                self.waiters.push(Waiter {
                    waiter_id,
                    owner: request.owner,
                    kind: request.kind,
                    lock_type: request.lock_type,
                    range: request.range,
                    pid: request.pid,
                    queued_ms: now_ms,
                });
                SetOutcome::Queued
            }
        };
        let grants = self.grant_waiters_if(freed, now_ms);
        self.debug_check();
        Ok(SetReply { outcome, grants })
    }

    /// `F_SETLK` with `F_UNLCK` / `LOCK_UN`: release `owner`'s locks of `kind` over `range`
    /// (ignored for flock), splitting records that stick out of it, then grant the waiters
    /// that no longer conflict (returned in the order served). Waiters are left alone.
    ///
    /// Fails with [`LockError::TooManyLocks`] (changing nothing) only when unlocking the
    /// middle of a record splits it and the file is at [`LOCKS_PER_FILE_MAX`], as Linux
    /// fails with `ENOLCK` when it cannot allocate the second half.
    pub fn unlock(
        &mut self,
        kind: LockKind,
        owner: Owner,
        range: LockRange,
        now_ms: u64,
    ) -> Result<Vec<Grant>, LockError> {
        let freed = match kind {
            LockKind::Posix => {
                let span = self.owner_span(kind, owner);
                let (records, freed) = posix_rewrite(&self.holders[span.clone()], range, None);
                if freed {
                    self.replace_span(span, records)?;
                }
                freed
            }
            LockKind::Flock => {
                self.remove_holders(|held| held.kind == LockKind::Flock && held.owner == owner) > 0
            }
        };
        let grants = self.grant_waiters_if(freed, now_ms);
        self.debug_check();
        Ok(grants)
    }

    /// Drop every lock of `kind` held by `owner` and every request of `kind` it has queued
    /// (POSIX: the owner closed the file, FUSE `FLUSH`/`RELEASE` with its lock owner;
    /// flock: the last close of the open file description). Returns the dropped requests
    /// and the other owners' waiters this let through.
    pub fn release_owner(&mut self, kind: LockKind, owner: Owner, now_ms: u64) -> Released {
        let removed = self.remove_holders(|held| held.kind == kind && held.owner == owner);
        let dropped_waiters = self.remove_waiters(|w| w.kind == kind && w.owner == owner);
        let grants = self.grant_waiters_if(removed > 0, now_ms);
        self.debug_check();
        Released {
            grants,
            dropped_waiters,
        }
    }

    /// Drop every lock and queued request, of both kinds, of the owners of `session` (its
    /// lease expired). Returns the dropped requests and the waiters of other sessions this
    /// let through.
    pub fn release_session(&mut self, session: u64, now_ms: u64) -> Released {
        let removed = self.remove_holders(|held| held.owner.session == session);
        let dropped_waiters = self.remove_waiters(|w| w.owner.session == session);
        let grants = self.grant_waiters_if(removed > 0, now_ms);
        self.debug_check();
        Released {
            grants,
            dropped_waiters,
        }
    }

    /// Remove the queued request `waiter_id` without granting it (the wait was
    /// interrupted); returns it, or `None` if no such request is queued (it may have been
    /// granted already). Waiters only ever wait for held locks, never for each other, so
    /// removing one lets no other through.
    pub fn cancel_waiter(&mut self, waiter_id: u64) -> Option<Waiter> {
        let index = self.waiters.iter().position(|w| w.waiter_id == waiter_id)?;
        let waiter = self.waiters.remove(index);
        self.debug_check();
        Some(waiter)
    }

    /// Check every invariant of the state (see the type's documentation); the error names
    /// the first violation. Runs after each change in debug builds; callers may also run
    /// it on a state read from storage.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.holders.len() > LOCKS_PER_FILE_MAX {
            return Err(format!("{} held records", self.holders.len()));
        }
        if self.waiters.len() > WAITERS_PER_FILE_MAX {
            return Err(format!("{} waiters", self.waiters.len()));
        }
        for held in &self.holders {
            if held.range.start > held.range.end {
                return Err(format!("reversed range in {held:?}"));
            }
            if held.kind == LockKind::Flock && held.range != LockRange::WHOLE {
                return Err(format!("partial flock record {held:?}"));
            }
        }
        for pair in self.holders.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if (a.kind, a.owner, a.range.start) >= (b.kind, b.owner, b.range.start) {
                return Err(format!("records out of order: {a:?} then {b:?}"));
            }
            if (a.kind, a.owner) != (b.kind, b.owner) {
                continue;
            }
            if a.range.overlaps(b.range) {
                return Err(format!("records of one owner overlap: {a:?} and {b:?}"));
            }
            if a.lock_type == b.lock_type && a.range.touches(b.range) {
                return Err(format!("adjacent records not merged: {a:?} and {b:?}"));
            }
        }
        // With one owner's records disjoint, "no conflict between owners" is: the write
        // records of a kind are pairwise disjoint, and no read record overlaps one.
        for kind in [LockKind::Posix, LockKind::Flock] {
            let mut writes: Vec<&HeldLock> = self
                .holders
                .iter()
                .filter(|h| h.kind == kind && h.lock_type == LockType::Write)
                .collect();
            writes.sort_by_key(|h| h.range.start);
            for pair in writes.windows(2) {
                if pair[0].range.overlaps(pair[1].range) {
                    return Err(format!(
                        "conflicting records {:?} and {:?}",
                        pair[0], pair[1]
                    ));
                }
            }
            for read in self
                .holders
                .iter()
                .filter(|h| h.kind == kind && h.lock_type == LockType::Read)
            {
                // Writes are disjoint and sorted, so their ends rise too: the last write
                // starting at or before the read's end reaches furthest.
                let below = writes.partition_point(|w| w.range.start <= read.range.end);
                if let Some(write) = below.checked_sub(1).map(|i| writes[i])
                    && write.range.overlaps(read.range)
                {
                    return Err(format!("conflicting records {write:?} and {read:?}"));
                }
            }
        }
        let mut ids = BTreeSet::new();
        for waiter in &self.waiters {
            if !ids.insert(waiter.waiter_id) {
                return Err(format!("waiter id {} queued twice", waiter.waiter_id));
            }
            if waiter.range.start > waiter.range.end {
                return Err(format!("reversed range in {waiter:?}"));
            }
            if waiter.kind == LockKind::Flock && waiter.range != LockRange::WHOLE {
                return Err(format!("partial flock waiter {waiter:?}"));
            }
            if self
                .conflicts(waiter.kind, waiter.owner, waiter.lock_type, waiter.range)
                .next()
                .is_none()
            {
                return Err(format!("waiter {waiter:?} blocked by nothing"));
            }
        }
        Ok(())
    }

    /// Panic (debug builds only) if an invariant is broken.
    fn debug_check(&self) {
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    /// The held locks of other owners that conflict with a `lock_type` lock of `kind` over
    /// `range` by `owner`, in record order.
    fn conflicts(
        &self,
        kind: LockKind,
        owner: Owner,
        lock_type: LockType,
        range: LockRange,
    ) -> impl Iterator<Item = &HeldLock> {
        let start = self.holders.partition_point(|held| held.kind < kind);
        self.holders[start..]
            .iter()
            .take_while(move |held| held.kind == kind)
            .filter(move |held| {
                held.owner != owner
                    && held.range.overlaps(range)
                    && types_conflict(held.lock_type, lock_type)
            })
    }

    /// The indices of `owner`'s records of `kind` in `holders`.
    fn owner_span(&self, kind: LockKind, owner: Owner) -> Range<usize> {
        let key = (kind, owner);
        let start = self
            .holders
            .partition_point(|held| (held.kind, held.owner) < key);
        let end = self
            .holders
            .partition_point(|held| (held.kind, held.owner) <= key);
        start..end
    }

    /// Replace the records at `span` (one owner's records of one kind) by `records`
    /// (the same owner and kind, sorted), unless that would exceed the bound.
    fn replace_span(
        &mut self,
        span: Range<usize>,
        records: Vec<HeldLock>,
    ) -> Result<(), LockError> {
        if self.holders.len() - span.len() + records.len() > LOCKS_PER_FILE_MAX {
            return Err(LockError::TooManyLocks);
        }
        self.holders.splice(span, records);
        Ok(())
    }

    /// Give `request` (which conflicts with no other owner's lock) its lock, since
    /// `now_ms`; returns whether this removed or downgraded any of the owner's locks.
    fn apply(&mut self, request: LockRequest, now_ms: u64) -> Result<bool, LockError> {
        let span = self.owner_span(request.kind, request.owner);
        let existing = &self.holders[span.clone()];
        let new = HeldLock {
            owner: request.owner,
            kind: request.kind,
            lock_type: request.lock_type,
            range: request.range,
            pid: request.pid,
            since_ms: now_ms,
        };
        let (records, freed) = match request.kind {
            LockKind::Posix => posix_rewrite(existing, request.range, Some(new)),
            LockKind::Flock => match existing.first() {
                Some(old) if old.lock_type == request.lock_type => return Ok(false),
                Some(old) => (vec![new], old.lock_type == LockType::Write),
                None => (vec![new], false),
            },
        };
        self.replace_span(span, records)?;
        Ok(freed)
    }

    /// Remove the held records matching `doomed`; returns how many.
    fn remove_holders(&mut self, doomed: impl Fn(&HeldLock) -> bool) -> usize {
        let before = self.holders.len();
        self.holders.retain(|held| !doomed(held));
        before - self.holders.len()
    }

    /// Remove the waiters matching `doomed`; returns them, oldest first.
    fn remove_waiters(&mut self, doomed: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
        let (removed, kept) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| doomed(w));
        self.waiters = kept;
        removed
    }

    /// [`grant_waiters`](Self::grant_waiters) if locks were removed or downgraded (only
    /// then can a waiter have lost its last conflict).
    fn grant_waiters_if(&mut self, freed: bool, now_ms: u64) -> Vec<Grant> {
        if freed {
            self.grant_waiters(now_ms)
        } else {
            Vec::new()
        }
    }

    /// Grant, oldest first, every waiter that no longer conflicts with a held lock, each
    /// as [`set`](Self::set) would, since `now_ms`. A waiter granted earlier in the scan
    /// may block a later one, so the oldest wins. A grant that downgrades its owner's
    /// locks may unblock waiters already passed over, so the scan then restarts.
    fn grant_waiters(&mut self, now_ms: u64) -> Vec<Grant> {
        let mut grants = Vec::new();
        let mut index = 0;
        while let Some(&waiter) = self.waiters.get(index) {
            let blocked = self
                .conflicts(waiter.kind, waiter.owner, waiter.lock_type, waiter.range)
                .next()
                .is_some();
            if blocked {
                index += 1;
                continue;
            }
            self.waiters.remove(index);
            let result = self.apply(waiter.request(), now_ms);
            if result == Ok(true) {
                index = 0;
            }
            grants.push(Grant {
                waiter_id: waiter.waiter_id,
                owner: waiter.owner,
                kind: waiter.kind,
                lock_type: waiter.lock_type,
                range: waiter.range,
                pid: waiter.pid,
                result: result.map(|_| ()),
            });
        }
        grants
    }

    /// Whether queuing the POSIX `request` would close a cycle: some owner it would wait
    /// for waits (directly or through other owners' waits) for the requester. An owner
    /// waits for every owner holding a lock that conflicts with one of its queued POSIX
    /// requests. Only this file's waits are known, so cycles through other files go
    /// unnoticed.
    fn would_deadlock(&self, request: LockRequest) -> bool {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<Owner> = Vec::new();
        for held in self.conflicts(
            LockKind::Posix,
            request.owner,
            request.lock_type,
            request.range,
        ) {
            if seen.insert(held.owner) {
                pending.push(held.owner);
            }
        }
        while let Some(owner) = pending.pop() {
            if owner == request.owner {
                return true;
            }
            for waiter in self
                .waiters
                .iter()
                .filter(|w| w.kind == LockKind::Posix && w.owner == owner)
            {
                for held in self.conflicts(
                    LockKind::Posix,
                    waiter.owner,
                    waiter.lock_type,
                    waiter.range,
                ) {
                    if seen.insert(held.owner) {
                        pending.push(held.owner);
                    }
                }
            }
        }
        false
    }
}
