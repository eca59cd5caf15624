//! Typed reads shared by ops and queries: decode what a key holds, and refuse with the
//! errno Linux would give when it is missing or of the wrong kind.

use std::collections::VecDeque;

use plait_proto::{ChunkId, ErrorCode, FileKind, Ino};
use serde::de::DeserializeOwned;

use crate::keys;
use crate::records::{DentryRec, ExtentRec, InlineChunkRec, InodeRec, decode};
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

/// The inline record of `chunk`, if it is kept in the metadata group.
pub(crate) fn inline_chunk(
    r: &impl KvRead,
    chunk: &ChunkId,
) -> Result<Option<InlineChunkRec>, StoreError> {
    get(r, &keys::inline_chunk(chunk))
}

/// True if directory `ino` has no entries.
pub(crate) fn dir_is_empty(r: &impl KvRead, ino: Ino) -> Result<bool, StoreError> {
    Ok(r.scan(&keys::dentry_prefix(ino), None, 1)?.is_empty())
}

/// Extents read by the first page of an [`Overlapping`] scan: a write usually overlaps
/// one to a few extents. Later pages double, up to [`PAGE_ENTRIES`].
const OVERLAP_FIRST_PAGE_ENTRIES: usize = 4;

/// One stored extent with its place in the file: it covers `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileExtent {
    /// File offset of its first byte.
    pub start: u64,
    /// File offset just past its last byte (the offset in its key).
    pub end: u64,
    /// The record.
    pub rec: ExtentRec,
}

impl FileExtent {
    /// Decodes an extent entry; an empty extent or one starting below 0 is corruption.
    fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let end = keys::extent_end(key)?;
        let rec: ExtentRec = decode(key, value)?;
        match end.checked_sub(rec.len) {
            Some(start) if rec.len > 0 => Ok(Self { start, end, rec }),
            _ => Err(StoreError::Corrupt(format!(
                "extent of {} bytes ending at {end} under key {key:02x?}",
                rec.len
            ))),
        }
    }
}

/// The extents of one inode overlapping a range `[start, end)`, in file order, read with
/// forward scans only.
///
/// Extent keys hold the end offset, so the first extent reaching past `start` is the
/// first key after `extent(ino, start)`; since extents never overlap, the walk ends with
/// the first extent reaching `end` (nothing after it can overlap, so nothing more is
/// read) or, when the range ends in a hole, with the first extent starting at or past
/// `end`. Entries are fetched in pages that start small and grow, so a range overlapping
/// few extents reads few records: every entry read past the range is wasted work, and in
/// a store keeping tombstones (RocksDB) so is every dead key stepped over to reach it.
///
/// The store is passed to each [`Overlapping::next`] call, so a caller may write through
/// it between calls: writes at or below the key of an extent already returned (trimming,
/// splitting or deleting it) do not disturb the walk.
pub(crate) struct Overlapping {
    prefix: Vec<u8>,
    end: u64,
    /// Key of the last entry fetched: the next page starts after it.
    after: Vec<u8>,
    page: usize,
    buf: VecDeque<KvEntry>,
    /// No more entries to fetch (the last page was short, or the range is passed).
    exhausted: bool,
}

impl Overlapping {
    /// A walk over the extents of `ino` overlapping `[start, end)` (none when empty).
    pub fn new(ino: Ino, start: u64, end: u64) -> Self {
        Self {
            prefix: keys::extent_prefix(ino),
            end,
            after: keys::extent(ino, start),
            page: OVERLAP_FIRST_PAGE_ENTRIES,
            buf: VecDeque::new(),
            exhausted: start >= end,
        }
    }

    /// The next overlapping extent, if any.
    pub fn next(&mut self, r: &impl KvRead) -> Result<Option<FileExtent>, StoreError> {
        if self.buf.is_empty() && !self.exhausted {
            let got = r.scan(&self.prefix, Some(&self.after), self.page)?;
            self.exhausted = got.len() < self.page;
            if let Some((k, _)) = got.last() {
                self.after.clone_from(k);
            }
            self.buf.extend(got);
            self.page = self.page.saturating_mul(2).min(PAGE_ENTRIES);
        }
        let Some((k, v)) = self.buf.pop_front() else {
            return Ok(None);
        };
        let e = FileExtent::decode(&k, &v)?;
        if e.start >= self.end {
            self.finish();
            return Ok(None);
        }
        if e.end >= self.end {
            // The next extent starts at or past this one's end: nothing more to read.
            self.finish();
        }
        Ok(Some(e))
    }

    fn finish(&mut self) {
        self.buf.clear();
        self.exhausted = true;
    }
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
