//! Errors of setting up a client. Errors of individual calls are [`plait_proto::RpcError`]s,
//! so that every failure a mount sees carries exactly one errno.

use plait_net::NetError;

/// Why a [`crate::ClusterClient`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration names no node to talk to.
    #[error("no node addresses configured")]
    NoNodes,
    /// A timeout of zero would make every call fail at once.
    #[error("invalid timeout: {0}")]
    InvalidTimeout(&'static str),
    /// The transport could not be set up (bad certificate or key, no UDP socket...).
    #[error("transport setup failed: {0}")]
    Net(#[from] NetError),
}
