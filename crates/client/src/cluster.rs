//! [`ClusterClient`]: routes metadata calls to the leader and moves chunks.
//!
//! # Retries
//!
//! A metadata *query* (and a chunk put or get) is idempotent: it is retried after any
//! transport failure, against the next node, with bounded exponential backoff, until the
//! operation's deadline (`op_timeout_ms`).
//!
//! A metadata *op* (a [`MetaOp`]) is retried only when the request surely never reached a
//! leader: the node could not be reached, or it answered `NotLeader`. After a timeout, a
//! reset stream or a closed connection, the op may or may not have been committed;
//! resending it could apply it twice (a second `Create` would fail with EEXIST although the
//! first succeeded, a second `Rename` could move a file that replaced the first one's
//! target). Such a call fails with [`ErrorCode::Unavailable`] (EIO at the mount) instead.
//! The real fix is server-side de-duplication of retried ops (a client session id and
//! sequence number in the state machine), which the sessions work will bring; until then
//! an ambiguous op is reported, never blindly repeated.
//!
//! The transport cannot say whether a failed call delivered its request (a timeout may
//! have hit while connecting or after sending). So before an op goes to a node that has
//! not answered anything since its last failure, or not for `PROBE_AFTER_IDLE_MS` (it may
//! have died while the client was idle), the node is *probed* with an idempotent
//! `NodeStatus` request, which establishes the connection: a probe failure proves the op
//! was not sent, and the op moves on to the next node. An op then only fails ambiguously
//! if the connection breaks between the probe and the op, or while the op is in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plait_net::{EncodedRequest, NetError, RpcClient, TlsIdentity};
use plait_proto::{
    ChunkId, ErrorCode, MetaOp, MetaQuery, MetaReply, MissingCopy, NodeId, NodeInfo, NodeStatus,
    Request, Response, RpcError, StateDigest,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::error::ClientError;

/// Default timeout of one RPC, in milliseconds.
pub const RPC_TIMEOUT_DEFAULT_MS: u64 = 5_000;

/// Default timeout of one whole operation including retries and redirects, in milliseconds.
pub const OP_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// First backoff pause after a failed attempt, in milliseconds.
const BACKOFF_INITIAL_MS: u64 = 50;

/// Longest backoff pause between two attempts, in milliseconds.
const BACKOFF_MAX_MS: u64 = 1_000;

/// Longest pause between two attempts to find the metadata leader, in milliseconds. Kept
/// short because an election ends at no predictable moment and every op waits for it: a
/// 1 s step added up to a second to each failover. Probing costs the surviving nodes one
/// small request per waiting op and step.
const LEADER_BACKOFF_MAX_MS: u64 = 200;

/// `NotLeader` redirects followed back to back before pausing: a hint pointing at a node
/// that is itself not the leader (during an election) must not turn into a busy loop.
const REDIRECTS_BEFORE_BACKOFF: u32 = 3;

/// Chunks up to this size are hashed on the calling task; larger ones on the blocking
/// pool, so that hashing 4 MiB never stalls the async workers.
const HASH_INLINE_MAX_BYTES: usize = 64 * 1024;

/// A node that has not answered for this long is probed before a metadata op is sent to
/// it, in milliseconds: a node that died while the client was idle (the leader killed
/// between two ops) then costs a failed probe and a move to the next node, not an op of
/// unknown outcome.
const PROBE_AFTER_IDLE_MS: u64 = 1_000;

/// For this long after a transport failure a node is suspect: `NotLeader` hints naming it
/// are not followed and rotation passes it by. During a failover the surviving nodes keep
/// naming the dead leader until the election ends; following them costs an RPC timeout
/// each time.
const SUSPECT_AFTER_FAILURE_MS: u64 = 3_000;

/// How old the cached cluster map may get before a chunk operation refreshes it, in
/// milliseconds.
const MAP_MAX_AGE_MS: u64 = 10_000;

/// Fewest milliseconds between two refreshes of the cluster map triggered by failures, so
/// that a dead node does not turn every chunk operation into a map fetch.
const MAP_REFRESH_MIN_INTERVAL_MS: u64 = 1_000;

/// Replica puts that may still be running after their chunk put returned (W acknowledged,
/// the rest finishing in the background). Past this, the remaining copies of a put that
/// reached its quorum are abandoned (left under-replicated) rather than making the
/// foreground wait: a hung node would otherwise hold every slot until its deadline.
const BACKGROUND_PUTS_MAX: usize = 64;

/// How many copies of a chunk to write, and how many durable acknowledgements make a put
/// succeed (a volume's `replicas` and `write_quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Copies of each chunk (R).
    pub replicas: u32,
    /// Durable acknowledgements required (W, 1..=R).
    pub write_quorum: u32,
}

impl Replication {
    /// One copy, one acknowledgement (a single-node volume).
    pub const SINGLE: Replication = Replication {
        replicas: 1,
        write_quorum: 1,
    };
}

/// One data node of the cluster map: where chunks may be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapNode {
    /// Node id.
    pub id: NodeId,
    /// QUIC address.
    pub addr: SocketAddr,
    /// Failure zone (`None`: a zone of its own).
    pub zone: Option<String>,
}

