//! Cluster-wide POSIX and flock locks for one mount: requests go to the lock service in
//! the metadata group under the mount's [`Session`]; blocking requests wait on the leader.
//!
//! - **One namespace.** fuser 0.18 does not tell us whether a request came from `fcntl`
//!   or `flock` (it drops FUSE_LK_FLOCK), so both are POSIX-style locks whose owner is
//!   the kernel's lock owner (per process for fcntl, per open file for flock). flock
//!   semantics follow from that owner; the deviation from Linux is that a flock lock and
//!   an fcntl lock on the same file conflict (as on NFS), where Linux keeps them apart.
//! - **Close.** The owners this mount ever locked with are remembered per inode; their
//!   locks are released at FLUSH (close of a descriptor, POSIX) and at RELEASE (last
//!   close, flock). Closing a file nobody locked costs no request.
//! - **Coherence.** Before a lock is released the inode's buffered bytes are committed,
//!   and after a lock is granted its cached extent map is dropped, so the next holder
//!   reads what the previous one wrote.
//! - **Fencing.** Writes of an inode locked under a session carry that session; the
//!   group refuses them once it expired, and the mount refuses them itself once its lease
//!   ran out without renewal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use plait_proto::lock::{
    Conflict, LockKind, LockRange, LockSpec, LockType, SessionId, SetOutcome, WaitState,
};
use plait_proto::{ErrorCode, Ino, MetaOp, MetaQuery, MetaReply};
use tracing::{debug, warn};

use super::{FsError, PlaitFs, lock, unexpected};
use crate::session::Session;

/// How often a blocked request checks whether its process got a signal, in ms.
const SIGNAL_POLL_MS: u64 = 100;

/// Pause after a failed wait poll (no leader during a failover), in milliseconds.
const WAIT_RETRY_MS: u64 = 200;

/// Stripes of the per-(inode, owner) operation locks.
const OWNER_STRIPES: usize = 64;

/// Where an owner locked a file on this mount.
#[derive(Debug, Clone, Copy)]
struct Holding {
    /// The session it locked under.
    session: SessionId,
    /// The file handle of its latest lock request: a flock release (at the last close
    /// of a handle) only applies to the handle that locked, since the kernel reuses an
    /// open file's owner id for the next open and delivers RELEASE asynchronously.
    fh: u64,
}

/// The lock state of one mount.
#[derive(Debug)]
pub(crate) struct MountLocks {
    session: std::sync::Mutex<Option<Arc<Session>>>,
    /// (inode, owner) → where it locked; kept until the owner releases.
    owners: std::sync::Mutex<HashMap<(Ino, u64), Holding>>,
    /// Serializes the lock, unlock and release commits of one (inode, owner), so a late
    /// release cannot overtake the lock request that followed it.
    stripes: Vec<tokio::sync::Mutex<()>>,
    next_seq: AtomicU32,
}

impl Default for MountLocks {
    fn default() -> Self {
        Self {
            session: std::sync::Mutex::new(None),
            owners: std::sync::Mutex::new(HashMap::new()),
            stripes: (0..OWNER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            next_seq: AtomicU32::new(0),
        }
    }
}

impl MountLocks {
    fn stripe(&self, ino: Ino, owner: u64) -> &tokio::sync::Mutex<()> {
        let h = ino
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(owner.rotate_left(17));
        // OWNER_STRIPES is a power of two and `stripes` has exactly that many entries.
        &self.stripes[(h as usize) % OWNER_STRIPES]
    }
}

/// A lock request as the kernel sends it.
#[derive(Debug, Clone, Copy)]
pub struct LockCall {
    /// The file.
    pub ino: Ino,
    /// The file handle the request came through.
    pub fh: u64,
    /// The kernel's lock owner.
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte (FUSE's OFFSET_MAX means to the end of the file).
    pub end: u64,
    /// `None` to unlock.
    pub lock_type: Option<LockType>,
    /// The requesting process.
    pub pid: u32,
}

impl LockCall {
    fn spec(&self, lock_type: LockType) -> Result<LockSpec, FsError> {
        let range = LockRange::from_fuse(self.start, self.end)
            .map_err(|e| FsError::code(ErrorCode::InvalidArgument, e.to_string()))?;
        Ok(LockSpec {
            kind: LockKind::Posix,
            owner: self.owner,
            lock_type,
            range,
            pid: self.pid,
        })
    }
}

fn outcome_error(outcome: SetOutcome) -> FsError {
    match outcome {
        SetOutcome::Deadlock => FsError::code(ErrorCode::Deadlock, "lock wait would deadlock"),
        _ => FsError::code(ErrorCode::WouldBlock, "conflicting lock held"),
    }
}

impl PlaitFs {
    /// Attaches the mount's session; lock calls fail with ENOLCK without one.
    pub fn set_session(&self, session: Arc<Session>) {
        *lock(&self.locks.session) = Some(session);
    }

