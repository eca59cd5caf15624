//! Garbage collection: deletes chunk files that no extent references any more, once they
//! have been unreferenced (and untouched by a put) for the grace period.

use std::sync::Arc;
use std::time::Duration;

use plait_proto::MetaOp;

use crate::service::Service;

/// Chunks examined per pass, to bound the work of one pass.
const GC_BATCH_MAX: usize = 1024;

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
        if !deleted.is_empty() {
            tracing::debug!(count = deleted.len(), "gc deleted chunks");
            // Single-node for now: once this node's copy is gone the entry can go too.
            // With replication, every placed replica must have deleted its copy first.
            service
                .propose(MetaOp::ForgetGarbage { chunks: deleted })
                .await
                .map_err(|e| anyhow::anyhow!("forgetting garbage: {e}"))?;
        }
        if batch.len() < GC_BATCH_MAX {
            return Ok(());
        }
    }
}
