//! Metadata requests: changes ([`MetaOp`], committed through Raft) and reads
//! ([`MetaQuery`], served linearizably by the leader), and their reply ([`MetaReply`]).

use serde::{Deserialize, Serialize};

use crate::lock::{
    FileLockInfo, LockKind, LockRange, LockSpec, SessionId, SessionInfo, SetOutcome, WaitState,
};
use crate::{
    Attr, ChunkId, DirEntry, Extent, FsStats, Ino, NodeId, NodeRecord, NodeRole, Timestamp,
    VolumeInfo,
};

/// What kind of object to create, with what only that kind needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link to `target`.
    Symlink {
        /// Link contents, at most [`crate::SYMLINK_MAX_BYTES`].
        target: Vec<u8>,
    },
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev {
        /// Device number.
        rdev: u32,
    },
    /// Block device.
    BlockDev {
        /// Device number.
        rdev: u32,
    },
}

/// A time to set: the node's clock at commit, or an explicit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    /// The commit time chosen by the metadata leader.
    Now,
    /// This exact time.
    At(Timestamp),
}

/// Attribute changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (mode & 0o7777).
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size: shrinking drops data past it, growing leaves a hole.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// How a rename treats an existing target (renameat2 flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target if it exists (plain rename).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target atomically; both must exist (RENAME_EXCHANGE).
    Exchange,
}

/// How setxattr treats an existing attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Upsert,
    /// Fail with EEXIST if it exists (XATTR_CREATE).
    Create,
    /// Fail with ENODATA if it does not exist (XATTR_REPLACE).
    Replace,
}

