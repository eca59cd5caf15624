//! The RPC service: every request a peer may send to this node, answered from the
//! metadata group (through Raft), the chunk store, or the Raft instance itself.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use plait_chunks::{ChunkError, ChunkStore};
use plait_meta::Command;
use plait_net::RpcClient;
use plait_proto::{
    ChunkId, ErrorCode, MetaOp, MetaQuery, MetaReply, MissingCopy, NodeInfo, NodeRole, NodeStatus,
    PlacementPass, RaftRpc, Request, Response, RpcError, Timestamp,
};
use tokio::sync::Notify;

use crate::raft_types::Raft;
use crate::store::Db;

/// Shared state of the RPC service.
pub struct Service {
    /// This node's Raft id.
    pub node_id: u64,
    /// This node's advertised QUIC address.
    pub addr: String,
    /// The metadata group member running here.
    pub raft: Raft,
    /// The node's database (read side of the state machine).
    pub db: Arc<Db>,
    /// Changes after every batch the state machine applied (long polls wait on it).
    pub applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// How long a confirmed leadership serves reads without a new quorum round, in ms
    /// (see [`Service::query`]); 0 turns the lease off.
    pub read_lease_ms: u64,
    /// The last confirmed leadership: when the confirming round started, and its term.
    pub read_lease: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// The node's chunks.
    pub chunks: Arc<ChunkStore>,
    /// Chunks stored here, as last counted by [`Service::refresh_chunk_count`]: counting
    /// walks the whole store, too slow for `NodeStatus`, which clients use as a probe.
    pub chunk_count: AtomicU64,
    /// Client for calls to other nodes (forwarded proposals, heal fetches).
    pub rpc: RpcClient,
    /// Wakes the heal worker for a pass now.
    pub heal_trigger: Notify,
    /// Copies made by the heal worker since start.
    pub healed_chunks: AtomicU64,
    /// Bytes of those copies.
    pub healed_bytes: AtomicU64,
    /// Chunks this process stored from puts lately (heal trusts their hash check).
    pub recent_puts: crate::recent_puts::RecentPuts,
    /// A placement pass was asked for (`HealNow`, or the node started) and has not
    /// started yet.
    pub placement_requested: AtomicBool,
    /// A placement pass is in progress.
    pub placement_running: AtomicBool,
    /// Copies the placement passes made since start.
    pub placement_copied_chunks: AtomicU64,
    /// Bytes of those copies.
    pub placement_copied_bytes: AtomicU64,
    /// Copies the placement passes dropped (no longer placed here, held by every placed
    /// node), since start.
    pub placement_dropped_chunks: AtomicU64,
    /// The cluster CA certificate (PEM), sent to joiners with their certificate.
    pub ca_pem: String,
    /// The cluster CA's private key (PEM), if this node signs joiners' certificates.
    pub ca_key: Option<String>,
    /// Bounds the joins served at once (they come from unauthenticated peers).
    pub join_permits: tokio::sync::Semaphore,
}

/// Most join requests one node serves at once; more are refused (generically).
pub const JOINS_IN_FLIGHT_MAX: usize = 2;

/// Timeout of the probe that checks the remaining voters before a removal.
const REMOVE_PROBE_TIMEOUT_MS: u64 = 2_000;

/// Longest a `WaitLock` long poll waits, in milliseconds.
const WAIT_LOCK_MAX_MS: u64 = 5_000;

/// Bound on one proposal forwarded to the leader by a node's own workers.
const FORWARD_TIMEOUT_MS: u64 = 5_000;

/// The node's clock as a timestamp (the leader's choice of `Command::now`).
pub fn now() -> Timestamp {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(_) => Timestamp::default(),
    }
}

