//! Directory create delegations on the mount (the group's half is
//! `plait_meta::apply::dir_delegation`).
//!
//! A mount that creates files one after another in a directory asks for the directory.
//! While it holds it, no other session adds or removes names there, so this mount knows
//! the directory's names exactly: it answers lookups of names that do not exist itself,
//! creates files locally (inode numbers from ranges the group handed out), and commits
//! files' creates together with their bytes in `DirBatch`es.
//!
//! Close-behind: a close queues the file for the directory's next batch and returns; one
//! task per mount commits the queued files, many per commit, one batch at a time (the
//! files closed while a batch commits make the next one). `fsync`, and anything that
//! needs the group to know the file, waits for its commit. Other mounts see such a file
//! as soon as they look: a lookup of an absent name or a listing of the directory by
//! another session is answered `DirRecalling` by the group, the asker recalls the
//! directory, and this mount commits everything before giving it back. What a close
//! does not promise any more is durability against a crash of this mount (as on a
//! local disk, and as GlusterFS's default `flush-behind`): files closed in the last
//! batch interval are lost with it. `close_behind = false` (`--close-durable`) makes
//! every close wait for its commit; so do closes while batches fail or fall behind.
//!
//! Invariant: an inode in `pending` is known only to this mount; any operation that
//! would need the group to know it (open by another handle, setattr, links, locks,
//! xattr changes) first commits it ([`PlaitFs::settle_pending`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plait_proto::lock::SessionId;
use plait_proto::meta::{DIR_BATCH_OPS_MAX, DirBatchOp};
use plait_proto::{
    Attr, ErrorCode, FileKind, INLINE_BATCH_MAX_BYTES, Ino, MetaOp, MetaQuery, MetaReply, Request,
    RpcError, Timestamp,
};
use tracing::{debug, warn};

use super::extents::{EXTENT_WINDOW_BYTES, ExtentWindow};
use super::held_windows::HeldWindows;
use super::{FsError, NewFile, PlaitFs, check_name, lock, unexpected};

/// Creates in one directory within [`DIR_INTEREST_WINDOW_MS`] after which the mount asks
/// for the directory. A grant costs a commit and a listing of the directory, and its
/// give-back another commit, so it pays only for a run of creates: creates spread
/// round-robin over many directories (one every second or so in each) stay on the
/// ordinary path instead of taking a grant for every two or three files.
const DIR_ASK_AFTER_CREATES: u32 = 3;

/// Window in which creates count towards asking, in milliseconds.
const DIR_INTEREST_WINDOW_MS: u64 = 1_000;

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

/// Pause after a failed poll, give-back or batch, in milliseconds.
const DIR_RETRY_MS: u64 = 200;

/// Largest file an unlink-behind has the group reap in the unlink's own commit, in bytes;
/// larger ones are reaped by a `Reap` of their own after it.
const REAP_IN_BATCH_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Files one batch commits at most (each is a create and usually one write).
const BATCH_FILES_MAX: usize = 256;

/// How long the oldest queued file waits for others to share its batch, unless someone
/// waits for a commit, in milliseconds. Every commit costs the nodes CPU (about 1 ms at
/// the leader here) whatever it carries, so waiting a little for more files is what
/// makes batching pay on a busy host; it bounds what a crash of the mount can lose too.
const BATCH_LINGER_MS: u64 = 5;

/// Files queued in one directory beyond which a close waits for its commit.
const QUEUED_FILES_MAX: usize = 1024;

/// Inline bytes queued in one directory beyond which a close waits for its commit.
const QUEUED_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A batch in flight this long makes closes wait for their commits (the group is slow
/// or unreachable: closes must not run ahead of it), in milliseconds.
const BATCH_STALL_MS: u64 = 500;

/// Refused files remembered for the closes and syncs waiting on them.
const FAILED_MAX: usize = 4096;

/// Whether a flush of a file created under a held directory may return before the
/// file's `DirBatch` is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitWait {
    /// Return once committed (fsync, give-backs, anything the group must know).
    Committed,
    /// Return once queued for the next batch (close), unless the mount is configured
    /// durable on close or batches fail or fall behind.
    Queued,
    /// Return once queued: the caller waits for the commits itself (a give-back queues
    /// all its files first, so that they share batches).
    CallerWaits,
}

/// The mount's directory delegations and what it needs to decide to ask for one.
#[derive(Debug, Default)]
pub(super) struct DirDelegations {
    inner: std::sync::Mutex<Inner>,
    /// Woken when a directory is delegated (the recall poll then starts).
    added: tokio::sync::Notify,
    /// Woken when a file is queued for a batch.
    queued: tokio::sync::Notify,
    /// Woken (all waiters) after every batch, committed or not.
    committed: tokio::sync::Notify,
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
    /// Files queued for a batch or in the batch being committed.
    queued: HashSet<Ino>,
    /// Directories with queued files, in the order they got them (fair batching).
    ready: VecDeque<Ino>,
    /// Files whose batch was refused for good → the refusal (for their waiters).
    failed: HashMap<Ino, RpcError>,
    /// Unlinks refused for good → the refusal, for an unlink that waits for its commit
    /// (kept apart from `failed`: the name came back, and the file's own next close must
    /// not report the unlink's error).
    unlink_failed: HashMap<Ino, RpcError>,
    /// When the batch being committed was sent.
    in_flight_since: Option<Instant>,
    /// The last batch failed for a reason that may pass: closes wait for their commits.
    unhealthy: bool,
    /// Flushes and syncs waiting for a commit (the batch task then does not linger).
    waiting: usize,
    /// First windows of files the held directories guard: opens answered here.
    windows: HeldWindows,
}

