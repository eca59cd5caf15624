//! Heal: this node makes the chunk copies it is missing, as recorded in the heal index.
//!
//! Writers record every placed replica that had not acknowledged its copy when they
//! committed (`MetaOp::Write::under_replicated`); nodes record their own corrupt copies
//! (`MetaOp::MarkUnderReplicated`). Each node reads the entries naming it from its own
//! applied state — no crawl of the namespace or of other nodes' stores — and for each:
//! keeps its copy if it is present and hashes right (or, for a writer's entry, if a put
//! stored it lately: [`crate::recent_puts`]), else fetches a good copy from another node
//! (placement order) and stores it. Entries for chunks no extent references any more
//! are simply dropped. Done entries are removed with one `HealDone` per batch, proposed
//! through the metadata leader; each removal only takes effect if the entry did not change
//! meanwhile, so a copy found missing again is never forgotten.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use plait_chunks::ChunkError;
use plait_proto::{ChunkId, HealEntry, MetaOp, Request, Response};
use tokio::task::JoinSet;

use crate::placement::Placer;
use crate::service::Service;

/// Heal-index entries read and settled per batch (one `HealDone` each).
const HEAL_BATCH_MAX: usize = plait_meta::HEAL_DONE_MAX;

/// Chunks healed at once by one node.
pub const HEAL_IN_FLIGHT_MAX: usize = 16;

/// Bound on fetching one chunk from one peer.
const HEAL_FETCH_TIMEOUT_MS: u64 = 5_000;

/// What healing one entry found.
enum Healed {
    /// The chunk is no longer referenced: nothing to heal.
    Unreferenced,
    /// The local copy was already present and intact.
    Present,
    /// The local copy is present and was hash-checked when a put stored it lately
    /// ([`crate::recent_puts`]): not read again.
    StoredLately,
    /// A good copy of this many bytes was fetched and stored.
    Copied(u64),
}

/// Runs heal passes forever: every `interval`, and at once when asked (`HealNow`). After
/// each heal pass, steps this node's placement pass (see [`crate::placement`]); while one
/// is in progress the worker steps again after a short pause instead of an interval.
pub async fn run(service: Arc<Service>, interval: Duration) {
    let mut placer = Placer::default();
    // After a failed placement step, wait a full interval before the next one.
    let mut backoff = false;
    loop {
        if backoff || !placer.busy() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = service.heal_trigger.notified() => {}
            }
        }
        if let Err(e) = pass(&service).await {
            tracing::warn!(error = %e, "heal pass failed");
        }
        backoff = match placer.step(&service).await {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(error = %e, "placement pass step failed; retrying");
                true
            }
        };
    }
}