/// The cluster map as last fetched: data nodes with their addresses and zones.
#[derive(Debug, Default)]
struct MapCache {
    members: Vec<MapNode>,
    /// When `members` was fetched (None: never).
    fetched: Option<Instant>,
    /// Set by a failure: refresh at the next chunk operation (rate-limited).
    stale: bool,
    /// When the last fetch was attempted, successful or not.
    last_attempt: Option<Instant>,
}

/// Where and how long to wait: the cluster's node addresses and the two timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Addresses (ip:port) of the cluster's nodes, tried in this order.
    pub nodes: Vec<SocketAddr>,
    /// Timeout of one RPC, in milliseconds.
    pub rpc_timeout_ms: u64,
    /// Timeout of one operation including retries, redirects and backoff, in milliseconds.
    pub op_timeout_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            rpc_timeout_ms: RPC_TIMEOUT_DEFAULT_MS,
            op_timeout_ms: OP_TIMEOUT_DEFAULT_MS,
        }
    }
}

/// Sends one request to one address and returns its response.
enum Transport {
    /// QUIC with mutual TLS.
    Net(RpcClient),
    /// An in-process stand-in for a cluster (tests only).
    #[cfg(test)]
    Fake(std::sync::Arc<FakeCall>),
}

/// A fake cluster's request handler (tests only).
#[cfg(test)]
pub(crate) type FakeCall = dyn Fn(SocketAddr, &Request) -> Result<Response, NetError> + Send + Sync;

impl Transport {
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        match self {
            Transport::Net(rpc) => rpc.call(addr, req, timeout).await,
            #[cfg(test)]
            Transport::Fake(f) => {
                let _ = timeout;
                tokio::task::yield_now().await;
                f(addr, req)
            }
        }
    }

    /// Like [`Self::call`] for a request already encoded (a request sent to
    /// several nodes is encoded once).
    async fn call_encoded(
        &self,
        addr: SocketAddr,
        frame: &EncodedRequest,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        match self {
            Transport::Net(rpc) => rpc.call_encoded(addr, frame, timeout).await,
            #[cfg(test)]
            Transport::Fake(_) => self.call(addr, &frame.decode()?, timeout).await,
        }
    }
}

/// Longest a `WaitLock` long poll asks the leader to wait, in milliseconds.
const WAIT_LOCK_POLL_MAX_MS: u64 = 1_000;

/// Whether a request may be sent again after an attempt whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Idempotent: resend after any transport failure (queries, chunk I/O).
    Always,
    /// Resend only if it surely never reached a leader (metadata ops).
    IfNotDelivered,
}