fn not_leader(f: &ForwardToLeader<u64, openraft::BasicNode>) -> RpcError {
    let mut e = RpcError::new(ErrorCode::NotLeader, "not the metadata leader");
    e.leader_hint = f.leader_node.as_ref().map(|n| n.addr.clone());
    e
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> RpcError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        other => RpcError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

fn error(e: RpcError) -> Response {
    Response::Error(e)
}

impl Service {
    /// Proposes a change to the metadata group and waits until it is applied.
    pub async fn propose(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        let cmd = Command { now: now(), op };
        match self.raft.client_write(cmd).await {
            Ok(resp) => resp.data,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(e) => Err(RpcError::new(ErrorCode::Unavailable, e.to_string())),
        }
    }

    /// Proposes a change from this node's own workers: directly if this node leads,
    /// else through the leader it knows of. Only for idempotent ops (heal bookkeeping):
    /// an op whose answer was lost may have been applied.
    pub async fn propose_anywhere(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        let e = match self.propose(op.clone()).await {
            Err(e) if e.code == ErrorCode::NotLeader => e,
            other => return other,
        };
        let Some(leader) = e
            .leader_hint
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                "no metadata leader known",
            ));
        };
        let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
        match self.rpc.call(leader, &Request::Meta(op), timeout).await {
            Ok(Response::Meta(reply)) => Ok(reply),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(RpcError::new(
                ErrorCode::Protocol,
                format!("leader {leader} answered {other:?}"),
            )),
            Err(e) => Err(RpcError::new(
                ErrorCode::Unavailable,
                format!("leader {leader}: {e}"),
            )),
        }
    }

    /// Long poll for a queued lock request (leader only): answers as soon as it left the
    /// queue, or `Queued` after `timeout_ms` (capped at [`WAIT_LOCK_MAX_MS`]). Every
    /// change applied wakes the check; only committed state is read, so `Granted` is
    /// final even if leadership moves meanwhile.
    async fn wait_lock(
        &self,
        ino: plait_proto::Ino,
        session: plait_proto::lock::SessionId,
        seq: u32,
        spec: plait_proto::lock::LockSpec,
        timeout_ms: u64,
    ) -> Result<MetaReply, RpcError> {
        let q = MetaQuery::LockWait {
            ino,
            session,
            seq,
            spec,
        };
        let queued = MetaReply::LockWait(plait_proto::lock::WaitState::Queued);
        self.wait_change(q, &queued, timeout_ms).await
    }

    /// Answers `q` once its answer differs from `current` (leader only: the first read is
    /// linearizable, later ones follow the applied state), or `current` after
    /// `timeout_ms` (capped), so the caller asks again.
    async fn wait_change(
        &self,
        q: MetaQuery,
        current: &MetaReply,
        timeout_ms: u64,
    ) -> Result<MetaReply, RpcError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(WAIT_LOCK_MAX_MS));
        // Only cheap point reads may be re-run on every applied batch.
        if !matches!(
            q,
            MetaQuery::LockWait { .. }
                | MetaQuery::Delegation { .. }
                | MetaQuery::Recalls { .. }
                | MetaQuery::DirDelegation { .. }
                | MetaQuery::DirRecalls { .. }
        ) {
            return Err(RpcError::new(
                ErrorCode::InvalidArgument,
                "only lock waits, delegations and recalls can be waited on",
            ));
        }
        // Subscribed before the first read, so no change after it is missed.
        let mut applied = self.applied.subscribe();
        let first = self.query(q.clone()).await?;
        if first != *current {
            return Ok(first);
        }
        loop {
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or raft shut down: let the caller ask again.
                _ => return Ok(first),
            }
            let now = self.query_local(q.clone())?;
            if now != *current {
                return Ok(now);
            }
        }
    }

    /// Whether this node confirmed its leadership (a quorum answered a round it started)
    /// less than [`Service::read_lease_ms`] ago, in the term it still leads.
    fn holds_read_lease(&self) -> bool {
        let Some((since, term)) = *self.read_lease.lock().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        if since.elapsed() >= Duration::from_millis(self.read_lease_ms) {
            return false;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_term == term && m.current_leader == Some(self.node_id)
    }

    /// Answers a read after confirming leadership, so it sees every committed change.
    ///
    /// A confirmation is a lease: followers that answered a round refuse to vote for
    /// anyone else for the election timeout after they got it (openraft's leader lease),
    /// so no other leader can commit anything for at least `election_min_ms` after the
    /// round started. Reads within half of that (`read_lease_ms`) are served from the
    /// applied state without a new round: every write acknowledged to a client was
    /// applied here before its answer went out.
    pub async fn query(&self, q: MetaQuery) -> Result<MetaReply, RpcError> {
        if self.holds_read_lease() {
            return self.query_local(q);
        }
        let started = std::time::Instant::now();
        let term = self.raft.metrics().borrow().current_term;
        match self.raft.ensure_linearizable().await {
            Ok(_) => {
                // Only a round wholly within one term confirms a lease for that term.
                if self.raft.metrics().borrow().current_term == term {
                    let mut lease = self.read_lease.lock().unwrap_or_else(|p| p.into_inner());
                    if lease.is_none_or(|(since, _)| since < started) {
                        *lease = Some((started, term));
                    }
                }
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                return Err(not_leader(&f));
            }
            Err(e) => return Err(RpcError::new(ErrorCode::Unavailable, e.to_string())),
        }
        self.query_local(q)
    }

    /// Answers a read from this node's applied state, without a leadership check.
    pub fn query_local(&self, q: MetaQuery) -> Result<MetaReply, RpcError> {
        let io = |e: &dyn std::fmt::Display| RpcError::new(ErrorCode::Io, e.to_string());
        let view = self.db.view().map_err(|e| io(&e))?;
        let reply = plait_meta::query(&view, &q).map_err(|e| io(&e))??;
        match reply {
            MetaReply::FsStats(mut stats) => {
                let (total, free) = self.chunks.disk_space().map_err(|e| io(&e))?;
                stats.total_bytes = total;
                stats.free_bytes = free;
                Ok(MetaReply::FsStats(stats))
            }
            other => Ok(other),
        }
    }

    async fn chunk_put(&self, id: ChunkId, data: Vec<u8>) -> Response {
        let chunks = self.chunks.clone();
        match tokio::task::spawn_blocking(move || chunks.put(&id, &data)).await {
            Ok(Ok(())) => {
                self.recent_puts.insert(id);
                Response::ChunkStored
            }
            Ok(Err(e)) => {
                tracing::warn!(chunk = %id, error = %e, "chunk put failed");
                error(RpcError::new(e.code(), e.to_string()))
            }
            Err(e) => error(RpcError::new(ErrorCode::Io, e.to_string())),
        }
    }

    async fn chunk_get(self: &Arc<Self>, id: ChunkId) -> Response {
        let chunks = self.chunks.clone();
        match tokio::task::spawn_blocking(move || chunks.get(&id)).await {
            Ok(Ok(data)) => Response::Chunk(data),
            Ok(Err(e)) => {
                if matches!(e, ChunkError::Corrupt { .. }) {
                    self.report_corrupt(id);
                }
                error(RpcError::new(e.code(), e.to_string()))
            }
            Err(e) => error(RpcError::new(ErrorCode::Io, e.to_string())),
        }
    }

    /// Whether an intact copy of `id` is here (read and hash-verified; a corrupt one is
    /// reported for heal and answered `false`).
    async fn chunk_check(self: &Arc<Self>, id: ChunkId) -> Response {
        let chunks = self.chunks.clone();
        match tokio::task::spawn_blocking(move || chunks.get(&id)).await {
            Ok(Ok(_)) => Response::Held(true),
            Ok(Err(ChunkError::NotFound(_))) => Response::Held(false),
            Ok(Err(e @ ChunkError::Corrupt { .. })) => {
                tracing::warn!(chunk = %id, error = %e, "corrupt copy found by a placement check");
                self.report_corrupt(id);
                Response::Held(false)
            }
            Ok(Err(e)) => error(RpcError::new(e.code(), e.to_string())),
            Err(e) => error(RpcError::new(ErrorCode::Io, e.to_string())),
        }
    }

    /// Records this node's copy of `id` as needing heal (in the background: the reader
    /// has already moved on to another replica) and wakes the heal worker.
    fn report_corrupt(self: &Arc<Self>, id: ChunkId) {
        // Heal must read and replace this copy, not trust the put that stored it.
        self.recent_puts.forget(&id);
        let service = self.clone();
        tokio::spawn(async move {
            let op = MetaOp::MarkUnderReplicated {
                copies: vec![MissingCopy {
                    chunk: id,
                    node: service.node_id,
                    size_bytes: 0,
                }],
            };
            match service.propose_anywhere(op).await {
                Ok(_) => service.heal_trigger.notify_one(),
                Err(e) => {
                    tracing::warn!(chunk = %id, error = %e, "recording a corrupt copy failed")
                }
            }
        });
    }

    async fn raft_rpc(&self, rpc: RaftRpc) -> Response {
        let bad =
            |e: plait_proto::CodecError| error(RpcError::new(ErrorCode::Protocol, e.to_string()));
        let encoded = match rpc {
            RaftRpc::Append(b) => match plait_proto::decode(&b) {
                Ok(req) => plait_proto::encode(&self.raft.append_entries(req).await),
                Err(e) => return bad(e),
            },
            RaftRpc::Vote(b) => match plait_proto::decode(&b) {
                Ok(req) => plait_proto::encode(&self.raft.vote(req).await),
                Err(e) => return bad(e),
            },
            RaftRpc::Snapshot(b) => match plait_proto::decode(&b) {
                Ok(req) => plait_proto::encode(&self.raft.install_snapshot(req).await),
                Err(e) => return bad(e),
            },
        };
        match encoded {
            Ok(bytes) => Response::Raft(bytes),
            Err(e) => error(RpcError::new(ErrorCode::Io, e.to_string())),
        }
    }

    /// The cluster map with roles and zones, from this node's view of the Raft membership
    /// (the last membership entry it has seen, committed or not) and its applied node
    /// records. Members without a record are `Both`; records of nodes not (yet) in the
    /// membership are listed with `member: false`.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let records = match self.query_local(MetaQuery::ListNodes) {
            Ok(MetaReply::NodeRecords(r)) => r,
            _ => Vec::new(),
        };
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut out: Vec<NodeInfo> = membership
            .nodes()
            .map(|(id, node)| {
                let rec = records.iter().find(|r| r.id == *id);
                NodeInfo {
                    id: *id,
                    addr: node.addr.clone(),
                    role: rec.map_or(NodeRole::Both, |r| r.role),
                    zone: rec.and_then(|r| r.zone.clone()),
                    voter: voters.contains(id),
                    member: true,
                }
            })
            .collect();
        for rec in records {
            if !out.iter().any(|n| n.id == rec.id) {
                out.push(NodeInfo {
                    id: rec.id,
                    addr: rec.addr,
                    role: rec.role,
                    zone: rec.zone,
                    voter: false,
                    member: false,
                });
            }
        }
        out.sort_by_key(|n| n.id);
        out
    }

    /// The data nodes (members whose role stores chunks) and their addresses: the nodes
    /// chunk placement and heal use.
    pub fn members(&self) -> Vec<(u64, String)> {
        self.nodes()
            .into_iter()
            .filter(|n| n.member && n.role.stores_data())
            .map(|n| (n.id, n.addr))
            .collect()
    }

    /// Whether this node is in the Raft membership it knows of.
    pub fn is_member(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some()
    }

    async fn ensure_leader(&self) -> Result<(), RpcError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(other) => Err(RpcError::new(ErrorCode::Unavailable, other.to_string())),
        }
    }

    /// Makes `node_id` a member: adds it as a learner (waiting until it caught up with the
    /// log), then promotes it to voter unless its record says it is a data-only node.
    /// Leader only; idempotent.
    async fn add_voter(&self, node_id: u64, addr: String) -> Result<Vec<(u64, String)>, RpcError> {
        // Only the leader changes membership; answer like a metadata op elsewhere.
        self.ensure_leader().await?;
        let nodes = self.nodes();
        let known = nodes.iter().find(|n| n.id == node_id);
        let votes = known.is_none_or(|n| n.role.votes());
        let done = known.is_some_and(|n| n.member && (n.voter || !votes));
        if done {
            return Ok(self.members());
        }
        if !known.is_some_and(|n| n.member) {
            tracing::info!(node_id, %addr, "adding a learner");
            self.raft
                .add_learner(node_id, openraft::BasicNode { addr: addr.clone() }, true)
                .await
                .map_err(write_error)?;
        }
        if votes {
            tracing::info!(node_id, %addr, "promoting the learner to voter");
            let ids: BTreeSet<u64> = [node_id].into_iter().collect();
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map_err(write_error)?;
        }
        Ok(self.members())
    }

    /// Serves a join request (from a peer without a certificate): checks the token
    /// locally, has the metadata group consume it (which gives the joiner its id and
    /// record), and signs the joiner's CSR. Every failure is the same refusal.
    async fn join(
        &self,
        token_id: u64,
        secret: [u8; 32],
        csr_pem: String,
        addr: String,
    ) -> Response {
        let refused = || {
            error(RpcError::new(
                ErrorCode::AccessDenied,
                plait_meta::JOIN_REFUSED,
            ))
        };
        let Some(ca_key) = &self.ca_key else {
            tracing::info!("join refused: this node holds no CA key");
            return refused();
        };
        let Ok(_permit) = self.join_permits.try_acquire() else {
            tracing::info!("join refused: too many joins in flight");
            return refused();
        };
        let secret_hash = *blake3::hash(&secret).as_bytes();
        let valid = self.db.view().ok().and_then(|view| {
            plait_meta::join_token_valid(&view, token_id, &secret_hash, now()).ok()
        });
        if valid != Some(true) {
            tracing::info!(token_id, "join refused: no such live token");
            return refused();
        }
        // A CSR we cannot sign must not burn the token.
        if plait_net::certs::sign_csr(&self.ca_pem, ca_key, &csr_pem, "node0").is_err() {
            tracing::info!(token_id, "join refused: unusable signing request");
            return refused();
        }
        let min_node_id = self
            .nodes()
            .iter()
            .map(|n| n.id)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let op = MetaOp::ConsumeJoinToken {
            token_id,
            secret_hash,
            addr,
            min_node_id,
        };
        let rec = match self.propose_anywhere(op).await {
            Ok(MetaReply::Joined(rec)) => rec,
            Ok(_) => return refused(),
            Err(e) => {
                tracing::info!(token_id, error = %e, "join refused");
                return refused();
            }
        };
        match plait_net::certs::sign_csr(&self.ca_pem, ca_key, &csr_pem, &format!("node{}", rec.id))
        {
            Ok(cert_pem) => {
                tracing::info!(node_id = rec.id, role = rec.role.name(), addr = %rec.addr, "node joined");
                Response::Joined {
                    node_id: rec.id,
                    cert_pem,
                    ca_pem: self.ca_pem.clone(),
                }
            }
            Err(e) => {
                tracing::error!(node_id = rec.id, error = %e, "signing a joiner's certificate failed");
                refused()
            }
        }
    }

    /// Removes a node that is gone: from the Raft membership, then its record and heal
    /// entries. Leader only. Refuses to remove the last voter, or a voter whose removal
    /// would leave fewer answering voters than a majority of the remaining ones.
    async fn remove_node(&self, node_id: u64) -> Result<Vec<NodeInfo>, RpcError> {
        self.ensure_leader().await?;
        let nodes = self.nodes();
        let Some(node) = nodes.iter().find(|n| n.id == node_id).cloned() else {
            return Err(RpcError::new(
                ErrorCode::NotFound,
                format!("node {node_id} is not in the cluster"),
            ));
        };
        if node.voter {
            let remaining: Vec<&NodeInfo> = nodes
                .iter()
                .filter(|n| n.voter && n.id != node_id)
                .collect();
            if remaining.is_empty() {
                return Err(RpcError::new(
                    ErrorCode::NotPermitted,
                    format!(
                        "node {node_id} is the last voter of the metadata group; refusing to remove it"
                    ),
                ));
            }
            let mut up = 0usize;
            for n in &remaining {
                if n.id == self.node_id {
                    up += 1;
                    continue;
                }
                let Ok(sock) = n.addr.parse::<SocketAddr>() else {
                    continue;
                };
                let timeout = Duration::from_millis(REMOVE_PROBE_TIMEOUT_MS);
                if let Ok(Response::NodeStatus(_)) =
                    self.rpc.call(sock, &Request::NodeStatus, timeout).await
                {
                    up += 1;
                }
            }
            if up * 2 <= remaining.len() {
                // Not `Unavailable`: clients would retry it until their timeout.
                return Err(RpcError::new(
                    ErrorCode::NotPermitted,
                    format!(
                        "removing node {node_id} would leave {} voter(s) of which only {up} answer: \
                         no majority; bring voters back first",
                        remaining.len()
                    ),
                ));
            }
        }
        let ids: BTreeSet<u64> = [node_id].into_iter().collect();
        if node.voter {
            tracing::info!(node_id, "removing a voter");
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
                .map_err(write_error)?;
        }
        if self.nodes().iter().any(|n| n.id == node_id && n.member) {
            tracing::info!(node_id, "removing a learner");
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(write_error)?;
        }
        // Each pass drops a bounded batch of the node's heal entries.
        while let MetaReply::NodeForgotten { more: true } =
            self.propose(MetaOp::ForgetNode { node: node_id }).await?
        {}
        Ok(self.nodes())
    }

    /// Recounts the chunks in the store (a directory walk) for `NodeStatus`.
    pub async fn refresh_chunk_count(&self) {
        let chunks = self.chunks.clone();
        match tokio::task::spawn_blocking(move || chunks.usage()).await {
            Ok(Ok((count, _))) => self.chunk_count.store(count, Ordering::Relaxed),
            Ok(Err(e)) => tracing::warn!(error = %e, "counting chunks failed"),
            Err(e) => tracing::warn!(error = %e, "counting chunks failed"),
        }
    }

    fn status(&self) -> Response {
        let metrics = self.raft.metrics().borrow().clone();
        let (disk_total_bytes, disk_free_bytes) = self.chunks.disk_space().unwrap_or((0, 0));
        let chunk_count = self.chunk_count.load(Ordering::Relaxed);
        Response::NodeStatus(NodeStatus {
            node_id: self.node_id,
            addr: self.addr.clone(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            disk_total_bytes,
            disk_free_bytes,
            chunk_count,
            healed_chunks: self.healed_chunks.load(Ordering::Relaxed),
            healed_bytes: self.healed_bytes.load(Ordering::Relaxed),
            placement: if self.placement_running.load(Ordering::Relaxed) {
                PlacementPass::Running
            } else if self.placement_requested.load(Ordering::Relaxed) {
                PlacementPass::Pending
            } else {
                PlacementPass::Idle
            },
            placement_copied_chunks: self.placement_copied_chunks.load(Ordering::Relaxed),
            placement_copied_bytes: self.placement_copied_bytes.load(Ordering::Relaxed),
            placement_dropped_chunks: self.placement_dropped_chunks.load(Ordering::Relaxed),
        })
    }
}

