//! Re-placement: after the set of data nodes changes, this node copies the chunks it is
//! now placed for but does not hold.
//!
//! Placement is a pure function of the data nodes (rendezvous hashing with zones, see
//! `plait_client::placement`), so when a node is removed (or a data node joins) some
//! chunks rank to a node that never received them. Each data node runs a *placement pass*
//! for itself: it pages through the referenced chunks (`C` keys,
//! [`PLACEMENT_PAGE_MAX_CHUNKS`] at a time, never the whole set in memory), keeps the ones
//! placed on it under the current map, and for each one it has no file for, fetches a copy
//! from the other data nodes in rank order (the heal worker's fetch: hash verified,
//! fsynced). A chunk it could not fetch is recorded in the heal index for itself
//! (`MarkUnderReplicated`), so the heal worker keeps retrying it and `plait heal info`
//! shows it.
//!
//! The pass runs inside the heal worker, one page per step, so it shares its bounds
//! (chunks copied at once) and leaves room for heal between pages; it pauses
//! [`PLACEMENT_PAGE_PAUSE_MS`] between pages so it never floods the store or the network.
//! It is not recorded anywhere: a node runs one at start, so a pass cut by a restart
//! simply runs again (a page of chunks already held costs one `stat` each).
//!
//! **Surplus copies.** The same pass drops this node's copies of chunks it is no longer
//! placed for (a data node joined and now ranks before it, or the replica count went
//! down): for each one it asks every placed node whether it holds an intact copy
//! (`ChunkCheck`: the node reads it and verifies its hash) and deletes its own only when
//! all of them do. A copy some placed node lacks (it is still copying, or down) is kept;
//! a pass that kept some is run again after a heal interval, at most
//! [`SURPLUS_PASSES_MAX`] times for one map.
//!
//! **Replica count.** The `C` key does not say which volume (hence which `R`) a chunk
//! belongs to, and finding out means walking extents back to inodes. The pass uses the
//! largest `replicas` of any volume instead: a chunk of a lower-R volume may get one
//! extra copy on the node ranked next, which is harmless (and GC deletes it with the
//! chunk).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use plait_proto::{ChunkId, MetaOp, MetaQuery, MetaReply, MissingCopy, NodeId, Request, Response};
use tokio::task::JoinSet;

use crate::heal::HEAL_IN_FLIGHT_MAX;
use crate::service::Service;

/// Referenced chunks (`C` keys) read and checked per step of a pass.
pub const PLACEMENT_PAGE_MAX_CHUNKS: usize = 1024;

/// Pause between two pages of a pass, in milliseconds (the pass is background work).
pub const PLACEMENT_PAGE_PAUSE_MS: u64 = 20;

/// Passes run again for one map because surplus copies could not be dropped yet.
pub const SURPLUS_PASSES_MAX: u32 = 5;

/// Bound on one `ChunkCheck` of a placed node, in milliseconds.
const CHUNK_CHECK_TIMEOUT_MS: u64 = 10_000;

/// The data nodes a pass places over, as (id, zone), sorted by id.
pub type DataMap = Vec<(NodeId, Option<String>)>;

/// What a pass covers: the data-node map and the replica count. A pass is due when this
/// differs from what the last completed pass covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The data nodes.
    pub map: DataMap,
    /// Copies per chunk: the largest `replicas` of any volume.
    pub replicas: usize,
}

/// Whether `me` is one of the `replicas` nodes `chunk` is placed on under `map` (the same
/// placement the client writes with).
pub fn placed_on(
    chunk: &ChunkId,
    map: &[(NodeId, Option<String>)],
    replicas: usize,
    me: NodeId,
) -> bool {
    plait_client::placement::place_in_zones(chunk, map, replicas, |n| n.0, |n| n.1.clone())
        .iter()
        .any(|n| n.0 == me)
}

