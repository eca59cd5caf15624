//! Lock service ops: sessions with leases, and POSIX/flock locks on files, applied with
//! the sans-IO lock manager (`plait-locks`) over one `FileLocks` value per file.
//!
//! Keys: `L`+ino holds the file's locks and waiters; `S`+session the session record;
//! `K`+session+ino marks the files a session appears in, so expiring a session touches
//! only its files. All time comes from the command (`now`), so every replica agrees on
//! which sessions expired and on the order waiters are granted.

use std::collections::BTreeSet;

use plait_locks::{FileLocks, LockError, LockRequest, Owner, SetOutcome, WaitMode};
use plait_proto::lock::{
    LEASE_MAX_MS, LEASE_MIN_MS, LockKind, LockRange, LockSpec, SESSION_CLIENT_MAX_BYTES, SessionId,
    SessionInfo, waiter_id,
};
use plait_proto::{ErrorCode, Ino, MetaReply, Timestamp};

use super::Applier;
use crate::records::decode;
use crate::{KvRead, OpResult, keys, read, refuse};

/// The record of a session (`S` key).
pub(crate) type SessionRec = SessionInfo;

/// Most sessions that may be open at once (each mount holds one).
pub const SESSIONS_MAX: u64 = 65_536;

/// Milliseconds since the epoch of a timestamp (0 before it).
pub(crate) fn ms(t: Timestamp) -> u64 {
    let secs = u64::try_from(t.sec).unwrap_or(0);
    secs.saturating_mul(1000)
        .saturating_add(u64::from(t.nsec / 1_000_000))
}

/// The timestamp `ms_later` milliseconds after `t` (saturating).
pub(crate) fn later(t: Timestamp, ms_later: u64) -> Timestamp {
    let total_ns = u64::from(t.nsec) + (ms_later % 1000) * 1_000_000;
    let secs = i64::try_from(ms_later / 1000 + total_ns / 1_000_000_000).unwrap_or(i64::MAX);
    Timestamp {
        sec: t.sec.saturating_add(secs),
        nsec: u32::try_from(total_ns % 1_000_000_000).unwrap_or(0),
    }
}

fn lock_error(e: LockError) -> crate::Fail {
    refuse(plait_proto::lock::error_code(&e), e.to_string())
}

fn expired(session: SessionId) -> crate::Fail {
    refuse(
        ErrorCode::SessionExpired,
        format!("session {session} expired or was closed"),
    )
}

/// The session record, if the session is open.
pub(crate) fn session(r: &impl KvRead, id: SessionId) -> OpResult<Option<SessionRec>> {
    let key = keys::session(id);
    match r.get(&key)? {
        Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
        None => Ok(None),
    }
}

/// A file's lock table (empty if it has none).
pub(crate) fn file_locks(r: &impl KvRead, ino: Ino) -> OpResult<FileLocks> {
    let key = keys::locks(ino);
    match r.get(&key)? {
        Some(bytes) => Ok(decode(&key, &bytes)?),
        None => Ok(FileLocks::new()),
    }
}

/// The sessions that hold or wait for something in `locks`.
fn sessions_in(locks: &FileLocks) -> BTreeSet<SessionId> {
    locks
        .holders()
        .map(|h| h.owner.session)
        .chain(locks.waiters().map(|w| w.owner.session))
        .collect()
}

pub(super) fn request(session: SessionId, spec: &LockSpec) -> LockRequest {
    LockRequest {
        kind: spec.kind,
        owner: Owner::new(session, spec.owner),
        lock_type: spec.lock_type,
        range: spec.range,
        pid: spec.pid,
    }
}

