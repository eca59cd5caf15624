//! Directory create delegations on the mount (the group's half is
//! `plait_meta::apply::dir_delegation`).
//!
//! A mount that creates files one after another in a directory asks for the directory.
//! While it holds it, no other session adds or removes names there, so this mount knows
//! the directory's names exactly: it answers lookups of names that do not exist itself,
//! creates files locally (inode numbers from ranges the group handed out), and commits a
//! file's create together with its bytes in one `DirBatch` when the file is first flushed
//! (its close, at the latest). A small-file create then costs one commit instead of a
//! parent GETATTR, a negative LOOKUP and two commits.
//!
//! What close guarantees is unchanged: a close returns after the file and its bytes are
//! committed. A file created here and not yet flushed is invisible to other mounts (like
//! a file created and not yet flushed on NFS with delegations); a recall (another
//! session changing the directory's names), an idle timeout or an unmount commits such
//! files before the directory is given back.
//!
//! Invariant: an inode in `pending` is known only to this mount; any operation that
//! would need the group to know it (open by another handle, setattr, links, locks,
//! xattr changes) first commits it ([`PlaitFs::settle_pending`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plait_proto::lock::SessionId;
use plait_proto::meta::DirBatchOp;
use plait_proto::{
    Attr, ErrorCode, FileKind, Ino, MetaOp, MetaQuery, MetaReply, RpcError, Timestamp,
};
use tracing::{debug, warn};

use super::{FsError, OpenIntent, PlaitFs, lock, unexpected};

/// Creates in one directory within [`DIR_INTEREST_WINDOW_MS`] after which the mount asks
/// for the directory (a single create is cheaper the ordinary way).
const DIR_ASK_AFTER_CREATES: u32 = 2;

/// Window in which creates count towards asking, in milliseconds.
const DIR_INTEREST_WINDOW_MS: u64 = 2_000;

/// Directories with counted creates the mount remembers (cleared when full).
const DIR_INTEREST_MAX: usize = 4096;

/// How long a directory the group refused (or this mount gave back for a change of its
/// own) is not asked for again, in milliseconds.
const DIR_REFUSED_BACKOFF_MS: u64 = 5_000;

/// Directories one mount holds at once.
const DIRS_HELD_MAX: usize = 64;

/// Names a directory may have for the mount to hold it (it keeps them all in memory).
const DIR_NAMES_MAX: usize = 65_536;

/// A held directory unused this long is given back, in milliseconds.
const DIR_IDLE_MS: u64 = 5_000;

/// How long an op waits for another mount to give a directory back before it fails, in
/// milliseconds (a dead holder loses it when its session lease runs out).
const DIR_RECALL_WAIT_MAX_MS: u64 = 30_000;

/// Longest single wait for a change of a directory's holder or of this session's
/// recalls, in milliseconds.
const DIR_POLL_MS: u64 = 1_000;

/// Pause after a failed poll or give-back, in milliseconds.
const DIR_RETRY_MS: u64 = 200;

/// The mount's directory delegations and what it needs to decide to ask for one.
#[derive(Debug, Default)]
pub(super) struct DirDelegations {
    inner: std::sync::Mutex<Inner>,
    /// Woken when a directory is delegated (the recall poll then starts).
    added: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Directories held, by inode.
    dirs: HashMap<Ino, HeldDir>,
    /// Files created here and not yet committed → their directory and name.
    pending: HashMap<Ino, (Ino, Vec<u8>)>,
    /// Creates counted per directory: (count, first in the window).
    interest: HashMap<Ino, (u32, Instant)>,
    /// Directories the group refused, and until when not to ask again.
    refused: HashMap<Ino, Instant>,
    /// Directories a `DelegateDir` is in flight for.
    asking: HashSet<Ino>,
}

