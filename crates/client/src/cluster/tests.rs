//! Routing and retry rules of [`ClusterClient`] against scripted fake nodes.

use std::sync::Arc;
use std::sync::Mutex;

use plait_proto::{MetaOp, MetaQuery, MetaReply};

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(ports: &[u16], op_timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        nodes: ports.iter().map(|p| addr(*p)).collect(),
        rpc_timeout_ms: 100,
        op_timeout_ms,
    }
}

fn not_leader(hint: Option<u16>) -> Response {
    let mut e = RpcError::new(ErrorCode::NotLeader, "not leader");
    e.leader_hint = hint.map(|p| addr(p).to_string());
    Response::Error(e)
}

/// What a logged call was: a probe, a metadata op, a query, or chunk I/O.
fn tag(req: &Request) -> char {
    match req {
        Request::NodeStatus => 'P',
        Request::Meta(_) => 'M',
        Request::Query(_) => 'Q',
        Request::Members | Request::Nodes => 'G',
        _ => 'C',
    }
}

type CallLog = Arc<Mutex<Vec<(u16, char)>>>;

/// A fake whose answers come from `script(port, request tag, call number)`, recording every
/// call as (port, tag).
fn scripted(
    cfg: ClientConfig,
    script: impl Fn(u16, char, usize) -> Result<Response, NetError> + Send + Sync + 'static,
) -> (ClusterClient, CallLog) {
    let calls: CallLog = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let handler = move |a: SocketAddr, req: &Request| {
        let mut log = log.lock().unwrap();
        log.push((a.port(), tag(req)));
        let n = log.len();
        drop(log);
        script(a.port(), tag(req), n)
    };
    let client = ClusterClient::fake(cfg, Arc::new(handler)).unwrap();
    (client, calls)
}

fn status() -> Result<Response, NetError> {
    Ok(Response::NodeStatus(NodeStatus {
        node_id: 1,
        addr: String::new(),
        leader: None,
        term: 1,
        last_applied: 0,
        disk_total_bytes: 0,
        disk_free_bytes: 0,
        chunk_count: 0,
        healed_chunks: 0,
        healed_bytes: 0,
        placement: plait_proto::PlacementPass::Idle,
        placement_copied_chunks: 0,
        placement_copied_bytes: 0,
        placement_dropped_chunks: 0,
    }))
}

/// A `Members` answer listing the nodes at `ports`, node id = port.
fn members(ports: &[u16]) -> Result<Response, NetError> {
    Ok(Response::Nodes(
        ports
            .iter()
            .map(|p| plait_proto::NodeInfo {
                id: u64::from(*p),
                addr: addr(*p).to_string(),
                role: plait_proto::NodeRole::Both,
                zone: None,
                voter: true,
                member: true,
            })
            .collect(),
    ))
}

/// The calls in `log` that are not cluster map fetches.
fn without_map(log: &CallLog) -> Vec<(u16, char)> {
    log.lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(_, t)| *t != 'G')
        .collect()
}

fn op() -> MetaOp {
    MetaOp::Reap { ino: 1 }
}

#[tokio::test]
async fn follows_not_leader_hints_and_remembers_the_leader() {
    let (client, calls) = scripted(config(&[1, 2, 3], 5_000), |port, tag, _| {
        match (port, tag) {
            (_, 'P') => status(),
            (3, _) => Ok(Response::Meta(MetaReply::Empty)),
            _ => Ok(not_leader(Some(3))),
        }
    });
    assert_eq!(client.meta(op()).await.unwrap(), MetaReply::Empty);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![(1, 'P'), (1, 'M'), (3, 'P'), (3, 'M')]
    );
    assert_eq!(client.known_leader(), Some(addr(3)));
    client.query(MetaQuery::FsStats).await.unwrap();
    client.meta(op()).await.unwrap();
    assert_eq!(calls.lock().unwrap()[4..], [(3, 'Q'), (3, 'M')]);
}

#[tokio::test]
async fn an_op_skips_nodes_its_probe_cannot_reach() {
    let (client, calls) = scripted(config(&[1, 2], 5_000), |port, tag, _| match (port, tag) {
        (1, _) => Err(NetError::Timeout),
        (_, 'P') => status(),
        _ => Ok(Response::Meta(MetaReply::Empty)),
    });
    client.meta(op()).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(1, 'P'), (2, 'P'), (2, 'M')]);
}