    fn session(&self) -> Result<Arc<Session>, FsError> {
        lock(&self.locks.session)
            .clone()
            .ok_or_else(|| FsError::code(ErrorCode::NoLocks, "this mount has no lock session"))
    }

    /// The session writes of `ino` must carry (fencing), if it is locked on this mount;
    /// fails with EIO if that session is no longer live.
    pub(super) fn write_session(&self, ino: Ino) -> Result<Option<SessionId>, FsError> {
        let owners = lock(&self.locks.owners);
        let Some(id) = owners
            .iter()
            .find(|((i, _), _)| *i == ino)
            .map(|(_, h)| h.session)
        else {
            return Ok(None);
        };
        drop(owners);
        match self.session() {
            Ok(s) if s.is_live(id) => Ok(Some(id)),
            _ => Err(FsError::code(
                ErrorCode::SessionExpired,
                format!("the locks on inode {ino} were lost with session {id}"),
            )),
        }
    }

    /// F_GETLK: the conflicting lock, if any.
    pub async fn getlk(&self, call: LockCall) -> Result<Option<Conflict>, FsError> {
        let session = self.session()?.id();
        let spec = call.spec(call.lock_type.unwrap_or(LockType::Write))?;
        match self
            .client
            .query(MetaQuery::TestLock {
                ino: call.ino,
                session,
                spec,
            })
            .await?
        {
            MetaReply::LockConflict(c) => Ok(c),
            other => Err(unexpected("TestLock", &other)),
        }
    }

