//! Plait's wire protocol: every message that crosses a QUIC stream, the error codes
//! that travel with failed requests, and the frame codec that bounds what a peer may send.
//!
//! Everything here is plain data (serde types) so that every other crate agrees on one
//! vocabulary. The codec never panics on hostile bytes: it returns [`CodecError`].

pub mod codec;
pub mod error;
pub mod frame;
pub mod lock;
pub mod meta;
pub mod types;

pub use codec::{CodecError, decode, encode};
pub use error::{ErrorCode, RpcError};
pub use frame::{Bulk, Frame, decode_frame, encode_frame, encode_frame_ref};
pub use meta::{HealEntry, HealNodeSummary, MetaOp, MetaQuery, MetaReply, MissingCopy};
pub use types::*;

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; a peer that speaks another version is refused with
/// [`ErrorCode::Protocol`] before its request is looked at. Version 2 moved chunk bytes out
/// of the encoded message into the frame's bulk ([`frame`]); a version-1 frame is refused
/// as malformed. Version 3 added the session to `SetAttr` and the guarding directory to
/// `Extents` answers (local opens under held directories).
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest chunk, in bytes. Files are cut into chunks of at most this size.
pub const CHUNK_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Largest encoded frame a peer accepts, in bytes: one full chunk plus room for headers.
pub const FRAME_MAX_BYTES: usize = CHUNK_MAX_BYTES + 64 * 1024;

/// Largest chunk kept in the metadata group instead of on data nodes ("inline"), in
/// bytes. A flush stores a piece this small as part of its `Write` commit: one Raft commit
/// instead of a chunk upload to every placed node plus a commit, and a read gets the bytes
/// with the extent map instead of from a data node. Inline bytes are as durable as
/// metadata (a majority of voters), whatever the volume's replica count.
pub const INLINE_CHUNK_MAX_BYTES: usize = 32 * 1024;

/// Most inline chunk bytes one `Write` carries or one `Extents` reply returns, in bytes
/// (bounds a Raft entry and a reply frame well under [`FRAME_MAX_BYTES`]).
pub const INLINE_BATCH_MAX_BYTES: usize = 1024 * 1024;

/// Longest file name component, in bytes (as on Linux).
pub const NAME_MAX_BYTES: usize = 255;

/// Longest symlink target, in bytes (PATH_MAX on Linux).
pub const SYMLINK_MAX_BYTES: usize = 4096;

/// Largest extended attribute value, in bytes (XATTR_SIZE_MAX on Linux).
pub const XATTR_VALUE_MAX_BYTES: usize = 64 * 1024;

/// Largest extended attribute name, in bytes (XATTR_NAME_MAX on Linux).
pub const XATTR_NAME_MAX_BYTES: usize = 255;

/// Largest file size, in bytes (the kernel's limit for FUSE is 2^63 - 1).
pub const FILE_MAX_BYTES: u64 = i64::MAX as u64;

/// One request frame: the protocol version and the request itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The message.
    pub body: T,
}

