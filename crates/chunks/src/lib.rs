//! The chunk store of one node: immutable blobs of at most [`CHUNK_MAX_BYTES`] bytes, each
//! in its own file named by the blake3 hash of its bytes.
//!
//! Layout under the store's root directory:
//!
//! ```text
//! <root>/<first 2 hex>/<next 2 hex>/<64 hex>    one file per chunk (fan-out dirs made lazily)
//! <root>/tmp/<64 hex>.<pid>.<counter>.tmp        writes in progress (removed by `open`)
//! ```
//!
//! Durability: a chunk is written to a temporary file (large ones around the page cache,
//! see `direct`), fsynced, renamed into place and its
//! directory fsynced, so after a crash a chunk file is either complete or absent. Every read
//! re-hashes the bytes, so a corrupt file is reported ([`ChunkError::Corrupt`]) and its bytes
//! never reach a caller.
//!
//! All methods do blocking file I/O: async callers should run them in
//! `tokio::task::spawn_blocking` (or an equivalent blocking pool).

#![warn(missing_docs)]

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use plait_proto::{CHUNK_MAX_BYTES, ChunkId, ErrorCode};

mod direct;

/// Name of the directory (under the store root) that holds writes in progress.
const TMP_DIR_NAME: &str = "tmp";

/// Suffix of temporary files, so that `open` only removes what it recognises.
const TMP_SUFFIX: &str = ".tmp";

/// Number of stripes of the per-id lock array. Two ids share a stripe with probability
/// 1/`LOCK_STRIPES`; sharing only serialises their (short) mtime-refresh and delete steps.
const LOCK_STRIPES: usize = 64;

/// Why a chunk store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// No chunk with this id is stored here.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// `put` was given bytes whose blake3 hash is not the id they were offered under.
    #[error("chunk data hashes to {actual}, not to the claimed id {expected}")]
    HashMismatch {
        /// The id the caller claimed.
        expected: ChunkId,
        /// The blake3 hash of the bytes actually given.
        actual: ChunkId,
    },
    /// The stored file does not hash to its name (bit rot, a torn or tampered file). Its bytes
    /// are never returned; heal must replace it from another replica.
    #[error("chunk {id} is corrupt on disk at {}", path.display())]
    Corrupt {
        /// The chunk whose file is corrupt.
        id: ChunkId,
        /// The file holding the corrupt bytes.
        path: PathBuf,
    },
    /// The data is larger than [`CHUNK_MAX_BYTES`].
    #[error("chunk of {size_bytes} bytes exceeds the limit of {CHUNK_MAX_BYTES} bytes")]
    TooLarge {
        /// The size offered.
        size_bytes: usize,
    },
    /// The file system holding the store is full (ENOSPC) or the quota is exhausted (EDQUOT).
    /// Nothing already stored was affected.
    #[error("no space left in the chunk store")]
    NoSpace,
    /// Any other I/O error.
    #[error("chunk store I/O error: {0}")]
    Io(#[source] std::io::Error),
}

impl From<io::Error> for ChunkError {
    /// Maps "disk full" and "quota exceeded" to [`ChunkError::NoSpace`], everything else to
    /// [`ChunkError::Io`], so that every `?` on an I/O result reports a full disk correctly.
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ChunkError::NoSpace,
            _ => ChunkError::Io(e),
        }
    }
}

impl ChunkError {
    /// The wire error code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChunkError::NotFound(_) => ErrorCode::NotFound,
            ChunkError::HashMismatch { .. } => ErrorCode::InvalidArgument,
            ChunkError::Corrupt { .. } => ErrorCode::Io,
            ChunkError::TooLarge { .. } => ErrorCode::InvalidArgument,
            ChunkError::NoSpace => ErrorCode::NoSpace,
            ChunkError::Io(_) => ErrorCode::Io,
        }
    }
}

