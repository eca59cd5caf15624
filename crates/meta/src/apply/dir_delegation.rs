//! Create delegations of directories: while one session creates files in a directory and
//! no other session changes its names, the group hands that session the directory
//! (`Y`+dir). Its mount then answers lookups of new names itself, creates files locally
//! with inode numbers from ranges handed out here, and commits them in `DirBatch`es (a
//! file's create and its first bytes in one commit, many files in one entry). Another
//! session that adds or removes a name in the directory, or removes the directory, is
//! answered `DirRecalling` (the delegation is marked recalled: `Recalls` of the holder's
//! session lists it); the holder commits its creates and gives the directory back.
//!
//! Invariants: a `Held` record's ranges were taken from the inode counter for it alone,
//! so a `CreateFile` of a number in them never collides with another inode; while a
//! directory is delegated, no op but the holder's `DirBatch` adds or removes its names.

use plait_proto::lock::SessionId;
use plait_proto::meta::{DIR_BATCH_OPS_MAX, DIR_INO_RANGE, DirBatchOp, NewKind};
use plait_proto::{ErrorCode, INLINE_BATCH_MAX_BYTES, Ino, MetaReply, Timestamp};
use serde::{Deserialize, Serialize};

use super::Applier;
use super::locking::ms;
use crate::records::{InodeRec, decode};
use crate::{KvRead, OpResult, keys, read, refuse};

/// How long a directory whose delegation was recalled is not delegated again, in ms.
pub const DIR_DELEGATION_COOLDOWN_MS: u64 = 10_000;

/// Most directories one session holds at once.
pub const DIR_DELEGATIONS_PER_SESSION_MAX: usize = 256;

/// Most inode ranges one delegation holds (a mount that used them up gives the
/// directory back and asks again).
pub const DIR_INO_RANGES_MAX: usize = 8;

/// Who changes a file's content, for [`Applier::content_guard`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writer {
    /// A mount with this session (`None`: a tool).
    Mount(Option<SessionId>),
    /// The holder's `DirBatch` of this directory.
    Batch(Ino),
}

/// The `Y` record of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DirDelegationRec {
    /// A session creates in the directory.
    Held {
        session: SessionId,
        since: Timestamp,
        recalled: Option<Timestamp>,
        /// Inode numbers `[start, end)` the session may create here.
        ranges: Vec<(Ino, Ino)>,
    },
    /// Recently recalled: not delegated again before this time (ms since the epoch).
    Cooldown { until_ms: u64 },
}

/// The directory's delegation record, if any.
pub(crate) fn dir_delegation(r: &impl KvRead, dir: Ino) -> OpResult<Option<DirDelegationRec>> {
    let key = keys::dir_delegation(dir);
    match r.get(&key)? {
        Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
        None => Ok(None),
    }
}

/// The session holding the directory's create delegation, if any.
pub(crate) fn dir_holder(r: &impl KvRead, dir: Ino) -> OpResult<Option<SessionId>> {
    Ok(match dir_delegation(r, dir)? {
        Some(DirDelegationRec::Held { session, .. }) => Some(session),
        _ => None,
    })
}

/// The directories `session` holds, in inode order (at most the per-session maximum).
fn session_dirs(r: &impl KvRead, session: SessionId) -> OpResult<Vec<Ino>> {
    r.scan(
        &keys::session_dirs_prefix(session),
        None,
        DIR_DELEGATIONS_PER_SESSION_MAX + 1,
    )?
    .iter()
    .map(|(k, _)| Ok(keys::trailing_u64(k)?))
    .collect()
}

/// The directories whose delegations `session` must give back.
pub(crate) fn dir_recalls(r: &impl KvRead, session: SessionId) -> OpResult<Vec<Ino>> {
    let mut out = Vec::new();
    for dir in session_dirs(r, session)? {
        if let Some(DirDelegationRec::Held {
            session: holder,
            recalled: Some(_),
            ..
        }) = dir_delegation(r, dir)?
            && holder == session
        {
            out.push(dir);
        }
    }
    Ok(out)
}

