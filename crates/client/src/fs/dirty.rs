//! [`DirtyBuffer`]: the bytes a file was given by `write` and that are not committed yet.

use std::collections::BTreeMap;

/// One piece of a flush: a file range that becomes one chunk and one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Offset in the file of the first byte.
    pub file_offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
}

/// Written-but-uncommitted bytes of one file, as sorted, non-overlapping, non-adjacent
/// ranges (touching ranges are merged, so sequential writes grow one range).
///
/// Reads overlay these bytes on the committed data; a flush cuts them into chunk-sized
/// [`Piece`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyBuffer {
    /// Start offset → bytes.
    ranges: BTreeMap<u64, Vec<u8>>,
    /// Sum of the ranges' lengths, in bytes.
    total_bytes: u64,
}

/// One past the last offset of a range starting at `start` holding `bytes`.
fn range_end(start: u64, bytes: &[u8]) -> u64 {
    start.saturating_add(bytes.len() as u64)
}

impl DirtyBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes buffered.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// One past the last buffered byte, if any: the file is at least this long.
    pub fn end(&self) -> Option<u64> {
        self.ranges
            .iter()
            .next_back()
            .map(|(start, bytes)| range_end(*start, bytes))
    }

    /// The buffered ranges in offset order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.ranges.iter().map(|(s, b)| (*s, b.as_slice()))
    }

    /// Records `data` at `offset`, replacing what was buffered there and merging with every
    /// range it overlaps or touches. The caller keeps `offset + data.len()` within the
    /// file size limit.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (start, mut bytes) = match self.take_range_reaching(offset) {
            Some((start, mut bytes)) => {
                // The range reaches `offset`: `at` is within it or just past its end.
                let at = (offset - start) as usize;
                debug_assert!(at <= bytes.len());
                // Overwrite what overlaps, append the rest (no zero-fill first: a
                // sequential writer appends every byte it writes).
                let overlap = bytes.len().saturating_sub(at).min(data.len());
                bytes[at..at + overlap].copy_from_slice(&data[..overlap]);
                bytes.extend_from_slice(&data[overlap..]);
                (start, bytes)
            }
            None => (offset, data.to_vec()),
        };
        self.absorb_following(start, &mut bytes);
        self.total_bytes += bytes.len() as u64;
        self.ranges.insert(start, bytes);
    }

    /// Removes and returns the range that starts at or before `offset` and reaches it
    /// (overlaps it or ends exactly there).
    fn take_range_reaching(&mut self, offset: u64) -> Option<(u64, Vec<u8>)> {
        let (&start, bytes) = self.ranges.range(..=offset).next_back()?;
        if range_end(start, bytes) < offset {
            return None;
        }
        let bytes = self.ranges.remove(&start)?;
        self.total_bytes -= bytes.len() as u64;
        Some((start, bytes))
    }

    /// Merges into `bytes` (a range at `start` that was just written) every following range
    /// it overlaps or touches. The bytes already in `bytes` are the newer ones: a following
    /// range only contributes what lies past their end.
    fn absorb_following(&mut self, start: u64, bytes: &mut Vec<u8>) {
        loop {
            let cur_end = range_end(start, bytes);
            let Some((&next, _)) = self.ranges.range(start..).next() else {
                return;
            };
            if next > cur_end {
                return;
            }
            let Some(other) = self.ranges.remove(&next) else {
                return;
            };
            self.total_bytes -= other.len() as u64;
            if range_end(next, &other) > cur_end {
                let skip = (cur_end - next) as usize;
                bytes.extend_from_slice(&other[skip..]);
            }
        }
    }

    /// Drops every buffered byte at or past `size` (the file was truncated to `size`).
    pub fn truncate(&mut self, size: u64) {
        let dropped = self.ranges.split_off(&size);
        self.total_bytes -= dropped.values().map(|b| b.len() as u64).sum::<u64>();
        if let Some((&start, bytes)) = self.ranges.iter_mut().next_back() {
            let keep = size.saturating_sub(start);
            if (bytes.len() as u64) > keep {
                self.total_bytes -= bytes.len() as u64 - keep;
                bytes.truncate(keep as usize);
            }
            if bytes.is_empty() {
                self.ranges.remove(&start);
            }
        }
    }

    /// Copies the buffered bytes that fall in `[offset, offset + buf.len())` over `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = range_end(offset, buf);
        for (start, bytes) in self.overlapping(offset, end) {
            let from = start.max(offset);
            let to = range_end(start, bytes).min(end);
            let src = &bytes[(from - start) as usize..(to - start) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
    }

    /// The ranges overlapping `[offset, end)`, in offset order.
    fn overlapping(&self, offset: u64, end: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let before = self
            .ranges
            .range(..offset)
            .next_back()
            .filter(|(s, b)| range_end(**s, b) > offset);
        before
            .into_iter()
            .chain(self.ranges.range(offset..end))
            .map(|(s, b)| (*s, b.as_slice()))
    }

    /// A buffer holding only the bytes of this one that fall in `[offset, offset + len)`
    /// (for a read to overlay without holding a lock).
    pub fn copy_range(&self, offset: u64, len: u64) -> DirtyBuffer {
        let end = offset.saturating_add(len);
        let mut out = DirtyBuffer::new();
        for (start, bytes) in self.overlapping(offset, end) {
            let from = start.max(offset);
            let to = range_end(start, bytes).min(end);
            out.write(from, &bytes[(from - start) as usize..(to - start) as usize]);
        }
        out
    }

    /// Writes every range of `newer` over this buffer (newer bytes win).
    pub fn absorb_newer(&mut self, newer: &DirtyBuffer) {
        for (start, bytes) in newer.ranges() {
            self.write(start, bytes);
        }
    }

    /// Cuts the buffer into pieces of at most `max_bytes`, at file offsets that are
    /// multiples of `max_bytes`, so that rewriting the same aligned data yields the same
    /// chunks. A range crossing such a boundary is split there.
    pub fn pieces(&self, max_bytes: u64) -> Vec<Piece> {
        let max_bytes = max_bytes.max(1);
        let mut out = Vec::new();
        for (start, bytes) in self.ranges() {
            let end = range_end(start, bytes);
            let mut pos = start;
            while pos < end {
                let boundary = (pos / max_bytes)
                    .saturating_add(1)
                    .saturating_mul(max_bytes);
                let piece_end = end.min(boundary);
                out.push(Piece {
                    file_offset: pos,
                    len: piece_end - pos,
                });
                pos = piece_end;
            }
        }
        out
    }

    /// The bytes of `piece`, if they lie within one buffered range.
    pub fn piece_bytes(&self, piece: Piece) -> Option<&[u8]> {
        let (&start, bytes) = self.ranges.range(..=piece.file_offset).next_back()?;
        let from = usize::try_from(piece.file_offset - start).ok()?;
        let to = from.checked_add(usize::try_from(piece.len).ok()?)?;
        bytes.get(from..to)
    }

    /// How many whole aligned blocks of `block_bytes` (starting at multiples of it) the
    /// range holding `offset` covers; 0 if no range holds it. Looks at that one range
    /// only, so a writer can ask after every write at the cost of one map lookup.
    pub fn full_blocks_at(&self, offset: u64, block_bytes: u64) -> u64 {
        let Some((&start, bytes)) = self.ranges.range(..=offset).next_back() else {
            return 0;
        };
        if range_end(start, bytes) <= offset {
            return 0;
        }
        let block = block_bytes.max(1);
        full_blocks(start, range_end(start, bytes), block)
            .map_or(0, |(from, to)| (to - from) / block)
    }

    /// True if some range covers a whole aligned block of `block_bytes` (looks at every
    /// range; for a writer's per-write check use [`Self::full_blocks_at`]).
    pub fn has_full_block(&self, block_bytes: u64) -> bool {
        let block = block_bytes.max(1);
        self.ranges
            .iter()
            .any(|(start, bytes)| full_blocks(*start, range_end(*start, bytes), block).is_some())
    }

    /// Removes and returns the bytes of every whole aligned block of `block_bytes` (a
    /// block starts at a multiple of it and every byte of it is buffered); the bytes
    /// around them stay. What is taken is what a flush can store as whole chunks now,
    /// without cutting a chunk that later writes would complete.
    pub fn take_full_blocks(&mut self, block_bytes: u64) -> DirtyBuffer {
        let block = block_bytes.max(1);
        let mut out = DirtyBuffer::new();
        let spans: Vec<(u64, u64, u64)> = self
            .ranges
            .iter()
            .filter_map(|(start, bytes)| {
                full_blocks(*start, range_end(*start, bytes), block).map(|(f, t)| (*start, f, t))
            })
            .collect();
        for (start, from, to) in spans {
            let Some(mut bytes) = self.ranges.remove(&start) else {
                continue;
            };
            self.total_bytes -= bytes.len() as u64;
            // Split into [start, from) (stays), [from, to) (taken), [to, end) (stays):
            // the taken middle keeps the original allocation when `from == start`.
            let tail = bytes.split_off((to - start) as usize);
            let middle = if from == start {
                bytes
            } else {
                let middle = bytes.split_off((from - start) as usize);
                self.insert_unmerged(start, bytes);
                middle
            };
            self.insert_unmerged(to, tail);
            out.insert_unmerged(from, middle);
        }
        out
    }

    /// Inserts `bytes` at `start` where the caller knows no range overlaps or touches it.
    fn insert_unmerged(&mut self, start: u64, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.total_bytes += bytes.len() as u64;
        self.ranges.insert(start, bytes);
    }
}

