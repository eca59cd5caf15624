//! The committed side of a read: which extents a byte range needs, and how the bytes are
//! assembled from chunks (holes read as zeros). Pure functions, no I/O.

use std::collections::HashMap;

use plait_proto::{ChunkId, ErrorCode, Extent, RpcError};

use super::cache::ChunkData;

/// Reads fetch extent maps in windows of this many bytes, aligned to it, so that
/// sequential reads reuse one cached map and one reply stays small (a 4 MiB window of the
/// most fragmented file is at most a few thousand extents).
pub const EXTENT_WINDOW_BYTES: u64 = 4 * 1024 * 1024;

/// The extents of one file over `[start, end)` as committed when fetched, with the file's
/// committed size at that time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentWindow {
    /// First offset covered.
    pub start: u64,
    /// One past the last offset covered.
    pub end: u64,
    /// The file's committed size when the window was fetched, in bytes.
    pub size: u64,
    /// Extents overlapping `[start, end)`, in offset order.
    pub extents: Vec<Extent>,
    /// Bytes of the inline chunks (kept in the metadata group) these extents reference,
    /// as they came with the extents; every other chunk is read from data nodes.
    pub inline: HashMap<ChunkId, ChunkData>,
}

impl ExtentWindow {
    /// True if this window answers for every byte of `[offset, end)`.
    pub fn covers(&self, offset: u64, end: u64) -> bool {
        self.start <= offset && end <= self.end
    }
}

/// The aligned window (`[start, end)`, multiples of [`EXTENT_WINDOW_BYTES`]) that covers
/// `[offset, offset + len)`.
pub fn window_for(offset: u64, len: u64) -> (u64, u64) {
    let start = offset - offset % EXTENT_WINDOW_BYTES;
    let last = offset.saturating_add(len.max(1)) - 1;
    let end = (last / EXTENT_WINDOW_BYTES)
        .saturating_add(1)
        .saturating_mul(EXTENT_WINDOW_BYTES);
    (start, end)
}

/// The distinct chunks holding bytes of `[offset, end)`, in first-use order.
pub fn chunks_needed(extents: &[Extent], offset: u64, end: u64) -> Vec<ChunkId> {
    let mut out: Vec<ChunkId> = Vec::new();
    for e in extents {
        if e.file_offset < end && e.end() > offset && !out.contains(&e.chunk) {
            out.push(e.chunk);
        }
    }
    out
}

/// The committed bytes of `[offset, offset + len)`: zeros where no extent maps a byte
/// (holes), chunk bytes elsewhere. Fails with EIO if a needed chunk is missing from
/// `chunks` or an extent points past its chunk's end (corrupt metadata).
pub fn assemble(
    offset: u64,
    len: usize,
    extents: &[Extent],
    chunks: &HashMap<ChunkId, ChunkData>,
) -> Result<Vec<u8>, RpcError> {
    let mut buf = vec![0u8; len];
    let end = offset.saturating_add(len as u64);
    for e in extents {
        let from = e.file_offset.max(offset);
        let to = e.end().min(end);
        if from >= to {
            continue;
        }
        let chunk = chunks.get(&e.chunk).ok_or_else(|| {
            RpcError::new(ErrorCode::Io, format!("chunk {} was not fetched", e.chunk))
        })?;
        let src = chunk_slice(chunk, e, from, to)?;
        buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
    }
    Ok(buf)
}

/// The bytes of chunk `chunk` that extent `e` maps to file offsets `[from, to)`.
fn chunk_slice<'a>(chunk: &'a [u8], e: &Extent, from: u64, to: u64) -> Result<&'a [u8], RpcError> {
    let start = e.chunk_offset.checked_add(from - e.file_offset);
    let stop = start.and_then(|s| s.checked_add(to - from));
    let range = match (start, stop) {
        (Some(s), Some(t)) => usize::try_from(s).ok().zip(usize::try_from(t).ok()),
        _ => None,
    };
    range.and_then(|(s, t)| chunk.get(s..t)).ok_or_else(|| {
        RpcError::new(
            ErrorCode::Io,
            format!(
                "extent at {} (len {}, chunk offset {}) lies past the end of chunk {} ({} bytes)",
                e.file_offset,
                e.len,
                e.chunk_offset,
                e.chunk,
                chunk.len()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn chunk(bytes: &[u8]) -> (ChunkId, ChunkData) {
        (ChunkId::of(bytes), Arc::new(bytes.to_vec()))
    }

    fn extent(file_offset: u64, len: u64, chunk: ChunkId, chunk_offset: u64) -> Extent {
        Extent {
            file_offset,
            len,
            chunk,
            chunk_offset,
        }
    }

    #[test]
    fn holes_read_as_zeros() {
        let (a, da) = chunk(b"AAAA");
        let (b, db) = chunk(b"0123456789");
        // File: 0..4 = AAAA, 4..8 hole, 8..12 = "3456" (chunk b offset 3), 12..16 hole.
        let extents = vec![extent(0, 4, a, 0), extent(8, 4, b, 3)];
        let chunks = HashMap::from([(a, da), (b, db)]);
        let got = assemble(0, 16, &extents, &chunks).unwrap();
        assert_eq!(&got, b"AAAA\x00\x00\x00\x003456\x00\x00\x00\x00");
        // A read starting inside an extent and ending inside the hole.
        let got = assemble(2, 4, &extents, &chunks).unwrap();
        assert_eq!(&got, b"AA\0\0");
        // A read entirely in a hole.
        let got = assemble(5, 2, &extents, &chunks).unwrap();
        assert_eq!(&got, b"\0\0");
    }

    #[test]
    fn extent_past_chunk_end_is_eio() {
        let (a, da) = chunk(b"AB");
        let extents = vec![extent(0, 4, a, 0)];
        let chunks = HashMap::from([(a, da)]);
        let err = assemble(0, 4, &extents, &chunks).unwrap_err();
        assert_eq!(err.code, ErrorCode::Io);
    }

    #[test]
    fn missing_chunk_is_eio() {
        let (a, _) = chunk(b"AB");
        let extents = vec![extent(0, 2, a, 0)];
        let err = assemble(0, 2, &extents, &HashMap::new()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Io);
    }

    #[test]
    fn chunks_needed_skips_extents_outside_and_dedups() {
        let (a, _) = chunk(b"a");
        let (b, _) = chunk(b"b");
        let (c, _) = chunk(b"c");
        let extents = vec![
            extent(0, 10, a, 0),
            extent(10, 10, b, 0),
            extent(20, 10, a, 10),
            extent(30, 10, c, 0),
        ];
        assert_eq!(chunks_needed(&extents, 5, 25), vec![a, b]);
        assert_eq!(chunks_needed(&extents, 10, 20), vec![b]);
        assert_eq!(chunks_needed(&extents, 40, 50), Vec::<ChunkId>::new());
    }

    #[test]
    fn windows_are_aligned_and_cover_the_read() {
        let w = EXTENT_WINDOW_BYTES;
        assert_eq!(window_for(0, 1), (0, w));
        assert_eq!(window_for(w - 1, 2), (0, 2 * w));
        assert_eq!(window_for(w, 0), (w, 2 * w));
        assert_eq!(window_for(3 * w + 5, 100), (3 * w, 4 * w));
        let win = ExtentWindow {
            start: 0,
            end: w,
            size: 0,
            extents: vec![],
            inline: HashMap::new(),
        };
        assert!(win.covers(0, w));
        assert!(!win.covers(1, w + 1));
    }
}