/// A file queued for a batch: its create and its bytes, or the removal of one of the
/// directory's names.
#[derive(Debug)]
struct Queued {
    ino: Ino,
    name: Vec<u8>,
    /// An unlink of `name` (naming `ino`), not a file created here.
    unlink: bool,
    ops: Vec<DirBatchOp>,
    inline_bytes: usize,
    /// Commit it alone (a batch with it was refused: find which file was at fault).
    alone: bool,
    /// When it was queued.
    queued_at: Instant,
}

/// What a create under a held directory can do without a request.
enum HeldCreate {
    /// Created here (not committed yet).
    Created(Attr),
    /// O_EXCL of a name created here.
    Exists,
    /// Opened again before it was committed: commit it, then open it the ordinary way.
    Again(Ino),
    /// Not held (or no numbers left, or the name is committed): the ordinary way.
    NotHere,
}

/// What a flush does after queuing a file.
pub(super) enum AfterQueue {
    /// Return: the batch task commits it.
    Done,
    /// Wait for its commit.
    Wait,
    /// Wait for the batch it is in, then commit the new bytes the ordinary way.
    WaitThenOrdinary,
}

/// What the batch task does next.
enum NextBatch {
    /// Commit this batch.
    Ready(Batch),
    /// Wait this long for more files (or a waiter).
    Linger(Duration),
    /// Nothing is queued.
    Idle,
}

impl AfterQueue {
    /// True if the flush may return now.
    pub(super) fn is_done(&self) -> bool {
        matches!(self, AfterQueue::Done)
    }
}

/// One batch taken for commit.
#[derive(Debug)]
struct Batch {
    dir: Ino,
    session: SessionId,
    files: Vec<Queued>,
}