/// A metadata change, proposed to the metadata group and applied by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOp {
    /// Create a volume with an empty root directory.
    CreateVolume {
        /// Volume name: 1..=64 bytes of `[A-Za-z0-9._-]`.
        name: String,
        /// Copies of each chunk.
        replicas: u32,
        /// Acknowledgements required to commit a write.
        write_quorum: u32,
    },
    /// Create a name in a directory.
    Create {
        /// Directory to create in.
        parent: Ino,
        /// New name.
        name: Vec<u8>,
        /// What to create.
        kind: NewKind,
        /// Permission bits, already masked by the caller's umask.
        perm: u16,
        /// Owner.
        uid: u32,
        /// Group (replaced by the parent's group when the parent is setgid).
        gid: u32,
    },
    /// Remove a non-directory name. An inode left with no links becomes an orphan that
    /// stays readable until [`MetaOp::Reap`] (the mount reaps it when no handle is open).
    Unlink {
        /// Directory.
        parent: Ino,
        /// Name to remove.
        name: Vec<u8>,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Directory.
        parent: Ino,
        /// Name to remove.
        name: Vec<u8>,
    },
    /// Rename, with renameat2 semantics.
    Rename {
        /// Source directory.
        parent: Ino,
        /// Source name.
        name: Vec<u8>,
        /// Target directory.
        new_parent: Ino,
        /// Target name.
        new_name: Vec<u8>,
        /// How an existing target is treated.
        mode: RenameMode,
    },
    /// Add a hard link to a non-directory.
    Link {
        /// Existing inode.
        ino: Ino,
        /// Directory for the new name.
        new_parent: Ino,
        /// New name.
        new_name: Vec<u8>,
    },
    /// Change attributes.
    SetAttr {
        /// Inode.
        ino: Ino,
        /// Changes.
        set: SetAttr,
        /// The changing mount's session, if it has one: a size change of a file whose
        /// directory another session holds recalls that directory first (`DirRecalling`),
        /// as a `Write` does, since the holder may answer opens of the file itself.
        session: Option<SessionId>,
    },
    /// Commit written data: each extent replaces what was at its range; the size grows to
    /// cover the last extent. mtime and ctime become the commit time. A write whose
    /// `mount_session` is not the holder of the directory guarding the file (see
    /// `MetaReply::Extents::guard_dir`) recalls that directory and is answered
    /// `DirRecalling`, not applied.
    Write {
        /// File.
        ino: Ino,
        /// New extents, non-overlapping, each at most one chunk long.
        extents: Vec<Extent>,
        /// Placed replicas of these extents' chunks that had not acknowledged their copy
        /// when the writer committed: recorded in the heal index in the same commit.
        under_replicated: Vec<MissingCopy>,
        /// The writer's session, if it has one: the write is refused (fencing) if that
        /// session expired, since the writer may believe it holds locks it lost.
        session: Option<SessionId>,
        /// The writing mount's current session (`None`: a tool), whether or not it holds
        /// locks: compared with the holder of the file's guarding directory, never
        /// fenced.
        mount_session: Option<SessionId>,
        /// Bodies of chunks small enough to live in the metadata group
        /// ([`crate::INLINE_CHUNK_MAX_BYTES`] each, [`crate::INLINE_BATCH_MAX_BYTES`] in
        /// all), each referenced by an extent of this write and not uploaded to data nodes.
        #[serde(with = "crate::codec::byte_list")]
        inline: Vec<Vec<u8>>,
    },
    /// Set an extended attribute.
    SetXattr {
        /// Inode.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Create/replace semantics.
        mode: XattrMode,
    },
    /// Remove an extended attribute.
    RemoveXattr {
        /// Inode.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
    },
    /// Delete an orphan (an inode with no links left) and release its chunks.
    Reap {
        /// The orphan.
        ino: Ino,
    },
    /// Drop garbage entries (`G`) whose chunk files the GC worker has deleted. A chunk
    /// that was referenced again meanwhile has no entry any more and is left alone.
    ForgetGarbage {
        /// Chunk ids, at most 1024.
        chunks: Vec<crate::ChunkId>,
    },
    /// Record copies that must be (re)made: a node found its copy corrupt, or a reader
    /// found a copy bad or missing. Entries for chunks no extent references are ignored.
    MarkUnderReplicated {
        /// The copies to heal.
        copies: Vec<MissingCopy>,
    },
    /// Open a session (a mount's lease); answered with `Session`.
    OpenSession {
        /// Lease length, [`crate::lock::LEASE_MIN_MS`]..=[`crate::lock::LEASE_MAX_MS`].
        lease_ms: u64,
        /// Who opens it (host and process), for `plait lock list`.
        client: String,
    },
    /// Extend a session's lease from now; `SessionExpired` if it is gone.
    RenewSession {
        /// The session.
        session: SessionId,
    },
    /// End a session: its locks are released and its waiters dropped.
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// End every session whose lease ran out before the command's time (proposed by the
    /// leader's session sweeper).
    ExpireSessions,
    /// Take, convert or wait for a lock; answered with `LockSet`.
    SetLock {
        /// The file.
        ino: Ino,
        /// The requesting session.
        session: SessionId,
        /// What is asked for.
        spec: LockSpec,
        /// `Some(seq)` to queue the request if it conflicts (F_SETLKW, blocking flock);
        /// `None` to fail with `WouldBlock`.
        wait: Option<u32>,
        /// Ask for a delegation of the file's locks: if nobody holds, waits for or
        /// recently fought over a lock on the file, the group hands the whole file's lock
        /// table to the session instead (answered `LockDelegated`; the mount then takes
        /// this and later locks itself, without a commit each).
        delegate: bool,
    },
    /// Ask the session holding the file's delegation to give it back (a lock request or
    /// F_GETLK from another session needs the real lock table). Answered `LockRecalling`
    /// while the delegation is held, `Empty` if there is none.
    RecallDelegation {
        /// The file.
        ino: Ino,
        /// The asking session.
        session: SessionId,
    },
    /// Give back a delegation: the locks the session's owners hold on the file under it
    /// become ordinary locks of the group's table. Idempotent: a delegation that is no
    /// longer held by the session is left alone (answered `Empty`).
    ReturnDelegation {
        /// The file.
        ino: Ino,
        /// The session that held the delegation.
        session: SessionId,
        /// Every lock record its owners hold on the file (at most the per-file bound).
        holders: Vec<LockSpec>,
    },
    /// Unlock a range of an owner's locks (F_UNLCK, LOCK_UN).
    Unlock {
        /// The file.
        ino: Ino,
        /// The owner's session.
        session: SessionId,
        /// POSIX or flock.
        kind: LockKind,
        /// The kernel's lock owner.
        owner: u64,
        /// The bytes to unlock (ignored for flock).
        range: LockRange,
    },
    /// Drop all of an owner's locks and queued requests on a file (close of a descriptor
    /// for POSIX, last close of the open file for flock).
    ReleaseLockOwner {
        /// The file.
        ino: Ino,
        /// The owner's session.
        session: SessionId,
        /// POSIX or flock.
        kind: LockKind,
        /// The kernel's lock owner.
        owner: u64,
    },
    /// Withdraw a queued request (its process got a signal). Nothing happens if it was
    /// granted meanwhile; the caller then unlocks.
    CancelLockWait {
        /// The file.
        ino: Ino,
        /// The session.
        session: SessionId,
        /// The request's sequence number within the session.
        seq: u32,
    },
    /// A node made (or verified) its copies: remove their heal-index entries, each only if
    /// it is still the entry the node saw (same `since`), so an entry recorded again in the
    /// meantime stays.
    HealDone {
        /// The node whose copies these are.
        node: NodeId,
        /// (chunk, `since` of the entry that was healed).
        chunks: Vec<(ChunkId, Timestamp)>,
    },
    /// Store a one-time join token (`T` key): only the blake3 hash of its secret, the role
    /// and zone the joiner gets, and its expiry (command time + `ttl_ms`). Expired tokens
    /// are pruned by the same command. Answered with `Empty`.
    CreateJoinToken {
        /// Token id (random, chosen by the admin CLI); `Exists` if taken.
        token_id: u64,
        /// blake3 of the token's secret.
        secret_hash: [u8; 32],
        /// Role of the node that joins with it.
        role: NodeRole,
        /// Zone of the node that joins with it.
        zone: Option<String>,
        /// Lifetime, 1..=[`JOIN_TOKEN_TTL_MAX_MS`] milliseconds.
        ttl_ms: u64,
    },
    /// Redeem a join token: if it exists, is not expired and the hash matches, delete it,
    /// give the joiner a node id (at least `min_node_id`, above every recorded node) and
    /// record it (`M` key) with the token's role and zone. Any failure is the same
    /// `AccessDenied` error and changes nothing. Answered with `Joined`.
    ConsumeJoinToken {
        /// Token id.
        token_id: u64,
        /// blake3 of the secret the joiner presented.
        secret_hash: [u8; 32],
        /// The joiner's QUIC address.
        addr: String,
        /// Lowest id to hand out (the leader passes one above every Raft member, so a
        /// node that never registered is not given a second time).
        min_node_id: NodeId,
    },
    /// Record (or update the address of) a node configured statically (`cluster init`,
    /// bootstrap). The role and zone of an existing record are kept. Answered with `Empty`.
    RegisterNode {
        /// The node.
        node: NodeRecord,
    },
    /// Ask for the create delegation of directory `dir`: while the session holds it, no
    /// other session adds or removes names in `dir` (their ops are answered
    /// `DirRecalling` and wait), so the session's mount answers lookups of new names
    /// itself and creates files locally with inode numbers from a range handed out here,
    /// committing them later in `DirBatch`es. Answered `DirDelegated` (also when the
    /// session holds it already: it gets one more inode range) or `DirBusy` (held by
    /// another session, recently recalled, or the session holds its maximum).
    DelegateDir {
        /// The directory.
        dir: Ino,
        /// The asking session.
        session: SessionId,
    },
    /// Give back a directory's create delegation; the caller committed its creates
    /// first. Idempotent: answered `Empty` whether or not the session still held it.
    ReturnDirDelegation {
        /// The directory.
        dir: Ino,
        /// The holding session.
        session: SessionId,
    },
    /// Ask the holder of `dir`'s create delegation to give it back (another session
    /// wants to read or change the directory's names). Answered `DirRecalling` while it
    /// is held, `Empty` if it is not.
    RecallDir {
        /// The directory.
        dir: Ino,
    },
    /// Commit files created (and names removed) under a directory's create delegation,
    /// with the files' first bytes: applied whole or not at all. Refused if the session no longer holds the
    /// delegation (`SessionExpired` if the session itself is gone). Answered with
    /// `Batch`, one reply per op.
    DirBatch {
        /// The delegated directory.
        dir: Ino,
        /// The holding session.
        session: SessionId,
        /// At most [`DIR_BATCH_OPS_MAX`] ops.
        ops: Vec<DirBatchOp>,
    },
    /// Forget a removed node: its record and up to [`REMOVE_NODE_HEAL_MAX`] of its
    /// heal-index entries. Answered with `NodeForgotten { more }`: `more` if heal entries
    /// remain (the caller repeats the op).
    ForgetNode {
        /// The node.
        node: NodeId,
    },
}

