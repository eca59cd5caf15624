//! Lock delegations: while only one session locks a file, the group hands that session the
//! whole lock table of the file (`Q`+ino) and its mount grants and releases locks itself,
//! with no commit per lock. Another session that wants a lock (or F_GETLK) on the file
//! marks the delegation recalled (`W`+session+ino tells the holder's mount); the mount
//! gives it back with the locks its owners hold (`ReturnDelegation`), which become
//! ordinary locks of the table. A recalled file is not delegated again for
//! [`DELEGATION_COOLDOWN_MS`], so files locked from several mounts stay on the
//! one-commit-per-lock path instead of bouncing between mounts.
//!
//! Invariant: while a file is delegated its table (`L`+ino) is empty: the delegation is
//! handed out only for an empty table, and other sessions' requests are answered
//! `LockRecalling` instead of entering it.

use std::collections::BTreeSet;

use plait_locks::{LOCKS_PER_FILE_MAX, SetOutcome, WaitMode};
use plait_proto::lock::{DelegationInfo, LockSpec, SessionId};
use plait_proto::{ErrorCode, Ino, MetaReply, Timestamp};
use serde::{Deserialize, Serialize};

use super::Applier;
use super::locking::{file_locks, ms, request};
use crate::records::decode;
use crate::{KvRead, OpResult, keys, refuse};

/// How long a file whose delegation was recalled is not delegated again, in milliseconds.
pub const DELEGATION_COOLDOWN_MS: u64 = 10_000;

/// Most recalled files one `Recalls` answer lists.
pub const RECALLS_MAX: usize = 1024;

/// Most delegations one `ListDelegations` answer lists.
pub const LIST_DELEGATIONS_MAX: usize = 256;

/// The `Q` record of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DelegationRec {
    /// A session manages the file's locks.
    Held {
        session: SessionId,
        since: Timestamp,
        recalled: Option<Timestamp>,
    },
    /// Recently recalled: not delegated again before this time (ms since the epoch).
    Cooldown { until_ms: u64 },
}

/// The file's delegation record, if any.
pub(crate) fn delegation(r: &impl KvRead, ino: Ino) -> OpResult<Option<DelegationRec>> {
    let key = keys::delegation(ino);
    match r.get(&key)? {
        Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
        None => Ok(None),
    }
}

/// The session holding the file's delegation, if any.
pub(crate) fn holder(r: &impl KvRead, ino: Ino) -> OpResult<Option<SessionId>> {
    Ok(match delegation(r, ino)? {
        Some(DelegationRec::Held { session, .. }) => Some(session),
        _ => None,
    })
}

/// The files whose delegations `session` must give back.
pub(crate) fn recalls(r: &impl KvRead, session: SessionId) -> OpResult<Vec<Ino>> {
    r.scan(&keys::recalls_prefix(session), None, RECALLS_MAX)?
        .iter()
        .map(|(k, _)| Ok(keys::trailing_u64(k)?))
        .collect()
}

/// Held delegations in inode order after `after`.
pub(crate) fn list(r: &impl KvRead, after: Option<Ino>, limit: u32) -> OpResult<MetaReply> {
    let limit = usize::try_from(limit)
        .unwrap_or(LIST_DELEGATIONS_MAX)
        .min(LIST_DELEGATIONS_MAX);
    let mut out = Vec::new();
    let mut cursor = after.map(keys::delegation);
    // Cooling-down records are skipped, so read pages until enough held ones are found.
    while out.len() < limit {
        let page = r.scan(&[keys::DELEGATION], cursor.as_deref(), limit)?;
        let Some((last, _)) = page.last() else { break };
        cursor = Some(last.clone());
        for (k, v) in &page {
            if let DelegationRec::Held {
                session,
                since,
                recalled,
            } = decode(k, v)?
            {
                out.push(DelegationInfo {
                    ino: keys::trailing_u64(k)?,
                    session,
                    since,
                    recalled,
                });
            }
        }
    }
    out.truncate(limit);
    Ok(MetaReply::Delegations(out))
}