/// One held directory.
#[derive(Debug)]
struct HeldDir {
    /// Committed names → their inode (all of them: nobody else changes them while it is
    /// held). A name this mount removed leaves at once, before its unlink is committed.
    names: HashMap<Vec<u8>, Ino>,
    /// Inodes whose unlink from this directory is queued or being committed.
    unlinking: HashSet<Ino>,
    /// Names created here and not yet committed → (inode, attributes at create).
    created: HashMap<Vec<u8>, Attr>,
    /// Files closed (or flushed) and waiting for a batch, oldest first.
    queue: VecDeque<Queued>,
    /// Inline bytes in `queue`.
    queued_bytes: usize,
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
        let mut inner = lock(&self.dir_delegations.inner);
        let dir = inner.dirs.get_mut(&parent)?;
        // Looked in: in use (not given back as idle while this mount reads it).
        dir.last_used = Instant::now();
        if let Some(attr) = dir.created.get(name) {
            let attr = attr.clone();
            drop(inner);
            return Some(Ok(self.with_dirty_size(attr)));
        }
        if dir.names.contains_key(name) {
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

    /// The window an open of `ino` may take instead of asking the group: kept for a
    /// directory this mount holds now (not leaving) under its current session, renewed
    /// within its lease (past it the group may have ended the session and let others
    /// write). Counts as use of the directory (one read from is not idle).
    pub(super) fn held_window(&self, ino: Ino) -> Option<Arc<ExtentWindow>> {
        let session = self.session().ok()?;
        let (window, holder) = {
            let mut inner = lock(&self.dir_delegations.inner);
            let (dir, window) = inner.windows.get(ino)?;
            let held = inner.dirs.get_mut(&dir)?;
            if held.leaving {
                return None;
            }
            held.last_used = Instant::now();
            (window, held.session)
        };
        session.is_live(holder).then_some(window)
    }

    /// Take before fetching a window that [`Self::keep_window`] may keep.
    pub(super) fn window_epoch(&self) -> u64 {
        lock(&self.dir_delegations.inner).windows.epoch()
    }

    /// Keeps `ino`'s first window, fetched since `epoch`, if the directory guarding the
    /// file (`guard_dir`, from the same answer) is held here.
    pub(super) fn keep_window(
        &self,
        ino: Ino,
        guard_dir: Option<Ino>,
        window: &Arc<ExtentWindow>,
        epoch: u64,
    ) {
        let (Some(dir), Ok(session)) = (guard_dir, self.session()) else {
            return;
        };
        let mut guard = lock(&self.dir_delegations.inner);
        let inner = &mut *guard;
        if window.start == 0
            && inner
                .dirs
                .get(&dir)
                .is_some_and(|h| !h.leaving && h.session == session.id())
        {
            inner.windows.keep(ino, dir, window.clone(), epoch);
        }
    }

    /// This mount changed `ino`'s content, or tried to: its kept window goes, and
    /// windows fetched meanwhile are not kept. `failed`: the change may still be applied
    /// later (no answer, or an error after sending), so none is kept again.
    pub(super) fn content_changed(&self, ino: Ino, failed: bool) {
        let mut inner = lock(&self.dir_delegations.inner);
        if failed {
            inner.windows.distrust(ino);
        } else {
            inner.windows.forget(ino);
        }
        inner.windows.bump();
    }

    /// Creates `parent/name` locally if this mount holds `parent` (asking for it after a
    /// few creates there). `None`: create the ordinary way.
    pub(super) async fn create_delegated(
        &self,
        new: &NewFile<'_>,
    ) -> Result<Option<(Attr, u64)>, FsError> {
        if !self.config.delegate_dirs || !self.ensure_dir(new.parent).await {
            return Ok(None);
        }
        match self.create_held(new) {
            HeldCreate::Created(attr) => {
                let fh = self.open_created(&attr);
                Ok(Some((attr, fh)))
            }
            HeldCreate::Exists => Err(FsError::code(ErrorCode::Exists, "file exists")),
            HeldCreate::Again(ino) => {
                // Opened again while still ours alone: commit it first, then open it the
                // ordinary way (through the caller).
                self.settle_pending(ino).await?;
                Ok(None)
            }
            HeldCreate::NotHere => Ok(None),
        }
    }

    /// A create answered in the kernel request's thread: only when `parent` is held with
    /// numbers to spare and the name is new (or an O_EXCL create of a name created here).
    /// `None`: take [`Self::create`].
    pub fn create_local(&self, new: &NewFile<'_>) -> Option<Result<(Attr, u64), FsError>> {
        if !self.config.delegate_dirs || check_name(new.name).is_err() {
            return None;
        }
        match self.create_held(new) {
            HeldCreate::Created(attr) => {
                let fh = self.open_created(&attr);
                Some(Ok((attr, fh)))
            }
            HeldCreate::Exists => Some(Err(FsError::code(ErrorCode::Exists, "file exists"))),
            HeldCreate::Again(_) | HeldCreate::NotHere => None,
        }
    }

    /// The part of a create under a held directory that needs no request.
    fn create_held(&self, new: &NewFile<'_>) -> HeldCreate {
        let &NewFile {
            parent,
            name,
            perm,
            uid,
            gid,
            intent,
        } = new;
        let mut inner = lock(&self.dir_delegations.inner);
        let Some(dir) = inner.dirs.get_mut(&parent) else {
            return HeldCreate::NotHere;
        };
        if dir.leaving || !self.session().is_ok_and(|s| s.id() == dir.session) {
            dir.leaving = true;
            inner.windows.forget_dir(parent);
            return HeldCreate::NotHere;
        }
        dir.last_used = Instant::now();
        if let Some(existing) = dir.created.get(name) {
            return if intent.exclusive {
                HeldCreate::Exists
            } else {
                HeldCreate::Again(existing.ino)
            };
        }
        if dir.names.contains_key(name) {
            return HeldCreate::NotHere;
        }
        let Some(ino) = dir.take_ino() else {
            return HeldCreate::NotHere;
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
        HeldCreate::Created(attr)
    }

    /// Removes `parent/name` locally if this mount holds `parent` (asking for it after a
    /// few removals there): the name goes at once, its `DirBatch` unlink is queued, and
    /// the call waits for the commit only when a close would. `false`: unlink the
    /// ordinary way.
    pub(super) async fn unlink_delegated(&self, parent: Ino, name: &[u8]) -> Result<bool, FsError> {
        if !self.config.delegate_dirs || !self.ensure_dir(parent).await {
            return Ok(false);
        }
        // A file created here and not committed yet: commit it, then remove its name.
        let created = lock(&self.dir_delegations.inner)
            .dirs
            .get(&parent)
            .and_then(|d| d.created.get(name).map(|a| a.ino));
        if let Some(ino) = created {
            self.settle_pending(ino).await?;
        }
        // Only a file whose last link this is and that is open nowhere here: after the
        // unlink nothing on this mount can reach it, so nobody here sees the group's
        // answers lag (a `stat` of another link, an `fstat` through a descriptor must
        // show the new link count at once: those take the ordinary way).
        let Some(ino) = lock(&self.dir_delegations.inner)
            .dirs
            .get(&parent)
            .and_then(|d| d.names.get(name).copied())
        else {
            return Ok(false);
        };
        if self.is_open_here(ino) {
            return Ok(false);
        }
        let size = match self.client.query(MetaQuery::GetAttr { ino }).await {
            Ok(MetaReply::Attr(a)) if a.nlink == 1 && a.kind != FileKind::Dir => a.size,
            _ => return Ok(false),
        };
        // Reaped with the unlink only if small: a reap punches every extent, and a batch
        // holds up to BATCH_FILES_MAX unlinks in one commit.
        let reap = size <= REAP_IN_BATCH_MAX_BYTES;
        let Some((queued, next)) = self.unlink_held(parent, name, reap) else {
            return Ok(false);
        };
        self.statahead.invalidate();
        // The name changed meanwhile (it cannot on this mount while the kernel holds the
        // directory): wait for the commit rather than trust the checks above.
        if queued == ino && next.is_done() {
            return Ok(true);
        }
        self.wait_committed(queued).await?;
        match lock(&self.dir_delegations.inner)
            .unlink_failed
            .remove(&queued)
        {
            Some(e) => Err(e.into()),
            None => Ok(true),
        }
    }

    /// The part of an unlink under a held directory that needs no request: `None` if the
    /// directory is not held (or is leaving), the name is not a committed one, its inode
    /// is queued already (a second name of it), or the file is open here. `reap`: the
    /// group reaps the file in the same commit.
    ///
    /// The name (and the file's kept window) goes first, then the file is checked for
    /// open handles, then the unlink is queued: an open registers its handle before it
    /// looks for a queued unlink ([`PlaitFs::unlink_queued`]), so either this sees the
    /// handle or the open sees the unlink and waits for its commit.
    fn unlink_held(&self, parent: Ino, name: &[u8], reap: bool) -> Option<(Ino, AfterQueue)> {
        let ino = {
            let mut guard = lock(&self.dir_delegations.inner);
            let inner = &mut *guard;
            let held = inner.dirs.get_mut(&parent)?;
            if held.leaving || !self.session().is_ok_and(|s| s.id() == held.session) {
                return None;
            }
            let ino = *held.names.get(name)?;
            if inner.queued.contains(&ino)
                || held.created.contains_key(name)
                || held.unlinking.contains(&ino)
            {
                return None;
            }
            held.names.remove(name);
            held.unlinking.insert(ino);
            inner.windows.forget(ino);
            inner.windows.bump();
            ino
        };
        let open_here = self.is_open_here(ino);
        let mut guard = lock(&self.dir_delegations.inner);
        let inner = &mut *guard;
        let held = inner.dirs.get_mut(&parent)?;
        if open_here || held.leaving {
            // The ordinary way after all (a give-back would not wait for this unlink).
            held.unlinking.remove(&ino);
            held.names.insert(name.to_vec(), ino);
            return None;
        }
        inner.unlink_failed.remove(&ino);
        let now = now_timestamp();
        held.attr.mtime = now;
        held.attr.ctime = now;
        held.last_used = Instant::now();
        held.queue.push_back(Queued {
            ino,
            name: name.to_vec(),
            unlink: true,
            // Open nowhere here and its last link (checked above and by the caller):
            // reaped in the same commit rather than by one more commit of its own.
            ops: vec![DirBatchOp::Unlink {
                name: name.to_vec(),
                ino,
                reap,
            }],
            inline_bytes: 0,
            alone: false,
            queued_at: Instant::now(),
        });
        let notify = held.queue.len() == 1 || held.queue.len() >= BATCH_FILES_MAX;
        inner.queued.insert(ino);
        if !inner.ready.contains(&parent) {
            inner.ready.push_back(parent);
        }
        if notify {
            self.dir_delegations.queued.notify_one();
        }
        Some((
            ino,
            self.close_may_return(CommitWait::Queued, inner, parent),
        ))
    }

    /// True if this mount holds `dir` now, asking for it if creates (or removals) there
    /// come in a run.
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
        let mut inner = lock(&self.dir_delegations.inner);
        // Windows fetched before the grant are not the group's last word on this
        // directory's files.
        inner.windows.bump();
        inner.dirs.insert(
            dir,
            HeldDir {
                names,
                unlinking: HashSet::new(),
                created: HashMap::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                free: VecDeque::from([range]),
                attr,
                attr_at: now,
                leaving: false,
                last_used: now,
                session,
            },
        );
        drop(inner);
        self.dir_delegations.added.notify_one();
        Ok(true)
    }

    /// Every name of `dir`, or `None` if it has more than [`DIR_NAMES_MAX`].
    async fn dir_names(&self, dir: Ino) -> Result<Option<HashMap<Vec<u8>, Ino>>, FsError> {
        Ok(self
            .read_dir_all(dir, DIR_NAMES_MAX)
            .await?
            .map(|entries| entries.into_iter().map(|e| (e.name, e.attr.ino)).collect()))
    }

    /// True if an unlink-behind of `ino` is queued or being committed.
    pub(super) fn unlink_queued(&self, ino: Ino) -> bool {
        lock(&self.dir_delegations.inner)
            .dirs
            .values()
            .any(|d| d.unlinking.contains(&ino))
    }

    /// Waits until no unlink-behind of `ino` is queued (committed or refused), at most the
    /// operation timeout.
    pub(super) async fn wait_unlinked(&self, ino: Ino) -> Result<(), FsError> {
        let deadline = Instant::now() + self.client.op_timeout();
        while self.unlink_queued(ino) {
            if Instant::now() >= deadline {
                return Err(FsError::code(
                    ErrorCode::WouldBlock,
                    format!("the unlink of inode {ino} was not committed in time"),
                ));
            }
            if lock(&self.dir_delegations.inner).queued.contains(&ino) {
                self.wait_committed(ino).await?;
            } else {
                // Between its mark and its queueing (microseconds).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    /// True if a refusal of `ino`'s batch waits to be reported (by its next open, flush
    /// or sync).
    pub(super) fn has_failure(&self, ino: Ino) -> bool {
        lock(&self.dir_delegations.inner).failed.contains_key(&ino)
    }

    /// Queues a file created here, with `writes` (its buffered bytes, possibly none), for
    /// its directory's next `DirBatch`, and waits for the commit unless `wait` and the
    /// state of the batches allow returning at once. `Ok(false)`: the file is not pending
    /// here, or was queued before and is now committed (commit `writes` the ordinary
    /// way).
    pub(super) async fn commit_created(
        &self,
        ino: Ino,
        writes: Vec<DirBatchOp>,
        wait: CommitWait,
    ) -> Result<bool, FsError> {
        let Some(next) = self.queue_created(ino, writes, wait) else {
            return self.take_failure(ino).map_or(Ok(false), |e| Err(e.into()));
        };
        match next {
            AfterQueue::Done => Ok(true),
            AfterQueue::Wait => self.wait_committed(ino).await.map(|()| true),
            AfterQueue::WaitThenOrdinary => self.wait_committed(ino).await.map(|()| false),
        }
    }

    /// Queues a file created here with `writes` for its directory's next batch (or adds
    /// `writes` to it if it is queued already) and says what the flush does next. `None`:
    /// the file is not pending here.
    pub(super) fn queue_created(
        &self,
        ino: Ino,
        writes: Vec<DirBatchOp>,
        wait: CommitWait,
    ) -> Option<AfterQueue> {
        let mut guard = lock(&self.dir_delegations.inner);
        let inner = &mut *guard;
        let (dir, name) = inner.pending.get(&ino).cloned()?;
        let held = inner.dirs.get_mut(&dir)?;
        let attr = held.created.get_mut(&name)?;
        attr.size = attr.size.max(written_end(&writes));
        let inline_bytes = inline_len(&writes);
        Some(if inner.queued.contains(&ino) {
            match held.queue.iter_mut().find(|q| q.ino == ino) {
                // Still waiting for its batch: the new bytes go with it.
                Some(q) => {
                    q.ops.extend(writes);
                    q.inline_bytes += inline_bytes;
                    held.queued_bytes += inline_bytes;
                    self.close_may_return(wait, inner, dir)
                }
                // Its batch is being committed: these bytes go after it.
                None if writes.is_empty() && wait != CommitWait::Committed => AfterQueue::Done,
                None => AfterQueue::WaitThenOrdinary,
            }
        } else {
            let mut ops = Vec::with_capacity(1 + writes.len());
            ops.push(DirBatchOp::CreateFile {
                name: name.clone(),
                ino,
                perm: attr.perm,
                uid: attr.uid,
                gid: attr.gid,
            });
            ops.extend(writes);
            held.queue.push_back(Queued {
                ino,
                name,
                unlink: false,
                ops,
                inline_bytes,
                alone: false,
                queued_at: Instant::now(),
            });
            held.queued_bytes += inline_bytes;
            inner.queued.insert(ino);
            if !inner.ready.contains(&dir) {
                inner.ready.push_back(dir);
            }
            if held.queue.len() == 1 || held.queue.len() >= BATCH_FILES_MAX {
                // A first file starts the linger; a full batch ends it.
                self.dir_delegations.queued.notify_one();
            }
            self.close_may_return(wait, inner, dir)
        })
    }

    /// True if `ino` was created here and not queued yet (its close must queue it).
    pub(super) fn needs_queueing(&self, ino: Ino) -> bool {
        let inner = lock(&self.dir_delegations.inner);
        inner.pending.contains_key(&ino) && !inner.queued.contains(&ino)
    }

    /// True if a close of `ino` may queue it and return: a file created here, not queued
    /// yet, in a directory whose batches keep up.
    pub(super) fn close_may_queue(&self, ino: Ino) -> bool {
        let inner = lock(&self.dir_delegations.inner);
        match inner.pending.get(&ino) {
            Some((dir, _)) if !inner.queued.contains(&ino) => self
                .close_may_return(CommitWait::Queued, &inner, *dir)
                .is_done(),
            _ => false,
        }
    }

    /// Whether a flush that queued a file in `dir` may return before its commit.
    fn close_may_return(&self, wait: CommitWait, inner: &Inner, dir: Ino) -> AfterQueue {
        let behind = inner
            .in_flight_since
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(BATCH_STALL_MS));
        let full = inner.dirs.get(&dir).is_none_or(|held| {
            held.queue.len() > QUEUED_FILES_MAX || held.queued_bytes > QUEUED_BYTES_MAX
        });
        if wait == CommitWait::CallerWaits {
            return AfterQueue::Done;
        }
        if wait == CommitWait::Queued
            && self.config.close_behind
            && !inner.unhealthy
            && !behind
            && !full
        {
            AfterQueue::Done
        } else {
            AfterQueue::Wait
        }
    }
    /// Waits until `ino` is no longer queued: committed, or refused (its error).
    async fn wait_committed(&self, ino: Ino) -> Result<(), FsError> {
        /// Counts a waiter while it waits (the batch task does not linger then).
        struct Waiting<'a>(&'a DirDelegations);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                let mut inner = lock(&self.0.inner);
                inner.waiting = inner.waiting.saturating_sub(1);
            }
        }
        lock(&self.dir_delegations.inner).waiting += 1;
        let _waiting = Waiting(&self.dir_delegations);
        self.dir_delegations.queued.notify_one();
        // Bounded like any operation (the file stays queued after).
        let deadline = Instant::now() + self.client.op_timeout();
        loop {
            let notified = self.dir_delegations.committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = lock(&self.dir_delegations.inner);
                if !inner.queued.contains(&ino) {
                    return match inner.failed.remove(&ino) {
                        Some(e) => Err(e.into()),
                        None => Ok(()),
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                return Err(FsError::code(
                    ErrorCode::Unavailable,
                    format!(
                        "file {ino} was not committed within {} ms; it stays queued",
                        self.client.op_timeout().as_millis()
                    ),
                ));
            }
        }
    }

    /// The refusal of `ino`'s batch, if it was refused and nobody was told yet (the next
    /// fsync or close of the file reports it, as a failed write-back is reported).
    fn take_failure(&self, ino: Ino) -> Option<RpcError> {
        lock(&self.dir_delegations.inner).failed.remove(&ino)
    }

    /// A close of a file with no state left on this mount: nothing to commit, unless it
    /// is a file created here that was never flushed (queue it).
    pub(super) async fn queued_close(&self, ino: Ino) -> Result<(), FsError> {
        if self.pending_dir(ino).is_none() {
            return self.take_failure(ino).map_or(Ok(()), |e| Err(e.into()));
        }
        self.flush_pending(ino, CommitWait::Queued).await
    }

    /// Commits `ino` if this mount created it and has not committed it yet (with its
    /// buffered bytes), so the group knows it before an operation that needs that.
    pub(super) async fn settle_pending(&self, ino: Ino) -> Result<(), FsError> {
        if self.pending_dir(ino).is_none() {
            return self.take_failure(ino).map_or(Ok(()), |e| Err(e.into()));
        }
        self.flush_pending(ino, CommitWait::Committed).await
    }

    /// Flushes a pending file through its flush path (which queues or commits it).
    async fn flush_pending(&self, ino: Ino, wait: CommitWait) -> Result<(), FsError> {
        let entry = self.inode_entry_or_new(ino);
        self.flush_entry(ino, &entry, wait).await
    }

    /// Commits every file created under `dir` that this mount has not committed yet (its
    /// own listing of the directory must show them, and a give-back must leave none):
    /// queues them all, then waits, so they share batches.
    pub(super) async fn settle_dir(&self, dir: Ino) -> Result<(), FsError> {
        let (pending, unlinking): (Vec<Ino>, Vec<Ino>) =
            match lock(&self.dir_delegations.inner).dirs.get(&dir) {
                Some(held) => (
                    held.created.values().map(|a| a.ino).collect(),
                    held.unlinking.iter().copied().collect(),
                ),
                None => return Ok(()),
            };
        let mut first_error = Ok(());
        for ino in &pending {
            if let Err(e) = self.flush_pending(*ino, CommitWait::CallerWaits).await {
                first_error = first_error.and(Err(e));
            }
        }
        for ino in pending.into_iter().chain(unlinking) {
            if let Err(e) = self.wait_committed(ino).await {
                first_error = first_error.and(Err(e));
            }
        }
        first_error
    }

    /// Commits every file created under `dir` and gives the directory back.
    async fn give_back_dir(&self, dir: Ino) -> Result<(), FsError> {
        let pending: Vec<Ino> = {
            let mut inner = lock(&self.dir_delegations.inner);
            let asking = inner.asking.contains(&dir);
            inner.windows.forget_dir(dir);
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
        if let Err(e) = self.settle_dir(dir).await {
            // A file lost with the delegation is not retried; anything else is (and no
            // directory is given back with unlinks still queued: they would be lost).
            let unlinking = lock(&self.dir_delegations.inner)
                .dirs
                .get(&dir)
                .is_some_and(|d| !d.unlinking.is_empty());
            if unlinking || pending.iter().any(|ino| self.pending_dir(*ino).is_some()) {
                return Err(e);
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
        if inner
            .dirs
            .get(&dir)
            .is_some_and(|d| d.created.is_empty() && d.unlinking.is_empty())
        {
            inner.dirs.remove(&dir);
        }
        inner.windows.forget_dir(dir);
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
        let request = Request::Meta(op);
        loop {
            if let Request::Meta(op) = &request
                && let Err(e) = self.leave_dirs_for(op).await
            {
                return Err(match e {
                    FsError::Rpc(r) => r,
                    other => RpcError::new(ErrorCode::Io, other.to_string()),
                });
            }
            if let Some(reply) = self.propose_or_wait(&request, deadline).await? {
                return Ok(reply);
            }
        }
    }

    /// Proposes a content change, waiting while another mount gives back the directory
    /// guarding the file (bounded by [`DIR_RECALL_WAIT_MAX_MS`], then EAGAIN). Unlike
    /// [`Self::meta_waiting`] it gives back nothing of this mount's: the holder's own
    /// changes are not refused.
    pub(super) async fn meta_recalling(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        let deadline = Instant::now() + Duration::from_millis(DIR_RECALL_WAIT_MAX_MS);
        let request = Request::Meta(op);
        loop {
            if let Some(reply) = self.propose_or_wait(&request, deadline).await? {
                return Ok(reply);
            }
        }
    }

    /// Proposes `request` once: its answer, or `None` after the directory it was refused
    /// for (`DirRecalling`) was given back (by `deadline`, else EAGAIN): propose again.
    async fn propose_or_wait(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Option<MetaReply>, RpcError> {
        let dir = match self.client.meta_request(request).await? {
            MetaReply::DirRecalling { dir } => dir,
            reply => return Ok(Some(reply)),
        };
        debug!(dir, "waiting for another mount to give a directory back");
        self.wait_dir_returned(dir, deadline).await?;
        Ok(None)
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

    /// Commits the files closes queued, one batch at a time, for the life of the mount.
    pub async fn serve_dir_batches(self: Arc<Self>) {
        loop {
            let queued = self.dir_delegations.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            match self.take_batch() {
                NextBatch::Ready(batch) => self.commit_batch(batch).await,
                NextBatch::Linger(left) => {
                    let _ = tokio::time::timeout(left, queued).await;
                }
                NextBatch::Idle => {
                    let _ = tokio::time::timeout(Duration::from_millis(DIR_IDLE_MS), queued).await;
                }
            }
        }
    }

    /// The next batch: the oldest queued files of the directory first in line, up to
    /// [`BATCH_FILES_MAX`] files, [`DIR_BATCH_OPS_MAX`] ops and
    /// [`INLINE_BATCH_MAX_BYTES`] of inline bytes (a file refused in a batch goes alone).
    fn take_batch(&self) -> NextBatch {
        let mut guard = lock(&self.dir_delegations.inner);
        let inner = &mut *guard;
        if inner.waiting == 0
            && let Some(held) = inner.ready.front().and_then(|dir| inner.dirs.get(dir))
            && let Some(oldest) = held.queue.front()
            && held.queue.len() < BATCH_FILES_MAX
        {
            let linger = Duration::from_millis(BATCH_LINGER_MS);
            let age = oldest.queued_at.elapsed();
            if age < linger {
                return NextBatch::Linger(linger - age);
            }
        }
        while let Some(dir) = inner.ready.pop_front() {
            let Some(held) = inner.dirs.get_mut(&dir) else {
                continue;
            };
            let mut files: Vec<Queued> = Vec::new();
            let (mut ops, mut bytes) = (0usize, 0usize);
            while let Some(next) = held.queue.front() {
                let fits = files.len() < BATCH_FILES_MAX
                    && ops + next.ops.len() <= DIR_BATCH_OPS_MAX
                    && bytes + next.inline_bytes <= INLINE_BATCH_MAX_BYTES
                    && !next.alone;
                if !files.is_empty() && !fits {
                    break;
                }
                let Some(file) = held.queue.pop_front() else {
                    break;
                };
                ops += file.ops.len();
                bytes += file.inline_bytes;
                held.queued_bytes = held.queued_bytes.saturating_sub(file.inline_bytes);
                let alone = file.alone;
                files.push(file);
                if alone {
                    break;
                }
            }
            if !held.queue.is_empty() {
                inner.ready.push_back(dir);
            }
            if files.is_empty() {
                continue;
            }
            inner.in_flight_since = Some(Instant::now());
            return NextBatch::Ready(Batch {
                dir,
                session: held.session,
                files,
            });
        }
        NextBatch::Idle
    }

    /// Commits one batch and settles its files: committed, queued again (a refusal that
    /// may pass, or to find the file at fault), or dropped with their error.
    async fn commit_batch(&self, batch: Batch) {
        let Batch {
            dir,
            session,
            files,
        } = batch;
        let ops: Vec<DirBatchOp> = files.iter().flat_map(|f| f.ops.iter().cloned()).collect();
        let generation = self.statahead.begin_change();
        let started = Instant::now();
        let result = self
            .client
            .meta(MetaOp::DirBatch { dir, session, ops })
            .await;
        debug!(
            dir,
            files = files.len(),
            took_us = started.elapsed().as_micros(),
            ok = result.is_ok(),
            "directory batch"
        );
        let result = match result {
            Ok(MetaReply::Batch(replies)) => Ok(replies),
            Ok(other) => Err(RpcError::new(
                ErrorCode::Protocol,
                format!("unexpected reply to DirBatch: {other:?}"),
            )),
            Err(e) => Err(e),
        };
        let mut retry_after = false;
        let mut unlinked: Vec<Ino> = Vec::new();
        {
            let mut guard = lock(&self.dir_delegations.inner);
            let inner = &mut *guard;
            inner.in_flight_since = None;
            match &result {
                Ok(replies) => {
                    inner.unhealthy = false;
                    // Still held under the batch's session: its files' content is what
                    // the batch committed (kept here, before anyone waiting on the
                    // commit may change it).
                    let guarding = inner
                        .dirs
                        .get(&dir)
                        .is_some_and(|h| !h.leaving && h.session == session);
                    let mut replies = replies.iter();
                    for f in &files {
                        let size = replies
                            .by_ref()
                            .take(f.ops.len())
                            .filter_map(|r| match r {
                                MetaReply::Attr(a) => Some(a.size),
                                _ => None,
                            })
                            .last();
                        inner.queued.remove(&f.ino);
                        if f.unlink {
                            unlinked.push(f.ino);
                        }
                        let Some(held) = inner.dirs.get_mut(&dir) else {
                            inner.pending.remove(&f.ino);
                            continue;
                        };
                        if f.unlink {
                            held.unlinking.remove(&f.ino);
                        } else {
                            inner.pending.remove(&f.ino);
                            held.created.remove(&f.name);
                            held.names.insert(f.name.clone(), f.ino);
                            if guarding
                                && let Some(window) =
                                    size.and_then(|size| created_window(&f.ops, size))
                            {
                                let epoch = inner.windows.epoch();
                                inner.windows.keep(f.ino, dir, Arc::new(window), epoch);
                            }
                        }
                    }
                }
                Err(e) if may_pass(e.code) => {
                    // Nothing is lost: the same batch goes again (it is idempotent).
                    inner.unhealthy = true;
                    retry_after = true;
                    requeue(inner, dir, files, false);
                }
                Err(e) if files.len() > 1 && !lost(e.code) => {
                    // One file may be at fault: each goes alone.
                    requeue(inner, dir, files, true);
                }
                Err(e) => {
                    warn!(dir, files = files.len(), error = %e, "files created under a directory delegation could not be committed and are dropped");
                    if lost(e.code)
                        && let Some(held) = inner.dirs.get_mut(&dir)
                    {
                        held.leaving = true;
                        inner.windows.forget_dir(dir);
                    }
                    for f in &files {
                        inner.queued.remove(&f.ino);
                        if f.unlink {
                            // The name was not removed: it is there again (unless a file
                            // created here since took it; the group then refuses that one).
                            if let Some(held) = inner.dirs.get_mut(&dir) {
                                held.unlinking.remove(&f.ino);
                                if !held.created.contains_key(&f.name) {
                                    held.names.insert(f.name.clone(), f.ino);
                                }
                            }
                        } else {
                            inner.pending.remove(&f.ino);
                            if let Some(held) = inner.dirs.get_mut(&dir) {
                                held.created.remove(&f.name);
                            }
                        }
                        let failed = if f.unlink {
                            &mut inner.unlink_failed
                        } else {
                            &mut inner.failed
                        };
                        if failed.len() >= FAILED_MAX
                            && let Some(old) = failed.keys().next().copied()
                        {
                            failed.remove(&old);
                        }
                        failed.insert(f.ino, e.clone());
                    }
                }
            }
        }
        for ino in unlinked {
            // Reaped (or an orphan reaped below): nothing of it is needed here.
            self.forget_if_idle(ino);
        }
        match result {
            Ok(replies) => {
                for reply in replies {
                    match reply {
                        MetaReply::Attr(a) => self.statahead.updated(generation, &a),
                        // An unlink's file that lost its last link: reaped as after an
                        // ordinary unlink.
                        removed @ MetaReply::Removed { .. } => self.after_removal(removed).await,
                        _ => {}
                    }
                }
            }
            Err(e) => {
                self.statahead.invalidate();
                debug!(dir, error = %e, "directory batch failed");
            }
        }
        self.dir_delegations.committed.notify_waiters();
        if retry_after {
            tokio::time::sleep(Duration::from_millis(DIR_RETRY_MS)).await;
        }
    }

    /// Asks the group a question about a directory's names (`Lookup`, `ReadDir` carrying
    /// this mount's session); if another mount holds the directory, recalls it and asks
    /// again once it is given back (at most [`DIR_RECALL_WAIT_MAX_MS`], then EAGAIN).
    pub(super) async fn query_names(&self, query: MetaQuery) -> Result<MetaReply, RpcError> {
        let deadline = Instant::now() + Duration::from_millis(DIR_RECALL_WAIT_MAX_MS);
        loop {
            let dir = match self.client.query(query.clone()).await? {
                MetaReply::DirRecalling { dir } => dir,
                reply => return Ok(reply),
            };
            debug!(
                dir,
                "recalling a directory another mount holds to read its names"
            );
            match self.client.meta(MetaOp::RecallDir { dir }).await? {
                MetaReply::DirRecalling { .. } | MetaReply::Empty => {}
                other => {
                    return Err(RpcError::new(
                        ErrorCode::Protocol,
                        format!("unexpected reply to RecallDir: {other:?}"),
                    ));
                }
            }
            self.wait_dir_returned(dir, deadline).await?;
        }
    }

    /// This mount's session, for questions about names (`None` before it has one).
    pub(super) fn asker(&self) -> Option<SessionId> {
        self.session().ok().map(|s| s.id())
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

/// The first extent window of a file a batch created with `ops` (its create and at most
/// one write), `size` bytes long as committed. `None` for more than one write (later
/// extents may replace earlier ones: not worth merging here).
fn created_window(ops: &[DirBatchOp], size: u64) -> Option<ExtentWindow> {
    let mut writes = ops.iter().filter_map(|op| match op {
        DirBatchOp::Write {
            extents, inline, ..
        } => Some((extents, inline)),
        _ => None,
    });
    let (extents, bodies) = match (writes.next(), writes.next()) {
        (None, _) => (Vec::new(), HashMap::new()),
        (Some((extents, inline)), None) => {
            let kept: Vec<_> = extents
                .iter()
                .filter(|e| e.file_offset < EXTENT_WINDOW_BYTES)
                .copied()
                .collect();
            let bodies = inline
                .iter()
                .map(|b| (plait_proto::ChunkId::of(b), b))
                .filter(|(id, _)| kept.iter().any(|e| e.chunk == *id))
                .map(|(id, b)| (id, Arc::new(b.clone())))
                .collect();
            (kept, bodies)
        }
        (Some(_), Some(_)) => return None,
    };
    Some(ExtentWindow {
        start: 0,
        end: EXTENT_WINDOW_BYTES,
        size,
        extents,
        inline: bodies,
    })
}

/// End of the bytes `writes` put in a file (0 if none).
fn written_end(writes: &[DirBatchOp]) -> u64 {
    writes
        .iter()
        .filter_map(|op| match op {
            DirBatchOp::Write { extents, .. } => extents
                .iter()
                .map(|e| e.file_offset.saturating_add(e.len))
                .max(),
            DirBatchOp::CreateFile { .. } | DirBatchOp::Unlink { .. } => None,
        })
        .max()
        .unwrap_or(0)
}

/// Inline bytes `writes` carry.
fn inline_len(writes: &[DirBatchOp]) -> usize {
    writes.iter().map(DirBatchOp::inline_bytes).sum()
}

/// A refusal that says the delegation is gone (the session expired): its files can never
/// be committed under their numbers.
fn lost(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::SessionExpired | ErrorCode::Stale)
}

/// A failure that may pass (no leader, a timeout, a node's I/O error): the batch is sent
/// again (`DirBatch` is idempotent).
fn may_pass(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::NotLeader | ErrorCode::Io | ErrorCode::Interrupted
    )
}

/// Puts `files` back at the head of `dir`'s queue, in order (`alone`: each in a batch of
/// its own next time), and the directory first in line.
fn requeue(inner: &mut Inner, dir: Ino, files: Vec<Queued>, alone: bool) {
    let Some(held) = inner.dirs.get_mut(&dir) else {
        // Unreachable (a directory with uncommitted files is kept), but never reported
        // as committed.
        for f in &files {
            inner.pending.remove(&f.ino);
            inner.queued.remove(&f.ino);
            inner.failed.insert(
                f.ino,
                RpcError::new(ErrorCode::Io, "its directory delegation vanished"),
            );
        }
        return;
    };
    for mut f in files.into_iter().rev() {
        f.alone |= alone;
        held.queued_bytes += f.inline_bytes;
        held.queue.push_front(f);
    }
    inner.ready.retain(|d| *d != dir);
    inner.ready.push_front(dir);
}
