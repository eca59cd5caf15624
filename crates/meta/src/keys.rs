//! Key encoding. Every key starts with a one-byte prefix naming the record type; integers
//! are big-endian so that byte order is numeric order and prefix scans come out sorted.

use plait_proto::{ChunkId, Ino, NodeId};

use crate::StoreError;

/// Inode record: `I` + ino.
pub(crate) const INODE: u8 = b'I';
/// Directory entry: `D` + parent ino + name.
pub(crate) const DENTRY: u8 = b'D';
/// Extent: `E` + ino + end offset (exclusive: file offset + length).
pub(crate) const EXTENT: u8 = b'E';
/// Extended attribute: `X` + ino + name.
pub(crate) const XATTR: u8 = b'X';
/// Chunk reference count: `C` + chunk id.
pub(crate) const CHUNK_REF: u8 = b'C';
/// Inline chunk (body and reference count of a chunk kept in the metadata group instead
/// of on data nodes): `B` + chunk id. A chunk has a `B` key or a `C` key, never both.
pub(crate) const INLINE_CHUNK: u8 = b'B';
/// Garbage chunk: `G` + chunk id.
pub(crate) const GARBAGE: u8 = b'G';
/// Volume: `V` + name.
pub(crate) const VOLUME: u8 = b'V';
/// Orphan marker: `O` + ino.
pub(crate) const ORPHAN: u8 = b'O';
/// Counter: `N` + counter name.
pub(crate) const COUNTER: u8 = b'N';
/// Heal-index entry (a copy a node is missing): `H` + node id + chunk id.
pub(crate) const HEAL: u8 = b'H';
/// Locks and waiters of one file: `L` + ino.
pub(crate) const LOCKS: u8 = b'L';
/// Session: `S` + session id.
pub(crate) const SESSION: u8 = b'S';
/// A session has locks or waiters on a file: `K` + session id + ino (empty value).
pub(crate) const SESSION_FILE: u8 = b'K';
/// Lock delegation of a file (`Q` + ino): held by a session, or cooling down after a recall.
pub(crate) const DELEGATION: u8 = b'Q';
/// Recalled delegations of a session (`W` + session + ino), what its mount must give back.
pub(crate) const RECALL: u8 = b'W';
/// Create delegation of a directory (`Y` + dir ino): held by a session, or cooling down.
pub(crate) const DIR_DELEGATION: u8 = b'Y';
/// Directories whose create delegation a session holds (`Z` + session + dir ino).
pub(crate) const SESSION_DIR: u8 = b'Z';

/// Node record (role, zone, address): `M` + node id.
pub(crate) const MEMBER: u8 = b'M';
/// Join token (hash of its secret, role, zone, expiry): `T` + token id.
pub(crate) const TOKEN: u8 = b'T';

/// Counter holding the next node id a join hands out.
pub(crate) const NEXT_NODE: &[u8] = b"next_node";

/// Counter holding the next session id to hand out.
pub(crate) const NEXT_SESSION: &[u8] = b"next_session";

/// Counter holding the next inode number to hand out.
pub(crate) const NEXT_INO: &[u8] = b"next_ino";
/// Counter holding the number of inodes in existence (for statfs).
pub(crate) const INODE_COUNT: &[u8] = b"inodes";

/// Length of a prefix byte plus an inode number.
const INO_PREFIX_BYTES: usize = 1 + 8;

