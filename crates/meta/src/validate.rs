//! Checks of client-supplied arguments, with the errno Linux gives for each violation.

use std::collections::BTreeMap;

use plait_proto::meta::NewKind;
use plait_proto::{
    CHUNK_MAX_BYTES, ChunkId, ErrorCode, Extent, FILE_MAX_BYTES, INLINE_BATCH_MAX_BYTES,
    INLINE_CHUNK_MAX_BYTES, MissingCopy, NAME_MAX_BYTES, SYMLINK_MAX_BYTES, XATTR_NAME_MAX_BYTES,
    XATTR_VALUE_MAX_BYTES,
};

use crate::{
    MISSING_COPIES_MAX, OpResult, REPLICAS_MAX, VOLUME_NAME_MAX_BYTES, WRITE_MAX_EXTENTS, refuse,
};

/// A directory entry name: not empty, `.` or `..`, no `/` or NUL, at most 255 bytes.
pub(crate) fn name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "a name may not contain '/' or NUL",
        ));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(refuse(
            ErrorCode::NameTooLong,
            format!("name of {} bytes exceeds {NAME_MAX_BYTES}", name.len()),
        ));
    }
    Ok(())
}

/// Volume parameters: a name of 1..=64 bytes of `[A-Za-z0-9._-]`, 1..=5 replicas and a
/// write quorum in 1..=replicas.
pub(crate) fn volume(name: &str, replicas: u32, write_quorum: u32) -> OpResult<()> {
    let name_ok = !name.is_empty()
        && name.len() <= VOLUME_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("invalid volume name {name:?}: 1..={VOLUME_NAME_MAX_BYTES} of [A-Za-z0-9._-]"),
        ));
    }
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("replicas must be 1..={REPLICAS_MAX}, not {replicas}"),
        ));
    }
    if !(1..=replicas).contains(&write_quorum) {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("write quorum must be 1..={replicas}, not {write_quorum}"),
        ));
    }
    Ok(())
}

/// What only some kinds carry: a symlink target must be 1..=4096 bytes (Linux gives
/// ENOENT for an empty target).
pub(crate) fn new_kind(kind: &NewKind) -> OpResult<()> {
    if let NewKind::Symlink { target } = kind {
        if target.is_empty() {
            return Err(refuse(ErrorCode::NotFound, "empty symlink target"));
        }
        if target.len() > SYMLINK_MAX_BYTES {
            return Err(refuse(
                ErrorCode::NameTooLong,
                format!(
                    "symlink target of {} bytes exceeds {SYMLINK_MAX_BYTES}",
                    target.len()
                ),
            ));
        }
    }
    Ok(())
}

/// An extended attribute name: 1..=255 bytes (ERANGE otherwise, as Linux), no NUL.
pub(crate) fn xattr_name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX_BYTES {
        return Err(refuse(
            ErrorCode::Range,
            format!(
                "xattr name of {} bytes: must be 1..={XATTR_NAME_MAX_BYTES}",
                name.len()
            ),
        ));
    }
    if name.contains(&0) {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "xattr name contains NUL",
        ));
    }
    Ok(())
}