#[tokio::test]
async fn an_op_with_unknown_outcome_is_not_retried() {
    let (client, calls) = scripted(config(&[1, 2], 5_000), |_, tag, _| match tag {
        'P' => status(),
        _ => Err(NetError::Timeout),
    });
    let err = client.meta(op()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(*calls.lock().unwrap(), vec![(1, 'P'), (1, 'M')]);
    assert_eq!(client.known_leader(), None);
    // The next op probes before it sends anything.
    let _ = client.meta(op()).await;
    assert_eq!(calls.lock().unwrap()[2], (2, 'P'));
}

#[tokio::test]
async fn a_query_is_retried_after_a_timeout() {
    let (client, calls) = scripted(config(&[1, 2], 5_000), |_, _, n| match n {
        1 => Err(NetError::Timeout),
        _ => Ok(Response::Meta(MetaReply::Empty)),
    });
    client.query(MetaQuery::FsStats).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(1, 'Q'), (2, 'Q')]);
}

#[tokio::test]
async fn a_query_moves_on_from_a_node_that_answers_unavailable() {
    // Node 1 is a leader cut off from its quorum: it answers queries, always Unavailable.
    let (client, calls) = scripted(config(&[1, 2], 5_000), |port, _, _| match port {
        1 => Ok(Response::Error(RpcError::new(
            ErrorCode::Unavailable,
            "not enough for a quorum",
        ))),
        _ => Ok(Response::Meta(MetaReply::Empty)),
    });
    client.query(MetaQuery::FsStats).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(1, 'Q'), (2, 'Q')]);
    assert_eq!(client.known_leader(), Some(addr(2)));
}

#[tokio::test]
async fn no_leader_gives_up_at_the_op_timeout() {
    let (client, calls) = scripted(config(&[1, 2], 300), |_, tag, _| match tag {
        'P' => status(),
        _ => Ok(not_leader(None)),
    });
    let started = Instant::now();
    let err = client.meta(op()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("NotLeader"), "{}", err.message);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "gave up too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2_000),
        "gave up too late: {took:?}"
    );
    let ops = calls.lock().unwrap().iter().filter(|c| c.1 == 'M').count();
    assert!(ops >= 2, "retried with backoff");
}

#[tokio::test]
async fn unreachable_nodes_fail_at_the_deadline_with_the_last_error() {
    let (client, _) = scripted(config(&[1, 2], 300), |_, _, _| {
        Err(NetError::Connect("refused".into()))
    });
    let err = client.meta(op()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("refused"), "{}", err.message);
}

#[tokio::test]
async fn other_errors_are_returned_as_they_are() {
    let (client, calls) = scripted(config(&[1], 5_000), |_, _, _| {
        Ok(Response::Error(RpcError::new(ErrorCode::Exists, "exists")))
    });
    assert_eq!(client.meta(op()).await.unwrap_err().code, ErrorCode::Exists);
    assert_eq!(*calls.lock().unwrap(), vec![(1, 'P'), (1, 'M')]);
}

#[tokio::test]
async fn get_chunk_skips_corrupt_copies_in_placement_order() {
    let good = b"the real bytes".to_vec();
    let id = ChunkId::of(&good);
    let order = crate::placement::rank(&id, &[1u64, 2], |n| *n);
    let corrupt = u16::try_from(order[0]).unwrap();
    let bytes = good.clone();
    let (client, calls) = scripted(config(&[1, 2], 5_000), move |port, tag, _| {
        match (port, tag) {
            (_, 'G') => members(&[1, 2]),
            (p, _) if p == corrupt => Ok(Response::Chunk(b"tampered bytes".to_vec())),
            _ => Ok(Response::Chunk(bytes.clone())),
        }
    });
    assert_eq!(client.get_chunk(id).await.unwrap(), good);
    let expected: Vec<(u16, char)> = order
        .iter()
        .map(|n| (u16::try_from(*n).unwrap(), 'C'))
        .collect();
    assert_eq!(without_map(&calls), expected);
}

#[tokio::test]
async fn get_chunk_with_no_good_copy_is_eio() {
    let id = ChunkId::of(b"wanted");
    let (client, _) = scripted(config(&[1, 2], 5_000), |port, tag, _| match (port, tag) {
        (_, 'G') => members(&[1, 2]),
        (1, _) => Ok(Response::Chunk(b"wrong".to_vec())),
        _ => Ok(Response::Error(RpcError::new(ErrorCode::NotFound, "no"))),
    });
    assert_eq!(client.get_chunk(id).await.unwrap_err().code, ErrorCode::Io);
}