/// One held directory.
#[derive(Debug)]
struct HeldDir {
    /// Committed names (all of them: nobody else changes them while it is held).
    names: HashSet<Vec<u8>>,
    /// Names created here and not yet committed → (inode, attributes at create).
    created: HashMap<Vec<u8>, Attr>,
    /// Unused inode numbers, `[next, end)` ranges.
    free: VecDeque<(Ino, Ino)>,
    /// The directory's attributes (for setgid and GETATTR) and when they were fetched.
    attr: Attr,
    attr_at: Instant,
    /// Being given back: no new local creates.
    leaving: bool,
    last_used: Instant,
    /// The session it was delegated to: batches carry it (a mount that opened a new
    /// session after losing this one cannot commit under it any more).
    session: SessionId,
}

impl HeldDir {
    /// Takes an unused inode number, if one is left.
    fn take_ino(&mut self) -> Option<Ino> {
        loop {
            let (next, end) = self.free.front_mut()?;
            if *next < *end {
                let ino = *next;
                *next += 1;
                return Some(ino);
            }
            self.free.pop_front();
        }
    }
}

/// The local clock as a timestamp (creates answered here; the commit sets the real ones).
fn now_timestamp() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nsec: since.subsec_nanos(),
    }
}

/// The setgid bit of a directory.
const S_ISGID: u16 = 0o2000;

impl PlaitFs {
    /// A lookup this mount answers itself because it holds `parent`: a file it created
    /// and has not committed, or "no such name". `None`: ask the ordinary way.
    pub(super) fn delegated_lookup(
        &self,
        parent: Ino,
        name: &[u8],
    ) -> Option<Result<Attr, FsError>> {
        let inner = lock(&self.dir_delegations.inner);
        let dir = inner.dirs.get(&parent)?;
        if let Some(attr) = dir.created.get(name) {
            let attr = attr.clone();
            drop(inner);
            return Some(Ok(self.with_dirty_size(attr)));
        }
        if dir.names.contains(name) {
            return None;
        }
        Some(Err(FsError::code(
            ErrorCode::NotFound,
            format!(
                "no {:?} in directory {parent}",
                String::from_utf8_lossy(name)
            ),
        )))
    }

    /// Attributes this mount answers itself: of a file it created and has not committed,
    /// or of a directory it holds (fetched within the attribute timeout, with the times
    /// of its own creates).
    pub(super) fn delegated_attr(&self, ino: Ino) -> Option<Attr> {
        let inner = lock(&self.dir_delegations.inner);
        if let Some((dir, name)) = inner.pending.get(&ino) {
            let attr = inner
                .dirs
                .get(dir)
                .and_then(|d| d.created.get(name))
                .cloned()?;
            drop(inner);
            return Some(self.with_dirty_size(attr));
        }
        let dir = inner.dirs.get(&ino)?;
        (dir.attr_at.elapsed() < self.config.attr_ttl()).then(|| dir.attr.clone())
    }

    /// The directory of `ino` if this mount created it there and has not committed it.
    pub(super) fn pending_dir(&self, ino: Ino) -> Option<Ino> {
        lock(&self.dir_delegations.inner)
            .pending
            .get(&ino)
            .map(|(dir, _)| *dir)
    }

