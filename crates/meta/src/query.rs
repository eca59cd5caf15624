//! Reads: answer a [`MetaQuery`] from the state, and page through chunk sets for the GC
//! and scrub workers.

use std::collections::BTreeSet;

use plait_proto::{
    ChunkId, DirEntry, ErrorCode, Extent, FileKind, FsStats, HealEntry, HealNodeSummary,
    INLINE_BATCH_MAX_BYTES, Ino, MetaQuery, MetaReply, NodeId, RpcError, Timestamp, VolumeInfo,
};

use plait_proto::lock::{
    FileLockInfo, LockKind, LockSpec, LockType, SessionId, WaitState, waiter_id,
};

use crate::apply::{delegation, locking};
use crate::keys;
use crate::read;
use crate::records::{DentryRec, HealRec, VolumeRec, decode};
use crate::validate;
use crate::{
    EXTENTS_MAX_PER_QUERY, HEAL_PENDING_MAX_PER_QUERY, INODES_MAX, KvRead, OpResult,
    READDIR_MAX_ENTRIES, StoreError, XATTR_LIST_MAX_BYTES, refuse, split,
};

/// Entry point of [`crate::query`].
pub(crate) fn query(
    r: &impl KvRead,
    q: &MetaQuery,
) -> Result<Result<MetaReply, RpcError>, StoreError> {
    split(run(r, q))
}