/// An extended attribute value: at most 64 KiB (Linux says E2BIG; we say ERANGE).
pub(crate) fn xattr_value(value: &[u8]) -> OpResult<()> {
    if value.len() > XATTR_VALUE_MAX_BYTES {
        return Err(refuse(
            ErrorCode::Range,
            format!(
                "xattr value of {} bytes exceeds {XATTR_VALUE_MAX_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// A new size for a file: at most [`FILE_MAX_BYTES`].
pub(crate) fn file_size(size: u64) -> OpResult<()> {
    if size > FILE_MAX_BYTES {
        return Err(refuse(
            ErrorCode::FileTooBig,
            format!("size {size} exceeds {FILE_MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// The extents of one `Write`: at most [`WRITE_MAX_EXTENTS`], each non-empty, within one
/// chunk and below [`FILE_MAX_BYTES`], none overlapping another. Returns them sorted by
/// file offset.
pub(crate) fn write_extents(extents: &[Extent]) -> OpResult<Vec<Extent>> {
    if extents.len() > WRITE_MAX_EXTENTS {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "{} extents in one write, at most {WRITE_MAX_EXTENTS}",
                extents.len()
            ),
        ));
    }
    for e in extents {
        one_extent(e)?;
    }
    let mut sorted = extents.to_vec();
    sorted.sort_by_key(|e| e.file_offset);
    for pair in sorted.windows(2) {
        if let [a, b] = pair
            && a.end() > b.file_offset
        {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("extents at {} and {} overlap", a.file_offset, b.file_offset),
            ));
        }
    }
    Ok(sorted)
}

/// The inline chunk bodies of one `Write`, by chunk id: each at most
/// [`INLINE_CHUNK_MAX_BYTES`], [`INLINE_BATCH_MAX_BYTES`] in all, each referenced by one of
/// `extents` and long enough for every extent that references it.
pub(crate) fn inline_bodies<'a>(
    bodies: &'a [Vec<u8>],
    extents: &[Extent],
) -> OpResult<BTreeMap<ChunkId, &'a [u8]>> {
    let total_bytes: usize = bodies.iter().map(Vec::len).sum();
    if bodies.len() > extents.len() || total_bytes > INLINE_BATCH_MAX_BYTES {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "{} inline chunks of {total_bytes} bytes for {} extents (at most one per extent, {INLINE_BATCH_MAX_BYTES} bytes)",
                bodies.len(),
                extents.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for body in bodies {
        if body.is_empty() || body.len() > INLINE_CHUNK_MAX_BYTES {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "inline chunk of {} bytes (1..={INLINE_CHUNK_MAX_BYTES})",
                    body.len()
                ),
            ));
        }
        out.insert(ChunkId::of(body), body.as_slice());
    }
    for (id, body) in &out {
        let mut used = false;
        for e in extents.iter().filter(|e| e.chunk == *id) {
            used = true;
            if e.chunk_offset.saturating_add(e.len) > body.len() as u64 {
                return Err(refuse(
                    ErrorCode::InvalidArgument,
                    format!(
                        "extent at {} reaches past the end of inline chunk {id} ({} bytes)",
                        e.file_offset,
                        body.len()
                    ),
                ));
            }
        }
        if !used {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("inline chunk {id} is referenced by no extent of the write"),
            ));
        }
    }
    Ok(out)
}

fn one_extent(e: &Extent) -> OpResult<()> {
    let chunk_max = CHUNK_MAX_BYTES as u64;
    let in_chunk = e
        .chunk_offset
        .checked_add(e.len)
        .is_some_and(|end| end <= chunk_max);
    if e.len == 0 || !in_chunk {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "extent at {} of {} bytes from chunk offset {} is empty or exceeds one chunk",
                e.file_offset, e.len, e.chunk_offset
            ),
        ));
    }
    match e.file_offset.checked_add(e.len) {
        Some(end) if end <= FILE_MAX_BYTES => Ok(()),
        _ => Err(refuse(
            ErrorCode::FileTooBig,
            format!(
                "extent at {} of {} bytes ends past {FILE_MAX_BYTES}",
                e.file_offset, e.len
            ),
        )),
    }
}