    /// Creates `parent/name` locally if this mount holds `parent` (asking for it after a
    /// few creates there). `None`: create the ordinary way.
    pub(super) async fn create_delegated(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
        intent: OpenIntent,
    ) -> Result<Option<(Attr, u64)>, FsError> {
        if !self.config.delegate_dirs || !self.ensure_dir(parent).await {
            return Ok(None);
        }
        let again = {
            let mut inner = lock(&self.dir_delegations.inner);
            let Some(dir) = inner.dirs.get_mut(&parent) else {
                return Ok(None);
            };
            if dir.leaving || !self.session().is_ok_and(|s| s.id() == dir.session) {
                dir.leaving = true;
                return Ok(None);
            }
            dir.last_used = Instant::now();
            if let Some(existing) = dir.created.get(name) {
                if intent.exclusive {
                    return Err(FsError::code(ErrorCode::Exists, "file exists"));
                }
                // Opened again while still ours alone: commit it first, then open it
                // the ordinary way (through the caller).
                Err(existing.ino)
            } else {
                Ok(())
            }
        };
        if let Err(ino) = again {
            self.settle_pending(ino).await?;
            return Ok(None);
        }
        let attr = {
            let mut inner = lock(&self.dir_delegations.inner);
            let Some(dir) = inner.dirs.get_mut(&parent) else {
                return Ok(None);
            };
            if dir.leaving || dir.created.contains_key(name) {
                return Ok(None);
            }
            if dir.names.contains(name) {
                return Ok(None);
            }
            let Some(ino) = dir.take_ino() else {
                return Ok(None);
            };
            let now = now_timestamp();
            let setgid = dir.attr.perm & S_ISGID != 0;
            let attr = Attr {
                ino,
                kind: FileKind::File,
                perm: perm & 0o7777,
                nlink: 1,
                uid,
                gid: if setgid { dir.attr.gid } else { gid },
                rdev: 0,
                size: 0,
                allocated_bytes: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
            };
            dir.created.insert(name.to_vec(), attr.clone());
            dir.attr.mtime = now;
            dir.attr.ctime = now;
            inner.pending.insert(ino, (parent, name.to_vec()));
            attr
        };
        let fh = self.open_created(&attr);
        Ok(Some((attr, fh)))
    }

    /// True if this mount holds `dir` now, asking for it if creates there come in a run.
    async fn ensure_dir(&self, dir: Ino) -> bool {
        let now = Instant::now();
        {
            let mut inner = lock(&self.dir_delegations.inner);
            if let Some(held) = inner.dirs.get(&dir) {
                if !held.leaving && !held.free.iter().all(|(next, end)| next >= end) {
                    return true;
                }
                if held.leaving {
                    return false;
                }
                // Out of inode numbers: ask for another range below.
            } else {
                if inner.refused.get(&dir).is_some_and(|until| *until > now) {
                    return false;
                }
                if inner.interest.len() >= DIR_INTEREST_MAX {
                    inner.interest.clear();
                }
                let window = Duration::from_millis(DIR_INTEREST_WINDOW_MS);
                let counted = inner.interest.entry(dir).or_insert((0, now));
                if now.duration_since(counted.1) > window {
                    *counted = (0, now);
                }
                counted.0 += 1;
                if counted.0 < DIR_ASK_AFTER_CREATES || inner.dirs.len() >= DIRS_HELD_MAX {
                    return false;
                }
            }
            if !inner.asking.insert(dir) {
                return false;
            }
        }
        let granted = self.ask_dir(dir).await;
        let mut inner = lock(&self.dir_delegations.inner);
        inner.asking.remove(&dir);
        match granted {
            Ok(true) => {
                inner.interest.remove(&dir);
                true
            }
            Ok(false) => {
                let until = now + Duration::from_millis(DIR_REFUSED_BACKOFF_MS);
                inner.refused.retain(|_, t| *t > now);
                inner.refused.insert(dir, until);
                false
            }
            Err(e) => {
                debug!(dir, error = %e, "asking for a directory failed");
                false
            }
        }
    }

    /// Asks the group for `dir` (or for one more inode range of it); on a first grant
    /// fetches its names and attributes. `Ok(false)`: refused.
    async fn ask_dir(&self, dir: Ino) -> Result<bool, FsError> {
        let session = self.session()?.id();
        let (first_ino, count) = match self
            .client
            .meta(MetaOp::DelegateDir { dir, session })
            .await?
        {
            MetaReply::DirDelegated { first_ino, count } => (first_ino, count),
            MetaReply::DirBusy => return Ok(false),
            other => return Err(unexpected("DelegateDir", &other)),
        };
        let range = (first_ino, first_ino.saturating_add(count));
        let stale = match lock(&self.dir_delegations.inner).dirs.get_mut(&dir) {
            Some(held) if held.session == session => {
                held.free.push_back(range);
                return Ok(true);
            }
            Some(_) => true,
            None => false,
        };
        if stale {
            // Still known here under a lost session: that one must be settled first.
            self.client
                .meta(MetaOp::ReturnDirDelegation { dir, session })
                .await?;
            return Ok(false);
        }
        let fetched = async {
            let names = self.dir_names(dir).await?;
            let attr = match self.client.query(MetaQuery::GetAttr { ino: dir }).await? {
                MetaReply::Attr(a) => a,
                other => return Err(unexpected("GetAttr", &other)),
            };
            Ok::<_, FsError>((names, attr))
        }
        .await;
        let (names, attr) = match fetched {
            Ok((Some(names), attr)) => (names, attr),
            Ok((None, _)) | Err(_) => {
                // Too large to hold (or unreadable): give it back at once.
                let _ = self
                    .client
                    .meta(MetaOp::ReturnDirDelegation { dir, session })
                    .await;
                return fetched.map(|_| false);
            }
        };
        debug!(
            dir,
            names = names.len(),
            first_ino,
            count,
            "directory delegated"
        );
        let now = Instant::now();
        lock(&self.dir_delegations.inner).dirs.insert(
            dir,
            HeldDir {
                names,
                created: HashMap::new(),
                free: VecDeque::from([range]),
                attr,
                attr_at: now,
                leaving: false,
                last_used: now,
                session,
            },
        );
        self.dir_delegations.added.notify_one();
        Ok(true)
    }