/// Settles every heal-index entry of this node, in batches.
async fn pass(service: &Arc<Service>) -> anyhow::Result<()> {
    let mut after: Option<ChunkId> = None;
    loop {
        let batch = {
            let view = service.db.view()?;
            plait_meta::heal_pending(&view, service.node_id, after.as_ref(), HEAL_BATCH_MAX)?
        };
        let Some(last) = batch.last() else {
            return Ok(());
        };
        after = Some(last.chunk);
        let full = batch.len() == HEAL_BATCH_MAX;
        let done = heal_batch(service, batch).await;
        if !done.is_empty() {
            let count = done.len();
            service
                .propose_anywhere(MetaOp::HealDone {
                    node: service.node_id,
                    chunks: done,
                })
                .await
                .map_err(|e| anyhow::anyhow!("settling {count} heal entries: {e}"))?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Heals the entries of one batch, [`HEAL_IN_FLIGHT_MAX`] at a time; returns the settled
/// ones as (chunk, since) for `HealDone`.
async fn heal_batch(
    service: &Arc<Service>,
    batch: Vec<HealEntry>,
) -> Vec<(ChunkId, plait_proto::Timestamp)> {
    let mut done = Vec::with_capacity(batch.len());
    // Settled entries by outcome: (unreferenced, present, stored lately, copied).
    let mut outcomes = [0usize; 4];
    let mut set = JoinSet::new();
    let mut queue = batch.into_iter();
    loop {
        while set.len() < HEAL_IN_FLIGHT_MAX {
            let Some(entry) = queue.next() else { break };
            let service = service.clone();
            set.spawn(async move { (entry, heal_one(&service, &entry).await) });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((entry, Ok(healed))) => {
                match healed {
                    Healed::Unreferenced => outcomes[0] += 1,
                    Healed::Present => outcomes[1] += 1,
                    Healed::StoredLately => outcomes[2] += 1,
                    Healed::Copied(bytes) => {
                        outcomes[3] += 1;
                        service.healed_chunks.fetch_add(1, Ordering::Relaxed);
                        service.healed_bytes.fetch_add(bytes, Ordering::Relaxed);
                        tracing::debug!(chunk = %entry.chunk, bytes, "healed a missing copy");
                    }
                }
                done.push((entry.chunk, entry.since));
            }
            Ok((entry, Err(e))) => {
                tracing::warn!(chunk = %entry.chunk, error = %e, "heal failed; will retry");
            }
            Err(e) => tracing::warn!(error = %e, "heal task failed"),
        }
    }
    let [unreferenced, present, stored_lately, copied] = outcomes;
    tracing::debug!(
        unreferenced,
        present,
        stored_lately,
        copied,
        "heal batch settled"
    );
    done
}

/// Makes sure this node holds a good copy of `id`.
async fn heal_one(service: &Arc<Service>, entry: &HealEntry) -> Result<Healed, String> {
    let id = entry.chunk;
    let referenced = {
        let view = service.db.view().map_err(|e| e.to_string())?;
        plait_meta::is_referenced(&view, &id).map_err(|e| e.to_string())?
    };
    if !referenced {
        return Ok(Healed::Unreferenced);
    }
    let chunks = service.chunks.clone();
    // Only a writer's entry (it knows the chunk's size) may be settled on the strength of
    // a recent put. A corruption report or a failed placement copy records size 0: that
    // copy is always read and hashed, whatever order the report and a put came in.
    let stored_lately = entry.size_bytes > 0 && service.recent_puts.contains(&id);
    let local = tokio::task::spawn_blocking(move || {
        if stored_lately && chunks.contains(&id) {
            Ok(None)
        } else {
            chunks.get(&id).map(Some)
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    match local {
        Ok(None) => return Ok(Healed::StoredLately),
        Ok(Some(_)) => return Ok(Healed::Present),
        Err(ChunkError::NotFound(_)) => {}
        Err(ChunkError::Corrupt { .. }) => {
            tracing::warn!(chunk = %id, "local copy is corrupt; fetching a good one");
        }
        Err(e) => return Err(format!("reading the local copy: {e}")),
    }
    fetch(service, id).await.map(Healed::Copied)
}

/// Copies the chunks `ids` (which this node has no file for) from the other data nodes,
/// [`HEAL_IN_FLIGHT_MAX`] at a time; returns the bytes of each copy made and the chunks
/// no node gave a good copy of.
pub async fn copy_missing(service: &Arc<Service>, ids: Vec<ChunkId>) -> (Vec<u64>, Vec<ChunkId>) {
    let mut copied = Vec::new();
    let mut failed = Vec::new();
    let mut set = JoinSet::new();
    let mut queue = ids.into_iter();
    loop {
        while set.len() < HEAL_IN_FLIGHT_MAX {
            let Some(id) = queue.next() else { break };
            let service = service.clone();
            set.spawn(async move { (id, fetch(&service, id).await) });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((id, Ok(bytes))) => {
                tracing::debug!(chunk = %id, bytes, "copied a newly placed chunk");
                copied.push(bytes);
            }
            Ok((id, Err(e))) => {
                tracing::warn!(chunk = %id, error = %e, "copying a newly placed chunk failed");
                failed.push(id);
            }
            Err(e) => tracing::warn!(error = %e, "copy task failed"),
        }
    }
    (copied, failed)
}

/// Fetches a good copy of `id` from the other data nodes (rank order) and stores it (hash
/// verified, fsynced; replaces a corrupt local file); returns its size in bytes.
async fn fetch(service: &Arc<Service>, id: ChunkId) -> Result<u64, String> {
    let peers: Vec<(u64, String)> = service
        .members()
        .into_iter()
        .filter(|(n, _)| *n != service.node_id)
        .collect();
    let mut last_error = String::from("no other node in the cluster map");
    for (node, addr) in plait_client::placement::rank(&id, &peers, |(n, _)| *n) {
        let Ok(sock) = addr.parse() else {
            last_error = format!("node {node}: bad address {addr}");
            continue;
        };
        let timeout = Duration::from_millis(HEAL_FETCH_TIMEOUT_MS);
        let bytes = match service
            .rpc
            .call(sock, &Request::ChunkGet { id }, timeout)
            .await
        {
            Ok(Response::Chunk(bytes)) => bytes,
            Ok(Response::Error(e)) => {
                last_error = format!("node {node}: {e}");
                continue;
            }
            Ok(other) => {
                last_error = format!("node {node}: unexpected answer {other:?}");
                continue;
            }
            Err(e) => {
                last_error = format!("node {node}: {e}");
                continue;
            }
        };
        let size_bytes = bytes.len() as u64;
        let chunks = service.chunks.clone();
        // `put` verifies the hash and replaces a corrupt local copy atomically.
        match tokio::task::spawn_blocking(move || chunks.put(&id, &bytes))
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(()) => return Ok(size_bytes),
            Err(ChunkError::HashMismatch { .. }) => {
                last_error = format!("node {node}: sent bytes that do not match the chunk id");
            }
            Err(e) => return Err(format!("storing the copy: {e}")),
        }
    }
    Err(last_error)
}