/// The pass this node would run now: `None` when it stores no chunks (not a data member
/// in its own view, or no volume exists yet).
fn current_target(service: &Service) -> Result<Option<Target>, String> {
    let map: DataMap = service
        .nodes()
        .into_iter()
        .filter(|n| n.member && n.role.stores_data())
        .map(|n| (n.id, n.zone))
        .collect();
    if !map.iter().any(|(id, _)| *id == service.node_id) {
        return Ok(None);
    }
    let volumes = match service.query_local(MetaQuery::ListVolumes) {
        Ok(MetaReply::Volumes(v)) => v,
        Ok(other) => return Err(format!("listing volumes: unexpected reply {other:?}")),
        Err(e) => return Err(format!("listing volumes: {e}")),
    };
    let replicas = volumes
        .iter()
        .map(|v| v.replicas)
        .max()
        .unwrap_or(0)
        .min(plait_meta::REPLICAS_MAX);
    if replicas == 0 {
        return Ok(None);
    }
    Ok(Some(Target {
        map,
        replicas: usize::try_from(replicas).unwrap_or(1),
    }))
}

/// A pass in progress.
struct Pass {
    target: Target,
    /// The last chunk id checked (the next page starts after it).
    after: Option<ChunkId>,
    /// Copies this pass made, for the log line at its end.
    copied_chunks: u64,
    /// Surplus copies this pass dropped.
    dropped_chunks: u64,
    /// Surplus copies this pass had to keep (a placed node lacked its copy).
    kept_surplus: u64,
}

/// The placement side of the heal worker: what the last completed pass covered and the
/// pass in progress, if any.
#[derive(Default)]
pub struct Placer {
    done_for: Option<Target>,
    pass: Option<Pass>,
    /// Passes run again for surplus copies kept since the last pass that kept none.
    surplus_passes: u32,
}

impl Placer {
    /// Whether a pass is in progress (the worker then steps again after a short pause
    /// instead of a heal interval).
    pub fn busy(&self) -> bool {
        self.pass.is_some()
    }

