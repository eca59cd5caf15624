//! Writing a new chunk file with `O_DIRECT`, around the page cache.
//!
//! A buffered write copies every byte into the page cache first; with three replicas on
//! one host that kernel copy was the largest single cost of a sequential write (`perf`:
//! 38% of each node's CPU in `copy_folio_from_iter_atomic`). A direct write hands the
//! buffer to the device instead. `O_DIRECT` wants the buffer address, the file offset and
//! the length aligned to the device's logical block, so the bytes are copied once into an
//! aligned buffer (a user-space copy into memory that is reused, far cheaper than the page
//! cache's), written padded to the alignment, and the file is truncated back to its true
//! length. The caller still fsyncs: `O_DIRECT` alone promises nothing about the device's
//! cache or the file's size.
//!
//! File systems that refuse `O_DIRECT` (tmpfs) or an alignment (an odd device) get an
//! ordinary buffered write: the result is the same file, only slower.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Alignment of buffer address, offset and length: 4 KiB covers devices with 512-byte and
/// with 4 KiB logical blocks.
const ALIGN_BYTES: usize = 4096;

/// Chunks smaller than this are written through the page cache: their copy is cheap, and a
/// small file read soon after (the common case for small files) is then served from memory.
pub(crate) const DIRECT_MIN_BYTES: usize = 256 * 1024;

/// Aligned buffers kept for reuse between writes. Each is one chunk plus the alignment
/// slack, so this bounds the memory held idle at `BUFFERS_KEPT_MAX × (4 MiB + 8 KiB)`.
const BUFFERS_KEPT_MAX: usize = 4;

/// Direct writes running at once; more concurrent writes take the buffered path rather
/// than allocate another buffer. With the kept ones this bounds the pool's memory at
/// `(DIRECT_WRITES_MAX + BUFFERS_KEPT_MAX) × (4 MiB + 8 KiB)`.
const DIRECT_WRITES_MAX: usize = 8;

/// A bounded pool of buffers large enough to hold any chunk at an aligned offset.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers lent out now (at most [`DIRECT_WRITES_MAX`]).
    in_use: AtomicUsize,
}

/// A buffer lent by the pool; it goes back (or is freed) when dropped, on every path.
struct Lease<'a> {
    pool: &'a BufferPool,
    buf: Vec<u8>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut free) = self.pool.free.lock()
            && free.len() < BUFFERS_KEPT_MAX
        {
            free.push(buf);
        }
        self.pool.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BufferPool {
    /// A buffer of at least `capacity_bytes`, or `None` when [`DIRECT_WRITES_MAX`] are
    /// lent out already.
    fn take(&self, capacity_bytes: usize) -> Option<Lease<'_>> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < DIRECT_WRITES_MAX).then_some(n + 1)
            })
            .ok()?;
        let reused = match self.free.lock() {
            Ok(mut free) => free.pop(),
            Err(_) => None,
        };
        let buf = match reused {
            Some(buf) if buf.len() >= capacity_bytes => buf,
            _ => vec![0u8; capacity_bytes],
        };
        Some(Lease { pool: self, buf })
    }
}

/// Creates `path` (it must not exist) holding exactly `data`, written with `O_DIRECT` when
/// the file system allows it. The file is not fsynced: that is the caller's job.
pub(crate) fn create_with(
    path: &Path,
    data: &[u8],
    pool: &BufferPool,
    chunk_max_bytes: usize,
) -> io::Result<File> {
    if data.len() < DIRECT_MIN_BYTES {
        return create_buffered(path, data);
    }
    let Some(mut lease) = pool.take(chunk_max_bytes.max(data.len()) + 2 * ALIGN_BYTES) else {
        return create_buffered(path, data);
    };
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Linux creates the file before it checks the flag: the refusal can leave an
            // empty file of ours behind, which the buffered `create_new` would refuse.
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            return create_buffered(path, data);
        }
        Err(e) => return Err(e),
    };
    let padded_bytes = data.len().next_multiple_of(ALIGN_BYTES);
    let offset = lease.buf.as_ptr().align_offset(ALIGN_BYTES);
    let written = {
        let Some(aligned) = lease.buf.get_mut(offset..offset + padded_bytes) else {
            return Err(io::Error::other("aligned buffer smaller than the chunk"));
        };
        aligned[..data.len()].copy_from_slice(data);
        aligned[data.len()..].fill(0);
        file.write_all(aligned)
    };
    drop(lease);
    match written {
        Ok(()) => {
            file.set_len(data.len() as u64)?;
            Ok(file)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // The device wants a larger alignment than ours: start over through the cache.
            drop(file);
            std::fs::remove_file(path)?;
            create_buffered(path, data)
        }
        Err(e) => Err(e),
    }
}

fn create_buffered(path: &Path, data: &[u8]) -> io::Result<File> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Sizes around the alignment and the direct threshold, including an unaligned tail, come
    /// back byte-identical with their exact length, on whatever file system the temp dir is
    /// (ext4 takes the direct path, tmpfs the buffered fallback).
    #[test]
    fn files_hold_exactly_the_bytes_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = BufferPool::default();
        let chunk_max_bytes = 4 << 20;
        for (i, len) in [
            0,
            1,
            DIRECT_MIN_BYTES - 1,
            DIRECT_MIN_BYTES,
            DIRECT_MIN_BYTES + 1,
            3 * ALIGN_BYTES * 100 + 17,
            chunk_max_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            let data = sample(len);
            let file = create_with(&path, &data, &pool, chunk_max_bytes).expect("write");
            file.sync_all().expect("fsync");
            assert_eq!(std::fs::read(&path).expect("read"), data, "length {len}");
        }
        assert!(pool.free.lock().expect("pool").len() <= BUFFERS_KEPT_MAX);
        assert_eq!(pool.in_use.load(Ordering::Acquire), 0);
    }

    /// Past the bound of concurrent direct writes a write takes the buffered path: same
    /// bytes, no new buffer; the bound frees up when leases end.
    #[test]
    fn writes_past_the_concurrency_bound_go_through_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = BufferPool::default();
        let capacity = (4 << 20) + 2 * ALIGN_BYTES;
        let held: Vec<Lease<'_>> = (0..DIRECT_WRITES_MAX)
            .map(|_| pool.take(capacity).expect("under the bound"))
            .collect();
        assert!(pool.take(capacity).is_none());
        let data = sample(DIRECT_MIN_BYTES * 2 + 5);
        let path = dir.path().join("busy");
        create_with(&path, &data, &pool, 4 << 20).expect("buffered write");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        drop(held);
        assert_eq!(pool.in_use.load(Ordering::Acquire), 0);
        assert_eq!(pool.free.lock().expect("pool").len(), BUFFERS_KEPT_MAX);
        assert!(pool.take(capacity).is_some());
    }

    /// An existing file is never overwritten.
    #[test]
    fn an_existing_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").expect("write");
        let err = create_with(
            &path,
            &sample(DIRECT_MIN_BYTES),
            &BufferPool::default(),
            4 << 20,
        )
        .expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
    }
}