    /// F_SETLK / F_SETLKW / flock: takes, converts or releases a lock. A blocking request
    /// waits on the leader; `interrupted` is polled every [`SIGNAL_POLL_MS`] and, once it
    /// says the process got a signal, the wait is withdrawn and EINTR returned.
    pub async fn setlk(
        &self,
        call: LockCall,
        sleep: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<(), FsError> {
        let Some(lock_type) = call.lock_type else {
            return self.unlock(call).await;
        };
        let session = self.session()?;
        let id = session.id();
        if !session.is_live(id) {
            return Err(FsError::code(
                ErrorCode::SessionExpired,
                "lease not renewed: the mount may be cut off",
            ));
        }
        let spec = call.spec(lock_type)?;
        let seq = self.locks.next_seq.fetch_add(1, Ordering::Relaxed);
        let stripe = self.locks.stripe(call.ino, call.owner).lock().await;
        // From here on the owner may hold something on the server: remember it so close
        // releases it even if the answer is lost.
        let holding = Holding {
            session: id,
            fh: call.fh,
        };
        let known = lock(&self.locks.owners)
            .insert((call.ino, call.owner), holding)
            .is_some();
        let op = MetaOp::SetLock {
            ino: call.ino,
            session: id,
            spec,
            wait: sleep.then_some(seq),
        };
        let reply = self.client.meta(op).await;
        // A definite refusal to an owner that held nothing here leaves it holding nothing:
        // forget it, so its inode's writes are not fenced and its close costs no request.
        if !known
            && matches!(
                reply,
                Ok(MetaReply::LockSet(
                    SetOutcome::WouldBlock | SetOutcome::Deadlock
                ))
            )
        {
            lock(&self.locks.owners).remove(&(call.ino, call.owner));
        }
        drop(stripe);
        let outcome = match reply {
            Ok(MetaReply::LockSet(o)) => o,
            Ok(other) => return Err(unexpected("SetLock", &other)),
            Err(e) => {
                if sleep {
                    self.cancel_wait(call.ino, id, seq).await;
                }
                return Err(e.into());
            }
        };
        match outcome {
            SetOutcome::Granted => {}
            SetOutcome::Queued => {
                self.wait_granted(call.ino, id, seq, spec, &interrupted)
                    .await?
            }
            other => return Err(outcome_error(other)),
        }
        self.lock_granted(call.ino);
        Ok(())
    }

    /// Waits until queued request `seq` is granted; withdraws it on a signal.
    async fn wait_granted(
        &self,
        ino: Ino,
        session: SessionId,
        seq: u32,
        spec: LockSpec,
        interrupted: &impl Fn() -> bool,
    ) -> Result<(), FsError> {
        loop {
            let poll = self.client.wait_lock(ino, session, seq, spec);
            tokio::pin!(poll);
            let state = loop {
                tokio::select! {
                    r = &mut poll => break r,
                    _ = tokio::time::sleep(Duration::from_millis(SIGNAL_POLL_MS)) => {
                        if interrupted() {
                            return self.interrupt_wait(ino, session, seq, spec).await;
                        }
                    }
                }
            };
            match state {
                Ok(WaitState::Granted) => return Ok(()),
                Ok(WaitState::Queued) => {}
                Ok(WaitState::Gone) => {
                    return Err(FsError::code(
                        ErrorCode::SessionExpired,
                        "the queued lock request was dropped (session expired?)",
                    ));
                }
                Err(e) => {
                    debug!(ino, error = %e, "lock wait poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(WAIT_RETRY_MS)).await;
                    if interrupted() {
                        return self.interrupt_wait(ino, session, seq, spec).await;
                    }
                }
            }
        }
    }

    /// Withdraws a waiter whose process got a signal: cancels it, and if it was granted in
    /// the meantime gives the lock back, so nothing is left behind; then EINTR.
    async fn interrupt_wait(
        &self,
        ino: Ino,
        session: SessionId,
        seq: u32,
        spec: LockSpec,
    ) -> Result<(), FsError> {
        self.cancel_wait(ino, session, seq).await;
        let state = self
            .client
            .query(MetaQuery::LockWait {
                ino,
                session,
                seq,
                spec,
            })
            .await;
        if matches!(state, Ok(MetaReply::LockWait(WaitState::Granted))) {
            let op = MetaOp::Unlock {
                ino,
                session,
                kind: spec.kind,
                owner: spec.owner,
                range: spec.range,
            };
            if let Err(e) = self.client.meta(op).await {
                warn!(ino, error = %e, "returning a lock granted during a signal failed");
            }
        }
        Err(FsError::code(
            ErrorCode::Interrupted,
            "lock wait interrupted by a signal",
        ))
    }

    async fn cancel_wait(&self, ino: Ino, session: SessionId, seq: u32) {
        let op = MetaOp::CancelLockWait { ino, session, seq };
        if let Err(e) = self.client.meta(op).await {
            warn!(ino, error = %e, "withdrawing a lock wait failed");
        }
    }

    /// A lock was granted: forget cached file contents so reads see the last holder's
    /// writes.
    fn lock_granted(&self, ino: Ino) {
        if let Some(entry) = self.inode_entry(ino) {
            entry.lock().invalidate_extents();
        }
    }

    /// F_UNLCK / LOCK_UN: commits the inode's buffered bytes first, so the next holder
    /// sees them. Costs nothing if the owner never locked this file on this mount.
    async fn unlock(&self, call: LockCall) -> Result<(), FsError> {
        let _stripe = self.locks.stripe(call.ino, call.owner).lock().await;
        let Some(Holding { session, .. }) = lock(&self.locks.owners)
            .get(&(call.ino, call.owner))
            .copied()
        else {
            return Ok(());
        };
        self.flush(call.ino).await?;
        let spec = call.spec(LockType::Write)?;
        let op = MetaOp::Unlock {
            ino: call.ino,
            session,
            kind: spec.kind,
            owner: call.owner,
            range: spec.range,
        };
        self.client.meta(op).await?;
        Ok(())
    }

    /// Drops every lock and waiter of `owner` on `ino` (close of a descriptor, or with
    /// `fh` the last close of that flock'ed handle), after committing buffered bytes. No
    /// request if the owner never locked the file on this mount, or if `fh` is given and
    /// the owner's latest lock came through another handle.
    pub async fn release_lock_owner(
        &self,
        ino: Ino,
        owner: u64,
        fh: Option<u64>,
    ) -> Result<(), FsError> {
        let _stripe = self.locks.stripe(ino, owner).lock().await;
        let Some(Holding { session, fh: held }) =
            lock(&self.locks.owners).get(&(ino, owner)).copied()
        else {
            return Ok(());
        };
        if fh.is_some_and(|fh| fh != held) {
            return Ok(());
        }
        self.flush(ino).await?;
        let op = MetaOp::ReleaseLockOwner {
            ino,
            session,
            kind: LockKind::Posix,
            owner,
        };
        self.client.meta(op).await?;
        lock(&self.locks.owners).remove(&(ino, owner));
        Ok(())
    }
}
