//! Typed reads shared by ops and queries: decode what a key holds, and refuse with the
//! errno Linux would give when it is missing or of the wrong kind.

use plait_proto::{ChunkId, ErrorCode, FileKind, Ino};
use serde::de::DeserializeOwned;

use crate::keys;
use crate::records::{DentryRec, ExtentRec, InodeRec, decode};
use crate::{KvEntry, KvRead, OpResult, StoreError, refuse};

/// Entries fetched per page by full scans.
pub(crate) const PAGE_ENTRIES: usize = 1024;

/// The record stored under `key`, decoded.
pub(crate) fn get<T: DeserializeOwned>(
    r: &impl KvRead,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    r.get(key)?.map(|v| decode(key, &v)).transpose()
}

/// The inode `ino`, if it exists.
pub(crate) fn inode(r: &impl KvRead, ino: Ino) -> Result<Option<InodeRec>, StoreError> {
    get(r, &keys::inode(ino))
}

/// The inode `ino`, or ENOENT naming it.
pub(crate) fn require_inode(r: &impl KvRead, ino: Ino) -> OpResult<InodeRec> {
    inode(r, ino)?.ok_or_else(|| refuse(ErrorCode::NotFound, format!("inode {ino} not found")))
}

/// The directory `ino`: ENOENT if missing, ENOTDIR if not a directory.
pub(crate) fn require_dir(r: &impl KvRead, ino: Ino) -> OpResult<InodeRec> {
    let rec = require_inode(r, ino)?;
    if !rec.is_dir() {
        return Err(refuse(
            ErrorCode::NotDir,
            format!("inode {ino} is not a directory"),
        ));
    }
    Ok(rec)
}

/// EISDIR for a directory, EINVAL for anything else that is not a regular file (as
/// read, write and truncate do on Linux).
pub(crate) fn require_file(rec: &InodeRec, ino: Ino) -> OpResult<()> {
    match rec.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => Err(refuse(
            ErrorCode::IsDir,
            format!("inode {ino} is a directory"),
        )),
        other => Err(refuse(
            ErrorCode::InvalidArgument,
            format!("inode {ino} is a {other:?}, not a regular file"),
        )),
    }
}

/// The entry `name` of directory `parent`, if any.
pub(crate) fn dentry(
    r: &impl KvRead,
    parent: Ino,
    name: &[u8],
) -> Result<Option<DentryRec>, StoreError> {
    get(r, &keys::dentry(parent, name))
}

/// The entry `name` of directory `parent`, or ENOENT.
pub(crate) fn require_dentry(r: &impl KvRead, parent: Ino, name: &[u8]) -> OpResult<DentryRec> {
    dentry(r, parent, name)?.ok_or_else(|| {
        refuse(
            ErrorCode::NotFound,
            format!(
                "no entry {:?} in directory {parent}",
                String::from_utf8_lossy(name)
            ),
        )
    })
}

/// The inode an entry names; its absence or a kind mismatch is corruption.
pub(crate) fn child(r: &impl KvRead, d: &DentryRec) -> Result<InodeRec, StoreError> {
    match inode(r, d.ino)? {
        Some(rec) if rec.kind == d.kind => Ok(rec),
        Some(rec) => Err(StoreError::Corrupt(format!(
            "entry says inode {} is {:?}, inode says {:?}",
            d.ino, d.kind, rec.kind
        ))),
        None => Err(StoreError::Corrupt(format!(
            "entry names missing inode {}",
            d.ino
        ))),
    }
}

/// A counter's value (0 when never set).
pub(crate) fn counter(r: &impl KvRead, name: &[u8]) -> Result<u64, StoreError> {
    Ok(get(r, &keys::counter(name))?.unwrap_or(0))
}

/// How many extents reference `chunk` (0 when it has no `C` key).
pub(crate) fn refcount(r: &impl KvRead, chunk: &ChunkId) -> Result<u64, StoreError> {
    Ok(get(r, &keys::chunk_ref(chunk))?.unwrap_or(0))
}

/// True if directory `ino` has no entries.
pub(crate) fn dir_is_empty(r: &impl KvRead, ino: Ino) -> Result<bool, StoreError> {
    Ok(r.scan(&keys::dentry_prefix(ino), None, 1)?.is_empty())
}

fn extent_entry(key: &[u8], value: &[u8]) -> Result<(u64, ExtentRec), StoreError> {
    Ok((keys::extent_offset(key)?, decode(key, value)?))
}

/// The extent of `ino` starting at the greatest offset <= `offset`, if any.
pub(crate) fn extent_at_or_before(
    r: &impl KvRead,
    ino: Ino,
    offset: u64,
) -> Result<Option<(u64, ExtentRec)>, StoreError> {
    r.seek_prev(&keys::extent_prefix(ino), &keys::extent(ino, offset))?
        .map(|(k, v)| extent_entry(&k, &v))
        .transpose()
}

/// Up to `limit` extents of `ino` starting at or after `start`, in offset order.
pub(crate) fn extents_from(
    r: &impl KvRead,
    ino: Ino,
    start: u64,
    limit: usize,
) -> Result<Vec<(u64, ExtentRec)>, StoreError> {
    let after = start.checked_sub(1).map(|s| keys::extent(ino, s));
    r.scan(&keys::extent_prefix(ino), after.as_deref(), limit)?
        .iter()
        .map(|(k, v)| extent_entry(k, v))
        .collect()
}

/// Every entry under `prefix`, fetched page by page.
pub(crate) fn scan_all(r: &impl KvRead, prefix: &[u8]) -> Result<Vec<KvEntry>, StoreError> {
    let mut out: Vec<KvEntry> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let page = r.scan(prefix, after.as_deref(), PAGE_ENTRIES)?;
        let full = page.len() == PAGE_ENTRIES;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}