/// Most ops in one [`MetaOp::DirBatch`].
pub const DIR_BATCH_OPS_MAX: usize = 1024;

/// Inode numbers handed out by one [`MetaOp::DelegateDir`].
pub const DIR_INO_RANGE: u64 = 1024;

/// One op of a [`MetaOp::DirBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirBatchOp {
    /// Create regular file `name` in the batch's directory as inode `ino`, a number from
    /// a range the delegation handed to the session. Answered with its `Attr`.
    CreateFile {
        /// New name.
        name: Vec<u8>,
        /// Its inode number.
        ino: Ino,
        /// Permission bits, already masked by the caller's umask.
        perm: u16,
        /// Owner.
        uid: u32,
        /// Group (replaced by the directory's group when it is setgid).
        gid: u32,
    },
    /// A [`MetaOp::Write`] of a file (under the batch's session). Answered with `Attr`.
    Write {
        /// File.
        ino: Ino,
        /// New extents.
        extents: Vec<Extent>,
        /// Copies not acknowledged when the writer committed.
        under_replicated: Vec<MissingCopy>,
        /// Inline chunk bodies referenced by these extents.
        #[serde(with = "crate::codec::byte_list")]
        inline: Vec<Vec<u8>>,
    },
    /// Remove the non-directory `name` of the batch's directory if it still names inode
    /// `ino` (a batch resent after an ambiguous failure finds it gone: nothing to do).
    /// Answered with `Removed`, whose orphan the sender reaps as after a `MetaOp::Unlink`.
    Unlink {
        /// The name.
        name: Vec<u8>,
        /// The inode the sender saw under it.
        ino: Ino,
        /// Reap the file in the same commit if this was its last link (the sender knows
        /// it is open nowhere on its mount, as before a `MetaOp::Reap`): answered
        /// `Removed { orphan: None }` then.
        reap: bool,
    },
}