/// The whole aligned blocks of `block` within `[start, end)`: from the first block start
/// at or after `start` to the last block end at or before `end`, if that is not empty.
fn full_blocks(start: u64, end: u64, block: u64) -> Option<(u64, u64)> {
    let from = start.div_ceil(block).checked_mul(block)?;
    let to = (end / block) * block;
    (from < to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(b: &DirtyBuffer) -> Vec<(u64, Vec<u8>)> {
        b.ranges().map(|(s, d)| (s, d.to_vec())).collect()
    }

    fn check_invariants(b: &DirtyBuffer) {
        let mut prev_end: Option<u64> = None;
        let mut total = 0;
        for (s, d) in b.ranges() {
            assert!(!d.is_empty(), "empty range at {s}");
            if let Some(pe) = prev_end {
                assert!(s > pe, "ranges overlap or touch at {s}");
            }
            prev_end = Some(s + d.len() as u64);
            total += d.len() as u64;
        }
        assert_eq!(total, b.total_bytes());
    }

    /// A deterministic pseudo-random sequence (no rand dependency): each call returns a
    /// number below its bound.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        }
    }

    /// A reference model: a plain byte map.
    fn model_apply(model: &mut BTreeMap<u64, u8>, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            model.insert(offset + i as u64, *byte);
        }
    }

    #[test]
    fn disjoint_writes_stay_apart() {
        let mut b = DirtyBuffer::new();
        b.write(10, b"abc");
        b.write(0, b"xy");
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"xy".to_vec()), (10, b"abc".to_vec())]);
        assert_eq!(b.end(), Some(13));
        assert_eq!(b.total_bytes(), 5);
    }

    #[test]
    fn adjacent_writes_merge() {
        let mut b = DirtyBuffer::new();
        b.write(0, b"ab");
        b.write(2, b"cd");
        b.write(6, b"gh");
        b.write(4, b"ef");
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"abcdefgh".to_vec())]);
    }

    #[test]
    fn overwrite_in_the_middle_replaces_bytes() {
        let mut b = DirtyBuffer::new();
        b.write(0, b"aaaaaaaa");
        b.write(3, b"XY");
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"aaaXYaaa".to_vec())]);
        assert_eq!(b.total_bytes(), 8);
    }

    #[test]
    fn bridging_write_merges_several_ranges_newest_wins() {
        let mut b = DirtyBuffer::new();
        b.write(0, b"aaa");
        b.write(5, b"bbb");
        b.write(10, b"ccc");
        b.write(2, b"XXXXXXXXX"); // 2..11
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"aaXXXXXXXXXcc".to_vec())]);
    }

    #[test]
    fn write_covering_a_range_entirely() {
        let mut b = DirtyBuffer::new();
        b.write(4, b"bb");
        b.write(0, b"XXXXXXXXXX");
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"XXXXXXXXXX".to_vec())]);
    }

    #[test]
    fn random_writes_match_a_byte_model() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _round in 0..50 {
            let mut b = DirtyBuffer::new();
            let mut model = BTreeMap::new();
            for i in 0..40u8 {
                let offset = next(200);
                let len = next(30) + 1;
                let data = vec![i; len as usize];
                b.write(offset, &data);
                model_apply(&mut model, offset, &data);
                check_invariants(&b);
            }
            let mut buf = vec![0xEEu8; 260];
            b.overlay(0, &mut buf);
            for (i, byte) in buf.iter().enumerate() {
                let want = model.get(&(i as u64)).copied().unwrap_or(0xEE);
                assert_eq!(*byte, want, "byte {i}");
            }
            assert_eq!(b.total_bytes(), model.len() as u64);
        }
    }

    #[test]
    fn taking_full_blocks_splits_a_range_and_loses_nothing() {
        let mut b = DirtyBuffer::new();
        b.write(3, &[1u8; 15]); // 3..18, blocks of 4: 4..16 are whole
        b.write(30, &[2u8; 2]); // no whole block
        assert_eq!(b.full_blocks_at(10, 4), 3);
        assert_eq!(b.full_blocks_at(30, 4), 0);
        assert_eq!(b.full_blocks_at(25, 4), 0, "a gap holds nothing");
        let taken = b.take_full_blocks(4);
        check_invariants(&b);
        check_invariants(&taken);
        assert_eq!(ranges(&taken), vec![(4, vec![1u8; 12])]);
        assert_eq!(
            ranges(&b),
            vec![(3, vec![1u8]), (16, vec![1u8; 2]), (30, vec![2u8; 2])]
        );
        assert_eq!(b.full_blocks_at(3, 4), 0);
        assert!(b.take_full_blocks(4).is_empty());
    }

    #[test]
    fn random_takes_of_full_blocks_partition_the_buffer() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _round in 0..50 {
            let mut b = DirtyBuffer::new();
            for i in 0..20u8 {
                let len = next(40) + 1;
                b.write(next(200), &vec![i; len as usize]);
            }
            let before = b.clone();
            let block = next(16) + 1;
            let taken = b.take_full_blocks(block);
            check_invariants(&b);
            check_invariants(&taken);
            assert_eq!(b.total_bytes() + taken.total_bytes(), before.total_bytes());
            for (start, bytes) in taken.ranges() {
                assert_eq!(start % block, 0, "taken range starts on a block");
                assert_eq!(bytes.len() as u64 % block, 0, "taken range is whole blocks");
            }
            assert!(
                b.take_full_blocks(block).is_empty(),
                "nothing whole is left"
            );
            assert!(!b.has_full_block(block));
            assert_eq!(taken.is_empty(), !before.has_full_block(block));
            // Together they still read as the original buffer.
            let mut merged = b.clone();
            merged.absorb_newer(&taken);
            assert_eq!(ranges(&merged), ranges(&before));
        }
    }

    #[test]
    fn overlay_copies_only_dirty_bytes() {
        let mut b = DirtyBuffer::new();
        b.write(2, b"ab");
        b.write(8, b"cdef");
        let mut buf = vec![b'.'; 8];
        b.overlay(3, &mut buf); // covers 3..11
        assert_eq!(&buf, b"b....cde");
    }

    #[test]
    fn truncate_drops_and_cuts() {
        let mut b = DirtyBuffer::new();
        b.write(0, b"abcd");
        b.write(10, b"efgh");
        b.write(20, b"ijkl");
        b.truncate(12);
        check_invariants(&b);
        assert_eq!(
            ranges(&b),
            vec![(0, b"abcd".to_vec()), (10, b"ef".to_vec())]
        );
        b.truncate(10);
        check_invariants(&b);
        assert_eq!(ranges(&b), vec![(0, b"abcd".to_vec())]);
        b.truncate(0);
        assert!(b.is_empty());
        assert_eq!(b.total_bytes(), 0);
    }

    #[test]
    fn copy_range_clips() {
        let mut b = DirtyBuffer::new();
        b.write(0, b"abcdef");
        b.write(10, b"ghij");
        let c = b.copy_range(4, 8); // 4..12
        check_invariants(&c);
        assert_eq!(ranges(&c), vec![(4, b"ef".to_vec()), (10, b"gh".to_vec())]);
    }

    #[test]
    fn absorb_newer_keeps_newer_bytes() {
        let mut older = DirtyBuffer::new();
        older.write(0, b"oooooo");
        let mut newer = DirtyBuffer::new();
        newer.write(2, b"NN");
        newer.write(8, b"NN");
        older.absorb_newer(&newer);
        check_invariants(&older);
        assert_eq!(
            ranges(&older),
            vec![(0, b"ooNNoo".to_vec()), (8, b"NN".to_vec())]
        );
    }

    #[test]
    fn pieces_are_cut_at_aligned_boundaries() {
        let mut b = DirtyBuffer::new();
        b.write(3, &[1u8; 10]); // 3..13 with max 4: 3..4, 4..8, 8..12, 12..13
        b.write(20, &[2u8; 4]); // 20..24 exactly one aligned piece
        let p = b.pieces(4);
        let got: Vec<(u64, u64)> = p.iter().map(|p| (p.file_offset, p.len)).collect();
        assert_eq!(got, vec![(3, 1), (4, 4), (8, 4), (12, 1), (20, 4)]);
        for piece in p {
            let bytes = b.piece_bytes(piece).expect("piece inside a range");
            assert_eq!(bytes.len() as u64, piece.len);
        }
        assert_eq!(
            b.piece_bytes(Piece {
                file_offset: 12,
                len: 5
            }),
            None
        );
    }

    #[test]
    fn pieces_of_chunk_size() {
        let chunk = plait_proto::CHUNK_MAX_BYTES as u64;
        let mut b = DirtyBuffer::new();
        b.write(chunk - 1, &vec![7u8; (chunk + 2) as usize]);
        let got: Vec<(u64, u64)> = b
            .pieces(chunk)
            .iter()
            .map(|p| (p.file_offset, p.len))
            .collect();
        assert_eq!(got, vec![(chunk - 1, 1), (chunk, chunk), (2 * chunk, 1)]);
    }
}