    /// Every name of `dir`, or `None` if it has more than [`DIR_NAMES_MAX`].
    async fn dir_names(&self, dir: Ino) -> Result<Option<HashSet<Vec<u8>>>, FsError> {
        Ok(self
            .read_dir_all(dir, DIR_NAMES_MAX)
            .await?
            .map(|entries| entries.into_iter().map(|e| e.name).collect()))
    }

    /// Commits a file created here, with `writes` (its buffered bytes, possibly none), in
    /// one `DirBatch`. `Ok(false)`: the file is not pending here (commit the ordinary
    /// way). A refusal that means the delegation is lost (session expired) drops the
    /// file: it can never be committed under its number.
    pub(super) async fn commit_created(
        &self,
        ino: Ino,
        writes: Vec<DirBatchOp>,
    ) -> Result<bool, FsError> {
        let (dir, name, attr, session) = {
            let inner = lock(&self.dir_delegations.inner);
            let Some((dir, name)) = inner.pending.get(&ino).cloned() else {
                return Ok(false);
            };
            let Some(held) = inner.dirs.get(&dir) else {
                return Ok(false);
            };
            let Some(attr) = held.created.get(&name).cloned() else {
                return Ok(false);
            };
            (dir, name, attr, held.session)
        };
        let mut ops = Vec::with_capacity(1 + writes.len());
        ops.push(DirBatchOp::CreateFile {
            name: name.clone(),
            ino,
            perm: attr.perm,
            uid: attr.uid,
            gid: attr.gid,
        });
        ops.extend(writes);
        let generation = self.statahead.begin_change();
        let result = self
            .client
            .meta(MetaOp::DirBatch { dir, session, ops })
            .await;
        let lost = matches!(&result, Err(e) if matches!(e.code, ErrorCode::SessionExpired | ErrorCode::Stale));
        if result.is_ok() || lost {
            let mut inner = lock(&self.dir_delegations.inner);
            inner.pending.remove(&ino);
            if let Some(d) = inner.dirs.get_mut(&dir) {
                d.created.remove(&name);
                if result.is_ok() {
                    d.names.insert(name.clone());
                } else {
                    d.leaving = true;
                }
            }
        }
        match result {
            Ok(MetaReply::Batch(replies)) => {
                if let Some(MetaReply::Attr(a)) = replies.last() {
                    self.statahead.updated(generation, a);
                }
                Ok(true)
            }
            Ok(other) => {
                self.statahead.invalidate();
                Err(unexpected("DirBatch", &other))
            }
            Err(e) => {
                self.statahead.invalidate();
                if lost {
                    warn!(ino, dir, error = %e, "a file created under a lost directory delegation is dropped");
                    return Err(FsError::code(
                        ErrorCode::SessionExpired,
                        format!("file {ino} was created under a delegation this mount lost: {e}"),
                    ));
                }
                Err(e.into())
            }
        }
    }