impl<R: KvRead> Applier<'_, R> {
    /// Part of `SetLock`: `Some(reply)` if the delegation decides the answer (another
    /// session holds it: recall; or it is handed to this session), `None` to go on with
    /// the file's lock table.
    pub(super) fn delegation_for_lock(
        &mut self,
        ino: Ino,
        session: SessionId,
        delegate: bool,
    ) -> OpResult<Option<MetaReply>> {
        let now_ms = ms(self.now);
        match delegation(&self.txn, ino)? {
            Some(DelegationRec::Held {
                session: holder, ..
            }) if holder != session => self.recall(ino).map(Some),
            Some(DelegationRec::Held { .. }) => {
                if delegate {
                    // The session asks again for what it has (its mount lost track of
                    // it): it starts over with no locks, as its mount believes.
                    Ok(Some(MetaReply::LockDelegated))
                } else {
                    self.drop_delegation(ino, session)?;
                    Ok(None)
                }
            }
            Some(DelegationRec::Cooldown { until_ms }) if until_ms > now_ms => Ok(None),
            _ if !delegate || !file_locks(&self.txn, ino)?.is_empty() => Ok(None),
            _ => {
                let rec = DelegationRec::Held {
                    session,
                    since: self.now,
                    recalled: None,
                };
                self.put(keys::delegation(ino), &rec)?;
                self.txn.put(keys::session_file(session, ino), Vec::new());
                Ok(Some(MetaReply::LockDelegated))
            }
        }
    }

    /// `RecallDelegation`.
    pub(super) fn recall_delegation(
        &mut self,
        ino: Ino,
        session: SessionId,
    ) -> OpResult<MetaReply> {
        match holder(&self.txn, ino)? {
            Some(holder) if holder != session => self.recall(ino),
            _ => Ok(MetaReply::Empty),
        }
    }

    /// Marks the file's delegation recalled (once) and answers `LockRecalling`.
    fn recall(&mut self, ino: Ino) -> OpResult<MetaReply> {
        if let Some(DelegationRec::Held {
            session,
            since,
            recalled: None,
        }) = delegation(&self.txn, ino)?
        {
            let rec = DelegationRec::Held {
                session,
                since,
                recalled: Some(self.now),
            };
            self.put(keys::delegation(ino), &rec)?;
            self.txn.put(keys::recall(session, ino), Vec::new());
        }
        Ok(MetaReply::LockRecalling)
    }

    /// `ReturnDelegation`: the holder's locks enter the file's table, the file cools down.
    pub(super) fn return_delegation(
        &mut self,
        ino: Ino,
        session: SessionId,
        holders: &[LockSpec],
    ) -> OpResult<MetaReply> {
        if holders.len() > LOCKS_PER_FILE_MAX {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "{} lock records returned (at most {LOCKS_PER_FILE_MAX})",
                    holders.len()
                ),
            ));
        }
        if holder(&self.txn, ino)? != Some(session) {
            // Given back already (a retry), or dropped with the session or the file.
            return Ok(MetaReply::Empty);
        }
        let now_ms = ms(self.now);
        let mut locks = file_locks(&self.txn, ino)?;
        for spec in holders {
            let granted = locks
                .set(request(session, spec), WaitMode::NoWait, now_ms)
                .map(|reply| reply.outcome == SetOutcome::Granted)
                .unwrap_or(false);
            if !granted {
                // The mount's own table obeys the same rules, so its records cannot
                // conflict with each other; refuse rather than install half of them.
                return Err(refuse(
                    ErrorCode::InvalidArgument,
                    format!("returned lock {spec:?} conflicts with the others"),
                ));
            }
        }
        self.txn.delete(keys::recall(session, ino));
        let cooldown = DelegationRec::Cooldown {
            until_ms: now_ms.saturating_add(DELEGATION_COOLDOWN_MS),
        };
        self.put(keys::delegation(ino), &cooldown)?;
        // The session is in the session-file index for the delegation; it stays there
        // only if it holds locks now.
        let before = BTreeSet::from([session]);
        self.store_locks(ino, &before, &locks)?;
        Ok(MetaReply::Empty)
    }

    /// Forgets `session`'s delegation of `ino` (its session ended, or it asked for
    /// locks without one), with the recall mark; the session-file index entry is the
    /// caller's to keep or drop.
    pub(super) fn drop_delegation(&mut self, ino: Ino, session: SessionId) -> OpResult<()> {
        if holder(&self.txn, ino)? == Some(session) {
            self.txn.delete(keys::delegation(ino));
            self.txn.delete(keys::recall(session, ino));
        }
        Ok(())
    }

    /// Forgets any delegation record of a file that is going away.
    pub(super) fn drop_file_delegation(&mut self, ino: Ino) -> OpResult<()> {
        if let Some(rec) = delegation(&self.txn, ino)? {
            if let DelegationRec::Held { session, .. } = rec {
                self.txn.delete(keys::recall(session, ino));
                self.txn.delete(keys::session_file(session, ino));
            }
            self.txn.delete(keys::delegation(ino));
        }
        Ok(())
    }
}
