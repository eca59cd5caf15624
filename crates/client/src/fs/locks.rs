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
//! - **Delegation.** A request asks the group for a delegation of the file; while the
//!   mount holds one it grants and releases locks itself ([`super::delegation`]) and
//!   skips the commit of buffered bytes at unlock (no other mount can take the lock
//!   before the delegation comes back, and giving it back commits them). A task polls
//!   the leader for recalls ([`PlaitFs::serve_recalls`]) and gives recalled or idle
//!   delegations back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use plait_proto::lock::{
    Conflict, LockError, LockKind, LockRange, LockSpec, LockType, SessionId, SetOutcome, WaitState,
    waiter_id,
};
use plait_proto::{ErrorCode, Ino, MetaOp, MetaQuery, MetaReply};
use tracing::{debug, error, warn};

use super::delegation::{DELEGATION_IDLE_MS, DELEGATIONS_MAX, Delegated, Wake};
use super::{FsError, PlaitFs, lock, unexpected};
use crate::session::Session;

/// How often a blocked request checks whether its process got a signal, in ms.
const SIGNAL_POLL_MS: u64 = 100;

/// Pause after a failed wait poll (no leader during a failover), in milliseconds.
const WAIT_RETRY_MS: u64 = 200;

/// Stripes of the per-(inode, owner) operation locks.
const OWNER_STRIPES: usize = 64;

/// Longest a request that must not block (F_SETLK, F_GETLK) waits for another mount to
/// give a delegation back, in milliseconds; a dead holder's delegation goes with its
/// lease (10 s by default).
const RECALL_NOWAIT_MAX_MS: u64 = 30_000;

/// Longest single poll for a recalled delegation to go, or for recalls, in ms.
const RECALL_POLL_MS: u64 = 1_000;

/// Most times one lock request goes back and forth between the mount's table and the
/// group (a delegation granted, recalled, given back...) before it gives up.
const LOCK_ROUNDS_MAX: u32 = 64;