/// The service as the QUIC server calls it: a shared handle, so request handlers can start
/// background work (such as recording a corrupt copy) that outlives the request.
pub struct Handler(pub Arc<Service>);

impl plait_net::Handler for Handler {
    async fn handle(&self, req: Request) -> Response {
        self.0.handle(req).await
    }
}

impl Service {
    async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Meta(op) => match self.propose(op).await {
                Ok(r) => Response::Meta(r),
                Err(e) => error(e),
            },
            Request::Query(q) => match self.query(q).await {
                Ok(r) => Response::Meta(r),
                Err(e) => error(e),
            },
            Request::ChunkPut { id, data } => self.chunk_put(id, data).await,
            Request::ChunkGet { id } => self.chunk_get(id).await,
            Request::ChunkCheck { id } => self.chunk_check(id).await,
            Request::Raft(rpc) => self.raft_rpc(rpc).await,
            Request::NodeStatus => self.status(),
            Request::Members => Response::Members(self.members()),
            Request::AddVoter { node_id, addr } => match self.add_voter(node_id, addr).await {
                Ok(members) => Response::Members(members),
                Err(e) => error(e),
            },
            Request::WaitLock {
                ino,
                session,
                seq,
                spec,
                timeout_ms,
            } => match self.wait_lock(ino, session, seq, spec, timeout_ms).await {
                Ok(r) => Response::Meta(r),
                Err(e) => error(e),
            },
            Request::WaitChange {
                query,
                current,
                timeout_ms,
            } => match self.wait_change(query, &current, timeout_ms).await {
                Ok(r) => Response::Meta(r),
                Err(e) => error(e),
            },
            Request::HealNow => {
                self.placement_requested.store(true, Ordering::Relaxed);
                self.heal_trigger.notify_one();
                Response::Meta(MetaReply::Empty)
            }
            Request::StateDigest => self.state_digest().await,
            Request::Nodes => Response::Nodes(self.nodes()),
            Request::Join {
                token_id,
                secret,
                csr_pem,
                addr,
            } => self.join(token_id, secret, csr_pem, addr).await,
            Request::RemoveNode { node_id } => match self.remove_node(node_id).await {
                Ok(nodes) => Response::Nodes(nodes),
                Err(e) => error(e),
            },
        }
    }
}

impl Service {
    /// Digest of this node's applied state (no leadership check: every node answers for
    /// itself), computed on the blocking pool since it walks the whole state.
    async fn state_digest(&self) -> Response {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.state_digest()).await {
            Ok(Ok(d)) => Response::StateDigest(plait_proto::StateDigest {
                node_id: self.node_id,
                last_applied: d.last_applied,
                entries: d.entries,
                digest: d.hex,
            }),
            Ok(Err(e)) => error(RpcError::new(ErrorCode::Io, e.to_string())),
            Err(e) => error(RpcError::new(ErrorCode::Io, e.to_string())),
        }
    }
}
