//! Garbage collection: deletes chunk files that no extent references any more, once they
//! have been unreferenced (and untouched by a put) for the grace period.
//!
//! With replication every node runs this on its own copy of the state machine (followers
//! apply the same log, so they see the same garbage set `G`) and deletes its own copies.
//! Only the metadata leader proposes `ForgetGarbage`, and with more than one voter only
//! for entries that became garbage more than [`FORGET_AFTER_GRACES`] grace periods ago,
//! so that every live node has had several passes to delete its copy first. A node that
//! is down for longer keeps its copy of such a chunk as an orphan file (a scrub-time
//! orphan sweep is future work). With a single voter the entry is forgotten as soon as
//! the local copy is gone, as before.

use std::sync::Arc;
use std::time::Duration;

use plait_proto::MetaOp;

use crate::service::Service;

/// Chunks examined per pass, to bound the work of one pass.
const GC_BATCH_MAX: usize = 1024;

/// With several voters, the leader forgets a garbage entry only once it is this many grace
/// periods old (followers delete their copies in the meantime).
const FORGET_AFTER_GRACES: u32 = 10;

/// Runs GC passes forever, one every `interval`.
pub async fn run(service: Arc<Service>, interval: Duration, grace: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = pass(&service, grace).await {
            tracing::warn!(error = %e, "gc pass failed");
        }
    }
}

async fn pass(service: &Arc<Service>, grace: Duration) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let batch = {
            let view = service.db.view()?;
            plait_meta::garbage(&view, after.as_ref(), GC_BATCH_MAX)?
        };
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        after = Some(*last);
        let chunks = service.chunks.clone();
        let ids: Vec<_> = batch.iter().map(|(id, _)| *id).collect();
        let since: std::collections::HashMap<_, _> = batch.iter().copied().collect();
        let deleted = tokio::task::spawn_blocking(move || {
            let mut deleted = Vec::new();
            for id in ids {
                match chunks.delete_if_older(&id, grace) {
                    Ok(true) => deleted.push(id),
                    // Already absent here: nothing left to delete.
                    Ok(false) if !chunks.contains(&id) => deleted.push(id),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(chunk = %id, error = %e, "gc delete failed"),
                }
            }
            deleted
        })
        .await?;
        let forget = forgettable(service, grace, &deleted, &since);
        if !forget.is_empty() {
            tracing::debug!(count = forget.len(), "gc forgetting garbage entries");
            service
                .propose(MetaOp::ForgetGarbage { chunks: forget })
                .await
                .map_err(|e| anyhow::anyhow!("forgetting garbage: {e}"))?;
        }
        if batch.len() < GC_BATCH_MAX {
            return Ok(());
        }
    }
}

/// Of the chunks whose local copy is gone, those whose garbage entry the leader may
/// forget: none unless this node is the leader; all with a single voter; otherwise only
/// those unreferenced for [`FORGET_AFTER_GRACES`] grace periods.
fn forgettable(
    service: &Service,
    grace: Duration,
    deleted: &[plait_proto::ChunkId],
    since: &std::collections::HashMap<plait_proto::ChunkId, plait_proto::Timestamp>,
) -> Vec<plait_proto::ChunkId> {
    let metrics = service.raft.metrics().borrow().clone();
    if metrics.current_leader != Some(service.node_id) {
        return Vec::new();
    }
    let voters = metrics.membership_config.membership().voter_ids().count();
    if voters <= 1 {
        return deleted.to_vec();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let min_age_secs = (grace * FORGET_AFTER_GRACES).as_secs_f64();
    deleted
        .iter()
        .filter(|id| {
            since.get(id).is_some_and(|t| {
                let at = t.sec as f64 + f64::from(t.nsec) / 1e9;
                now - at >= min_age_secs
            })
        })
        .copied()
        .collect()
}
