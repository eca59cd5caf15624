//! Plain data types shared by every crate: inode numbers, attributes, extents, chunk ids.

use serde::{Deserialize, Serialize};

/// Inode number, unique across the cluster (all volumes share one numbering).
pub type Ino = u64;

/// Raft node id of a `plaitd`.
pub type NodeId = u64;

/// A chunk's name: the blake3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`: its blake3 hash.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hex, as used for file names and logs.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(ChunkId(out))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A point in time, as the kernel sees it: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC (may be negative).
    pub sec: i64,
    /// Nanoseconds, 0..1_000_000_000.
    pub nsec: u32,
}

/// What kind of object an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

/// Attributes of an inode, as returned to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Object kind.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u16,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for CharDev/BlockDev.
    pub rdev: u32,
    /// Size in bytes (for symlinks: length of the target).
    pub size: u64,
    /// Bytes of chunk data referenced by this file's extents (for `st_blocks`).
    pub allocated_bytes: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last attribute change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
}

/// A byte range of a file mapped to a range of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in the file where this extent starts.
    pub file_offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// The chunk holding the bytes.
    pub chunk: ChunkId,
    /// Offset of the first byte inside the chunk.
    pub chunk_offset: u64,
}

impl Extent {
    /// One past the last file offset covered.
    pub fn end(&self) -> u64 {
        self.file_offset.saturating_add(self.len)
    }
}

/// One directory entry with the attributes of its target (for READDIRPLUS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name, any bytes but `/` and NUL.
    pub name: Vec<u8>,
    /// The target's attributes.
    pub attr: Attr,
}

/// A volume: a named tree with its replica count and write quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name, as used in `mount`.
    pub name: String,
    /// Root directory inode.
    pub root: Ino,
    /// Copies of each chunk.
    pub replicas: u32,
    /// Durable acknowledgements required before a write commits.
    pub write_quorum: u32,
}

/// Filesystem figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsStats {
    /// Total bytes of the chunk stores, divided by the replica count.
    pub total_bytes: u64,
    /// Free bytes, divided by the replica count.
    pub free_bytes: u64,
    /// Inodes in use.
    pub files: u64,
    /// Inodes still available.
    pub files_free: u64,
}

/// A member of the cluster as the metadata group knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Raft id.
    pub node_id: NodeId,
    /// QUIC address.
    pub addr: String,
    /// Current leader's id, if known.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied: u64,
    /// Bytes in the chunk store's file system.
    pub disk_total_bytes: u64,
    /// Free bytes in the chunk store's file system.
    pub disk_free_bytes: u64,
    /// Chunks stored on this node.
    pub chunk_count: u64,
    /// Copies this node's heal worker made since it started.
    pub healed_chunks: u64,
    /// Their bytes.
    pub healed_bytes: u64,
    /// This node's placement pass (copying the chunks it is newly placed for after the
    /// set of data nodes changed).
    pub placement: PlacementPass,
    /// Copies the placement passes made since the node started.
    pub placement_copied_chunks: u64,
    /// Their bytes.
    pub placement_copied_bytes: u64,
    /// Copies the placement passes dropped since the node started: chunks this node is no
    /// longer placed for, once every placed node had an intact copy.
    pub placement_dropped_chunks: u64,
}

/// State of a node's placement pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementPass {
    /// No pass to do: the last one covered the current data nodes.
    Idle,
    /// A pass is due (data nodes changed, `heal start`, or the node just started).
    Pending,
    /// A pass is running.
    Running,
}

impl PlacementPass {
    /// The name `plait node list` / `plait heal info` show.
    pub fn name(self) -> &'static str {
        match self {
            PlacementPass::Idle => "idle",
            PlacementPass::Pending => "pending",
            PlacementPass::Running => "running",
        }
    }
}

/// A fingerprint of one node's applied metadata state, for divergence checks: two nodes
/// with the same `last_applied` must have the same `digest`, or their replicas diverged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    /// Raft id of the node that computed it.
    pub node_id: NodeId,
    /// Index of the last log entry applied to the state (0 before the first).
    pub last_applied: u64,
    /// Keys in the state machine's state.
    pub entries: u64,
    /// blake3 (hex) over every key and value of the state in key order, each
    /// length-prefixed, followed by `last_applied`.
    pub digest: String,
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// Metadata voter and chunk store (the default).
    Both,
    /// Chunk store only: a non-voting member of the metadata group (a Raft learner, so it
    /// still applies the log its heal and GC workers read).
    Data,
    /// Metadata voter that stores no chunks (GlusterFS's arbiter): two data nodes and a
    /// witness make a majority of three.
    Witness,
}

impl NodeRole {
    /// True if chunks are placed on nodes of this role.
    pub fn stores_data(self) -> bool {
        matches!(self, NodeRole::Both | NodeRole::Data)
    }

    /// True if nodes of this role vote in the metadata group.
    pub fn votes(self) -> bool {
        matches!(self, NodeRole::Both | NodeRole::Witness)
    }

    /// The name used by the CLI and in listings.
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Both => "both",
            NodeRole::Data => "data",
            NodeRole::Witness => "witness",
        }
    }
}

/// Longest zone label, in bytes.
pub const ZONE_MAX_BYTES: usize = 64;

/// A node as the replicated state records it (`M` key): what it is for and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Raft id.
    pub id: NodeId,
    /// QUIC address (ip:port) it registered with.
    pub addr: String,
    /// Role.
    pub role: NodeRole,
    /// Failure zone label (`None`: no zone; such nodes count as one zone each).
    pub zone: Option<String>,
}

/// One entry of the cluster map as a node answers `Request::Nodes`: the member's record
/// joined with the node's view of the Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Raft id.
    pub id: NodeId,
    /// QUIC address (ip:port).
    pub addr: String,
    /// Role (`Both` for a member without a record yet).
    pub role: NodeRole,
    /// Failure zone label.
    pub zone: Option<String>,
    /// Whether it is a voter of the metadata group now (a learner or a node not yet in the
    /// membership is not).
    pub voter: bool,
    /// Whether it is in the Raft membership at all (voter or learner).
    pub member: bool,
}