/// A connection to a Plait cluster: the metadata leader's address as last learned, and
/// the transport. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct ClusterClient {
    transport: Arc<Transport>,
    nodes: Vec<SocketAddr>,
    /// The node that last answered a metadata request, if any.
    leader: Mutex<Option<SocketAddr>>,
    /// Nodes that answered since their last transport failure, with when they last
    /// answered: an op may be sent without a probe to a node that answered within
    /// [`PROBE_AFTER_IDLE_MS`].
    reachable: Mutex<HashMap<SocketAddr, Instant>>,
    /// When each node last failed at the transport level (see
    /// [`SUSPECT_AFTER_FAILURE_MS`]); cleared by its next answer.
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    /// Index into `nodes` of the next node to try when the leader is unknown.
    next_node: AtomicUsize,
    rpc_timeout: Duration,
    op_timeout: Duration,
    /// The cluster map used for chunk placement.
    map: Mutex<MapCache>,
    /// Slots of replica puts allowed to run on after their chunk put returned.
    background_puts: Arc<Semaphore>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("nodes", &self.nodes)
            .field("leader", &self.known_leader())
            .field("rpc_timeout", &self.rpc_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// Creates a client for the nodes in `config`, authenticating with `identity`.
    ///
    /// No node is contacted yet: the first call finds the leader. Must run inside a tokio
    /// runtime (the QUIC endpoint is bound here).
    pub async fn connect(
        identity: &TlsIdentity,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        check_config(&config)?;
        let rpc = RpcClient::new(identity)?;
        Ok(Self::with_transport(Transport::Net(rpc), config))
    }

    /// A client whose requests are answered by `fake` instead of the network (tests only).
    #[cfg(test)]
    pub(crate) fn fake(
        config: ClientConfig,
        fake: std::sync::Arc<FakeCall>,
    ) -> Result<Self, ClientError> {
        check_config(&config)?;
        Ok(Self::with_transport(Transport::Fake(fake), config))
    }

    fn with_transport(transport: Transport, config: ClientConfig) -> Self {
        Self {
            transport: Arc::new(transport),
            map: Mutex::new(MapCache::default()),
            background_puts: Arc::new(Semaphore::new(BACKGROUND_PUTS_MAX)),
            nodes: config.nodes,
            leader: Mutex::new(None),
            reachable: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            next_node: AtomicUsize::new(0),
            rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
            op_timeout: Duration::from_millis(config.op_timeout_ms),
        }
    }

    /// The configured node addresses.
    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    /// The metadata leader as last learned, if any (for status displays and logs).
    pub fn known_leader(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long one operation may take before it fails (`op_timeout_ms`).
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Proposes a metadata change to the leader.
    ///
    /// Follows `NotLeader` hints and rotates through the nodes while no connection can be
    /// made, with bounded exponential backoff, until `op_timeout_ms` (then
    /// [`ErrorCode::Unavailable`]). Never resends the op once it may have reached a leader
    /// (see the module documentation): an ambiguous failure is returned as `Unavailable`.
    pub async fn meta(&self, op: MetaOp) -> Result<MetaReply, RpcError> {
        self.meta_request(&Request::Meta(op)).await
    }

    /// [`Self::meta`] of a `Request::Meta` the caller built once, for a caller that may
    /// send it again (no copy of the op, and its inline bytes, per attempt).
    pub async fn meta_request(&self, request: &Request) -> Result<MetaReply, RpcError> {
        debug_assert!(matches!(request, Request::Meta(_)), "not a metadata op");
        meta_reply(self.call_leader(request, Retry::IfNotDelivered).await?)
    }

    /// Reads metadata from the leader (linearizable), with the same routing as
    /// [`Self::meta`]; being idempotent, a query is also retried after timeouts.
    pub async fn query(&self, q: MetaQuery) -> Result<MetaReply, RpcError> {
        meta_reply(self.call_leader(&Request::Query(q), Retry::Always).await?)
    }

    /// Waits on the leader (at most about half the RPC timeout, so the call is not cut
    /// short) until the queued lock request `seq` of `session` leaves the queue; answers
    /// where it stands (`Queued` when the time ran out: ask again).
    pub async fn wait_lock(
        &self,
        ino: plait_proto::Ino,
        session: plait_proto::lock::SessionId,
        seq: u32,
        spec: plait_proto::lock::LockSpec,
    ) -> Result<plait_proto::lock::WaitState, RpcError> {
        let timeout_ms = u64::try_from(self.rpc_timeout.as_millis() / 2)
            .unwrap_or(1_000)
            .clamp(10, WAIT_LOCK_POLL_MAX_MS);
        let req = Request::WaitLock {
            ino,
            session,
            seq,
            spec,
            timeout_ms,
        };
        match meta_reply(self.call_leader(&req, Retry::Always).await?)? {
            MetaReply::LockWait(state) => Ok(state),
            other => Err(RpcError::new(
                ErrorCode::Protocol,
                format!("unexpected reply to WaitLock: {other:?}"),
            )),
        }
    }

    /// Waits on the leader (at most `timeout_ms`, and at most about half the RPC timeout)
    /// until the answer to `query` differs from `current`; answers it (`current` when the
    /// time ran out: ask again).
    pub async fn wait_change(
        &self,
        query: MetaQuery,
        current: MetaReply,
        timeout_ms: u64,
    ) -> Result<MetaReply, RpcError> {
        let cap_ms = u64::try_from(self.rpc_timeout.as_millis() / 2).unwrap_or(1_000);
        let req = Request::WaitChange {
            query,
            current,
            timeout_ms: timeout_ms.min(cap_ms).max(10),
        };
        meta_reply(self.call_leader(&req, Retry::Always).await?)
    }

    /// Makes node `node_id` at `addr` a voter of the metadata group (through the leader,
    /// with the same routing as [`Self::query`]; idempotent) and returns the voters after
    /// the change.
    pub async fn add_voter(
        &self,
        node_id: NodeId,
        addr: SocketAddr,
    ) -> Result<Vec<(NodeId, String)>, RpcError> {
        let req = Request::AddVoter {
            node_id,
            addr: addr.to_string(),
        };
        match self.call_leader(&req, Retry::Always).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected("AddVoter", &other)),
        }
    }

    /// The voters of the metadata group and their addresses, as `addr` knows them (one
    /// attempt, `rpc_timeout_ms`).
    pub async fn members_of(&self, addr: SocketAddr) -> Result<Vec<(NodeId, String)>, RpcError> {
        match self.send(addr, &Request::Members, self.rpc_timeout).await {
            Ok(Response::Members(m)) => Ok(m),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(unexpected("Members", &other)),
            Err(e) => Err(net_error(&e)),
        }
    }

    /// The cluster map: every node with its role and zone, from whichever node answers
    /// first (all known nodes are asked at once, one attempt each).
    pub async fn node_infos(&self) -> Result<Vec<NodeInfo>, RpcError> {
        let mut targets: Vec<SocketAddr> = self.nodes.clone();
        for n in self.cached_members() {
            if !targets.contains(&n.addr) {
                targets.push(n.addr);
            }
        }
        let mut set = JoinSet::new();
        for addr in targets {
            let transport = self.transport.clone();
            let timeout = self.rpc_timeout;
            set.spawn(async move { (addr, transport.call(addr, &Request::Nodes, timeout).await) });
        }
        let mut last_error = String::from("no node answered");
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((_, Ok(Response::Nodes(m)))) if m.iter().any(|n| n.member) => {
                    set.abort_all();
                    return Ok(m);
                }
                Ok((addr, Ok(Response::Error(e)))) => last_error = format!("{addr}: {e}"),
                Ok((addr, Ok(other))) => last_error = format!("{addr}: {}", kind(&other)),
                Ok((addr, Err(e))) => last_error = format!("{addr}: {e}"),
                Err(e) => last_error = format!("members task: {e}"),
            }
        }
        Err(RpcError::new(
            ErrorCode::Unavailable,
            format!("cluster map unavailable: {last_error}"),
        ))
    }

    /// The data nodes of the cluster map (members whose role stores chunks) with their
    /// addresses and zones.
    pub async fn data_nodes(&self) -> Result<Vec<MapNode>, RpcError> {
        let mut out = Vec::new();
        for n in self.node_infos().await? {
            if !(n.member && n.role.stores_data()) {
                continue;
            }
            match n.addr.parse::<SocketAddr>() {
                Ok(addr) => out.push(MapNode {
                    id: n.id,
                    addr,
                    zone: n.zone,
                }),
                Err(_) => warn!(node = n.id, addr = %n.addr, "member with unparsable address"),
            }
        }
        Ok(out)
    }

    /// The data nodes and their addresses (see [`ClusterClient::data_nodes`]).
    pub async fn members(&self) -> Result<Vec<(NodeId, SocketAddr)>, RpcError> {
        Ok(self
            .data_nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.addr))
            .collect())
    }

    /// Removes node `node_id` from the cluster (leader only; see `Request::RemoveNode`).
    pub async fn remove_node(&self, node_id: NodeId) -> Result<Vec<NodeInfo>, RpcError> {
        match self
            .call_leader(&Request::RemoveNode { node_id }, Retry::Always)
            .await?
        {
            Response::Nodes(n) => Ok(n),
            other => Err(unexpected("RemoveNode", &other)),
        }
    }

    fn cached_members(&self) -> Vec<MapNode> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .clone()
    }

    /// Marks the cluster map stale: the next chunk operation refreshes it (rate-limited).
    fn map_failed(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).stale = true;
    }

    /// The cluster map for placement: cached, refreshed when older than
    /// [`MAP_MAX_AGE_MS`] or after a failure (at most every
    /// [`MAP_REFRESH_MIN_INTERVAL_MS`]). A failed refresh keeps the old map; with no map
    /// at all the error is returned.
    async fn cluster_map(&self) -> Result<Vec<MapNode>, RpcError> {
        let now = Instant::now();
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = map
                .fetched
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(MAP_MAX_AGE_MS));
            let recently_tried = map.last_attempt.is_some_and(|t| {
                now.duration_since(t) < Duration::from_millis(MAP_REFRESH_MIN_INTERVAL_MS)
            });
            if !map.members.is_empty() && ((fresh && !map.stale) || recently_tried) {
                return Ok(map.members.clone());
            }
        }
        let result = self.data_nodes().await;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.last_attempt = Some(Instant::now());
        match result {
            Ok(members) => {
                if members != map.members {
                    debug!(?members, "cluster map changed");
                }
                map.members = members;
                map.fetched = Some(Instant::now());
                map.stale = false;
                Ok(map.members.clone())
            }
            Err(e) if !map.members.is_empty() => {
                debug!(error = %e, "cluster map refresh failed; keeping the old map");
                Ok(map.members.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Stores `data` as a chunk on the `repl.replicas` nodes the placement picks (see
    /// [`crate::placement`]) and returns its id (the blake3 hash of the bytes).
    ///
    /// The copies are written in parallel; the put succeeds as soon as `repl.write_quorum`
    /// nodes acknowledged a durable copy (written, fsynced, renamed). The other copies
    /// finish in the background (at most [`BACKGROUND_PUTS_MAX`] of them across the
    /// client, each bounded by the operation timeout; past that they are abandoned and
    /// the chunk stays under-replicated, which is logged). Each copy is retried after
    /// transport failures until the deadline (a put is idempotent: content-addressed).
    /// With fewer than W acknowledgements the put fails with the most telling error:
    /// `NoSpace` if a node said so, else the first definite refusal, else `Unavailable`.
    pub async fn put_chunk(
        &self,
        data: Vec<u8>,
        repl: Replication,
    ) -> Result<StoredChunk, RpcError> {
        let size_bytes = data.len() as u64;
        let (id, data) = hash_chunk(data).await?;
        let map = self.cluster_map().await?;
        let replicas = usize::try_from(repl.replicas.max(1)).unwrap_or(1);
        let quorum = usize::try_from(repl.write_quorum.clamp(1, repl.replicas.max(1))).unwrap_or(1);
        let targets: Vec<(NodeId, SocketAddr)> =
            crate::placement::place_in_zones(&id, &map, replicas, |n| n.id, |n| n.zone.clone())
                .into_iter()
                .map(|n| (n.id, n.addr))
                .collect();
        if targets.len() < quorum {
            self.map_failed();
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                format!(
                    "chunk {id}: the cluster map has {} node(s), the write quorum is {quorum}",
                    targets.len()
                ),
            ));
        }
        // Encoded once, its bytes moved into the frame and shared by every replica's send.
        let frame = plait_net::encode_request_owned(Request::ChunkPut { id, data })
            .map_err(|e| net_error(&e))?;
        let frame = Arc::new(frame);
        let deadline = Instant::now() + self.op_timeout;
        let stored = StoredChunk {
            id,
            size_bytes,
            outstanding: Arc::new(Mutex::new(targets.iter().map(|(n, _)| *n).collect())),
        };
        let mut set = JoinSet::new();
        for (node, addr) in targets {
            let transport = self.transport.clone();
            let frame = frame.clone();
            let rpc_timeout = self.rpc_timeout;
            set.spawn(async move {
                let result = put_replica(&transport, addr, &frame, rpc_timeout, deadline).await;
                (node, addr, result)
            });
        }
        let mut acked = 0usize;
        let mut errors: Vec<RpcError> = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((node, _, Ok(()))) => {
                    stored.acknowledged(node);
                    acked += 1;
                    if acked >= quorum {
                        self.finish_in_background(&stored, set);
                        return Ok(stored);
                    }
                }
                Ok((node, addr, Err(e))) => {
                    warn!(chunk = %id, node, %addr, error = %e, "chunk replica put failed");
                    errors.push(e);
                }
                Err(e) => errors.push(RpcError::new(
                    ErrorCode::Io,
                    format!("replica put task failed: {e}"),
                )),
            }
        }
        self.map_failed();
        Err(best_put_error(id, acked, quorum, errors))
    }

    /// Lets the replica puts still in `set` finish on their own if background slots are
    /// free (one slot per put, held until it ends, each bounded by its deadline);
    /// otherwise aborts them and logs the chunk as under-replicated.
    fn finish_in_background(
        &self,
        stored: &StoredChunk,
        mut set: JoinSet<(NodeId, SocketAddr, Result<(), RpcError>)>,
    ) {
        let id = stored.id;
        let remaining = set.len();
        if remaining == 0 {
            return;
        }
        let Ok(permits) = u32::try_from(remaining) else {
            return;
        };
        match self.background_puts.clone().try_acquire_many_owned(permits) {
            Ok(permits) => {
                let stored = stored.clone();
                tokio::spawn(async move {
                    while let Some(joined) = set.join_next().await {
                        match joined {
                            Ok((node, _, Ok(()))) => stored.acknowledged(node),
                            Ok((node, addr, Err(e))) => {
                                warn!(chunk = %id, node, %addr, error = %e,
                                    "background replica put failed; chunk under-replicated");
                            }
                            Err(_) => {}
                        }
                    }
                    drop(permits);
                });
            }
            Err(_) => {
                debug!(chunk = %id, remaining,
                    "too many replica puts in the background; chunk left under-replicated");
                set.abort_all();
            }
        }
    }

    /// Reads a chunk, trying the nodes in placement order (the placed replicas first,
    /// then the rest of the cluster map, then any configured node not in it) until one
    /// returns bytes that hash to `id`.
    ///
    /// Bytes that do not match, and failed attempts, are logged with the chunk and node and
    /// treated like a missing copy: no byte reaches a reader unless its hash matched. Fails
    /// with [`ErrorCode::Io`] when every node answered but none had a good copy, and with
    /// [`ErrorCode::Unavailable`] when the deadline passed while some node could not be
    /// reached.
    pub async fn get_chunk(&self, id: ChunkId) -> Result<Vec<u8>, RpcError> {
        let req = Request::ChunkGet { id };
        let deadline = Instant::now() + self.op_timeout;
        let mut backoff = Backoff::new();
        let mut last_error = String::new();
        loop {
            let mut unreachable = false;
            for addr in self.chunk_read_order(&id).await {
                let timeout = self.attempt_timeout(deadline, "chunk get", &last_error)?;
                match self.send(addr, &req, timeout).await {
                    Ok(Response::Chunk(bytes)) => match verify_chunk(id, bytes).await? {
                        Some(bytes) => return Ok(bytes),
                        None => {
                            error!(node = %addr, chunk = %id, "chunk failed hash verification; trying the next replica")
                        }
                    },
                    Ok(Response::Error(e)) if e.code == ErrorCode::NotFound => {
                        debug!(node = %addr, chunk = %id, "chunk not on this node");
                    }
                    Ok(Response::Error(e)) => {
                        warn!(node = %addr, chunk = %id, error = %e, "chunk get refused; trying the next replica");
                        unreachable |= e.code == ErrorCode::Unavailable;
                        last_error = format!("{addr}: {e}");
                    }
                    Ok(other) => {
                        warn!(node = %addr, "unexpected answer to ChunkGet: {}", kind(&other))
                    }
                    Err(e) => {
                        warn!(node = %addr, chunk = %id, error = %e, "chunk get failed; trying the next replica");
                        unreachable = true;
                        last_error = format!("{addr}: {e}");
                        self.map_failed();
                    }
                }
            }
            if !unreachable {
                return Err(RpcError::new(
                    ErrorCode::Io,
                    format!("chunk {id} is missing or corrupt on every node"),
                ));
            }
            backoff.pause(deadline).await;
        }
    }

    /// The order chunk reads try nodes in: the cluster map ranked by placement score (the
    /// placed replicas first), then configured nodes missing from the map. Without a map
    /// (no node answered), the configured nodes with the known leader first.
    async fn chunk_read_order(&self, id: &ChunkId) -> Vec<SocketAddr> {
        let map = match self.cluster_map().await {
            Ok(map) => map,
            Err(e) => {
                debug!(error = %e, "no cluster map; reading from the configured nodes");
                return self.read_order();
            }
        };
        let mut order: Vec<SocketAddr> =
            crate::placement::place_in_zones(id, &map, map.len(), |n| n.id, |n| n.zone.clone())
                .into_iter()
                .map(|n| n.addr)
                .collect();
        for addr in self.read_order() {
            if !order.contains(&addr) {
                order.push(addr);
            }
        }
        order
    }

    /// Asks one node for its status (one attempt, `rpc_timeout_ms`).
    pub async fn node_status(&self, addr: SocketAddr) -> Result<NodeStatus, RpcError> {
        match self
            .send(addr, &Request::NodeStatus, self.rpc_timeout)
            .await
        {
            Ok(Response::NodeStatus(s)) => Ok(s),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(unexpected("NodeStatus", &other)),
            Err(e) => Err(net_error(&e)),
        }
    }

    /// Asks one node to start a heal pass now (one attempt, `rpc_timeout_ms`).
    pub async fn heal_now(&self, addr: SocketAddr) -> Result<(), RpcError> {
        match self.send(addr, &Request::HealNow, self.rpc_timeout).await {
            Ok(Response::Meta(_)) => Ok(()),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(unexpected("HealNow", &other)),
            Err(e) => Err(net_error(&e)),
        }
    }

    /// Asks one node for the digest of its applied metadata state (one attempt,
    /// `rpc_timeout_ms`), for divergence checks.
    pub async fn state_digest(&self, addr: SocketAddr) -> Result<StateDigest, RpcError> {
        match self
            .send(addr, &Request::StateDigest, self.rpc_timeout)
            .await
        {
            Ok(Response::StateDigest(d)) => Ok(d),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(unexpected("StateDigest", &other)),
            Err(e) => Err(net_error(&e)),
        }
    }

    /// The leader routing loop shared by [`Self::meta`], [`Self::query`] and
    /// [`Self::add_voter`]: returns the leader's first answer that is not an error.
    async fn call_leader(&self, req: &Request, retry: Retry) -> Result<Response, RpcError> {
        let deadline = Instant::now() + self.op_timeout;
        let mut backoff = Backoff::up_to(LEADER_BACKOFF_MAX_MS);
        let mut redirects = 0u32;
        let mut target = self.current_target();
        let mut last_error = String::new();
        loop {
            let mut timeout = self.attempt_timeout(deadline, "metadata call", &last_error)?;
            if retry == Retry::IfNotDelivered && !self.is_reachable(target) {
                if let Err(e) = self.send(target, &Request::NodeStatus, timeout).await {
                    debug!(node = %target, error = %e, "probe failed; op not sent, trying the next node");
                    last_error = format!("{target}: {e}");
                    self.forget_leader(target);
                    target = self.rotate();
                    backoff.pause(deadline).await;
                    continue;
                }
                timeout = self.attempt_timeout(deadline, "metadata call", &last_error)?;
            }
            match self.send(target, req, timeout).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::NotLeader => {
                    last_error = format!("{target}: {e}");
                    match parse_hint(e.leader_hint.as_deref()) {
                        // The hint names a node that just failed: the election is not
                        // over yet; ask another node after the backoff instead.
                        Some(hint) if self.is_suspect(hint) => {
                            debug!(node = %target, %hint, "hint names a node that just failed");
                            target = self.rotate();
                        }
                        Some(hint) if hint != target && redirects < REDIRECTS_BEFORE_BACKOFF => {
                            debug!(from = %target, to = %hint, "following NotLeader redirect");
                            redirects += 1;
                            self.set_leader(hint);
                            target = hint;
                            continue;
                        }
                        Some(hint) => {
                            self.set_leader(hint);
                            target = hint;
                        }
                        None => {
                            debug!(node = %target, "no leader known yet");
                            self.forget_leader(target);
                            target = self.rotate();
                        }
                    }
                }
                Ok(Response::Error(e))
                    if e.code == ErrorCode::Unavailable && retry == Retry::Always =>
                {
                    // Try another node: a leader cut off from its quorum still believes it
                    // leads and keeps answering this at once, while the majority behind
                    // the other nodes serves.
                    debug!(node = %target, error = %e, "query unavailable there, trying the next node");
                    last_error = format!("{target}: {e}");
                    self.forget_leader(target);
                    target = self.rotate();
                }
                Ok(Response::Error(e)) => return Err(e),
                Ok(answer) => {
                    self.set_leader(target);
                    return Ok(answer);
                }
                Err(NetError::Codec(e)) => return Err(codec_error(e)),
                Err(e) if retry == Retry::IfNotDelivered => {
                    warn!(node = %target, error = %e, "metadata op outcome unknown; not retried");
                    self.forget_leader(target);
                    self.rotate();
                    return Err(RpcError::new(
                        ErrorCode::Unavailable,
                        format!("outcome unknown after {target}: {e}; the op was not retried"),
                    ));
                }
                Err(e) => {
                    debug!(node = %target, error = %e, "node unreachable, trying the next one");
                    last_error = format!("{target}: {e}");
                    self.forget_leader(target);
                    target = self.rotate();
                }
            }
            redirects = 0;
            backoff.pause(deadline).await;
        }
    }

    /// One attempt, remembering whether `addr` answered (any response, even an error,
    /// proves the connection works) or failed at the transport level.
    async fn send(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let result = self.transport.call(addr, req, timeout).await;
        {
            let mut reachable = self.reachable.lock().unwrap_or_else(|p| p.into_inner());
            if result.is_ok() {
                reachable.insert(addr, Instant::now());
            } else {
                reachable.remove(&addr);
            }
        }
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_ok() {
            failed.remove(&addr);
        } else {
            failed.insert(addr, Instant::now());
        }
        result
    }

    /// True if `addr` failed at the transport level within [`SUSPECT_AFTER_FAILURE_MS`]
    /// and has not answered since.
    fn is_suspect(&self, addr: SocketAddr) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .is_some_and(|t| t.elapsed() < Duration::from_millis(SUSPECT_AFTER_FAILURE_MS))
    }

    /// True if `addr` answered within [`PROBE_AFTER_IDLE_MS`] and not failed since.
    fn is_reachable(&self, addr: SocketAddr) -> bool {
        self.reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .is_some_and(|t| t.elapsed() < Duration::from_millis(PROBE_AFTER_IDLE_MS))
    }

    /// Timeout of the next attempt: the RPC timeout, cut to what is left of the operation;
    /// past the deadline, [`ErrorCode::Unavailable`] with the last failure seen.
    fn attempt_timeout(
        &self,
        deadline: Instant,
        what: &str,
        last_error: &str,
    ) -> Result<Duration, RpcError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut message = format!("{what} timed out after {} ms", self.op_timeout.as_millis());
            if !last_error.is_empty() {
                message.push_str(&format!(" (last error: {last_error})"));
            }
            return Err(RpcError::new(ErrorCode::Unavailable, message));
        }
        Ok(left.min(self.rpc_timeout))
    }

    /// The node to send a leader request to: the known leader, else the next node.
    fn current_target(&self) -> SocketAddr {
        match self.known_leader() {
            Some(addr) => addr,
            None => self.node_at(self.next_node.load(Ordering::Relaxed)),
        }
    }

    /// Moves on to the next configured node that is not suspect (or simply the next one
    /// if all are) and returns it.
    fn rotate(&self) -> SocketAddr {
        let mut first = None;
        for _ in 0..self.nodes.len() {
            let i = self
                .next_node
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            let addr = self.node_at(i);
            first.get_or_insert(addr);
            if !self.is_suspect(addr) {
                return addr;
            }
        }
        first.unwrap_or_else(|| self.node_at(0))
    }

    fn node_at(&self, i: usize) -> SocketAddr {
        // `check_config` guarantees at least one node.
        self.nodes[i % self.nodes.len()]
    }

    /// Nodes in the order chunk reads try them: the known leader first, then the rest.
    fn read_order(&self) -> Vec<SocketAddr> {
        let mut order = Vec::with_capacity(self.nodes.len() + 1);
        if let Some(leader) = self.known_leader() {
            order.push(leader);
        }
        for addr in &self.nodes {
            if !order.contains(addr) {
                order.push(*addr);
            }
        }
        order
    }

    fn set_leader(&self, addr: SocketAddr) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// Forgets the leader if it is `addr` (it failed or said it is not the leader).
    fn forget_leader(&self, addr: SocketAddr) {
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        if *leader == Some(addr) {
            *leader = None;
        }
    }
}

