//! Ops: each checks its arguments and the state, then records its writes in a [`Txn`].
//! A refused op leaves the overlay unused, so it changes nothing.

use plait_proto::meta::{NewKind, RenameMode, SetAttr, TimeSet, XattrMode};
use plait_proto::{
    ChunkId, ErrorCode, Extent, FileKind, Ino, MetaOp, MetaReply, MissingCopy, NodeId, RpcError,
    Timestamp, VolumeInfo,
};

use crate::keys;
use crate::read;
use crate::records::{
    DentryRec, ExtentRec, HealRec, InlineChunkRec, InodeRec, NO_PARENT, OrphanRec, VolumeRec,
    decode, encode,
};
use crate::txn::Txn;
use crate::validate;
use crate::{
    Command, DIR_DEPTH_MAX, FORGET_GARBAGE_MAX, Fail, HEAL_DONE_MAX, KvRead, Mutation, NLINK_MAX,
    OpResult, StoreError, refuse,
};
use dir_delegation::Writer;

/// The setgid bit: on a directory, new entries take its group and new subdirectories
/// inherit the bit.
const S_ISGID: u16 = 0o2000;

/// Permission bits kept from a mode.
const PERM_MASK: u16 = 0o7777;

/// Permission bits of every symlink.
const SYMLINK_PERM: u16 = 0o777;

/// Permission bits of a new volume root.
const VOLUME_ROOT_PERM: u16 = 0o755;

/// Entry point: runs the op over an overlay and returns its writes and reply.
pub(crate) fn apply<R: KvRead>(
    state: &R,
    cmd: &Command,
) -> Result<(Vec<Mutation>, Result<MetaReply, RpcError>), StoreError> {
    let mut op = Applier {
        txn: Txn::new(state),
        now: cmd.now,
    };
    match op.run(&cmd.op) {
        Ok(reply) => Ok((op.txn.into_mutations(), Ok(reply))),
        Err(Fail::Rpc(e)) => Ok((Vec::new(), Err(e))),
        Err(Fail::Store(e)) => Err(e),
    }
}

/// One op in progress: its overlay and the commit time.
struct Applier<'a, R: KvRead> {
    txn: Txn<'a, R>,
    now: Timestamp,
}