    /// Commits `ino` if this mount created it and has not committed it yet (with its
    /// buffered bytes), so the group knows it before an operation that needs that.
    pub(super) async fn settle_pending(&self, ino: Ino) -> Result<(), FsError> {
        if self.pending_dir(ino).is_none() {
            return Ok(());
        }
        self.flush_pending(ino).await
    }

    /// Flushes a pending file through its flush path (which commits its create).
    async fn flush_pending(&self, ino: Ino) -> Result<(), FsError> {
        let entry = self.inode_entry_or_new(ino);
        let guard = entry.flush_lock.lock().await;
        let result = self.flush_locked(ino, &entry).await;
        drop(guard);
        self.forget_if_idle(ino);
        result
    }

    /// Commits every file created under `dir` that this mount has not committed yet (its
    /// own listing of the directory must show them).
    pub(super) async fn settle_dir(&self, dir: Ino) -> Result<(), FsError> {
        let pending: Vec<Ino> = match lock(&self.dir_delegations.inner).dirs.get(&dir) {
            Some(held) => held.created.values().map(|a| a.ino).collect(),
            None => return Ok(()),
        };
        for ino in pending {
            self.flush_pending(ino).await?;
        }
        Ok(())
    }

    /// Commits every file created under `dir` and gives the directory back.
    async fn give_back_dir(&self, dir: Ino) -> Result<(), FsError> {
        let pending: Vec<Ino> = {
            let mut inner = lock(&self.dir_delegations.inner);
            let asking = inner.asking.contains(&dir);
            match inner.dirs.get_mut(&dir) {
                Some(held) => {
                    held.leaving = true;
                    held.created.values().map(|a| a.ino).collect()
                }
                // Granted and still being set up here: the setup finishes first.
                None if asking => return Ok(()),
                // Not known here (lost track of it): nothing was created under it.
                None => Vec::new(),
            }
        };
        for ino in pending {
            if let Err(e) = self.flush_pending(ino).await {
                // A file lost with the delegation is not retried; anything else is.
                if self.pending_dir(ino).is_some() {
                    return Err(e);
                }
            }
        }
        let session = match lock(&self.dir_delegations.inner).dirs.get(&dir) {
            Some(held) => held.session,
            None => self.session()?.id(),
        };
        self.client
            .meta(MetaOp::ReturnDirDelegation { dir, session })
            .await?;
        let mut inner = lock(&self.dir_delegations.inner);
        if inner.dirs.get(&dir).is_some_and(|d| d.created.is_empty()) {
            inner.dirs.remove(&dir);
        }
        debug!(dir, "directory given back");
        Ok(())
    }