fn check_config(config: &ClientConfig) -> Result<(), ClientError> {
    if config.nodes.is_empty() {
        return Err(ClientError::NoNodes);
    }
    if config.rpc_timeout_ms == 0 {
        return Err(ClientError::InvalidTimeout("rpc_timeout_ms is 0"));
    }
    if config.op_timeout_ms == 0 {
        return Err(ClientError::InvalidTimeout("op_timeout_ms is 0"));
    }
    Ok(())
}

/// The reply of a `Meta` or `Query` answer.
fn meta_reply(r: Response) -> Result<MetaReply, RpcError> {
    match r {
        Response::Meta(reply) => Ok(reply),
        other => Err(unexpected("a metadata request", &other)),
    }
}

/// Writes one replica of a chunk to `addr`, retrying transport failures and `Unavailable`
/// with backoff until `deadline`; any other refusal is final.
async fn put_replica(
    transport: &Transport,
    addr: SocketAddr,
    frame: &EncodedRequest,
    rpc_timeout: Duration,
    deadline: Instant,
) -> Result<(), RpcError> {
    let mut backoff = Backoff::new();
    let mut last_error = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                format!("chunk put to {addr} timed out (last error: {last_error})"),
            ));
        }
        match transport
            .call_encoded(addr, frame, left.min(rpc_timeout))
            .await
        {
            Ok(Response::ChunkStored) => return Ok(()),
            Ok(Response::Error(e)) if e.code == ErrorCode::Unavailable => {
                last_error = e.to_string();
            }
            Ok(Response::Error(e)) => return Err(e),
            Ok(other) => return Err(unexpected("ChunkPut", &other)),
            Err(NetError::Codec(e)) => return Err(codec_error(e)),
            Err(e) => {
                debug!(node = %addr, error = %e, "chunk replica put failed; retrying");
                last_error = e.to_string();
            }
        }
        backoff.pause(deadline).await;
    }
}