impl<R: KvRead> Applier<'_, R> {
    fn run(&mut self, op: &MetaOp) -> OpResult<MetaReply> {
        let guarded = self.guarded_dirs(op)?;
        if let Some(reply) = self.dir_guard(&guarded)? {
            return Ok(reply);
        }
        match op {
            MetaOp::CreateVolume {
                name,
                replicas,
                write_quorum,
            } => self.create_volume(name, *replicas, *write_quorum),
            MetaOp::Create {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
            } => self.create(*parent, name, kind, *perm, *uid, *gid),
            MetaOp::Unlink { parent, name } => self.unlink(*parent, name),
            MetaOp::Rmdir { parent, name } => self.rmdir(*parent, name),
            MetaOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => self.rename(*parent, name, *new_parent, new_name, *mode),
            MetaOp::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(*ino, *new_parent, new_name),
            MetaOp::SetAttr { ino, set, session } => {
                self.set_attr(*ino, set, Writer::Mount(*session))
            }
            MetaOp::Write {
                ino,
                extents,
                under_replicated,
                session,
                mount_session,
                inline,
            } => {
                self.check_writer(*session)?;
                let writer = Writer::Mount(*mount_session);
                self.write(*ino, extents, under_replicated, inline, writer)
            }
            MetaOp::SetXattr {
                ino,
                name,
                value,
                mode,
            } => self.set_xattr(*ino, name, value, *mode),
            MetaOp::RemoveXattr { ino, name } => self.remove_xattr(*ino, name),
            MetaOp::Reap { ino } => self.reap(*ino),
            MetaOp::ForgetGarbage { chunks } => self.forget_garbage(chunks),
            MetaOp::MarkUnderReplicated { copies } => self.mark_under_replicated(copies),
            MetaOp::HealDone { node, chunks } => self.heal_done(*node, chunks),
            MetaOp::OpenSession { lease_ms, client } => self.open_session(*lease_ms, client),
            MetaOp::RenewSession { session } => self.renew_session(*session),
            MetaOp::CloseSession { session } => self.close_session(*session),
            MetaOp::ExpireSessions => self.expire_sessions(),
            MetaOp::SetLock {
                ino,
                session,
                spec,
                wait,
                delegate,
            } => self.set_lock(*ino, *session, spec, *wait, *delegate),
            MetaOp::RecallDelegation { ino, session } => self.recall_delegation(*ino, *session),
            MetaOp::ReturnDelegation {
                ino,
                session,
                holders,
            } => self.return_delegation(*ino, *session, holders),
            MetaOp::Unlock {
                ino,
                session,
                kind,
                owner,
                range,
            } => self.unlock(*ino, *session, *kind, *owner, *range),
            MetaOp::ReleaseLockOwner {
                ino,
                session,
                kind,
                owner,
            } => self.release_lock_owner(*ino, *session, *kind, *owner),
            MetaOp::CancelLockWait { ino, session, seq } => {
                self.cancel_lock_wait(*ino, *session, *seq)
            }
            MetaOp::CreateJoinToken {
                token_id,
                secret_hash,
                role,
                zone,
                ttl_ms,
            } => self.create_join_token(*token_id, secret_hash, *role, zone, *ttl_ms),
            MetaOp::ConsumeJoinToken {
                token_id,
                secret_hash,
                addr,
                min_node_id,
            } => self.consume_join_token(*token_id, secret_hash, addr, *min_node_id),
            MetaOp::RegisterNode { node } => self.register_node(node),
            MetaOp::ForgetNode { node } => self.forget_node(*node),
            MetaOp::DelegateDir { dir, session } => self.delegate_dir(*dir, *session),
            MetaOp::ReturnDirDelegation { dir, session } => {
                self.return_dir_delegation(*dir, *session)
            }
            MetaOp::RecallDir { dir } => self.recall_dir(*dir),
            MetaOp::DirBatch { dir, session, ops } => self.dir_batch(*dir, *session, ops),
        }
    }

    /// The directories whose names `op` adds or removes, and the directories it would
    /// remove: none of them may be under another session's create delegation.
    fn guarded_dirs(&self, op: &MetaOp) -> OpResult<Vec<Ino>> {
        let removed_dir = |parent: Ino, name: &[u8]| -> OpResult<Option<Ino>> {
            Ok(read::dentry(&self.txn, parent, name)?
                .filter(|d| d.is_dir())
                .map(|d| d.ino))
        };
        Ok(match op {
            MetaOp::Create { parent, .. } | MetaOp::Unlink { parent, .. } => vec![*parent],
            MetaOp::Rmdir { parent, name } => {
                let mut dirs = vec![*parent];
                dirs.extend(removed_dir(*parent, name)?);
                dirs
            }
            MetaOp::Rename {
                parent,
                name: _,
                new_parent,
                new_name,
                mode,
            } => {
                let mut dirs = vec![*parent, *new_parent];
                if *mode == RenameMode::Replace {
                    dirs.extend(removed_dir(*new_parent, new_name)?);
                }
                dirs
            }
            MetaOp::Link { new_parent, .. } => vec![*new_parent],
            _ => Vec::new(),
        })
    }

    // ---- record writes -------------------------------------------------------------

    fn put<T: serde::Serialize>(&mut self, key: Vec<u8>, value: &T) -> OpResult<()> {
        let bytes = encode(value)?;
        self.txn.put(key, bytes);
        Ok(())
    }

    fn put_inode(&mut self, ino: Ino, rec: &InodeRec) -> OpResult<()> {
        self.put(keys::inode(ino), rec)
    }

    /// Loads inode `ino` (ENOENT if missing), lets `f` change it and stores it back.
    fn update_inode(&mut self, ino: Ino, f: impl FnOnce(&mut InodeRec)) -> OpResult<InodeRec> {
        let mut rec = read::require_inode(&self.txn, ino)?;
        f(&mut rec);
        self.put_inode(ino, &rec)?;
        Ok(rec)
    }

    /// A directory's entries changed: mtime = ctime = now, and its link count moves by
    /// `nlink_delta` (one per subdirectory gained or lost).
    fn touch_dir(&mut self, ino: Ino, nlink_delta: i32) -> OpResult<()> {
        let now = self.now;
        self.update_inode(ino, |r| {
            r.nlink = r.nlink.saturating_add_signed(nlink_delta);
            r.touch(now);
        })?;
        Ok(())
    }

    /// An inode's attributes changed (rename, link count): ctime = now.
    fn touch_ctime(&mut self, ino: Ino) -> OpResult<()> {
        let now = self.now;
        self.update_inode(ino, |r| r.ctime = now)?;
        Ok(())
    }

    fn put_dentry(&mut self, parent: Ino, name: &[u8], d: &DentryRec) -> OpResult<()> {
        self.put(keys::dentry(parent, name), d)
    }

    fn delete_dentry(&mut self, parent: Ino, name: &[u8]) {
        self.txn.delete(keys::dentry(parent, name));
    }

    /// Stores extent `e` of `ino` ending at `end` (its key holds the end, not the start).
    fn put_extent(&mut self, ino: Ino, end: u64, e: &ExtentRec) -> OpResult<()> {
        debug_assert!(
            e.len > 0 && e.len <= end,
            "extent of {} bytes ending at {end} of inode {ino}",
            e.len
        );
        self.put(keys::extent(ino, end), e)
    }

    // ---- counters ------------------------------------------------------------------

    /// Hands out the next inode number (the first is 1).
    fn alloc_ino(&mut self) -> OpResult<Ino> {
        let ino = read::counter(&self.txn, keys::NEXT_INO)?.max(1);
        let next = ino
            .checked_add(1)
            .ok_or_else(|| refuse(ErrorCode::NoSpace, "inode numbers exhausted"))?;
        self.put(keys::counter(keys::NEXT_INO), &next)?;
        Ok(ino)
    }

    /// Moves the count of existing inodes by one up or down.
    fn count_inode(&mut self, created: bool) -> OpResult<()> {
        let n = read::counter(&self.txn, keys::INODE_COUNT)?;
        let n = if created {
            n.saturating_add(1)
        } else {
            debug_assert!(n > 0, "inode count underflow");
            n.saturating_sub(1)
        };
        self.put(keys::counter(keys::INODE_COUNT), &n)
    }

    // ---- chunk references ----------------------------------------------------------

    /// One more extent references `chunk`; a chunk leaving the garbage set is taken out.
    fn chunk_incref(&mut self, chunk: &ChunkId) -> OpResult<()> {
        if let Some(mut rec) = read::inline_chunk(&self.txn, chunk)? {
            rec.refs = rec.refs.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("reference count of chunk {chunk} overflows"))
            })?;
            return self.put(keys::inline_chunk(chunk), &rec);
        }
        let n = read::refcount(&self.txn, chunk)?;
        if n == 0 && self.txn.get(&keys::garbage(chunk))?.is_some() {
            self.txn.delete(keys::garbage(chunk));
        }
        let n = n.checked_add(1).ok_or_else(|| {
            StoreError::Corrupt(format!("reference count of chunk {chunk} overflows"))
        })?;
        self.put(keys::chunk_ref(chunk), &n)
    }

    /// A new extent references the chunk whose bytes are `body`, which the writer did not
    /// upload: the chunk is kept inline unless it is already known (inline, or stored on
    /// data nodes by an earlier write of the same bytes).
    fn chunk_incref_inline(&mut self, chunk: &ChunkId, body: &[u8]) -> OpResult<()> {
        let known = read::inline_chunk(&self.txn, chunk)?.is_some()
            || read::refcount(&self.txn, chunk)? > 0;
        if known {
            return self.chunk_incref(chunk);
        }
        let rec = InlineChunkRec {
            refs: 1,
            body: body.to_vec(),
        };
        self.put(keys::inline_chunk(chunk), &rec)
    }

    /// One extent fewer references `chunk`; at zero its count goes and it becomes garbage
    /// (an inline chunk simply goes: no data node holds it).
    fn chunk_decref(&mut self, chunk: &ChunkId) -> OpResult<()> {
        if let Some(mut rec) = read::inline_chunk(&self.txn, chunk)? {
            debug_assert!(rec.refs > 0, "inline chunk {chunk} with no references");
            if rec.refs <= 1 {
                self.txn.delete(keys::inline_chunk(chunk));
                return Ok(());
            }
            rec.refs -= 1;
            return self.put(keys::inline_chunk(chunk), &rec);
        }
        match read::refcount(&self.txn, chunk)? {
            0 => Err(StoreError::Corrupt(format!(
                "reference count of chunk {chunk} would go below zero"
            ))
            .into()),
            1 => {
                self.txn.delete(keys::chunk_ref(chunk));
                let now = self.now;
                self.put(keys::garbage(chunk), &now)
            }
            n => self.put(keys::chunk_ref(chunk), &(n - 1)),
        }
    }

    // ---- extents -------------------------------------------------------------------

    /// Removes whatever extents of `ino` cover `[start, end)`: extents inside go, extents
    /// crossing an edge are trimmed, an extent spanning the whole range is split in two
    /// (both halves keep referencing its chunk). Returns the bytes no longer covered.
    fn punch(&mut self, ino: Ino, start: u64, end: u64) -> OpResult<u64> {
        debug_assert!(start < end, "empty punch [{start}, {end}) on inode {ino}");
        let mut removed = 0u64;
        let mut overlapping = read::Overlapping::new(ino, start, end);
        while let Some(e) = overlapping.next(&self.txn)? {
            removed = removed.saturating_add(self.punch_one(ino, &e, start, end)?);
        }
        Ok(removed)
    }

    /// The part of `punch` for one extent overlapping `[start, end)`: a part before
    /// `start` stays (now ending at `start`, so under a new key), a part past `end` stays
    /// (under the extent's key, which holds its end); with neither the extent goes, with
    /// both it is split and its chunk gains a reference. Every key written is at or below
    /// the extent's own, as [`read::Overlapping`] requires. Returns the bytes removed.
    fn punch_one(&mut self, ino: Ino, e: &read::FileExtent, start: u64, end: u64) -> OpResult<u64> {
        let keeps_head = e.start < start;
        let keeps_tail = e.end > end;
        if keeps_head {
            let head = ExtentRec {
                len: start - e.start,
                ..e.rec
            };
            self.put_extent(ino, start, &head)?;
        }
        if keeps_tail {
            let tail = ExtentRec {
                len: e.end - end,
                chunk: e.rec.chunk,
                chunk_offset: e.rec.chunk_offset.saturating_add(end - e.start),
            };
            self.put_extent(ino, e.end, &tail)?;
        } else {
            self.txn.delete(keys::extent(ino, e.end));
        }
        match (keeps_head, keeps_tail) {
            (true, true) => self.chunk_incref(&e.rec.chunk)?,
            (false, false) => self.chunk_decref(&e.rec.chunk)?,
            _ => {}
        }
        Ok(e.end.min(end) - e.start.max(start))
    }

    // ---- whole-inode removal ------------------------------------------------------

    fn delete_xattrs(&mut self, ino: Ino) -> OpResult<()> {
        for (k, _) in read::scan_all(&self.txn, &keys::xattr_prefix(ino))? {
            self.txn.delete(k);
        }
        Ok(())
    }

    /// Deletes an (empty) directory inode and its xattrs. Its entry and its parent's link
    /// count are the caller's business.
    fn delete_dir_inode(&mut self, ino: Ino) -> OpResult<()> {
        debug_assert!(read::dir_is_empty(&self.txn, ino).unwrap_or(true));
        self.delete_xattrs(ino)?;
        self.drop_dir_record(ino)?;
        self.txn.delete(keys::inode(ino));
        self.count_inode(false)
    }

    /// A non-directory loses one link (its entry is the caller's business). At zero it
    /// becomes an orphan, kept until reaped; returns it then.
    fn drop_link(&mut self, ino: Ino, dir: Ino) -> OpResult<Option<Ino>> {
        let now = self.now;
        let rec = self.update_inode(ino, |r| {
            debug_assert!(r.nlink > 0, "unlinking inode {ino} with no links");
            r.nlink = r.nlink.saturating_sub(1);
            r.ctime = now;
            if r.parent == dir && !r.is_dir() {
                // Any other names are elsewhere (or not), and which directories hold them
                // is not known without a scan.
                r.parent = NO_PARENT;
            }
        })?;
        if rec.nlink > 0 {
            return Ok(None);
        }
        self.put(keys::orphan(ino), &OrphanRec { since: now })?;
        Ok(Some(ino))
    }

    // ---- ops -----------------------------------------------------------------------

    fn create_volume(
        &mut self,
        name: &str,
        replicas: u32,
        write_quorum: u32,
    ) -> OpResult<MetaReply> {
        validate::volume(name, replicas, write_quorum)?;
        if self.txn.get(&keys::volume(name))?.is_some() {
            return Err(refuse(ErrorCode::Exists, format!("volume {name:?} exists")));
        }
        let root = self.alloc_ino()?;
        let rec = InodeRec {
            kind: FileKind::Dir,
            perm: VOLUME_ROOT_PERM,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            allocated_bytes: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            crtime: self.now,
            parent: root,
            target: Vec::new(),
            volume_root: true,
        };
        self.put_inode(root, &rec)?;
        self.count_inode(true)?;
        let vol = VolumeRec {
            root,
            replicas,
            write_quorum,
        };
        self.put(keys::volume(name), &vol)?;
        Ok(MetaReply::Volume(VolumeInfo {
            name: name.to_owned(),
            root,
            replicas,
            write_quorum,
        }))
    }

    fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: &NewKind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> OpResult<MetaReply> {
        validate::new_kind(kind)?;
        // A refused create writes nothing, so the number is taken only if it succeeds.
        let ino = self.alloc_ino()?;
        self.create_as(parent, name, kind, perm, uid, gid, ino)
    }

    /// Creates `parent/name` as inode `ino`, a number nobody uses (the caller made sure).
    #[allow(clippy::too_many_arguments)]
    fn create_as(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: &NewKind,
        perm: u16,
        uid: u32,
        gid: u32,
        ino: Ino,
    ) -> OpResult<MetaReply> {
        validate::name(name)?;
        let dir = read::require_dir(&self.txn, parent)?;
        if read::dentry(&self.txn, parent, name)?.is_some() {
            return Err(refuse(
                ErrorCode::Exists,
                format!(
                    "{:?} exists in directory {parent}",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        let rec = new_inode(&dir, parent, kind, perm, uid, gid, self.now);
        self.put_inode(ino, &rec)?;
        self.count_inode(true)?;
        self.put_dentry(
            parent,
            name,
            &DentryRec {
                ino,
                kind: rec.kind,
            },
        )?;
        self.touch_dir(parent, i32::from(rec.is_dir()))?;
        Ok(MetaReply::Attr(rec.attr(ino)))
    }

    fn unlink(&mut self, parent: Ino, name: &[u8]) -> OpResult<MetaReply> {
        validate::name(name)?;
        read::require_dir(&self.txn, parent)?;
        let d = read::require_dentry(&self.txn, parent, name)?;
        read::child(&self.txn, &d)?;
        if d.is_dir() {
            return Err(refuse(
                ErrorCode::IsDir,
                format!("{:?} is a directory", String::from_utf8_lossy(name)),
            ));
        }
        self.delete_dentry(parent, name);
        let orphan = self.drop_link(d.ino, parent)?;
        self.touch_dir(parent, 0)?;
        Ok(MetaReply::Removed { orphan })
    }

    fn rmdir(&mut self, parent: Ino, name: &[u8]) -> OpResult<MetaReply> {
        validate::name(name)?;
        read::require_dir(&self.txn, parent)?;
        let d = read::require_dentry(&self.txn, parent, name)?;
        let child = read::child(&self.txn, &d)?;
        if !child.is_dir() {
            return Err(refuse(
                ErrorCode::NotDir,
                format!("{:?} is not a directory", String::from_utf8_lossy(name)),
            ));
        }
        if child.volume_root {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                "cannot remove a volume root",
            ));
        }
        if !read::dir_is_empty(&self.txn, d.ino)? {
            return Err(refuse(
                ErrorCode::NotEmpty,
                format!("directory {} is not empty", d.ino),
            ));
        }
        self.delete_dentry(parent, name);
        self.delete_dir_inode(d.ino)?;
        self.touch_dir(parent, -1)?;
        Ok(MetaReply::Removed { orphan: None })
    }

    fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> OpResult<MetaReply> {
        validate::name(new_name)?;
        read::require_dir(&self.txn, new_parent)?;
        if read::dentry(&self.txn, new_parent, new_name)?.is_some() {
            return Err(refuse(
                ErrorCode::Exists,
                format!(
                    "{:?} exists in directory {new_parent}",
                    String::from_utf8_lossy(new_name)
                ),
            ));
        }
        let rec = read::require_inode(&self.txn, ino)?;
        if rec.is_dir() {
            return Err(refuse(
                ErrorCode::NotPermitted,
                format!("cannot hard-link directory {ino}"),
            ));
        }
        if rec.nlink == 0 {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("inode {ino} was unlinked"),
            ));
        }
        if rec.nlink >= NLINK_MAX {
            return Err(refuse(
                ErrorCode::TooManyLinks,
                format!("inode {ino} has {NLINK_MAX} links"),
            ));
        }
        let now = self.now;
        let rec = self.update_inode(ino, |r| {
            r.nlink = r.nlink.saturating_add(1);
            r.ctime = now;
            if r.parent == NO_PARENT {
                r.parent = new_parent;
            }
        })?;
        self.put_dentry(
            new_parent,
            new_name,
            &DentryRec {
                ino,
                kind: rec.kind,
            },
        )?;
        self.touch_dir(new_parent, 0)?;
        Ok(MetaReply::Attr(rec.attr(ino)))
    }

    /// `SetAttr`; a size change is a content change (`content_guard`).
    fn set_attr(&mut self, ino: Ino, set: &SetAttr, writer: Writer) -> OpResult<MetaReply> {
        let rec = read::require_inode(&self.txn, ino)?;
        if *set == SetAttr::default() {
            return Ok(MetaReply::Attr(rec.attr(ino)));
        }
        if set.size.is_some()
            && let Some(reply) = self.content_guard(ino, &rec, writer)?
        {
            return Ok(reply);
        }
        let mut released = 0;
        if let Some(size) = set.size {
            read::require_file(&rec, ino)?;
            validate::file_size(size)?;
            if size < rec.size {
                released = self.punch(ino, size, u64::MAX)?;
            }
        }
        let now = self.now;
        let rec = self.update_inode(ino, |r| apply_set_attr(r, set, released, now))?;
        Ok(MetaReply::Attr(rec.attr(ino)))
    }

    fn write(
        &mut self,
        ino: Ino,
        extents: &[Extent],
        under_replicated: &[MissingCopy],
        inline: &[Vec<u8>],
        writer: Writer,
    ) -> OpResult<MetaReply> {
        let rec = read::require_inode(&self.txn, ino)?;
        if let Some(reply) = self.content_guard(ino, &rec, writer)? {
            return Ok(reply);
        }
        read::require_file(&rec, ino)?;
        let extents = validate::write_extents(extents)?;
        let bodies = validate::inline_bodies(inline, &extents)?;
        validate::missing_copies(under_replicated, |c| {
            extents.iter().any(|e| e.chunk == *c) && !bodies.contains_key(c)
        })?;
        for copy in under_replicated {
            self.record_missing(copy)?;
        }
        if extents.is_empty() {
            return Ok(MetaReply::Attr(rec.attr(ino)));
        }
        // Take the new references first, so a chunk both released and re-referenced by
        // this write never passes through zero.
        for e in &extents {
            match bodies.get(&e.chunk) {
                Some(body) => self.chunk_incref_inline(&e.chunk, body)?,
                None => self.chunk_incref(&e.chunk)?,
            }
        }
        let mut released = 0u64;
        let mut added = 0u64;
        let mut end = 0u64;
        for e in &extents {
            released = released.saturating_add(self.punch(ino, e.file_offset, e.end())?);
            let new = ExtentRec {
                len: e.len,
                chunk: e.chunk,
                chunk_offset: e.chunk_offset,
            };
            self.put_extent(ino, e.end(), &new)?;
            added = added.saturating_add(e.len);
            end = end.max(e.end());
        }
        let now = self.now;
        let rec = self.update_inode(ino, |r| {
            r.allocated_bytes = r
                .allocated_bytes
                .saturating_sub(released)
                .saturating_add(added);
            r.size = r.size.max(end);
            r.touch(now);
        })?;
        Ok(MetaReply::Attr(rec.attr(ino)))
    }

    fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> OpResult<MetaReply> {
        validate::xattr_name(name)?;
        validate::xattr_value(value)?;
        read::require_inode(&self.txn, ino)?;
        let key = keys::xattr(ino, name);
        let exists = self.txn.get(&key)?.is_some();
        match mode {
            XattrMode::Create if exists => {
                return Err(refuse(
                    ErrorCode::Exists,
                    format!("xattr {:?} exists", String::from_utf8_lossy(name)),
                ));
            }
            XattrMode::Replace if !exists => return Err(no_attr(name)),
            _ => {}
        }
        self.txn.put(key, value.to_vec());
        self.touch_ctime(ino)?;
        Ok(MetaReply::Empty)
    }

    fn remove_xattr(&mut self, ino: Ino, name: &[u8]) -> OpResult<MetaReply> {
        validate::xattr_name(name)?;
        read::require_inode(&self.txn, ino)?;
        let key = keys::xattr(ino, name);
        if self.txn.get(&key)?.is_none() {
            return Err(no_attr(name));
        }
        self.txn.delete(key);
        self.touch_ctime(ino)?;
        Ok(MetaReply::Empty)
    }

    fn reap(&mut self, ino: Ino) -> OpResult<MetaReply> {
        let Some(rec) = read::inode(&self.txn, ino)? else {
            return Ok(MetaReply::Empty);
        };
        if rec.nlink != 0 || rec.is_dir() {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("inode {ino} still has {} links", rec.nlink),
            ));
        }
        self.punch(ino, 0, u64::MAX)?;
        self.delete_xattrs(ino)?;
        self.drop_file_locks(ino)?;
        self.txn.delete(keys::orphan(ino));
        self.txn.delete(keys::inode(ino));
        self.count_inode(false)?;
        Ok(MetaReply::Empty)
    }

    /// Removes the garbage entries of chunks whose files GC deleted.
    fn forget_garbage(&mut self, chunks: &[ChunkId]) -> OpResult<MetaReply> {
        if chunks.len() > FORGET_GARBAGE_MAX {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "{} chunks in one ForgetGarbage (max {FORGET_GARBAGE_MAX})",
                    chunks.len()
                ),
            ));
        }
        for chunk in chunks {
            if self.txn.get(&keys::garbage(chunk))?.is_some() {
                self.txn.delete(keys::garbage(chunk));
            }
        }
        Ok(MetaReply::Empty)
    }

    // ---- heal index ----------------------------------------------------------------

    /// Records that `copy.node` lacks its copy of `copy.chunk` (replacing an older entry).
    fn record_missing(&mut self, copy: &MissingCopy) -> OpResult<()> {
        let entry = HealRec {
            size_bytes: copy.size_bytes,
            since: self.now,
        };
        self.put(keys::heal(copy.node, &copy.chunk), &entry)
    }

    /// Records copies to heal, skipping chunks no extent references (nothing to heal).
    fn mark_under_replicated(&mut self, copies: &[MissingCopy]) -> OpResult<MetaReply> {
        validate::missing_copies(copies, |_| true)?;
        for copy in copies {
            if read::refcount(&self.txn, &copy.chunk)? > 0 {
                self.record_missing(copy)?;
            }
        }
        Ok(MetaReply::Empty)
    }

    /// Removes heal-index entries a node healed, each only if unchanged since it looked.
    fn heal_done(&mut self, node: NodeId, chunks: &[(ChunkId, Timestamp)]) -> OpResult<MetaReply> {
        if chunks.len() > HEAL_DONE_MAX {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "{} chunks in one HealDone (max {HEAL_DONE_MAX})",
                    chunks.len()
                ),
            ));
        }
        for (chunk, since) in chunks {
            let key = keys::heal(node, chunk);
            let Some(bytes) = self.txn.get(&key)? else {
                continue;
            };
            let entry: HealRec = decode(&key, &bytes)?;
            if entry.since == *since {
                self.txn.delete(key);
            }
        }
        Ok(MetaReply::Empty)
    }

    // ---- rename --------------------------------------------------------------------

    fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> OpResult<MetaReply> {
        validate::name(name)?;
        validate::name(new_name)?;
        read::require_dir(&self.txn, parent)?;
        read::require_dir(&self.txn, new_parent)?;
        let chains = if parent == new_parent {
            None
        } else {
            Some(self.rename_chains(parent, new_parent)?)
        };
        let src = read::require_dentry(&self.txn, parent, name)?;
        read::child(&self.txn, &src)?;
        let tgt = read::dentry(&self.txn, new_parent, new_name)?;
        check_rename_mode(mode, tgt.is_some(), new_name)?;
        if let Some((old_chain, new_chain)) = &chains {
            check_rename_traps(&src, tgt.as_ref(), old_chain, new_chain, mode)?;
        }
        let Some(tgt) = tgt else {
            self.rename_move(parent, name, new_parent, new_name, &src)?;
            return Ok(MetaReply::Removed { orphan: None });
        };
        if tgt.ino == src.ino {
            // Two names of one inode (or one name): Linux does nothing and succeeds.
            return Ok(MetaReply::Removed { orphan: None });
        }
        read::child(&self.txn, &tgt)?;
        if mode == RenameMode::Exchange {
            self.rename_exchange(parent, name, new_parent, new_name, (&src, &tgt))?;
            return Ok(MetaReply::Removed { orphan: None });
        }
        let orphan = self.rename_replace(new_parent, &src, &tgt)?;
        self.rename_move(parent, name, new_parent, new_name, &src)?;
        Ok(MetaReply::Removed { orphan })
    }

    /// The ancestor chains of both parents (each from the directory up to its volume
    /// root); EXDEV if they lie in different volumes.
    fn rename_chains(&self, parent: Ino, new_parent: Ino) -> OpResult<(Vec<Ino>, Vec<Ino>)> {
        let old_chain = ancestors(&self.txn, parent)?;
        let new_chain = ancestors(&self.txn, new_parent)?;
        if old_chain.last() != new_chain.last() {
            return Err(refuse(
                ErrorCode::CrossDevice,
                format!("directories {parent} and {new_parent} are in different volumes"),
            ));
        }
        Ok((old_chain, new_chain))
    }

    /// Moves entry `name` of `parent` to `new_name` of `new_parent` (overwriting any entry
    /// there, which the caller has dealt with).
    fn rename_move(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        src: &DentryRec,
    ) -> OpResult<()> {
        self.delete_dentry(parent, name);
        self.put_dentry(new_parent, new_name, src)?;
        let moves_dir = src.is_dir() && parent != new_parent;
        let now = self.now;
        self.update_inode(src.ino, |r| {
            r.ctime = now;
            moved_parent(r, parent, new_parent);
        })?;
        let delta = i32::from(moves_dir);
        self.touch_dir(parent, -delta)?;
        self.touch_dir(new_parent, delta)
    }

    /// Type and emptiness checks of a replacing rename, then the target loses its name:
    /// an empty directory is deleted, a non-directory loses a link (and may become an
    /// orphan, which is returned).
    fn rename_replace(
        &mut self,
        new_parent: Ino,
        src: &DentryRec,
        tgt: &DentryRec,
    ) -> OpResult<Option<Ino>> {
        match (src.is_dir(), tgt.is_dir()) {
            (true, false) => Err(refuse(
                ErrorCode::NotDir,
                format!("cannot replace non-directory {} with a directory", tgt.ino),
            )),
            (false, true) => Err(refuse(
                ErrorCode::IsDir,
                format!("cannot replace directory {} with a non-directory", tgt.ino),
            )),
            (true, true) => {
                if !read::dir_is_empty(&self.txn, tgt.ino)? {
                    return Err(refuse(
                        ErrorCode::NotEmpty,
                        format!("directory {} is not empty", tgt.ino),
                    ));
                }
                self.delete_dir_inode(tgt.ino)?;
                self.touch_dir(new_parent, -1)?;
                Ok(None)
            }
            (false, false) => self.drop_link(tgt.ino, new_parent),
        }
    }

    /// Swaps two entries (RENAME_EXCHANGE), moving each directory's parent pointer and
    /// link counts when the parents differ.
    fn rename_exchange(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        (src, tgt): (&DentryRec, &DentryRec),
    ) -> OpResult<()> {
        self.put_dentry(parent, name, tgt)?;
        self.put_dentry(new_parent, new_name, src)?;
        let cross = parent != new_parent;
        let now = self.now;
        for (d, from, dest) in [(src, parent, new_parent), (tgt, new_parent, parent)] {
            self.update_inode(d.ino, |r| {
                r.ctime = now;
                moved_parent(r, from, dest);
            })?;
        }
        let src_dir = i32::from(cross && src.is_dir());
        let tgt_dir = i32::from(cross && tgt.is_dir());
        self.touch_dir(parent, tgt_dir - src_dir)?;
        self.touch_dir(new_parent, src_dir - tgt_dir)
    }
}