    /// Gives back every directory (unmount).
    pub(super) async fn give_back_all_dirs(&self) -> Result<(), FsError> {
        let dirs: Vec<Ino> = lock(&self.dir_delegations.inner)
            .dirs
            .keys()
            .copied()
            .collect();
        let mut first_error = Ok(());
        for dir in dirs {
            if let Err(e) = self.give_back_dir(dir).await {
                warn!(dir, error = %e, "giving a directory back failed");
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
        first_error
    }

    /// Before `op` changes names in a directory this mount holds (or removes one), gives
    /// that directory back, so the op does not have to recall it from ourselves.
    async fn leave_dirs_for(&self, op: &MetaOp) -> Result<(), FsError> {
        let dirs: Vec<Ino> = match op {
            MetaOp::Create { parent, .. }
            | MetaOp::Unlink { parent, .. }
            | MetaOp::Rmdir { parent, .. } => vec![*parent],
            MetaOp::Rename {
                parent, new_parent, ..
            } => vec![*parent, *new_parent],
            MetaOp::Link { new_parent, .. } => vec![*new_parent],
            _ => return Ok(()),
        };
        for dir in dirs {
            if lock(&self.dir_delegations.inner).dirs.contains_key(&dir) {
                self.give_back_dir(dir).await?;
                // Creates mixed with other changes: not worth asking again at once.
                let now = Instant::now();
                let mut inner = lock(&self.dir_delegations.inner);
                inner.refused.retain(|_, until| *until > now);
                inner
                    .refused
                    .insert(dir, now + Duration::from_millis(DIR_REFUSED_BACKOFF_MS));
            }
        }
        Ok(())
    }

    /// Proposes a namespace op, waiting while another mount gives back a directory it
    /// changes (bounded by [`DIR_RECALL_WAIT_MAX_MS`], then EAGAIN).
    pub(super) async fn meta_waiting(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        let deadline = Instant::now() + Duration::from_millis(DIR_RECALL_WAIT_MAX_MS);
        loop {
            if let Err(e) = self.leave_dirs_for(&op).await {
                return Err(match e {
                    FsError::Rpc(r) => r,
                    other => RpcError::new(ErrorCode::Io, other.to_string()),
                });
            }
            let dir = match self.client.meta(op.clone()).await? {
                MetaReply::DirRecalling { dir } => dir,
                reply => return Ok(reply),
            };
            debug!(dir, "waiting for another mount to give a directory back");
            self.wait_dir_returned(dir, deadline).await?;
        }
    }

    /// Waits until nobody holds `dir`, or `deadline` (EAGAIN).
    async fn wait_dir_returned(&self, dir: Ino, deadline: Instant) -> Result<(), RpcError> {
        let query = MetaQuery::DirDelegation { dir };
        loop {
            let current = match self.client.query(query.clone()).await? {
                MetaReply::Delegated(None) => return Ok(()),
                held @ MetaReply::Delegated(Some(_)) => held,
                other => {
                    return Err(RpcError::new(
                        ErrorCode::Protocol,
                        format!("unexpected reply to DirDelegation: {other:?}"),
                    ));
                }
            };
            if Instant::now() >= deadline {
                return Err(RpcError::new(
                    ErrorCode::WouldBlock,
                    format!("another mount holds directory {dir} and did not give it back"),
                ));
            }
            if let Err(e) = self
                .client
                .wait_change(query.clone(), current, DIR_POLL_MS)
                .await
            {
                debug!(dir, error = %e, "directory recall poll failed; retrying");
                tokio::time::sleep(Duration::from_millis(DIR_RETRY_MS)).await;
            }
        }
    }

    /// Gives back the directories the group recalls and those idle for
    /// [`DIR_IDLE_MS`]; runs for the life of the mount.
    pub async fn serve_dir_recalls(self: Arc<Self>) {
        loop {
            let held: Vec<(Ino, Instant)> = lock(&self.dir_delegations.inner)
                .dirs
                .iter()
                .map(|(dir, d)| (*dir, d.last_used))
                .collect();
            if held.is_empty() {
                let _ = tokio::time::timeout(
                    Duration::from_millis(DIR_IDLE_MS),
                    self.dir_delegations.added.notified(),
                )
                .await;
                continue;
            }
            for (dir, last_used) in &held {
                if last_used.elapsed() >= Duration::from_millis(DIR_IDLE_MS)
                    && let Err(e) = self.give_back_dir(*dir).await
                {
                    debug!(dir, error = %e, "giving back an idle directory failed");
                }
            }
            let Ok(session) = self.session() else { return };
            let answer = self
                .client
                .wait_change(
                    MetaQuery::DirRecalls {
                        session: session.id(),
                    },
                    MetaReply::Recalls(Vec::new()),
                    DIR_POLL_MS,
                )
                .await;
            match answer {
                Ok(MetaReply::Recalls(dirs)) => {
                    for dir in dirs {
                        if let Err(e) = self.give_back_dir(dir).await {
                            warn!(dir, error = %e, "giving back a recalled directory failed; retrying");
                            tokio::time::sleep(Duration::from_millis(DIR_RETRY_MS)).await;
                        }
                    }
                }
                Ok(other) => {
                    warn!(reply = ?other, "unexpected answer to a directory recall poll");
                    tokio::time::sleep(Duration::from_millis(DIR_RETRY_MS)).await;
                }
                Err(e) => {
                    debug!(error = %e, "directory recall poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(DIR_RETRY_MS)).await;
                }
            }
        }
    }
}