/// How often the recall task looks for idle delegations, in milliseconds.
const IDLE_SWEEP_MS: u64 = 5_000;

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
    /// Files delegated to this mount, and files a delegation may be on its way for.
    delegations: std::sync::Mutex<Delegations>,
    /// Wakes the recall task when the first delegation arrives.
    delegation_added: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Delegations {
    held: HashMap<Ino, Arc<Delegated>>,
    /// A `SetLock` asking for a delegation is in flight: a recall of the file may come
    /// before the answer does.
    asking: HashSet<Ino>,
    /// Being given back by a task.
    returning: HashSet<Ino>,
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
            delegations: std::sync::Mutex::new(Delegations::default()),
            delegation_added: tokio::sync::Notify::new(),
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

/// What the group answered a lock request.
enum GroupLock {
    Granted,
    Delegated,
    Recalling,
}

fn local_error(e: LockError) -> FsError {
    FsError::code(plait_proto::lock::error_code(&e), e.to_string())
}

fn interrupted_error() -> FsError {
    FsError::code(ErrorCode::Interrupted, "lock wait interrupted by a signal")
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

    pub(super) fn session(&self) -> Result<Arc<Session>, FsError> {
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

    /// The file's delegation, if this mount holds one.
    fn delegated(&self, ino: Ino) -> Option<Arc<Delegated>> {
        lock(&self.locks.delegations).held.get(&ino).cloned()
    }

    /// Forgets a delegation that was given back (if it is still the one in the map).
    fn forget_delegation(&self, ino: Ino, d: &Arc<Delegated>) {
        let mut ds = lock(&self.locks.delegations);
        if ds.held.get(&ino).is_some_and(|held| Arc::ptr_eq(held, d)) {
            ds.held.remove(&ino);
        }
    }

    /// F_GETLK: the conflicting lock, if any.
    pub async fn getlk(&self, call: LockCall) -> Result<Option<Conflict>, FsError> {
        self.settle_pending(call.ino).await?;
        let session = self.session()?.id();
        let spec = call.spec(call.lock_type.unwrap_or(LockType::Write))?;
        let deadline = Instant::now() + Duration::from_millis(RECALL_NOWAIT_MAX_MS);
        for _ in 0..LOCK_ROUNDS_MAX {
            if let Some(d) = self.delegated(call.ino) {
                let table = d.table.lock().await;
                if !table.returned {
                    return Ok(table.test(d.session, &spec));
                }
            }
            match self
                .client
                .query(MetaQuery::TestLock {
                    ino: call.ino,
                    session,
                    spec,
                })
                .await?
            {
                MetaReply::LockConflict(c) => return Ok(c),
                MetaReply::LockRecalling => {
                    self.recall(call.ino, session, Some(deadline), &|| false)
                        .await?
                }
                other => return Err(unexpected("TestLock", &other)),
            }
        }
        Err(FsError::code(
            ErrorCode::NoLocks,
            "the file's lock delegation kept moving",
        ))
    }

    /// F_SETLK / F_SETLKW / flock: takes, converts or releases a lock. A blocking request
    /// waits (on the leader, or in the mount's table of a delegated file); `interrupted`
    /// is polled every [`SIGNAL_POLL_MS`] and, once it says the process got a signal, the
    /// wait is withdrawn and EINTR returned. Answers whether the file's cached data must
    /// be dropped (the lock came from the group: another mount may have written).
    pub async fn setlk(
        &self,
        call: LockCall,
        sleep: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<bool, FsError> {
        self.settle_pending(call.ino).await?;
        let Some(lock_type) = call.lock_type else {
            self.unlock(call).await?;
            return Ok(false);
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
        let deadline =
            (!sleep).then(|| Instant::now() + Duration::from_millis(RECALL_NOWAIT_MAX_MS));
        let mut invalidate = false;
        for _ in 0..LOCK_ROUNDS_MAX {
            // A delegation given back meanwhile sends the request on to the group.
            if let Some(d) = self.delegated(call.ino)
                && self
                    .local_setlk(&d, &session, call, spec, sleep, &interrupted)
                    .await?
            {
                return Ok(invalidate);
            }
            match self
                .group_setlk(call, spec, id, sleep, &interrupted)
                .await?
            {
                GroupLock::Granted => {
                    self.lock_granted(call.ino);
                    return Ok(true);
                }
                GroupLock::Delegated => {
                    // Another mount may have written the file before: drop caches once.
                    self.lock_granted(call.ino);
                    invalidate = true;
                }
                GroupLock::Recalling => self.recall(call.ino, id, deadline, &interrupted).await?,
            }
        }
        Err(FsError::code(
            ErrorCode::NoLocks,
            "the file's lock delegation kept moving",
        ))
    }

    /// A lock request in the mount's table of a delegated file. `Ok(false)` if the
    /// delegation is no longer usable (given back, or its session is gone): ask the group.
    async fn local_setlk(
        &self,
        d: &Arc<Delegated>,
        session: &Session,
        call: LockCall,
        spec: LockSpec,
        sleep: bool,
        interrupted: &impl Fn() -> bool,
    ) -> Result<bool, FsError> {
        let seq = self.locks.next_seq.fetch_add(1, Ordering::Relaxed);
        let wid = waiter_id(d.session, seq);
        let stripe = self.locks.stripe(call.ino, call.owner).lock().await;
        let mut table = d.table.lock().await;
        if table.returned {
            return Ok(false);
        }
        if !session.is_live(d.session) {
            // The group dropped it with the session; its locks are lost (and fenced).
            d.give_back(&mut table);
            drop(table);
            self.forget_delegation(call.ino, d);
            return Ok(false);
        }
        let holding = Holding {
            session: d.session,
            fh: call.fh,
        };
        let known = lock(&self.locks.owners)
            .insert((call.ino, call.owner), holding)
            .is_some();
        let forget = |fs: &Self| {
            if !known {
                lock(&fs.locks.owners).remove(&(call.ino, call.owner));
            }
        };
        let (outcome, rx) = match table.set(d.session, &spec, sleep.then_some(wid)) {
            Ok(r) => r,
            Err(e) => {
                forget(self);
                return Err(local_error(e));
            }
        };
        drop(table);
        drop(stripe);
        match (outcome, rx) {
            (SetOutcome::Granted, _) => Ok(true),
            (SetOutcome::Queued, Some(rx)) => self.local_wait(d, rx, wid, call, interrupted).await,
            (other, _) => {
                forget(self);
                Err(outcome_error(other))
            }
        }
    }

    /// Waits for a request queued in the mount's table; withdraws it on a signal.
    async fn local_wait(
        &self,
        d: &Arc<Delegated>,
        mut rx: tokio::sync::oneshot::Receiver<Wake>,
        wid: u64,
        call: LockCall,
        interrupted: &impl Fn() -> bool,
    ) -> Result<bool, FsError> {
        loop {
            tokio::select! {
                wake = &mut rx => return match wake {
                    Ok(Wake::Granted) => Ok(true),
                    Ok(Wake::Failed(e)) => Err(local_error(e)),
                    Ok(Wake::Retry) | Err(_) => Ok(false),
                },
                _ = tokio::time::sleep(Duration::from_millis(SIGNAL_POLL_MS)) => {
                    if !interrupted() {
                        continue;
                    }
                    if d.table.lock().await.cancel(wid) {
                        return Err(interrupted_error());
                    }
                    // Granted or given back meanwhile: the wake-up is on its way.
                    if let Ok(Wake::Granted) = rx.await {
                        let unlock = LockCall { lock_type: None, ..call };
                        if let Err(e) = self.unlock(unlock).await {
                            warn!(ino = call.ino, error = %e, "returning a lock granted during a signal failed");
                        }
                    }
                    return Err(interrupted_error());
                }
            }
        }
    }

    /// A lock request to the group. Asks for a delegation of the file too, unless this
    /// mount holds many already.
    async fn group_setlk(
        &self,
        call: LockCall,
        spec: LockSpec,
        id: SessionId,
        sleep: bool,
        interrupted: &impl Fn() -> bool,
    ) -> Result<GroupLock, FsError> {
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
        let delegate = {
            let mut ds = lock(&self.locks.delegations);
            let ask = ds.held.len() < DELEGATIONS_MAX;
            if ask {
                ds.asking.insert(call.ino);
            }
            ask
        };
        let op = MetaOp::SetLock {
            ino: call.ino,
            session: id,
            spec,
            wait: sleep.then_some(seq),
            delegate,
        };
        let reply = self.client.meta(op).await;
        {
            let mut ds = lock(&self.locks.delegations);
            if let Ok(MetaReply::LockDelegated) = reply {
                // Two requests of this mount may both be told so: keep the table the
                // first one started (it may hold locks already).
                let live = ds
                    .held
                    .get(&call.ino)
                    .is_some_and(|d| d.session == id && !d.is_gone());
                if !live {
                    debug!(ino = call.ino, session = id, "lock delegation received");
                    ds.held.insert(call.ino, Arc::new(Delegated::new(id)));
                    self.locks.delegation_added.notify_one();
                }
            }
            if delegate {
                ds.asking.remove(&call.ino);
            }
        }
        // A definite refusal to an owner that held nothing here leaves it holding nothing:
        // forget it, so its inode's writes are not fenced and its close costs no request.
        if !known
            && matches!(
                reply,
                Ok(
                    MetaReply::LockSet(SetOutcome::WouldBlock | SetOutcome::Deadlock)
                        | MetaReply::LockRecalling
                )
            )
        {
            lock(&self.locks.owners).remove(&(call.ino, call.owner));
        }
        drop(stripe);
        let outcome = match reply {
            Ok(MetaReply::LockSet(o)) => o,
            Ok(MetaReply::LockDelegated) => return Ok(GroupLock::Delegated),
            Ok(MetaReply::LockRecalling) => return Ok(GroupLock::Recalling),
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
                self.wait_granted(call.ino, id, seq, spec, interrupted)
                    .await?
            }
            other => return Err(outcome_error(other)),
        }
        Ok(GroupLock::Granted)
    }

    /// Another session holds the file's delegation: asks for it back and waits until it
    /// is gone, until `deadline` (then EAGAIN) or a signal (EINTR).
    async fn recall(
        &self,
        ino: Ino,
        session: SessionId,
        deadline: Option<Instant>,
        interrupted: &impl Fn() -> bool,
    ) -> Result<(), FsError> {
        match self
            .client
            .meta(MetaOp::RecallDelegation { ino, session })
            .await?
        {
            MetaReply::LockRecalling => {}
            MetaReply::Empty => return Ok(()),
            other => return Err(unexpected("RecallDelegation", &other)),
        }
        let query = MetaQuery::Delegation { ino };
        let current = match self.client.query(query.clone()).await? {
            MetaReply::Delegated(None) => return Ok(()),
            held @ MetaReply::Delegated(Some(_)) => held,
            other => return Err(unexpected("Delegation", &other)),
        };
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(FsError::code(
                    ErrorCode::WouldBlock,
                    "another mount holds the file's locks and did not give them back",
                ));
            }
            let poll = self
                .client
                .wait_change(query.clone(), current.clone(), RECALL_POLL_MS);
            tokio::pin!(poll);
            let answer = loop {
                tokio::select! {
                    r = &mut poll => break r,
                    _ = tokio::time::sleep(Duration::from_millis(SIGNAL_POLL_MS)) => {
                        if interrupted() {
                            return Err(interrupted_error());
                        }
                    }
                }
            };
            match answer {
                Ok(a) if a != current => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    debug!(ino, error = %e, "recall poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(WAIT_RETRY_MS)).await;
                }
            }
        }
    }

    /// Gives the delegation of `ino` back: commits its buffered bytes, then hands its
    /// held locks to the group. Queued local requests start over against the group.
    async fn give_back(&self, ino: Ino) {
        let Some(d) = self.delegated(ino) else {
            if !lock(&self.locks.delegations).asking.contains(&ino) {
                // Not known here (lost track of it): nothing is held under it here.
                if let Ok(session) = self.session() {
                    let op = MetaOp::ReturnDelegation {
                        ino,
                        session: session.id(),
                        holders: Vec::new(),
                    };
                    if let Err(e) = self.client.meta(op).await {
                        warn!(ino, error = %e, "giving back an unknown delegation failed");
                    }
                }
            }
            return;
        };
        let mut table = d.table.lock().await;
        if table.returned {
            return;
        }
        // The next holder must read what was written under the delegation.
        if let Err(e) = self.flush_durable(ino).await {
            warn!(ino, error = %e, "committing buffered bytes before giving a lock delegation back failed");
        }
        let op = MetaOp::ReturnDelegation {
            ino,
            session: d.session,
            holders: table.holders(),
        };
        match self.client.meta(op).await {
            Ok(_) => {}
            Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::NotLeader) => {
                // Asked again at the next poll (the recall stays until it is answered).
                warn!(ino, error = %e, "giving a lock delegation back failed; will retry");
                return;
            }
            Err(e) => {
                error!(ino, error = %e, "giving a lock delegation back was refused; dropping it")
            }
        }
        debug!(ino, session = d.session, "lock delegation given back");
        d.give_back(&mut table);
        drop(table);
        self.forget_delegation(ino, &d);
    }

    /// Serves recalls of this mount's delegations until the mount ends (run as a task):
    /// long-polls the leader for recalled files and gives each back; gives back
    /// delegations idle for [`DELEGATION_IDLE_MS`].
    pub async fn serve_recalls(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        loop {
            if last_sweep.elapsed() >= Duration::from_millis(IDLE_SWEEP_MS) {
                last_sweep = Instant::now();
                self.give_back_idle().await;
            }
            if lock(&self.locks.delegations).held.is_empty() {
                let _ = tokio::time::timeout(
                    Duration::from_millis(IDLE_SWEEP_MS),
                    self.locks.delegation_added.notified(),
                )
                .await;
                continue;
            }
            let Ok(session) = self.session() else { return };
            let answer = self
                .client
                .wait_change(
                    MetaQuery::Recalls {
                        session: session.id(),
                    },
                    MetaReply::Recalls(Vec::new()),
                    RECALL_POLL_MS,
                )
                .await;
            let inos = match answer {
                Ok(MetaReply::Recalls(inos)) => inos,
                Ok(other) => {
                    warn!(reply = ?other, "unexpected answer to a recall poll");
                    tokio::time::sleep(Duration::from_millis(WAIT_RETRY_MS)).await;
                    continue;
                }
                Err(e) => {
                    debug!(error = %e, "recall poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(WAIT_RETRY_MS)).await;
                    continue;
                }
            };
            let mut started = false;
            for ino in inos {
                if !lock(&self.locks.delegations).returning.insert(ino) {
                    continue;
                }
                started = true;
                let fs = self.clone();
                tokio::spawn(async move {
                    fs.give_back(ino).await;
                    lock(&fs.locks.delegations).returning.remove(&ino);
                });
            }
            if !started {
                // Every recalled file is being given back already (or a delegation is
                // on its way): do not spin on the same answer.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Gives back every delegation with nothing held for [`DELEGATION_IDLE_MS`].
    async fn give_back_idle(&self) {
        let all: Vec<(Ino, Arc<Delegated>)> = lock(&self.locks.delegations)
            .held
            .iter()
            .map(|(ino, d)| (*ino, d.clone()))
            .collect();
        for (ino, d) in all {
            let idle = {
                let table = d.table.lock().await;
                table.is_idle()
                    && table.last_used.elapsed() >= Duration::from_millis(DELEGATION_IDLE_MS)
            };
            if idle {
                self.give_back(ino).await;
            }
        }
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
        let spec = call.spec(LockType::Write)?;
        if let Some(d) = self.delegated(call.ino).filter(|d| d.session == session) {
            let mut table = d.table.lock().await;
            if !table.returned {
                return table
                    .unlock(session, call.owner, spec.range)
                    .map_err(local_error);
            }
        }
        self.flush(call.ino).await?;
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

    /// Runs `f` if lock owner `owner` holds nothing on `ino` here, under the owner's
    /// stripe (so a lock request in flight for it makes this `None`, as does a lock).
    pub(super) fn with_idle_owner<R>(
        &self,
        ino: Ino,
        owner: u64,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        let _stripe = self.locks.stripe(ino, owner).try_lock().ok()?;
        if lock(&self.locks.owners).contains_key(&(ino, owner)) {
            return None;
        }
        Some(f())
    }

    /// True if a FLUSH (close of a descriptor) of `ino` by lock owner `owner` has nothing
    /// to do: no bytes buffered or being flushed, and the owner holds nothing here. Lets
    /// the mount answer in the kernel request's own thread; false means "run
    /// [`Self::flush`] and [`Self::release_lock_owner`]". Checked under the same owner
    /// stripe a lock request holds, so a request in flight sends it the slow way.
    pub fn flush_is_noop(&self, ino: Ino, owner: u64) -> bool {
        let Ok(_stripe) = self.locks.stripe(ino, owner).try_lock() else {
            return false;
        };
        if lock(&self.locks.owners).contains_key(&(ino, owner)) || self.pending_dir(ino).is_some() {
            return false;
        }
        match self.inode_entry(ino) {
            None => true,
            Some(entry) => match entry.flush_lock.try_lock() {
                Ok(_flushing) => entry.lock().is_clean(),
                Err(_) => false,
            },
        }
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
        if let Some(d) = self.delegated(ino).filter(|d| d.session == session) {
            let mut table = d.table.lock().await;
            if !table.returned {
                table.release_owner(session, owner);
                lock(&self.locks.owners).remove(&(ino, owner));
                return Ok(());
            }
        }
        self.flush_durable(ino).await?;
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
