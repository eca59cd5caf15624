//! Plait's cluster client, and the filesystem layer a mount is built on.
//!
//! - [`ClusterClient`] talks to the `plaitd` nodes: it finds the metadata leader, follows
//!   `NotLeader` redirects, retries only what is safe to retry, and moves chunks.
//! - [`fs::PlaitFs`] is the filesystem as the mount sees it (handles, per-file write
//!   buffers, a bounded chunk cache, close-to-open consistency), written against plain
//!   async calls so that it can be exercised without a kernel. `plait-fuse` adapts it to
//!   FUSE.

#![warn(missing_docs)]

mod cluster;
mod error;
#[cfg(test)]
mod fake;
pub mod fs;
pub mod placement;
pub mod session;

pub use cluster::{
    ClientConfig, ClusterClient, MapNode, OP_TIMEOUT_DEFAULT_MS, RPC_TIMEOUT_DEFAULT_MS,
    Replication, StoredChunk,
};
pub use error::ClientError;