impl<R: KvRead> Applier<'_, R> {
    /// `DelegateDir`.
    pub(super) fn delegate_dir(&mut self, dir: Ino, session: SessionId) -> OpResult<MetaReply> {
        self.require_session(session)?;
        read::require_dir(&self.txn, dir)?;
        let now_ms = ms(self.now);
        let (since, mut ranges) = match dir_delegation(&self.txn, dir)? {
            Some(DirDelegationRec::Held {
                session: holder,
                since,
                recalled,
                ranges,
            }) => {
                if holder != session || recalled.is_some() || ranges.len() >= DIR_INO_RANGES_MAX {
                    return Ok(MetaReply::DirBusy);
                }
                (since, ranges)
            }
            Some(DirDelegationRec::Cooldown { until_ms }) if until_ms > now_ms => {
                return Ok(MetaReply::DirBusy);
            }
            _ => {
                if session_dirs(&self.txn, session)?.len() >= DIR_DELEGATIONS_PER_SESSION_MAX {
                    return Ok(MetaReply::DirBusy);
                }
                self.txn.put(keys::session_dir(session, dir), Vec::new());
                (self.now, Vec::new())
            }
        };
        let range = self.alloc_ino_range()?;
        ranges.push(range);
        let rec = DirDelegationRec::Held {
            session,
            since,
            recalled: None,
            ranges,
        };
        self.put(keys::dir_delegation(dir), &rec)?;
        Ok(MetaReply::DirDelegated {
            first_ino: range.0,
            count: range.1 - range.0,
        })
    }

    /// Takes [`DIR_INO_RANGE`] inode numbers from the counter.
    fn alloc_ino_range(&mut self) -> OpResult<(Ino, Ino)> {
        let start = read::counter(&self.txn, keys::NEXT_INO)?.max(1);
        let end = start
            .checked_add(DIR_INO_RANGE)
            .ok_or_else(|| refuse(ErrorCode::NoSpace, "inode numbers exhausted"))?;
        self.put(keys::counter(keys::NEXT_INO), &end)?;
        Ok((start, end))
    }

    /// `ReturnDirDelegation`: a recalled directory cools down, one given back unasked
    /// may be delegated again at once.
    pub(super) fn return_dir_delegation(
        &mut self,
        dir: Ino,
        session: SessionId,
    ) -> OpResult<MetaReply> {
        if let Some(DirDelegationRec::Held {
            session: holder,
            recalled,
            ..
        }) = dir_delegation(&self.txn, dir)?
            && holder == session
        {
            self.txn.delete(keys::session_dir(session, dir));
            if recalled.is_some() {
                let rec = DirDelegationRec::Cooldown {
                    until_ms: ms(self.now).saturating_add(DIR_DELEGATION_COOLDOWN_MS),
                };
                self.put(keys::dir_delegation(dir), &rec)?;
            } else {
                self.txn.delete(keys::dir_delegation(dir));
            }
        }
        Ok(MetaReply::Empty)
    }

    /// `RecallDir`: marks the delegation recalled (once); `DirRecalling` while held.
    pub(super) fn recall_dir(&mut self, dir: Ino) -> OpResult<MetaReply> {
        match dir_delegation(&self.txn, dir)? {
            Some(DirDelegationRec::Held {
                session,
                since,
                recalled: None,
                ranges,
            }) => {
                let rec = DirDelegationRec::Held {
                    session,
                    since,
                    recalled: Some(self.now),
                    ranges,
                };
                self.put(keys::dir_delegation(dir), &rec)?;
                Ok(MetaReply::DirRecalling { dir })
            }
            Some(DirDelegationRec::Held { .. }) => Ok(MetaReply::DirRecalling { dir }),
            _ => Ok(MetaReply::Empty),
        }
    }

    /// An op that adds or removes names in `dirs` (or removes one of them): `Some`
    /// (`DirRecalling`, with the recall recorded) if one of them is delegated, so the op
    /// must wait for it to be given back.
    pub(super) fn dir_guard(&mut self, dirs: &[Ino]) -> OpResult<Option<MetaReply>> {
        for &dir in dirs {
            if dir_holder(&self.txn, dir)?.is_some() {
                return self.recall_dir(dir).map(Some);
            }
        }
        Ok(None)
    }

    /// A change of the content of file `ino` (record `rec`) by `writer`: `Some`
    /// (`DirRecalling`, with the recall recorded) if a mount's change must wait for
    /// another session to give back the directory guarding the file; a batch's write of
    /// a file its directory does not guard is refused (a batch carries no recalls). The
    /// holder answers opens of the file from the extents it fetched while holding it;
    /// without this a write from another mount would not be seen by those opens.
    pub(super) fn content_guard(
        &mut self,
        ino: Ino,
        rec: &InodeRec,
        writer: Writer,
    ) -> OpResult<Option<MetaReply>> {
        match writer {
            Writer::Mount(session) => {
                let Some(dir) = rec.guard_dir() else {
                    return Ok(None);
                };
                match dir_holder(&self.txn, dir)? {
                    Some(holder) if Some(holder) != session => self.recall_dir(dir).map(Some),
                    _ => Ok(None),
                }
            }
            Writer::Batch(dir) if rec.guard_dir() == Some(dir) => Ok(None),
            Writer::Batch(dir) => Err(refuse(
                ErrorCode::InvalidArgument,
                format!("file {ino} is not guarded by directory {dir}"),
            )),
        }
    }

    /// `DirBatch`: every op or none. Resending a batch that was applied changes nothing
    /// but the files' times (its creates find their files, its writes put the same
    /// extents back), so a mount may resend after an ambiguous failure.
    pub(super) fn dir_batch(
        &mut self,
        dir: Ino,
        session: SessionId,
        ops: &[DirBatchOp],
    ) -> OpResult<MetaReply> {
        self.require_session(session)?;
        if ops.len() > DIR_BATCH_OPS_MAX {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("{} ops in a batch (at most {DIR_BATCH_OPS_MAX})", ops.len()),
            ));
        }
        let inline_bytes: usize = ops.iter().map(DirBatchOp::inline_bytes).sum();
        if inline_bytes > INLINE_BATCH_MAX_BYTES {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "{inline_bytes} inline bytes in a batch (at most {INLINE_BATCH_MAX_BYTES})"
                ),
            ));
        }
        let ranges = match dir_delegation(&self.txn, dir)? {
            Some(DirDelegationRec::Held {
                session: holder,
                ranges,
                ..
            }) if holder == session => ranges,
            _ => {
                return Err(refuse(
                    ErrorCode::Stale,
                    format!("session {session} does not hold directory {dir}"),
                ));
            }
        };
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            let reply = match op {
                DirBatchOp::CreateFile {
                    name,
                    ino,
                    perm,
                    uid,
                    gid,
                } => {
                    if !ranges
                        .iter()
                        .any(|(start, end)| (*start..*end).contains(ino))
                    {
                        return Err(refuse(
                            ErrorCode::InvalidArgument,
                            format!("inode {ino} is not in a range of directory {dir}"),
                        ));
                    }
                    if let Some(rec) = read::inode(&self.txn, *ino)? {
                        // A batch resent after an ambiguous failure: the file is there
                        // under its name already (nobody else can name it meanwhile).
                        let same =
                            read::dentry(&self.txn, dir, name)?.is_some_and(|d| d.ino == *ino);
                        if !same {
                            return Err(refuse(ErrorCode::Exists, format!("inode {ino} exists")));
                        }
                        MetaReply::Attr(rec.attr(*ino))
                    } else {
                        self.create_as(dir, name, &NewKind::File, *perm, *uid, *gid, *ino)?
                    }
                }
                DirBatchOp::Write {
                    ino,
                    extents,
                    under_replicated,
                    inline,
                } => {
                    // Only files whose content this delegation guards: anything else
                    // could be another holder's.
                    let writer = Writer::Batch(dir);
                    self.write(*ino, extents, under_replicated, inline, writer)?
                }
                DirBatchOp::Unlink { name, ino, reap } => {
                    self.batch_unlink(dir, name, *ino, *reap)?
                }
            };
            replies.push(reply);
        }
        Ok(MetaReply::Batch(replies))
    }

    /// A batch's unlink: removes `name` if it still names `ino` (idempotent: a resent
    /// batch finds it gone, and nobody but the holder can name anything in the directory
    /// meanwhile). A directory under that name is refused, as by `unlink(2)`. With `reap`
    /// a file left without links is reaped in the same commit.
    fn batch_unlink(&mut self, dir: Ino, name: &[u8], ino: Ino, reap: bool) -> OpResult<MetaReply> {
        match read::dentry(&self.txn, dir, name)? {
            Some(d) if d.ino == ino && d.is_dir() => Err(refuse(
                ErrorCode::IsDir,
                format!("{:?} is a directory", String::from_utf8_lossy(name)),
            )),
            Some(d) if d.ino == ino => match self.unlink(dir, name)? {
                MetaReply::Removed {
                    orphan: Some(orphan),
                } if reap => {
                    self.reap(orphan)?;
                    Ok(MetaReply::Removed { orphan: None })
                }
                other => Ok(other),
            },
            // Gone already (a resent batch): if that left the file without links and it is
            // not reaped yet, say so again, or the sender, whose first answer was lost,
            // would never reap it (a second reap is refused harmlessly).
            _ => {
                let orphan = self.txn.get(&keys::orphan(ino))?.is_some();
                Ok(MetaReply::Removed {
                    orphan: orphan.then_some(ino),
                })
            }
        }
    }

    /// The session ended: its directories are no longer delegated.
    pub(super) fn drop_session_dirs(&mut self, session: SessionId) -> OpResult<()> {
        for dir in session_dirs(&self.txn, session)? {
            if dir_holder(&self.txn, dir)? == Some(session) {
                self.txn.delete(keys::dir_delegation(dir));
            }
            self.txn.delete(keys::session_dir(session, dir));
        }
        Ok(())
    }

    /// The directory is going away: forget its delegation record.
    pub(super) fn drop_dir_record(&mut self, dir: Ino) -> OpResult<()> {
        if let Some(rec) = dir_delegation(&self.txn, dir)? {
            if let DirDelegationRec::Held { session, .. } = rec {
                self.txn.delete(keys::session_dir(session, dir));
            }
            self.txn.delete(keys::dir_delegation(dir));
        }
        Ok(())
    }
}