/// The error of a put that got `acked` < `quorum` acknowledgements: `NoSpace` if any node
/// said so, else the first definite refusal, else `Unavailable`.
fn best_put_error(id: ChunkId, acked: usize, quorum: usize, errors: Vec<RpcError>) -> RpcError {
    let summary =
        |e: &RpcError| format!("chunk {id}: {acked} of {quorum} required copies stored; {e}");
    if let Some(e) = errors.iter().find(|e| e.code == ErrorCode::NoSpace) {
        return RpcError::new(ErrorCode::NoSpace, summary(e));
    }
    if let Some(e) = errors.iter().find(|e| e.code != ErrorCode::Unavailable) {
        return RpcError::new(e.code, summary(e));
    }
    match errors.first() {
        Some(e) => RpcError::new(ErrorCode::Unavailable, summary(e)),
        None => RpcError::new(
            ErrorCode::Unavailable,
            format!("chunk {id}: {acked} of {quorum} required copies stored"),
        ),
    }
}

/// Parses a `NotLeader` hint ("ip:port"); an unparsable hint is logged and ignored.
fn parse_hint(hint: Option<&str>) -> Option<SocketAddr> {
    let hint = hint?;
    match hint.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            warn!(hint, "ignoring unparsable leader hint");
            None
        }
    }
}