impl DirBatchOp {
    /// Inline chunk bytes this op carries.
    pub fn inline_bytes(&self) -> usize {
        match self {
            DirBatchOp::Write { inline, .. } => inline.iter().map(Vec::len).sum(),
            DirBatchOp::CreateFile { .. } | DirBatchOp::Unlink { .. } => 0,
        }
    }
}

/// Longest lifetime of a join token, in milliseconds (7 days).
pub const JOIN_TOKEN_TTL_MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most join tokens that may be outstanding at once.
pub const JOIN_TOKENS_MAX: usize = 1024;

/// Most heal-index entries one `ForgetNode` drops.
pub const REMOVE_NODE_HEAL_MAX: usize = 4096;

/// A metadata read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaQuery {
    /// A volume by name.
    Volume {
        /// Name.
        name: String,
    },
    /// All volumes.
    ListVolumes,
    /// Resolve a name in a directory.
    Lookup {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Vec<u8>,
        /// The asking mount's session. A name not found in a directory delegated to
        /// another session is answered `DirRecalling` (its holder may have created it and
        /// not committed it yet: the asker recalls the directory and asks again); `None`
        /// (tools) reads what is committed.
        session: Option<SessionId>,
    },
    /// Attributes of an inode.
    GetAttr {
        /// Inode.
        ino: Ino,
    },
    /// A page of a directory's entries in name order, after `after` (exclusive).
    ReadDir {
        /// Directory.
        ino: Ino,
        /// Continue after this name; `None` starts at the beginning.
        after: Option<Vec<u8>>,
        /// Most entries to return (the node caps it).
        limit: u32,
        /// The asking mount's session: a directory delegated to another session is
        /// answered `DirRecalling` (see `Lookup`); `None` (tools) reads what is committed.
        session: Option<SessionId>,
    },
    /// Target of a symbolic link.
    ReadLink {
        /// Inode.
        ino: Ino,
    },
    /// A file's attributes and the extents overlapping `[offset, offset + len)`.
    Extents {
        /// File.
        ino: Ino,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// Value of an extended attribute.
    GetXattr {
        /// Inode.
        ino: Ino,
        /// Name.
        name: Vec<u8>,
    },
    /// Names of all extended attributes.
    ListXattr {
        /// Inode.
        ino: Ino,
    },
    /// Filesystem figures for statfs.
    FsStats,
    /// Pending heal work per node (counts and bytes over the whole heal index).
    HealSummary,
    /// F_GETLK: the first lock of another owner that conflicts with `spec`.
    TestLock {
        /// The file.
        ino: Ino,
        /// The asking session.
        session: SessionId,
        /// The lock that would be asked for.
        spec: LockSpec,
    },
    /// Where a queued request stands (see also `Request::WaitLock`).
    LockWait {
        /// The file.
        ino: Ino,
        /// The waiting session.
        session: SessionId,
        /// The request's sequence number within the session.
        seq: u32,
        /// The request.
        spec: LockSpec,
    },
    /// Which session holds the file's lock delegation, if any (`Delegated`).
    Delegation {
        /// The file.
        ino: Ino,
    },
    /// The files whose delegations the session was asked to give back (`Recalls`).
    Recalls {
        /// The session.
        session: SessionId,
    },
    /// Delegated files in inode order after `after` (`Delegations`).
    ListDelegations {
        /// Continue after this inode.
        after: Option<Ino>,
        /// Most files to return (the node caps it).
        limit: u32,
    },
    /// Files with locks or waiters, in inode order after `after`.
    ListLocks {
        /// Continue after this inode.
        after: Option<Ino>,
        /// Most files to return (the node caps it).
        limit: u32,
    },
    /// Every open session.
    ListSessions,
    /// A path of an inode from its volume root, best effort (for `plait lock list`).
    InodePath {
        /// The inode.
        ino: Ino,
    },
    /// A page of one node's heal-index entries in chunk-id order, after `after`.
    HealPending {
        /// The node whose missing copies to list.
        node: NodeId,
        /// Continue after this chunk id; `None` starts at the beginning.
        after: Option<ChunkId>,
        /// Most entries to return (the node caps it).
        limit: u32,
    },
    /// Which session holds directory `dir`'s create delegation, if any (`Delegated`).
    DirDelegation {
        /// The directory.
        dir: Ino,
    },
    /// The directories whose create delegations the session was asked to give back
    /// (`Recalls`).
    DirRecalls {
        /// The session.
        session: SessionId,
    },
    /// Every node record (`M` keys).
    ListNodes,
}