fn run(r: &impl KvRead, q: &MetaQuery) -> OpResult<MetaReply> {
    match q {
        MetaQuery::Volume { name } => volume(r, name),
        MetaQuery::ListVolumes => list_volumes(r),
        MetaQuery::Lookup {
            parent,
            name,
            session,
        } => lookup(r, *parent, name, *session),
        MetaQuery::GetAttr { ino } => Ok(MetaReply::Attr(read::require_inode(r, *ino)?.attr(*ino))),
        MetaQuery::ReadDir {
            ino,
            after,
            limit,
            session,
        } => read_dir(r, *ino, after.as_deref(), *limit, *session),
        MetaQuery::ReadLink { ino } => read_link(r, *ino),
        MetaQuery::Extents { ino, offset, len } => extents(r, *ino, *offset, *len),
        MetaQuery::GetXattr { ino, name } => get_xattr(r, *ino, name),
        MetaQuery::ListXattr { ino } => list_xattr(r, *ino),
        MetaQuery::FsStats => fs_stats(r),
        MetaQuery::HealSummary => heal_summary(r),
        MetaQuery::TestLock { ino, session, spec } => {
            if delegation::holder(r, *ino)?.is_some_and(|h| h != *session) {
                // Only the holder's mount knows the locks: it must give them back first.
                return Ok(MetaReply::LockRecalling);
            }
            let locks = locking::file_locks(r, *ino)?;
            let owner = plait_locks::Owner::new(*session, spec.owner);
            Ok(MetaReply::LockConflict(locks.test(
                spec.kind,
                owner,
                spec.lock_type,
                spec.range,
            )))
        }
        MetaQuery::LockWait {
            ino,
            session,
            seq,
            spec,
        } => lock_wait(r, *ino, *session, *seq, spec),
        MetaQuery::ListLocks { after, limit } => list_locks(r, *after, *limit),
        MetaQuery::Delegation { ino } => Ok(MetaReply::Delegated(delegation::holder(r, *ino)?)),
        MetaQuery::Recalls { session } => Ok(MetaReply::Recalls(delegation::recalls(r, *session)?)),
        MetaQuery::DirDelegation { dir } => Ok(MetaReply::Delegated(
            crate::apply::dir_delegation::dir_holder(r, *dir)?,
        )),
        MetaQuery::DirRecalls { session } => Ok(MetaReply::Recalls(
            crate::apply::dir_delegation::dir_recalls(r, *session)?,
        )),
        MetaQuery::ListDelegations { after, limit } => delegation::list(r, *after, *limit),
        MetaQuery::ListNodes => Ok(MetaReply::NodeRecords(crate::apply::members::node_records(
            r,
        )?)),
        MetaQuery::InodePath { ino } => Ok(MetaReply::Path(inode_path(r, *ino)?)),
        MetaQuery::ListSessions => {
            let all = r.scan(&[keys::SESSION], None, locking::SESSIONS_MAX as usize)?;
            let sessions = all
                .iter()
                .map(|(k, v)| decode(k, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MetaReply::Sessions(sessions))
        }
        MetaQuery::HealPending { node, after, limit } => {
            let limit = usize::try_from(*limit)
                .unwrap_or(HEAL_PENDING_MAX_PER_QUERY)
                .min(HEAL_PENDING_MAX_PER_QUERY);
            Ok(MetaReply::HealPending(heal_pending(
                r,
                *node,
                after.as_ref(),
                limit,
            )?))
        }
    }
}

fn volume_info(key: &[u8], value: &[u8]) -> Result<VolumeInfo, StoreError> {
    let rec: VolumeRec = decode(key, value)?;
    Ok(VolumeInfo {
        name: keys::volume_name(key)?,
        root: rec.root,
        replicas: rec.replicas,
        write_quorum: rec.write_quorum,
    })
}

fn volume(r: &impl KvRead, name: &str) -> OpResult<MetaReply> {
    let key = keys::volume(name);
    let value = r
        .get(&key)?
        .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no volume {name:?}")))?;
    Ok(MetaReply::Volume(volume_info(&key, &value)?))
}

fn list_volumes(r: &impl KvRead) -> OpResult<MetaReply> {
    let vols = read::scan_all(r, &[keys::VOLUME])?
        .iter()
        .map(|(k, v)| volume_info(k, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MetaReply::Volumes(vols))
}

fn lookup(
    r: &impl KvRead,
    parent: Ino,
    name: &[u8],
    session: Option<SessionId>,
) -> OpResult<MetaReply> {
    validate::name(name)?;
    read::require_dir(r, parent)?;
    match read::dentry(r, parent, name)? {
        Some(d) => Ok(MetaReply::Attr(read::child(r, &d)?.attr(d.ino))),
        // A committed name is the answer whoever holds the directory (its holder cannot
        // remove one without giving it back); an absent one may be a file its holder
        // created and has not committed yet.
        None if held_by_other(r, parent, session)? => Ok(MetaReply::DirRecalling { dir: parent }),
        None => Err(refuse(
            ErrorCode::NotFound,
            format!(
                "no entry {:?} in directory {parent}",
                String::from_utf8_lossy(name)
            ),
        )),
    }
}

/// True if `dir` is delegated to a session other than `asker` (a mount's question about
/// its names must then wait for the holder to give it back; tools, `None`, never do).
fn held_by_other(r: &impl KvRead, dir: Ino, asker: Option<SessionId>) -> OpResult<bool> {
    let Some(asker) = asker else {
        return Ok(false);
    };
    Ok(crate::apply::dir_delegation::dir_holder(r, dir)?.is_some_and(|holder| holder != asker))
}

fn read_dir(
    r: &impl KvRead,
    ino: Ino,
    after: Option<&[u8]>,
    limit: u32,
    session: Option<SessionId>,
) -> OpResult<MetaReply> {
    let dir = read::require_dir(r, ino)?;
    if held_by_other(r, ino, session)? {
        return Ok(MetaReply::DirRecalling { dir: ino });
    }
    let limit = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(READDIR_MAX_ENTRIES);
    let after = after.map(|name| keys::dentry(ino, name));
    let page = if limit == 0 {
        Vec::new()
    } else {
        r.scan(&keys::dentry_prefix(ino), after.as_deref(), limit)?
    };
    let mut entries = Vec::with_capacity(page.len());
    for (k, v) in &page {
        let d: DentryRec = decode(k, v)?;
        let child = read::child(r, &d)?;
        entries.push(DirEntry {
            name: keys::name_after_ino(k)?.to_vec(),
            attr: child.attr(d.ino),
        });
    }
    Ok(MetaReply::Entries {
        parent: dir.parent,
        entries,
    })
}

fn read_link(r: &impl KvRead, ino: Ino) -> OpResult<MetaReply> {
    let rec = read::require_inode(r, ino)?;
    if rec.kind != FileKind::Symlink {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("inode {ino} is not a symlink"),
        ));
    }
    Ok(MetaReply::Link(rec.target))
}