/// The RPC error a transport failure is reported as.
fn net_error(e: &NetError) -> RpcError {
    match e {
        NetError::Codec(c) => RpcError::new(ErrorCode::Protocol, c.to_string()),
        other => RpcError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

fn codec_error(e: plait_proto::CodecError) -> RpcError {
    RpcError::new(ErrorCode::Protocol, format!("codec: {e}"))
}

fn unexpected(what: &str, got: &Response) -> RpcError {
    RpcError::new(
        ErrorCode::Protocol,
        format!("unexpected answer to {what}: {}", kind(got)),
    )
}

/// The variant name of a response, for error messages (never the payload).
fn kind(r: &Response) -> &'static str {
    match r {
        Response::Meta(_) => "Meta",
        Response::ChunkStored => "ChunkStored",
        Response::Chunk(_) => "Chunk",
        Response::NodeStatus(_) => "NodeStatus",
        Response::Members(_) => "Members",
        Response::Nodes(_) => "Nodes",
        Response::Error(_) => "Error",
        _ => "another response",
    }
}

/// Hashes `data`, off the async workers when it is large.
async fn hash_chunk(data: Vec<u8>) -> Result<(ChunkId, Vec<u8>), RpcError> {
    if data.len() <= HASH_INLINE_MAX_BYTES {
        return Ok((ChunkId::of(&data), data));
    }
    tokio::task::spawn_blocking(move || (ChunkId::of(&data), data))
        .await
        .map_err(|e| RpcError::new(ErrorCode::Io, format!("hashing task failed: {e}")))
}

/// Returns the bytes if they hash to `id`, `None` if they do not.
async fn verify_chunk(id: ChunkId, bytes: Vec<u8>) -> Result<Option<Vec<u8>>, RpcError> {
    let (got, bytes) = hash_chunk(bytes).await?;
    Ok((got == id).then_some(bytes))
}

/// Bounded exponential backoff with jitter.
struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// Steps from [`BACKOFF_INITIAL_MS`] up to [`BACKOFF_MAX_MS`].
    fn new() -> Self {
        Self::up_to(BACKOFF_MAX_MS)
    }

    /// Steps from [`BACKOFF_INITIAL_MS`] up to `max_ms`.
    fn up_to(max_ms: u64) -> Self {
        debug_assert!(max_ms >= BACKOFF_INITIAL_MS);
        Self {
            next_ms: BACKOFF_INITIAL_MS,
            max_ms,
        }
    }

    /// The pause before the next attempt, in milliseconds: between half and all of the
    /// current step; the step doubles up to the maximum.
    fn next_pause_ms(&mut self) -> u64 {
        let step = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        let half = step / 2;
        half + jitter_ms(half + 1)
    }

    /// Sleeps for the next pause, but never past `deadline`.
    async fn pause(&mut self, deadline: Instant) {
        let pause = Duration::from_millis(self.next_pause_ms());
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(left)).await;
    }
}

/// A cheap pseudo-random number below `bound` (spreads retries of many clients apart;
/// not for anything that needs real randomness).
fn jitter_ms(bound: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % bound.max(1)
}

#[cfg(test)]
mod tests;

/// A chunk stored on at least its write quorum of placed nodes. The placed nodes that have
/// not acknowledged their copy yet (still in flight, failed or abandoned) go into the heal
/// index with the commit that references the chunk.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    /// The chunk's id.
    pub id: ChunkId,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Placed nodes without an acknowledged copy; shrinks as background copies finish.
    outstanding: Arc<Mutex<Vec<NodeId>>>,
}

impl StoredChunk {
    fn acknowledged(&self, node: NodeId) {
        self.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| *n != node);
    }

    /// The copies still missing right now, as heal-index entries.
    pub fn missing(&self) -> Vec<MissingCopy> {
        self.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|&node| MissingCopy {
                chunk: self.id,
                node,
                size_bytes: self.size_bytes,
            })
            .collect()
    }
}