/// A name of `r` moved from directory `from` to `dest`. A directory's parent follows its
/// one name. A file's follows only if it was that name's directory (a rename changes
/// names in `from` and `dest`, so both were recalled if delegated) or unknown: a parent
/// naming another of its links stays, since moving the guard away from that directory
/// would not recall it.
fn moved_parent(r: &mut InodeRec, from: Ino, dest: Ino) {
    if r.is_dir() || r.parent == from || r.parent == NO_PARENT {
        r.parent = dest;
    }
}

/// RENAME_NOREPLACE needs the target absent (EEXIST), RENAME_EXCHANGE present (ENOENT).
fn check_rename_mode(mode: RenameMode, target_exists: bool, new_name: &[u8]) -> OpResult<()> {
    match (mode, target_exists) {
        (RenameMode::NoReplace, true) => Err(refuse(
            ErrorCode::Exists,
            format!("{:?} exists", String::from_utf8_lossy(new_name)),
        )),
        (RenameMode::Exchange, false) => Err(refuse(
            ErrorCode::NotFound,
            format!("{:?} does not exist", String::from_utf8_lossy(new_name)),
        )),
        _ => Ok(()),
    }
}

/// Linux's "trap" checks for a rename between different directories: a directory may not
/// move below itself (EINVAL), and the target may not be an ancestor of the source
/// (ENOTEMPTY, or EINVAL for an exchange).
fn check_rename_traps(
    src: &DentryRec,
    tgt: Option<&DentryRec>,
    old_chain: &[Ino],
    new_chain: &[Ino],
    mode: RenameMode,
) -> OpResult<()> {
    if new_chain.contains(&src.ino) {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("cannot move directory {} into its own subtree", src.ino),
        ));
    }
    if let Some(t) = tgt
        && old_chain.contains(&t.ino)
    {
        let code = if mode == RenameMode::Exchange {
            ErrorCode::InvalidArgument
        } else {
            ErrorCode::NotEmpty
        };
        return Err(refuse(
            code,
            format!("directory {} is an ancestor of the source", t.ino),
        ));
    }
    Ok(())
}