impl<R: KvRead> Applier<'_, R> {
    fn now_ms(&self) -> u64 {
        ms(self.now)
    }

    /// Stores a file's lock table (or deletes it when empty) and keeps the session-file
    /// index in step with the sessions that appear in it before and after.
    pub(super) fn store_locks(
        &mut self,
        ino: Ino,
        before: &BTreeSet<SessionId>,
        locks: &FileLocks,
    ) -> OpResult<()> {
        let after = sessions_in(locks);
        for gone in before.difference(&after) {
            self.txn.delete(keys::session_file(*gone, ino));
        }
        for new in after.difference(before) {
            self.txn.put(keys::session_file(*new, ino), Vec::new());
        }
        if locks.is_empty() {
            self.txn.delete(keys::locks(ino));
            Ok(())
        } else {
            self.put(keys::locks(ino), locks)
        }
    }

    pub(super) fn require_session(&self, id: SessionId) -> OpResult<SessionRec> {
        session(&self.txn, id)?.ok_or_else(|| expired(id))
    }

    /// Refuses a write from an expired session (fencing).
    pub(super) fn check_writer(&self, session: Option<SessionId>) -> OpResult<()> {
        match session {
            Some(id) => self.require_session(id).map(|_| ()),
            None => Ok(()),
        }
    }

    pub(super) fn open_session(&mut self, lease_ms: u64, client: &str) -> OpResult<MetaReply> {
        if !(LEASE_MIN_MS..=LEASE_MAX_MS).contains(&lease_ms) {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("lease of {lease_ms} ms outside {LEASE_MIN_MS}..={LEASE_MAX_MS}"),
            ));
        }
        if client.len() > SESSION_CLIENT_MAX_BYTES {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                "session client label too long",
            ));
        }
        let open = self
            .txn
            .scan(&[keys::SESSION], None, SESSIONS_MAX as usize + 1)?;
        if open.len() as u64 >= SESSIONS_MAX {
            return Err(refuse(
                ErrorCode::NoLocks,
                format!("{SESSIONS_MAX} sessions open"),
            ));
        }
        let id = read::counter(&self.txn, keys::NEXT_SESSION)?.max(1);
        let next = id
            .checked_add(1)
            .filter(|n| *n < (1 << 32))
            .ok_or_else(|| refuse(ErrorCode::NoLocks, "session ids exhausted"))?;
        self.put(keys::counter(keys::NEXT_SESSION), &next)?;
        let rec = SessionRec {
            id,
            lease_ms,
            client: client.to_string(),
            opened: self.now,
            expires: later(self.now, lease_ms),
        };
        self.put(keys::session(id), &rec)?;
        Ok(MetaReply::Session(rec))
    }

    pub(super) fn renew_session(&mut self, id: SessionId) -> OpResult<MetaReply> {
        let mut rec = self.require_session(id)?;
        rec.expires = later(self.now, rec.lease_ms);
        self.put(keys::session(id), &rec)?;
        Ok(MetaReply::Session(rec))
    }

    pub(super) fn close_session(&mut self, id: SessionId) -> OpResult<MetaReply> {
        if session(&self.txn, id)?.is_some() {
            self.end_session(id)?;
        }
        Ok(MetaReply::Empty)
    }

    /// Ends every session whose lease ran out before now.
    pub(super) fn expire_sessions(&mut self) -> OpResult<MetaReply> {
        let now = self.now;
        let all = self
            .txn
            .scan(&[keys::SESSION], None, SESSIONS_MAX as usize)?;
        for (k, v) in &all {
            let rec: SessionRec = decode(k, v)?;
            if rec.expires < now {
                self.end_session(rec.id)?;
            }
        }
        Ok(MetaReply::Empty)
    }

    /// Releases everything a session holds or waits for, then deletes it.
    fn end_session(&mut self, id: SessionId) -> OpResult<()> {
        let now_ms = self.now_ms();
        loop {
            let files = self.txn.scan(&keys::session_files_prefix(id), None, 1024)?;
            if files.is_empty() {
                break;
            }
            for (k, _) in &files {
                let ino = keys::trailing_u64(k)?;
                self.drop_delegation(ino, id)?;
                let mut locks = file_locks(&self.txn, ino)?;
                let before = sessions_in(&locks);
                locks.release_session(id, now_ms);
                self.store_locks(ino, &before, &locks)?;
                // The index entry goes even if the table did not name the session.
                self.txn.delete(k.clone());
            }
        }
        self.drop_session_dirs(id)?;
        self.txn.delete(keys::session(id));
        Ok(())
    }

    pub(super) fn set_lock(
        &mut self,
        ino: Ino,
        session: SessionId,
        spec: &LockSpec,
        wait: Option<u32>,
        delegate: bool,
    ) -> OpResult<MetaReply> {
        self.require_session(session)?;
        read::require_inode(&self.txn, ino)?;
        if let Some(reply) = self.delegation_for_lock(ino, session, delegate)? {
            return Ok(reply);
        }
        let mut locks = file_locks(&self.txn, ino)?;
        let before = sessions_in(&locks);
        let mode = match wait {
            Some(seq) => WaitMode::Wait {
                waiter_id: waiter_id(session, seq),
            },
            None => WaitMode::NoWait,
        };
        let reply = locks
            .set(request(session, spec), mode, self.now_ms())
            .map_err(lock_error)?;
        if matches!(reply.outcome, SetOutcome::Granted | SetOutcome::Queued)
            || !reply.grants.is_empty()
        {
            self.store_locks(ino, &before, &locks)?;
        }
        Ok(MetaReply::LockSet(reply.outcome))
    }

    pub(super) fn unlock(
        &mut self,
        ino: Ino,
        session: SessionId,
        kind: LockKind,
        owner: u64,
        range: LockRange,
    ) -> OpResult<MetaReply> {
        // Unlocking needs no live session: an expired session holds nothing anyway.
        let mut locks = file_locks(&self.txn, ino)?;
        let before = sessions_in(&locks);
        locks
            .unlock(kind, Owner::new(session, owner), range, self.now_ms())
            .map_err(lock_error)?;
        self.store_locks(ino, &before, &locks)?;
        Ok(MetaReply::Empty)
    }

    pub(super) fn release_lock_owner(
        &mut self,
        ino: Ino,
        session: SessionId,
        kind: LockKind,
        owner: u64,
    ) -> OpResult<MetaReply> {
        let mut locks = file_locks(&self.txn, ino)?;
        let before = sessions_in(&locks);
        locks.release_owner(kind, Owner::new(session, owner), self.now_ms());
        self.store_locks(ino, &before, &locks)?;
        Ok(MetaReply::Empty)
    }

    pub(super) fn cancel_lock_wait(
        &mut self,
        ino: Ino,
        session: SessionId,
        seq: u32,
    ) -> OpResult<MetaReply> {
        let mut locks = file_locks(&self.txn, ino)?;
        let before = sessions_in(&locks);
        if locks.cancel_waiter(waiter_id(session, seq)).is_some() {
            self.store_locks(ino, &before, &locks)?;
        }
        Ok(MetaReply::Empty)
    }

    /// Drops a file's locks when the file itself goes (reaped).
    pub(super) fn drop_file_locks(&mut self, ino: Ino) -> OpResult<()> {
        self.drop_file_delegation(ino)?;
        let locks = file_locks(&self.txn, ino)?;
        if locks.is_empty() {
            return Ok(());
        }
        let before = sessions_in(&locks);
        self.store_locks(ino, &before, &FileLocks::new())
    }
}