fn with_ino(tag: u8, ino: Ino, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(INO_PREFIX_BYTES + extra);
    k.push(tag);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Key of an inode record.
pub(crate) fn inode(ino: Ino) -> Vec<u8> {
    with_ino(INODE, ino, 0)
}

/// Prefix of all entries of directory `parent`.
pub(crate) fn dentry_prefix(parent: Ino) -> Vec<u8> {
    with_ino(DENTRY, parent, 0)
}

/// Key of entry `name` in directory `parent`.
pub(crate) fn dentry(parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = with_ino(DENTRY, parent, name.len());
    k.extend_from_slice(name);
    k
}

/// Prefix of all extents of `ino`.
pub(crate) fn extent_prefix(ino: Ino) -> Vec<u8> {
    with_ino(EXTENT, ino, 0)
}

/// Key of the extent of `ino` ending at `end` (exclusive).
///
/// Extents are keyed by their end, not their start, so that the extents overlapping a
/// range `[start, ..)` are found by one forward seek: the first of them is the first key
/// after `extent(ino, start)`. (Keyed by start, the one reaching into the range from the
/// left needs a reverse seek, which is slow over the tombstones of rewritten extents.)
pub(crate) fn extent(ino: Ino, end: u64) -> Vec<u8> {
    let mut k = with_ino(EXTENT, ino, 8);
    k.extend_from_slice(&end.to_be_bytes());
    k
}

/// Prefix of all extended attributes of `ino`.
pub(crate) fn xattr_prefix(ino: Ino) -> Vec<u8> {
    with_ino(XATTR, ino, 0)
}

/// Key of extended attribute `name` of `ino`.
pub(crate) fn xattr(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = with_ino(XATTR, ino, name.len());
    k.extend_from_slice(name);
    k
}

fn with_chunk(tag: u8, chunk: &ChunkId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + chunk.0.len());
    k.push(tag);
    k.extend_from_slice(&chunk.0);
    k
}

/// Key of a chunk's reference count.
pub(crate) fn chunk_ref(chunk: &ChunkId) -> Vec<u8> {
    with_chunk(CHUNK_REF, chunk)
}

/// Key of an inline chunk.
pub(crate) fn inline_chunk(chunk: &ChunkId) -> Vec<u8> {
    with_chunk(INLINE_CHUNK, chunk)
}

/// Key of a file's lock table.
pub(crate) fn locks(ino: Ino) -> Vec<u8> {
    with_ino(LOCKS, ino, 0)
}

/// Key of a node record.
pub(crate) fn member(id: u64) -> Vec<u8> {
    with_ino(MEMBER, id, 0)
}

/// Key of a join token.
pub(crate) fn token(id: u64) -> Vec<u8> {
    with_ino(TOKEN, id, 0)
}

/// Key of a session record.
pub(crate) fn session(id: u64) -> Vec<u8> {
    with_ino(SESSION, id, 0)
}

/// Prefix of the files a session has locks on.
pub(crate) fn session_files_prefix(id: u64) -> Vec<u8> {
    with_ino(SESSION_FILE, id, 8)
}