/// A chunk store rooted at one directory. `Send + Sync`: share it in an `Arc`.
#[derive(Debug)]
pub struct ChunkStore {
    /// The store's root directory.
    root: PathBuf,
    /// `<root>/tmp`, where writes in progress live.
    tmp_dir: PathBuf,
    /// Striped per-id locks: make `put`'s mtime refresh / rename and `delete_if_older`'s age
    /// check + unlink mutually atomic for the same id.
    stripes: Vec<Mutex<()>>,
    /// Makes temporary file names unique within this process.
    tmp_counter: AtomicU64,
    /// Aligned buffers for writing large chunks around the page cache.
    direct_buffers: direct::BufferPool,
}

impl ChunkStore {
    /// Opens (creating if needed) the store rooted at `dir`, and removes temporary files left
    /// over by a crash (they were never acknowledged, so nothing is lost).
    pub fn open(dir: &Path) -> Result<Self, ChunkError> {
        fs::create_dir_all(dir)?;
        let tmp_dir = dir.join(TMP_DIR_NAME);
        match fs::create_dir(&tmp_dir) {
            Ok(()) => fsync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let mut removed = 0u64;
        for entry in fs::read_dir(&tmp_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.as_bytes().ends_with(TMP_SUFFIX.as_bytes()) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                tracing::warn!(path = %entry.path().display(), "unexpected file in chunk tmp dir; left alone");
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %tmp_dir.display(), "removed leftover temporary chunk files");
        }
        Ok(ChunkStore {
            root: dir.to_path_buf(),
            tmp_dir,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_counter: AtomicU64::new(0),
            direct_buffers: direct::BufferPool::default(),
        })
    }

    /// The directory this store is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `data` under `id` durably (temporary file, fsync, rename, fsync of the
    /// directory) after checking that `id` is the blake3 hash of `data`.
    ///
    /// If the chunk is already stored, its mtime is refreshed (GC uses mtime as a grace
    /// marker) and nothing is rewritten, unless the stored copy differs from `data` (a corrupt
    /// copy): then it is replaced atomically, so a successful `put` always leaves a good copy.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), ChunkError> {
        if data.len() > CHUNK_MAX_BYTES {
            return Err(ChunkError::TooLarge {
                size_bytes: data.len(),
            });
        }
        let actual = ChunkId::of(data);
        if actual != *id {
            return Err(ChunkError::HashMismatch {
                expected: *id,
                actual,
            });
        }
        let path = self.chunk_path(id);

        {
            let _guard = self.lock(id);
            match self.refresh_if_intact(id, &path, data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }

        // Write the new copy without holding the stripe lock: the fsync may take a while.
        let tmp_path = self.write_tmp(id, data)?;
        let result = self.install(id, &tmp_path, &path);
        if result.is_err() {
            remove_quietly(&tmp_path);
        }
        result
    }