/// One copy of a chunk that a placed node does not have (yet): a heal-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingCopy {
    /// The chunk.
    pub chunk: ChunkId,
    /// The node that should hold a copy.
    pub node: NodeId,
    /// The chunk's size, for `heal info` byte counts.
    pub size_bytes: u64,
}

/// A heal-index entry as stored: what is missing and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealEntry {
    /// The chunk.
    pub chunk: ChunkId,
    /// The chunk's size in bytes.
    pub size_bytes: u64,
    /// Commit time of the entry (also its version for [`MetaOp::HealDone`]).
    pub since: Timestamp,
}

/// Pending heal work of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealNodeSummary {
    /// The node missing the copies.
    pub node: NodeId,
    /// Chunks it is missing.
    pub chunks: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The successful result of a [`MetaOp`] or [`MetaQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    /// Nothing to return.
    Empty,
    /// Attributes of the inode concerned.
    Attr(Attr),
    /// A name was removed or replaced; if that left an inode with no links, it is now an
    /// orphan the caller must reap once it has no open handle.
    Removed {
        /// The orphaned inode, if any.
        orphan: Option<Ino>,
    },
    /// One volume.
    Volume(VolumeInfo),
    /// All volumes.
    Volumes(Vec<VolumeInfo>),
    /// A page of directory entries and the directory's parent (for `..`).
    Entries {
        /// Parent directory of the listed directory (itself for a volume root).
        parent: Ino,
        /// Entries in name order.
        entries: Vec<DirEntry>,
    },
    /// A symlink target.
    Link(Vec<u8>),
    /// A file's attributes and extents.
    Extents {
        /// Attributes.
        attr: Attr,
        /// Extents overlapping the requested range, in offset order.
        extents: Vec<Extent>,
        /// Bodies of the inline chunks (kept in the metadata group, see
        /// [`crate::INLINE_CHUNK_MAX_BYTES`]) these extents reference, each once; the
        /// reader names them by hashing. The reply holds fewer extents rather than more
        /// than [`crate::INLINE_BATCH_MAX_BYTES`] of bodies.
        #[serde(with = "crate::codec::byte_list")]
        inline: Vec<Vec<u8>>,
        /// The directory that guards the file's content: while a session holds it, any
        /// other session's content change (`Write`, a size `SetAttr`) recalls it first, so
        /// its holder may answer opens of the file from what it last fetched. `None` when
        /// the group does not know a directory naming the file (some hard-link histories).
        guard_dir: Option<Ino>,
    },
    /// An extended attribute value.
    Xattr(Vec<u8>),
    /// Extended attribute names.
    XattrNames(Vec<Vec<u8>>),
    /// Filesystem figures.
    FsStats(FsStats),
    /// Pending heal work, one entry per node with any.
    HealSummary(Vec<HealNodeSummary>),
    /// A page of one node's heal-index entries.
    HealPending(Vec<HealEntry>),
    /// A session (opened or renewed).
    Session(SessionInfo),
    /// The outcome of a `SetLock`.
    LockSet(SetOutcome),
    /// The answer to `TestLock`: the conflicting lock, if any.
    LockConflict(Option<crate::lock::Conflict>),
    /// The answer to `LockWait`.
    LockWait(WaitState),
    /// `SetLock` with `delegate`: the session now holds the file's lock delegation; the
    /// requested lock was not taken by the group, the session takes it itself.
    LockDelegated,
    /// Another session holds the file's lock delegation and was asked to give it back:
    /// ask again once it is gone (`Request::WaitChange` on `MetaQuery::Delegation`).
    LockRecalling,
    /// The answer to `Delegation`: the holding session.
    Delegated(Option<SessionId>),
    /// The answer to `Recalls`: files in inode order.
    Recalls(Vec<Ino>),
    /// The answer to `ListDelegations`.
    Delegations(Vec<crate::lock::DelegationInfo>),
    /// Files with locks.
    Locks(Vec<FileLockInfo>),
    /// Open sessions.
    Sessions(Vec<SessionInfo>),
    /// A path from the volume root (`None` if the inode has no name any more or its
    /// name could not be found within the search bounds).
    Path(Option<Vec<u8>>),
    /// A join token was redeemed: the new node's record.
    Joined(NodeRecord),
    /// Every node record, by id.
    NodeRecords(Vec<NodeRecord>),
    /// `DelegateDir` granted: the session holds the directory's create delegation and may
    /// create inodes `first_ino..first_ino + count` in it.
    DirDelegated {
        /// First inode number of the range.
        first_ino: Ino,
        /// Numbers in the range.
        count: u64,
    },
    /// `DelegateDir` refused: create the ordinary way.
    DirBusy,
    /// Another session holds the create delegation of `dir` and was asked to give it
    /// back: ask again once it is gone (`Request::WaitChange` on
    /// `MetaQuery::DirDelegation`).
    DirRecalling {
        /// The delegated directory.
        dir: Ino,
    },
    /// Replies of a `DirBatch`, one per op.
    Batch(Vec<MetaReply>),
    /// A `ForgetNode` ran; `more` if heal entries of the node remain.
    NodeForgotten {
        /// Heal entries remain.
        more: bool,
    },
}