/// The missing copies named by one op: at most [`MISSING_COPIES_MAX`], each naming a real
/// node (id > 0), a chunk for which `allowed` holds, and a size within one chunk.
pub(crate) fn missing_copies(
    copies: &[MissingCopy],
    allowed: impl Fn(&ChunkId) -> bool,
) -> OpResult<()> {
    if copies.len() > MISSING_COPIES_MAX {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "{} missing copies in one op, at most {MISSING_COPIES_MAX}",
                copies.len()
            ),
        ));
    }
    for c in copies {
        if c.node == 0 || c.size_bytes > CHUNK_MAX_BYTES as u64 || !allowed(&c.chunk) {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "missing copy of chunk {} on node {} ({} bytes) is not valid here",
                    c.chunk, c.node, c.size_bytes
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fail;
    use plait_proto::ChunkId;

    fn code<T: std::fmt::Debug>(r: OpResult<T>) -> ErrorCode {
        match r {
            Err(Fail::Rpc(e)) => e.code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn ext(file_offset: u64, len: u64) -> Extent {
        Extent {
            file_offset,
            len,
            chunk: ChunkId([1; 32]),
            chunk_offset: 0,
        }
    }

    #[test]
    fn names() {
        assert!(name(b"ok.txt").is_ok());
        assert!(name(&[b'a'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(code(name(bad)), ErrorCode::InvalidArgument);
        }
        assert_eq!(code(name(&[b'a'; 256])), ErrorCode::NameTooLong);
    }

    #[test]
    fn volumes() {
        assert!(volume("a.B_c-9", 3, 2).is_ok());
        assert!(volume(&"v".repeat(64), 1, 1).is_ok());
        for (n, r, w) in [
            ("", 3, 2),
            (&*"v".repeat(65), 3, 2),
            ("sp ace", 3, 2),
            ("é", 3, 2),
            ("v", 0, 0),
            ("v", 6, 1),
            ("v", 3, 0),
            ("v", 3, 4),
        ] {
            assert_eq!(
                code(volume(n, r, w)),
                ErrorCode::InvalidArgument,
                "{n} {r} {w}"
            );
        }
    }

    #[test]
    fn symlink_targets() {
        let t = |n: usize| NewKind::Symlink {
            target: vec![b'x'; n],
        };
        assert!(new_kind(&t(1)).is_ok());
        assert!(new_kind(&t(SYMLINK_MAX_BYTES)).is_ok());
        assert_eq!(code(new_kind(&t(0))), ErrorCode::NotFound);
        assert_eq!(
            code(new_kind(&t(SYMLINK_MAX_BYTES + 1))),
            ErrorCode::NameTooLong
        );
        assert!(new_kind(&NewKind::File).is_ok());
    }

    #[test]
    fn xattrs() {
        assert!(xattr_name(b"user.a").is_ok());
        assert_eq!(code(xattr_name(b"")), ErrorCode::Range);
        assert_eq!(code(xattr_name(&[b'a'; 256])), ErrorCode::Range);
        assert_eq!(code(xattr_name(b"user.\0")), ErrorCode::InvalidArgument);
        assert!(xattr_value(&vec![0; XATTR_VALUE_MAX_BYTES]).is_ok());
        assert_eq!(
            code(xattr_value(&vec![0; XATTR_VALUE_MAX_BYTES + 1])),
            ErrorCode::Range
        );
    }

    #[test]
    fn extents() {
        let sorted = write_extents(&[ext(10, 5), ext(0, 10)]).unwrap();
        assert_eq!(sorted[0].file_offset, 0);
        assert_eq!(
            code(write_extents(&[ext(0, 0)])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(write_extents(&[ext(0, CHUNK_MAX_BYTES as u64 + 1)])),
            ErrorCode::InvalidArgument
        );
        let mut off_chunk = ext(0, 10);
        off_chunk.chunk_offset = CHUNK_MAX_BYTES as u64 - 5;
        assert_eq!(
            code(write_extents(&[off_chunk])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(write_extents(&[ext(0, 10), ext(9, 5)])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(write_extents(&[ext(FILE_MAX_BYTES, 1)])),
            ErrorCode::FileTooBig
        );
        assert_eq!(
            code(write_extents(&[ext(u64::MAX, 1)])),
            ErrorCode::FileTooBig
        );
        let many: Vec<_> = (0..=WRITE_MAX_EXTENTS as u64).map(|i| ext(i, 1)).collect();
        assert_eq!(code(write_extents(&many)), ErrorCode::InvalidArgument);
        assert!(write_extents(&many[..WRITE_MAX_EXTENTS]).is_ok());
        assert_eq!(code(file_size(FILE_MAX_BYTES + 1)), ErrorCode::FileTooBig);
    }
}