fn extents(r: &impl KvRead, ino: Ino, offset: u64, len: u64) -> OpResult<MetaReply> {
    let rec = read::require_inode(r, ino)?;
    read::require_file(&rec, ino)?;
    let end = offset.saturating_add(len);
    let mut out = Vec::new();
    let mut inline: Vec<Vec<u8>> = Vec::new();
    // Chunks already looked up: each is read (and its body sent) once per reply.
    let mut seen: BTreeSet<ChunkId> = BTreeSet::new();
    let mut inline_bytes = 0usize;
    let mut overlapping = read::Overlapping::new(ino, offset, end);
    while out.len() < EXTENTS_MAX_PER_QUERY {
        let Some(e) = overlapping.next(r)? else {
            break;
        };
        if !seen.contains(&e.rec.chunk)
            && let Some(chunk) = read::inline_chunk(r, &e.rec.chunk)?
        {
            // A shorter reply rather than one past the bound; the reader asks again from
            // the end of the last extent it got.
            if !out.is_empty()
                && inline_bytes.saturating_add(chunk.body.len()) > INLINE_BATCH_MAX_BYTES
            {
                break;
            }
            inline_bytes = inline_bytes.saturating_add(chunk.body.len());
            inline.push(chunk.body);
        }
        seen.insert(e.rec.chunk);
        out.push(Extent {
            file_offset: e.start,
            len: e.rec.len,
            chunk: e.rec.chunk,
            chunk_offset: e.rec.chunk_offset,
        });
    }
    Ok(MetaReply::Extents {
        attr: rec.attr(ino),
        extents: out,
        inline,
        guard_dir: rec.guard_dir(),
    })
}

fn get_xattr(r: &impl KvRead, ino: Ino, name: &[u8]) -> OpResult<MetaReply> {
    validate::xattr_name(name)?;
    read::require_inode(r, ino)?;
    let value = r.get(&keys::xattr(ino, name))?.ok_or_else(|| {
        refuse(
            ErrorCode::NoAttr,
            format!("no xattr {:?}", String::from_utf8_lossy(name)),
        )
    })?;
    Ok(MetaReply::Xattr(value))
}

fn list_xattr(r: &impl KvRead, ino: Ino) -> OpResult<MetaReply> {
    read::require_inode(r, ino)?;
    let mut names = Vec::new();
    let mut total_bytes = 0usize;
    for (k, _) in read::scan_all(r, &keys::xattr_prefix(ino))? {
        let name = keys::name_after_ino(&k)?.to_vec();
        total_bytes = total_bytes.saturating_add(name.len().saturating_add(1));
        names.push(name);
    }
    if total_bytes > XATTR_LIST_MAX_BYTES {
        return Err(refuse(
            ErrorCode::Range,
            format!(
                "xattr names of inode {ino} take {total_bytes} bytes, over {XATTR_LIST_MAX_BYTES}"
            ),
        ));
    }
    Ok(MetaReply::XattrNames(names))
}

fn fs_stats(r: &impl KvRead) -> OpResult<MetaReply> {
    let files = read::counter(r, keys::INODE_COUNT)?;
    Ok(MetaReply::FsStats(FsStats {
        total_bytes: 0,
        free_bytes: 0,
        files,
        files_free: INODES_MAX.saturating_sub(files),
    }))
}