#[tokio::test]
async fn put_chunk_sends_the_hash_of_the_bytes_and_retries() {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let calls = Arc::new(Mutex::new(0usize));
    let count = calls.clone();
    let handler = move |_a: SocketAddr, req: &Request| {
        if matches!(req, Request::Nodes) {
            return members(&[1]);
        }
        let mut n = count.lock().unwrap();
        *n += 1;
        if *n == 1 {
            return Err(NetError::Closed);
        }
        if let Request::ChunkPut { id, data } = req {
            *record.lock().unwrap() = Some((*id, data.len()));
        }
        Ok(Response::ChunkStored)
    };
    let client = ClusterClient::fake(config(&[1, 2], 5_000), Arc::new(handler)).unwrap();
    let data = vec![3u8; 100 * 1024];
    let id = client
        .put_chunk(data.clone(), Replication::SINGLE)
        .await
        .unwrap()
        .id;
    assert_eq!(id, ChunkId::of(&data));
    assert_eq!(*seen.lock().unwrap(), Some((id, data.len())));
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test]
async fn put_chunk_goes_to_the_placed_replicas_and_returns_at_quorum() {
    let data = b"replicated".to_vec();
    let id = ChunkId::of(&data);
    let placed = crate::placement::place(&id, &[1u64, 2, 3, 4, 5], 3, |n| *n);
    let dead = u16::try_from(placed[0]).unwrap();
    let (client, calls) = scripted(config(&[1, 2, 3, 4, 5], 1_000), move |port, tag, _| match (
        port, tag,
    ) {
        (_, 'G') => members(&[1, 2, 3, 4, 5]),
        (p, _) if p == dead => Err(NetError::Closed),
        _ => Ok(Response::ChunkStored),
    });
    let repl = Replication {
        replicas: 3,
        write_quorum: 2,
    };
    let stored = client.put_chunk(data, repl).await.unwrap();
    assert_eq!(stored.id, id);
    // The dead replica never acknowledged: it is what the commit records for heal.
    let missing: Vec<u64> = stored.missing().iter().map(|m| m.node).collect();
    assert_eq!(missing, vec![placed[0]]);
    let mut stored: Vec<u64> = without_map(&calls)
        .into_iter()
        .filter(|(p, _)| *p != dead)
        .map(|(p, _)| u64::from(p))
        .collect();
    stored.sort();
    let mut live: Vec<u64> = placed[1..].to_vec();
    live.sort();
    assert_eq!(stored, live, "only placed replicas are written");
}

#[tokio::test]
async fn put_chunk_below_quorum_reports_no_space_first() {
    let data = b"full".to_vec();
    let (client, _) = scripted(config(&[1, 2, 3], 500), move |port, tag, _| {
        match (port, tag) {
            (_, 'G') => members(&[1, 2, 3]),
            (1, _) => Ok(Response::Error(RpcError::new(ErrorCode::NoSpace, "full"))),
            _ => Err(NetError::Closed),
        }
    });
    let repl = Replication {
        replicas: 3,
        write_quorum: 2,
    };
    let err = client.put_chunk(data, repl).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSpace, "{err}");
}

#[tokio::test]
async fn add_voter_follows_the_leader_and_members_asks_anyone() {
    let (client, calls) = scripted(config(&[1, 2], 5_000), |port, tag, _| match (port, tag) {
        (1, 'C') => Ok(not_leader(Some(2))),
        (2, 'C') => Ok(Response::Members(vec![
            (1, addr(1).to_string()),
            (2, addr(2).to_string()),
        ])),
        (_, 'G') => members(&[1, 2]),
        _ => status(),
    });
    let m = client.add_voter(2, addr(2)).await.unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(without_map(&calls), vec![(1, 'C'), (2, 'C')]);
    let map = client.members().await.unwrap();
    assert_eq!(map, vec![(1, addr(1)), (2, addr(2))]);
}

#[test]
fn config_is_checked() {
    let handler = |_a: SocketAddr, _r: &Request| Ok(Response::ChunkStored);
    let empty = ClientConfig::default();
    assert!(matches!(
        ClusterClient::fake(empty, Arc::new(handler)),
        Err(ClientError::NoNodes)
    ));
    let zero = ClientConfig {
        rpc_timeout_ms: 0,
        ..config(&[1], 1)
    };
    assert!(matches!(
        ClusterClient::fake(zero, Arc::new(handler)),
        Err(ClientError::InvalidTimeout(_))
    ));
}

#[test]
fn backoff_grows_and_is_bounded() {
    let mut b = Backoff::new();
    let mut last_step = 0;
    for _ in 0..20 {
        let pause = b.next_pause_ms();
        assert!(pause <= BACKOFF_MAX_MS);
        last_step = last_step.max(pause);
    }
    assert!(last_step >= BACKOFF_MAX_MS / 2);
    let mut leader = Backoff::up_to(LEADER_BACKOFF_MAX_MS);
    for _ in 0..20 {
        assert!(leader.next_pause_ms() <= LEADER_BACKOFF_MAX_MS);
    }
}