/// Key of "session `id` has locks or waiters on `ino`".
pub(crate) fn session_file(id: u64, ino: Ino) -> Vec<u8> {
    let mut k = session_files_prefix(id);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Key of a file's lock delegation.
pub(crate) fn delegation(ino: Ino) -> Vec<u8> {
    with_ino(DELEGATION, ino, 0)
}

/// Prefix of the recalled delegations of a session.
pub(crate) fn recalls_prefix(session: u64) -> Vec<u8> {
    with_ino(RECALL, session, 8)
}

/// Key of "session `session` must give back the delegation of `ino`".
pub(crate) fn recall(session: u64, ino: Ino) -> Vec<u8> {
    let mut k = recalls_prefix(session);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Key of a directory's create delegation.
pub(crate) fn dir_delegation(dir: Ino) -> Vec<u8> {
    with_ino(DIR_DELEGATION, dir, 0)
}

/// Prefix of the directories whose create delegation a session holds.
pub(crate) fn session_dirs_prefix(session: u64) -> Vec<u8> {
    with_ino(SESSION_DIR, session, 8)
}

/// Key of "session `session` holds the create delegation of `dir`".
pub(crate) fn session_dir(session: u64, dir: Ino) -> Vec<u8> {
    let mut k = session_dirs_prefix(session);
    k.extend_from_slice(&dir.to_be_bytes());
    k
}

/// The trailing u64 of a key (the ino of `L` and `K` keys, the id of `S` keys).
pub(crate) fn trailing_u64(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt_key("trailing integer", key))
}

/// Prefix of every heal-index entry of `node`.
pub(crate) fn heal_prefix(node: NodeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 + 32);
    k.push(HEAL);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// Key of the heal-index entry "`node` is missing its copy of `chunk`".
pub(crate) fn heal(node: NodeId, chunk: &ChunkId) -> Vec<u8> {
    let mut k = heal_prefix(node);
    k.extend_from_slice(&chunk.0);
    k
}

/// The (node, chunk) of a heal-index key.
pub(crate) fn heal_of(key: &[u8]) -> Result<(NodeId, ChunkId), StoreError> {
    let node = key
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(NodeId::from_be_bytes);
    let chunk = key
        .get(9..)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(ChunkId);
    match (node, chunk) {
        (Some(n), Some(c)) => Ok((n, c)),
        _ => Err(corrupt_key("heal", key)),
    }
}

/// Key of a chunk's garbage entry.
pub(crate) fn garbage(chunk: &ChunkId) -> Vec<u8> {
    with_chunk(GARBAGE, chunk)
}

/// Key of a volume record.
pub(crate) fn volume(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(VOLUME);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of an orphan marker.
pub(crate) fn orphan(ino: Ino) -> Vec<u8> {
    with_ino(ORPHAN, ino, 0)
}

/// Key of a counter.
pub(crate) fn counter(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(COUNTER);
    k.extend_from_slice(name);
    k
}

fn corrupt_key(what: &str, key: &[u8]) -> StoreError {
    StoreError::Corrupt(format!("malformed {what} key {key:02x?}"))
}

/// The end offset (exclusive) of an extent key.
pub(crate) fn extent_end(key: &[u8]) -> Result<u64, StoreError> {
    key.get(INO_PREFIX_BYTES..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt_key("extent", key))
}

/// The name part of a directory entry or xattr key.
pub(crate) fn name_after_ino(key: &[u8]) -> Result<&[u8], StoreError> {
    key.get(INO_PREFIX_BYTES..)
        .ok_or_else(|| corrupt_key("named", key))
}

/// The chunk id of a `C` or `G` key.
pub(crate) fn chunk_of(key: &[u8]) -> Result<ChunkId, StoreError> {
    key.get(1..)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(ChunkId)
        .ok_or_else(|| corrupt_key("chunk", key))
}

/// The name part of a volume key.
pub(crate) fn volume_name(key: &[u8]) -> Result<String, StoreError> {
    key.get(1..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| corrupt_key("volume", key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_keys_sort_numerically() {
        let offsets = [0u64, 1, 255, 256, 65_536, u64::MAX];
        for pair in offsets.windows(2) {
            if let [a, b] = pair {
                assert!(extent(7, *a) < extent(7, *b));
            }
        }
        assert!(extent(7, u64::MAX) < extent(8, 0));
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(extent_end(&extent(3, 12_345)).unwrap(), 12_345);
        assert_eq!(name_after_ino(&dentry(3, b"abc")).unwrap(), b"abc");
        assert_eq!(name_after_ino(&xattr(3, b"user.x")).unwrap(), b"user.x");
        let c = ChunkId([9; 32]);
        assert_eq!(chunk_of(&chunk_ref(&c)).unwrap(), c);
        assert_eq!(chunk_of(&garbage(&c)).unwrap(), c);
        assert_eq!(volume_name(&volume("vol-1")).unwrap(), "vol-1");
    }

    #[test]
    fn malformed_keys_are_corrupt() {
        assert!(extent_end(b"E123").is_err());
        assert!(chunk_of(b"C").is_err());
        assert!(name_after_ino(b"D12").is_err());
        assert!(volume_name(&[b'V', 0xff]).is_err());
    }

    #[test]
    fn dentries_of_one_dir_share_a_prefix() {
        assert!(dentry(1, b"zzz").starts_with(&dentry_prefix(1)));
        assert!(!dentry(2, b"").starts_with(&dentry_prefix(1)));
    }
}