/// Entry point of [`crate::garbage`].
pub(crate) fn garbage(
    r: &impl KvRead,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<(ChunkId, Timestamp)>, StoreError> {
    let after = after.map(keys::garbage);
    r.scan(&[keys::GARBAGE], after.as_deref(), limit)?
        .iter()
        .map(|(k, v)| Ok((keys::chunk_of(k)?, decode(k, v)?)))
        .collect()
}

/// Entry point of [`crate::heal_pending`].
pub(crate) fn heal_pending(
    r: &impl KvRead,
    node: NodeId,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<HealEntry>, StoreError> {
    let after = after.map(|c| keys::heal(node, c));
    r.scan(&keys::heal_prefix(node), after.as_deref(), limit)?
        .iter()
        .map(|(k, v)| {
            let (_, chunk) = keys::heal_of(k)?;
            let rec: HealRec = decode(k, v)?;
            Ok(HealEntry {
                chunk,
                size_bytes: rec.size_bytes,
                since: rec.since,
            })
        })
        .collect()
}

/// Most entries of one directory searched for an inode's name by `InodePath`.
const PATH_SEARCH_MAX_ENTRIES: usize = 65_536;

/// The path of `ino` from its volume root, following parent hints and searching each
/// parent's entries for the name (bounded); `None` if not found.
fn inode_path(r: &impl KvRead, ino: Ino) -> OpResult<Option<Vec<u8>>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut cur = ino;
    for _ in 0..crate::DIR_DEPTH_MAX {
        let Some(rec) = read::inode(r, cur)? else {
            return Ok(None);
        };
        if rec.volume_root {
            names.reverse();
            let mut path = Vec::new();
            for n in names {
                path.push(b'/');
                path.extend_from_slice(&n);
            }
            if path.is_empty() {
                path.push(b'/');
            }
            return Ok(Some(path));
        }
        let parent = rec.parent;
        let entries = r.scan(&keys::dentry_prefix(parent), None, PATH_SEARCH_MAX_ENTRIES)?;
        let mut found = None;
        for (k, v) in &entries {
            let d: DentryRec = decode(k, v)?;
            if d.ino == cur {
                found = k.get(9..).map(<[u8]>::to_vec);
                break;
            }
        }
        let Some(name) = found else {
            return Ok(None);
        };
        names.push(name);
        cur = parent;
    }
    Ok(None)
}

/// Most files returned by one `ListLocks` query.
const LIST_LOCKS_MAX: usize = 256;

/// Where a queued request stands: still queued, granted (its owner holds a lock of at
/// least the asked type over the whole asked range), or gone.
fn lock_wait(
    r: &impl KvRead,
    ino: Ino,
    session: SessionId,
    seq: u32,
    spec: &LockSpec,
) -> OpResult<MetaReply> {
    let locks = locking::file_locks(r, ino)?;
    let id = waiter_id(session, seq);
    if locks.waiters().any(|w| w.waiter_id == id) {
        return Ok(MetaReply::LockWait(WaitState::Queued));
    }
    let owner = plait_locks::Owner::new(session, spec.owner);
    let covers = |h: &plait_locks::HeldLock| {
        h.owner == owner
            && h.kind == spec.kind
            && (h.lock_type == LockType::Write || spec.lock_type == LockType::Read)
            && (spec.kind == LockKind::Flock
                || (h.range.start() <= spec.range.start() && h.range.end() >= spec.range.end()))
    };
    let state = if locks.holders().any(covers) {
        WaitState::Granted
    } else {
        WaitState::Gone
    };
    Ok(MetaReply::LockWait(state))
}

/// Files with locks or waiters after `after`, in inode order.
fn list_locks(r: &impl KvRead, after: Option<Ino>, limit: u32) -> OpResult<MetaReply> {
    let limit = usize::try_from(limit)
        .unwrap_or(LIST_LOCKS_MAX)
        .min(LIST_LOCKS_MAX);
    let after = after.map(keys::locks);
    let page = r.scan(&[keys::LOCKS], after.as_deref(), limit)?;
    let mut out = Vec::with_capacity(page.len());
    for (k, v) in &page {
        let locks: plait_locks::FileLocks = decode(k, v)?;
        out.push(FileLockInfo {
            ino: keys::trailing_u64(k)?,
            holders: locks.holders().copied().collect(),
            waiters: locks.waiters().copied().collect(),
        });
    }
    Ok(MetaReply::Locks(out))
}

/// Pending heal work per node: one pass over the whole heal index, in pages.
fn heal_summary(r: &impl KvRead) -> OpResult<MetaReply> {
    const PAGE: usize = 4096;
    let mut out: Vec<HealNodeSummary> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = r.scan(&[keys::HEAL], after.as_deref(), PAGE)?;
        for (k, v) in &page {
            let (node, _) = keys::heal_of(k)?;
            let rec: HealRec = decode(k, v)?;
            match out.last_mut() {
                Some(s) if s.node == node => {
                    s.chunks += 1;
                    s.bytes = s.bytes.saturating_add(rec.size_bytes);
                }
                _ => out.push(HealNodeSummary {
                    node,
                    chunks: 1,
                    bytes: rec.size_bytes,
                }),
            }
        }
        if page.len() < PAGE {
            return Ok(MetaReply::HealSummary(out));
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

/// Entry point of [`crate::referenced_chunks`].
pub(crate) fn referenced_chunks(
    r: &impl KvRead,
    after: Option<&ChunkId>,
    limit: usize,
) -> Result<Vec<(ChunkId, u64)>, StoreError> {
    let after = after.map(keys::chunk_ref);
    r.scan(&[keys::CHUNK_REF], after.as_deref(), limit)?
        .iter()
        .map(|(k, v)| Ok((keys::chunk_of(k)?, decode(k, v)?)))
        .collect()
}

#[cfg(test)]
mod tests;