/// Directory `ino` and its ancestors up to its volume root, nearest first.
fn ancestors(r: &impl KvRead, ino: Ino) -> OpResult<Vec<Ino>> {
    let mut chain = Vec::new();
    let mut cur = ino;
    while chain.len() < DIR_DEPTH_MAX {
        chain.push(cur);
        let rec = read::inode(r, cur)?
            .ok_or_else(|| StoreError::Corrupt(format!("directory {cur} has a missing parent")))?;
        if rec.volume_root || rec.parent == cur {
            return Ok(chain);
        }
        cur = rec.parent;
    }
    Err(refuse(
        ErrorCode::InvalidArgument,
        format!("directory {ino} is more than {DIR_DEPTH_MAX} levels deep"),
    ))
}

/// A new inode record for `kind` created in directory `dir` (inode `parent`).
fn new_inode(
    dir: &InodeRec,
    parent: Ino,
    kind: &NewKind,
    perm: u16,
    uid: u32,
    gid: u32,
    now: Timestamp,
) -> InodeRec {
    let setgid_dir = dir.perm & S_ISGID != 0;
    let mut rec = InodeRec {
        kind: FileKind::File,
        perm: perm & PERM_MASK,
        nlink: 1,
        uid,
        gid: if setgid_dir { dir.gid } else { gid },
        rdev: 0,
        size: 0,
        allocated_bytes: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent,
        target: Vec::new(),
        volume_root: false,
    };
    match kind {
        NewKind::File => {}
        NewKind::Dir => {
            rec.kind = FileKind::Dir;
            rec.nlink = 2;
            if setgid_dir {
                rec.perm |= S_ISGID;
            }
        }
        NewKind::Symlink { target } => {
            rec.kind = FileKind::Symlink;
            rec.perm = SYMLINK_PERM;
            rec.size = target.len() as u64;
            rec.target = target.clone();
        }
        NewKind::Fifo => rec.kind = FileKind::Fifo,
        NewKind::Socket => rec.kind = FileKind::Socket,
        NewKind::CharDev { rdev } => {
            rec.kind = FileKind::CharDev;
            rec.rdev = *rdev;
        }
        NewKind::BlockDev { rdev } => {
            rec.kind = FileKind::BlockDev;
            rec.rdev = *rdev;
        }
    }
    rec
}