    /// Starts a pass if one is due (data nodes or replica count changed since the last
    /// completed pass, or one was asked for with `HealNow`), then checks one page of it.
    pub async fn step(&mut self, service: &Arc<Service>) -> Result<(), String> {
        let requested = service.placement_requested.swap(false, Ordering::Relaxed);
        let target = match current_target(service) {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.pass = None;
                service.placement_running.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => {
                if requested {
                    service.placement_requested.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        let changed = match &self.pass {
            Some(p) => p.target != target,
            None => self.done_for.as_ref() != Some(&target),
        };
        if requested || changed {
            tracing::info!(
                data_nodes = ?target.map.iter().map(|n| n.0).collect::<Vec<_>>(),
                replicas = target.replicas,
                "placement pass starting"
            );
            self.pass = Some(Pass {
                target,
                after: None,
                copied_chunks: 0,
                dropped_chunks: 0,
                kept_surplus: 0,
            });
        }
        let Some(pass) = self.pass.as_mut() else {
            service.placement_running.store(false, Ordering::Relaxed);
            return Ok(());
        };
        service.placement_running.store(true, Ordering::Relaxed);
        let page: Vec<ChunkId> = {
            let view = service.db.view().map_err(|e| e.to_string())?;
            plait_meta::referenced_chunks(&view, pass.after.as_ref(), PLACEMENT_PAGE_MAX_CHUNKS)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        let (missing, surplus) = {
            let (page, target, me) = (page.clone(), pass.target.clone(), service.node_id);
            let chunks = service.chunks.clone();
            tokio::task::spawn_blocking(move || {
                let (placed, others): (Vec<ChunkId>, Vec<ChunkId>) = page
                    .into_iter()
                    .partition(|c| placed_on(c, &target.map, target.replicas, me));
                let missing: Vec<ChunkId> =
                    placed.into_iter().filter(|c| !chunks.contains(c)).collect();
                let surplus: Vec<ChunkId> =
                    others.into_iter().filter(|c| chunks.contains(c)).collect();
                (missing, surplus)
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let (dropped, kept) = drop_surplus(service, surplus, &pass.target).await;
        pass.dropped_chunks += dropped;
        pass.kept_surplus += kept;
        service
            .placement_dropped_chunks
            .fetch_add(dropped, Ordering::Relaxed);
        let (copied, failed) = crate::heal::copy_missing(service, missing).await;
        for bytes in &copied {
            service
                .placement_copied_chunks
                .fetch_add(1, Ordering::Relaxed);
            service
                .placement_copied_bytes
                .fetch_add(*bytes, Ordering::Relaxed);
        }
        pass.copied_chunks += copied.len() as u64;
        if !failed.is_empty() {
            // The heal worker retries these from the heal index (and `heal info` shows
            // them); if recording fails, the page is checked again at the next step.
            let count = failed.len();
            let copies = failed
                .into_iter()
                .map(|chunk| MissingCopy {
                    chunk,
                    node: service.node_id,
                    size_bytes: 0,
                })
                .collect();
            service
                .propose_anywhere(MetaOp::MarkUnderReplicated { copies })
                .await
                .map_err(|e| format!("recording {count} copies to heal: {e}"))?;
            service.heal_trigger.notify_one();
        }
        if page.len() < PLACEMENT_PAGE_MAX_CHUNKS {
            tracing::info!(
                copied_chunks = pass.copied_chunks,
                dropped_chunks = pass.dropped_chunks,
                kept_surplus = pass.kept_surplus,
                "placement pass done"
            );
            let again = pass.kept_surplus > 0 && self.surplus_passes < SURPLUS_PASSES_MAX;
            let finished = self.pass.take().map(|p| p.target);
            if again {
                // Run it again after a heal interval: the placed nodes may have their
                // copies by then.
                self.surplus_passes += 1;
                self.done_for = None;
            } else {
                self.surplus_passes = 0;
                self.done_for = finished;
            }
            service.placement_running.store(false, Ordering::Relaxed);
        } else {
            pass.after = page.last().copied();
            tokio::time::sleep(Duration::from_millis(PLACEMENT_PAGE_PAUSE_MS)).await;
        }
        Ok(())
    }
}

/// Drops this node's copies of `ids` (chunks it is not placed for under `target`), each
/// once every placed node holds an intact copy, [`HEAL_IN_FLIGHT_MAX`] at a time.
/// Returns (dropped, kept).
async fn drop_surplus(service: &Arc<Service>, ids: Vec<ChunkId>, target: &Target) -> (u64, u64) {
    if ids.is_empty() {
        return (0, 0);
    }
    let addrs: Arc<HashMap<NodeId, String>> = Arc::new(service.members().into_iter().collect());
    let (mut dropped, mut kept) = (0u64, 0u64);
    let mut set = JoinSet::new();
    let mut queue = ids.into_iter();
    loop {
        while set.len() < HEAL_IN_FLIGHT_MAX {
            let Some(id) = queue.next() else { break };
            let placed: Vec<NodeId> = plait_client::placement::place_in_zones(
                &id,
                &target.map,
                target.replicas,
                |n| n.0,
                |n| n.1.clone(),
            )
            .into_iter()
            .map(|n| n.0)
            .collect();
            let (service, addrs, replicas) = (service.clone(), addrs.clone(), target.replicas);
            set.spawn(async move {
                let outcome =
                    drop_if_placed_copies_exist(&service, id, &placed, replicas, &addrs).await;
                (id, outcome)
            });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((_, Ok(true))) => dropped += 1,
            Ok((_, Ok(false))) => kept += 1,
            Ok((id, Err(e))) => {
                tracing::debug!(chunk = %id, error = %e, "surplus copy kept");
                kept += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "surplus check task failed");
                kept += 1;
            }
        }
    }
    (dropped, kept)
}

/// Deletes this node's copy of `id` if each of the `replicas` nodes in `placed` answers
/// that it holds an intact copy. `Ok(false)`: one does not (or this node is placed).
async fn drop_if_placed_copies_exist(
    service: &Arc<Service>,
    id: ChunkId,
    placed: &[NodeId],
    replicas: usize,
    addrs: &HashMap<NodeId, String>,
) -> Result<bool, String> {
    if placed.len() < replicas || placed.contains(&service.node_id) {
        return Ok(false);
    }
    for node in placed {
        let addr = addrs
            .get(node)
            .ok_or_else(|| format!("node {node}: no address"))?;
        let sock = addr
            .parse()
            .map_err(|_| format!("node {node}: bad address {addr}"))?;
        let timeout = Duration::from_millis(CHUNK_CHECK_TIMEOUT_MS);
        match service
            .rpc
            .call(sock, &Request::ChunkCheck { id }, timeout)
            .await
        {
            Ok(Response::Held(true)) => {}
            Ok(Response::Held(false)) => return Ok(false),
            Ok(other) => return Err(format!("node {node}: unexpected answer {other:?}")),
            Err(e) => return Err(format!("node {node}: {e}")),
        }
    }
    let chunks = service.chunks.clone();
    tokio::task::spawn_blocking(move || chunks.delete_if_older(&id, Duration::ZERO))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::debug!(chunk = %id, "dropped a surplus copy");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn chunk(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    fn map(ids: &[NodeId]) -> DataMap {
        ids.iter().map(|id| (*id, None)).collect()
    }

    fn placed(c: &ChunkId, m: &DataMap, r: usize) -> BTreeSet<NodeId> {
        m.iter()
            .map(|n| n.0)
            .filter(|n| placed_on(c, m, r, *n))
            .collect()
    }

    #[test]
    fn removing_a_node_places_its_chunks_on_exactly_one_other_node() {
        let before = map(&[1, 2, 3, 4, 5]);
        let after = map(&[1, 2, 4, 5]);
        let mut moved = 0;
        for i in 0..2_000 {
            let c = chunk(i);
            let old = placed(&c, &before, 3);
            let new = placed(&c, &after, 3);
            assert_eq!(old.len(), 3);
            assert_eq!(new.len(), 3);
            let gained: Vec<_> = new.difference(&old).collect();
            if old.contains(&3) {
                // The removed node's slot goes to exactly one node that lacked the chunk.
                assert_eq!(gained.len(), 1, "chunk {i}: {old:?} -> {new:?}");
                moved += 1;
            } else {
                // Chunks the removed node did not hold stay where they are.
                assert_eq!(old, new, "chunk {i}");
            }
        }
        // About 3/5 of the chunks had a copy on node 3.
        assert!((1_000..1_400).contains(&moved), "{moved}");
    }

    /// The chunks of `page` that `me` is placed for under `target`.
    fn placed_here(page: &[ChunkId], target: &Target, me: NodeId) -> Vec<ChunkId> {
        page.iter()
            .filter(|c| placed_on(c, &target.map, target.replicas, me))
            .copied()
            .collect()
    }

    #[test]
    fn placed_here_picks_this_nodes_chunks_of_a_page() {
        let target = Target {
            map: map(&[1, 2, 3, 4]),
            replicas: 3,
        };
        let page: Vec<ChunkId> = (0..500).map(chunk).collect();
        let mut total = 0;
        for me in 1..=4 {
            let here = placed_here(&page, &target, me);
            for c in &here {
                assert!(placed_on(c, &target.map, 3, me));
            }
            total += here.len();
        }
        // Every chunk is placed on exactly 3 of the 4 nodes.
        assert_eq!(total, 3 * page.len());
        // A node outside the map is placed for nothing; with R = map size, everything.
        assert!(placed_here(&page, &target, 9).is_empty());
        let all = Target {
            map: map(&[1, 2, 3]),
            replicas: 3,
        };
        assert_eq!(placed_here(&page, &all, 2).len(), page.len());
    }

    #[test]
    fn zones_are_honoured_like_the_client_does() {
        let m: DataMap = vec![
            (1, Some("a".into())),
            (2, Some("a".into())),
            (3, Some("b".into())),
            (4, Some("c".into())),
        ];
        for i in 0..200 {
            let c = chunk(i);
            let expect: BTreeSet<NodeId> =
                plait_client::placement::place_in_zones(&c, &m, 3, |n| n.0, |n| n.1.clone())
                    .into_iter()
                    .map(|n| n.0)
                    .collect();
            assert_eq!(placed(&c, &m, 3), expect);
            // Nodes 3 and 4 are the only ones of their zones: always placed.
            assert!(expect.contains(&3) && expect.contains(&4));
        }
    }
}