impl<T> Envelope<T> {
    /// Wraps `body` with the current protocol version.
    pub fn new(body: T) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

/// Everything a peer can ask a node. One request per QUIC bidirectional stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A namespace or attribute change: proposed to the metadata group.
    Meta(MetaOp),
    /// A read of metadata: served linearizably by the metadata leader.
    Query(MetaQuery),
    /// Store a chunk; the node checks that `data` hashes to `id`.
    ChunkPut {
        id: ChunkId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a whole chunk; the node verifies its hash before answering.
    ChunkGet { id: ChunkId },
    /// Whether this node holds an intact copy of a chunk (it reads the copy and verifies
    /// its hash), answered with [`Response::Held`]. A node asks the placed nodes this
    /// before it drops a copy it is no longer placed for.
    ChunkCheck { id: ChunkId },
    /// Raft traffic between voters; the payload is an openraft message encoded by the node.
    Raft(RaftRpc),
    /// Node facts for `plait status`, the playground and health checks.
    NodeStatus,
    /// Make `node_id` (reachable at `addr`) a member of the metadata group: added as a
    /// learner, caught up, then promoted to voter unless its record says it is a data-only
    /// node. Served by the leader only (others answer `NotLeader` with a hint); a no-op if
    /// it already is a member in its role. Answered with [`Response::Members`] (the data
    /// nodes after the change).
    AddVoter {
        /// Raft id of the new voter.
        node_id: NodeId,
        /// Its QUIC address (ip:port).
        addr: String,
    },
    /// The data nodes (role `Both` or `Data`, voters and learners) and their addresses, as
    /// this node knows them (no leadership check): the nodes chunk placement uses.
    /// Answered with [`Response::Members`]. Witnesses are not listed.
    Members,
    /// Start a heal pass on this node now (instead of at its next interval). Answered
    /// with [`Response::Meta`]`(MetaReply::Empty)`.
    HealNow,
    /// Wait (leader only, at most `timeout_ms`) until a queued lock request is no longer
    /// queued. Answered with `Response::Meta(MetaReply::LockWait(state))`: `Queued` if the
    /// time ran out, so the caller asks again.
    WaitLock {
        /// The file.
        ino: Ino,
        /// The waiting session.
        session: lock::SessionId,
        /// The request's waiter sequence number within the session.
        seq: u32,
        /// The request.
        spec: lock::LockSpec,
        /// Longest wait, in milliseconds (the node caps it).
        timeout_ms: u64,
    },
    /// Wait (leader only, at most `timeout_ms`) until the answer to `query` differs from
    /// `current`, then answer it (as `Response::Meta`); `current` itself if the time ran
    /// out, so the caller asks again. Answered from committed state only. Only
    /// `LockWait`, `Delegation` and `Recalls` may be watched (they are re-read on every
    /// applied batch); others are refused with `InvalidArgument`.
    WaitChange {
        /// The read to watch.
        query: MetaQuery,
        /// The answer the caller already has.
        current: MetaReply,
        /// Longest wait, in milliseconds (the node caps it).
        timeout_ms: u64,
    },
    /// A digest of this node's applied metadata state, from its own state machine (no
    /// leadership check), for divergence checks. Answered with [`Response::StateDigest`].
    StateDigest,
    /// The cluster map with roles and zones, as this node knows it (no leadership
    /// check). Answered with [`Response::Nodes`].
    Nodes,
    /// Redeem a join token: the only request a peer without a client certificate may
    /// send. The node checks the token (through the metadata group, which consumes it),
    /// signs the CSR and answers [`Response::Joined`]; every failure is answered with one
    /// generic `AccessDenied` error that says nothing about why.
    Join {
        /// The token's id (public part).
        token_id: u64,
        /// The token's secret; only its blake3 hash is ever stored or logged.
        secret: [u8; 32],
        /// A PKCS#10 certificate signing request (PEM) for the joiner's own key; its
        /// names are ignored (the certificate is issued for `node<id>`).
        csr_pem: String,
        /// The QUIC address (ip:port) the joiner will listen on and advertise.
        addr: String,
    },
    /// Remove a node that is gone from the metadata group and the cluster map (leader
    /// only). Refused for the last voter, or when the remaining voters that answer would
    /// not be a majority of the remaining voters. Answered with [`Response::Nodes`].
    RemoveNode {
        /// The node to remove.
        node_id: NodeId,
    },
}

/// Raft messages between voters, opaque to everyone but the node crate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries request.
    Append(#[serde(with = "serde_bytes")] Vec<u8>),
    /// RequestVote request.
    Vote(#[serde(with = "serde_bytes")] Vec<u8>),
    /// InstallSnapshot request.
    Snapshot(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Success of a `Meta` or `Query` request.
    Meta(MetaReply),
    /// A chunk was stored durably (written, fsynced, renamed).
    ChunkStored,
    /// The bytes of a chunk, already verified against its id by the node.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to [`Request::ChunkCheck`]: an intact copy is here.
    Held(bool),
    /// Raft answer, opaque like [`RaftRpc`].
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to [`Request::NodeStatus`].
    NodeStatus(NodeStatus),
    /// Answer to [`Request::Members`] and [`Request::AddVoter`]: (node id, address) of
    /// every voter, sorted by node id.
    Members(Vec<(NodeId, String)>),
    /// The request failed.
    Error(RpcError),
    /// Answer to [`Request::StateDigest`].
    StateDigest(StateDigest),
    /// Answer to [`Request::Nodes`] and [`Request::RemoveNode`]: the cluster map, sorted
    /// by node id.
    Nodes(Vec<NodeInfo>),
    /// Answer to [`Request::Join`]: the joiner's id and certificate, and the cluster CA.
    Joined {
        /// The node id the cluster gave the joiner.
        node_id: NodeId,
        /// Its certificate (PEM), signed by the cluster CA.
        cert_pem: String,
        /// The cluster CA certificate (PEM); its fingerprint matches the token's.
        ca_pem: String,
    },
}