/// Applies a `SetAttr` to a record; `released` is what the shrink took off
/// `allocated_bytes`. Any change sets ctime; a size change sets mtime unless given.
fn apply_set_attr(r: &mut InodeRec, set: &SetAttr, released: u64, now: Timestamp) {
    let at = |t: TimeSet| match t {
        TimeSet::Now => now,
        TimeSet::At(ts) => ts,
    };
    if let Some(p) = set.perm {
        r.perm = p & PERM_MASK;
    }
    if let Some(u) = set.uid {
        r.uid = u;
    }
    if let Some(g) = set.gid {
        r.gid = g;
    }
    if let Some(t) = set.atime {
        r.atime = at(t);
    }
    if let Some(t) = set.mtime {
        r.mtime = at(t);
    }
    if let Some(size) = set.size {
        if size != r.size && set.mtime.is_none() {
            r.mtime = now;
        }
        r.size = size;
        r.allocated_bytes = r.allocated_bytes.saturating_sub(released);
    }
    r.ctime = now;
}

fn no_attr(name: &[u8]) -> Fail {
    refuse(
        ErrorCode::NoAttr,
        format!("no xattr {:?}", String::from_utf8_lossy(name)),
    )
}

pub(crate) mod delegation;
#[cfg(test)]
mod delegation_sim;
pub(crate) mod dir_delegation;
#[cfg(test)]
mod dir_tests;
pub(crate) mod members;

#[cfg(test)]
mod lock_tests;
pub(crate) mod locking;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