    /// Reads a whole chunk and verifies its hash. A mismatch is reported as
    /// [`ChunkError::Corrupt`] (and logged); the corrupt bytes are never returned.
    pub fn get(&self, id: &ChunkId) -> Result<Vec<u8>, ChunkError> {
        let path = self.chunk_path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChunkError::NotFound(*id)),
            Err(e) => return Err(e.into()),
        };
        let len_bytes = file.metadata()?.len();
        if len_bytes > CHUNK_MAX_BYTES as u64 {
            tracing::error!(chunk = %id, path = %path.display(), len_bytes, "corrupt chunk: file larger than any chunk");
            return Err(ChunkError::Corrupt { id: *id, path });
        }
        let mut data = Vec::with_capacity(len_bytes as usize);
        // Read at most one byte past the limit so a file that grows meanwhile cannot make us
        // allocate without bound.
        (&mut file)
            .take(CHUNK_MAX_BYTES as u64 + 1)
            .read_to_end(&mut data)?;
        if data.len() > CHUNK_MAX_BYTES || ChunkId::of(&data) != *id {
            tracing::error!(chunk = %id, path = %path.display(), len_bytes = data.len(), "corrupt chunk: contents do not match its hash");
            return Err(ChunkError::Corrupt { id: *id, path });
        }
        Ok(data)
    }

    /// Whether a file for this chunk exists (its contents are not verified: use `get`).
    pub fn contains(&self, id: &ChunkId) -> bool {
        fs::symlink_metadata(self.chunk_path(id))
            .map(|m| m.is_file())
            .unwrap_or(false)
    }

    /// Deletes a chunk if its file was last written or refreshed at least `min_age` ago (the
    /// GC grace period); returns whether it was deleted. Atomic with respect to a concurrent
    /// `put` of the same id: either the put's refresh comes first and the chunk is kept, or
    /// the delete comes first and the put writes a fresh copy.
    pub fn delete_if_older(&self, id: &ChunkId, min_age: Duration) -> Result<bool, ChunkError> {
        let path = self.chunk_path(id);
        {
            let _guard = self.lock(id);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let age = SystemTime::now()
                .duration_since(meta.modified()?)
                .unwrap_or(Duration::ZERO); // mtime in the future: treat as brand new
            if age < min_age {
                return Ok(false);
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
        Ok(true)
    }

    /// Lists stored chunk ids in ascending order (the order of their hex names), starting
    /// after `after` when given, at most `limit` of them. Page with the last id returned.
    pub fn list(&self, after: Option<&ChunkId>, limit: usize) -> Result<Vec<ChunkId>, ChunkError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let after_hex = after.map(ChunkId::to_hex);
        let after_hex = after_hex.as_deref();
        for l1 in sorted_hex_dirs(&self.root)? {
            if let Some(a) = after_hex
                && l1.as_str() < &a[..2]
            {
                continue;
            }
            let l1_path = self.root.join(&l1);
            for l2 in sorted_hex_dirs(&l1_path)? {
                let prefix = format!("{l1}{l2}");
                if let Some(a) = after_hex
                    && prefix.as_str() < &a[..4]
                {
                    continue;
                }
                let l2_path = l1_path.join(&l2);
                for name in sorted_chunk_names(&l2_path, &prefix)? {
                    if let Some(a) = after_hex
                        && name.as_str() <= a
                    {
                        continue;
                    }
                    if let Some(id) = ChunkId::from_hex(&name) {
                        out.push(id);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Number of chunks stored and their total size in bytes (walks the whole store).
    pub fn usage(&self) -> Result<(u64, u64), ChunkError> {
        let mut count = 0u64;
        let mut bytes = 0u64;
        for l1 in sorted_hex_dirs(&self.root)? {
            let l1_path = self.root.join(&l1);
            for l2 in sorted_hex_dirs(&l1_path)? {
                let l2_path = l1_path.join(&l2);
                let entries = match fs::read_dir(&l2_path) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if ChunkId::from_hex(name).is_none() {
                        continue;
                    }
                    match entry.metadata() {
                        Ok(m) if m.is_file() => {
                            count += 1;
                            bytes += m.len();
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok((count, bytes))
    }

    /// Total and free bytes of the file system holding the store (free = available to
    /// unprivileged users, as `df` shows).
    pub fn disk_space(&self) -> Result<(u64, u64), ChunkError> {
        let c_path = CString::new(self.root.as_os_str().as_bytes()).map_err(|_| {
            ChunkError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "store path contains a NUL byte",
            ))
        })?;
        // SAFETY: `statvfs` is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c_path` is a valid NUL-terminated string and `st` a valid out pointer.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(ChunkError::Io(io::Error::last_os_error()));
        }
        let frsize = st.f_frsize as u64;
        let total = (st.f_blocks as u64).saturating_mul(frsize);
        let free = (st.f_bavail as u64).saturating_mul(frsize);
        Ok((total, free))
    }

    /// `<root>/<2 hex>/<2 hex>/<64 hex>`.
    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..4]).join(hex)
    }

    /// The stripe lock for `id`. A poisoned lock is taken anyway: it guards no data.
    fn lock(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        let idx = usize::from(id.0[0]) % self.stripes.len();
        self.stripes[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Under the stripe lock: if an intact copy of the chunk is stored, refresh its mtime and
    /// return true. Returns false if there is no copy or the copy differs from `data`.
    fn refresh_if_intact(
        &self,
        id: &ChunkId,
        path: &Path,
        data: &[u8],
    ) -> Result<bool, ChunkError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let len_bytes = file.metadata()?.len();
        let intact = len_bytes == data.len() as u64
            && {
                let mut existing = Vec::with_capacity(data.len());
                match (&mut file)
                    .take(data.len() as u64 + 1)
                    .read_to_end(&mut existing)
                {
                    Ok(_) => existing == data,
                    Err(e) => {
                        // An unreadable copy (EIO, a bad sector) is replaced like a corrupt one.
                        tracing::error!(chunk = %id, path = %path.display(), error = %e, "stored chunk is unreadable");
                        false
                    }
                }
            };
        if !intact {
            tracing::error!(chunk = %id, path = %path.display(), len_bytes, "stored chunk is corrupt; replacing it with the copy being put");
            return Ok(false);
        }
        file.set_modified(SystemTime::now())?;
        Ok(true)
    }

    /// Writes `data` to a new temporary file and fsyncs it; returns its path. On failure the
    /// temporary file is removed.
    fn write_tmp(&self, id: &ChunkId, data: &[u8]) -> Result<PathBuf, ChunkError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self.tmp_dir.join(format!(
            "{}.{}.{n}{TMP_SUFFIX}",
            id.to_hex(),
            std::process::id()
        ));
        let written = direct::create_with(&tmp_path, data, &self.direct_buffers, CHUNK_MAX_BYTES)
            .and_then(|file| file.sync_all());
        if let Err(e) = written {
            remove_quietly(&tmp_path);
            let err = ChunkError::from(e);
            if matches!(err, ChunkError::NoSpace) {
                tracing::warn!(chunk = %id, dir = %self.root.display(), "chunk store is full");
            }
            return Err(err);
        }
        Ok(tmp_path)
    }

    /// Moves a fully written temporary file into place and makes the rename durable.
    fn install(&self, id: &ChunkId, tmp_path: &Path, path: &Path) -> Result<(), ChunkError> {
        let Some(l2) = path.parent() else {
            return Err(ChunkError::Io(io::Error::other("chunk path has no parent")));
        };
        let Some(l1) = l2.parent() else {
            return Err(ChunkError::Io(io::Error::other("chunk path has no parent")));
        };
        ensure_dir(l1, &self.root)?;
        ensure_dir(l2, l1)?;
        {
            let _guard = self.lock(id);
            fs::rename(tmp_path, path)?;
        }
        fsync_dir(l2)?;
        Ok(())
    }
}

/// Creates `dir` if missing and, when it was created, fsyncs `parent` so the new directory
/// survives a crash.
fn ensure_dir(dir: &Path, parent: &Path) -> Result<(), ChunkError> {
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// fsyncs a directory, making renames, creations and unlinks in it durable.
fn fsync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes a file, logging (not failing) if that is impossible.
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove temporary chunk file");
    }
}

/// The sorted names of the two-lowercase-hex-digit subdirectories of `dir` (the fan-out
/// levels); anything else (such as `tmp`) is skipped. A missing `dir` yields nothing.
fn sorted_hex_dirs(dir: &Path) -> Result<Vec<String>, ChunkError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.len() == 2 && name.bytes().all(is_lower_hex) && entry.file_type()?.is_dir() {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The sorted names of chunk files in a leaf directory: 64 lowercase hex digits starting with
/// `prefix` (files in the wrong directory are ignored, as `get` could not find them).
fn sorted_chunk_names(dir: &Path, prefix: &str) -> Result<Vec<String>, ChunkError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.len() == 64 && name.starts_with(prefix) && name.bytes().all(is_lower_hex) {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests;
