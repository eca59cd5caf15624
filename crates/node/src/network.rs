//! Raft traffic between voters over the cluster's QUIC transport.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use plait_net::RpcClient;
use plait_proto::{RaftRpc, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::raft_types::TypeConfig;
use crate::store::{DurableLog, clamp_commit};

/// Creates one [`PeerClient`] per target voter.
pub struct Network {
    rpc: RpcClient,
    durable: DurableLog,
}

impl Network {
    /// A network sending through `rpc`; commit indexes it sends never pass what
    /// `durable` says is fsynced in this node's log.
    pub fn new(rpc: RpcClient, durable: DurableLog) -> Self {
        Self { rpc, durable }
    }
}

/// Sends Raft RPCs to one voter.
pub struct PeerClient {
    target: u64,
    rpc: RpcClient,
    addr: Result<SocketAddr, String>,
    durable: DurableLog,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            rpc: self.rpc.clone(),
            durable: self.durable.clone(),
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("bad address {}: {e}", node.addr)),
        }
    }
}

impl PeerClient {
    async fn send<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error>(
        &self,
        wrap: fn(Vec<u8>) -> RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let payload =
            plait_proto::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .rpc
            .call(addr, &Request::Raft(wrap(payload)), timeout)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match resp {
            Response::Raft(bytes) => {
                plait_proto::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
            }
            Response::Error(e) => Err(RPCError::Network(NetworkError::new(&e))),
            other => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("unexpected raft response {other:?}")),
            ))),
        }
    }
}

/// What a peer's Raft handler answered, or why the call failed.
type RemoteResult<T, E> =
    Result<Result<T, RaftError<u64, E>>, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn flatten<T, E>(
    target: u64,
    r: RemoteResult<T, E>,
) -> Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>
where
    E: std::error::Error,
{
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RPCError::RemoteError(openraft::error::RemoteError::new(
            target, e,
        ))),
        Err(e) => Err(e),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // A follower applies what it hears is committed: never an entry this leader
        // has not fsynced yet (see `store::durable`).
        rpc.leader_commit = clamp_commit(rpc.leader_commit, self.durable.last());
        flatten(
            self.target,
            self.send(RaftRpc::Append, &rpc, option.hard_ttl()).await,
        )
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        flatten(
            self.target,
            self.send(RaftRpc::Snapshot, &rpc, option.hard_ttl()).await,
        )
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        flatten(
            self.target,
            self.send(RaftRpc::Vote, &rpc, option.hard_ttl()).await,
        )
    }
}
