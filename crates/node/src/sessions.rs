//! The session sweeper: the metadata leader ends sessions whose lease ran out, which
//! releases their locks and grants the waiters behind them.
//!
//! Expiry is decided inside the state machine by the time the `ExpireSessions` command
//! carries, so all replicas agree; this worker only decides when to propose it: when
//! this node leads and its applied state holds a session past its expiry.

use std::sync::Arc;
use std::time::Duration;

use plait_proto::{MetaOp, MetaQuery, MetaReply};

use crate::service::Service;

/// Runs forever, checking every `interval`.
pub async fn run(service: Arc<Service>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = sweep(&service).await {
            tracing::warn!(error = %e, "session sweep failed");
        }
    }
}

async fn sweep(service: &Service) -> anyhow::Result<()> {
    let metrics = service.raft.metrics().borrow().clone();
    if metrics.current_leader != Some(service.node_id) {
        return Ok(());
    }
    let sessions = match service.query_local(MetaQuery::ListSessions) {
        Ok(MetaReply::Sessions(s)) => s,
        Ok(other) => anyhow::bail!("unexpected reply {other:?}"),
        Err(e) => anyhow::bail!("listing sessions: {e}"),
    };
    let now = crate::service::now();
    let expired: Vec<u64> = sessions
        .iter()
        .filter(|s| s.expires < now)
        .map(|s| s.id)
        .collect();
    if expired.is_empty() {
        return Ok(());
    }
    tracing::info!(
        ?expired,
        "sessions past their lease: expiring them and their locks"
    );
    service
        .propose(MetaOp::ExpireSessions)
        .await
        .map_err(|e| anyhow::anyhow!("expiring sessions: {e}"))?;
    Ok(())
}
