//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use plait_meta::Command;
use plait_proto::{MetaReply, RpcError};

/// The result of applying one log entry: the reply the proposer hands back to its client.
pub type ApplyResult = Result<MetaReply, RpcError>;

openraft::declare_raft_types!(
    /// Plait's Raft types: log entries carry metadata commands.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running Raft instance of this node.
pub type Raft = openraft::Raft<TypeConfig>;
