//! [`Session`]: a mount's lease with the metadata group, which owns the mount's locks.
//!
//! The mount opens a session at start and renews it every third of its lease. If the
//! group says the session expired (the mount was cut off for longer than the lease), its
//! locks are gone: the mount opens a new session for new locks, and the inodes locked
//! under the old one stay fenced (their writes carry the old id, which the group refuses)
//! until their owners close them. If renewals fail for longer than the lease, the mount
//! treats the session as expired on its own, before hearing it from the group.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plait_proto::lock::{SessionId, SessionInfo};
use plait_proto::{ErrorCode, MetaOp, MetaReply, RpcError};
use tracing::{error, info, warn};

use crate::ClusterClient;

/// Default lease of a mount's session, in milliseconds.
pub const LEASE_DEFAULT_MS: u64 = 10_000;

/// Renewals per lease period.
const RENEWALS_PER_LEASE: u32 = 3;

#[derive(Debug)]
struct State {
    id: SessionId,
    /// When the last successful renewal (or the open) was sent.
    renewed_at: Instant,
}

/// A mount's session. Shared by the filesystem layer and its renewal task.
#[derive(Debug)]
pub struct Session {
    client: Arc<ClusterClient>,
    lease_ms: u64,
    label: String,
    state: Mutex<State>,
}

async fn open_raw(
    client: &ClusterClient,
    lease_ms: u64,
    label: &str,
) -> Result<SessionInfo, RpcError> {
    let op = MetaOp::OpenSession {
        lease_ms,
        client: label.to_string(),
    };
    match client.meta(op).await? {
        MetaReply::Session(info) => Ok(info),
        other => Err(RpcError::new(
            ErrorCode::Protocol,
            format!("unexpected reply to OpenSession: {other:?}"),
        )),
    }
}

impl Session {
    /// Opens a session with a lease of `lease_ms`, labelled `label` (host and pid).
    pub async fn open(
        client: Arc<ClusterClient>,
        lease_ms: u64,
        label: String,
    ) -> Result<Arc<Self>, RpcError> {
        let sent = Instant::now();
        let info = open_raw(&client, lease_ms, &label).await?;
        info!(session = info.id, lease_ms, "session opened");
        Ok(Arc::new(Self {
            client,
            lease_ms,
            label,
            state: Mutex::new(State {
                id: info.id,
                renewed_at: sent,
            }),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current session id.
    pub fn id(&self) -> SessionId {
        self.state().id
    }

    /// Lease length in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Whether locks taken under `id` may still be held: `id` is the current session and
    /// it was renewed within the lease (measured from when the renewal was sent, so the
    /// mount gives up no later than the group does).
    pub fn is_live(&self, id: SessionId) -> bool {
        let st = self.state();
        st.id == id && st.renewed_at.elapsed() < Duration::from_millis(self.lease_ms)
    }

    /// Renews the lease forever (run as a task). On `SessionExpired` it opens a new
    /// session; the old one's locks are lost, which is logged.
    pub async fn renew_forever(self: Arc<Self>) {
        let period = Duration::from_millis(self.lease_ms) / RENEWALS_PER_LEASE;
        loop {
            tokio::time::sleep(period).await;
            self.renew_once().await;
        }
    }

    async fn renew_once(&self) {
        let id = self.id();
        let sent = Instant::now();
        match self.client.meta(MetaOp::RenewSession { session: id }).await {
            Ok(_) => self.state().renewed_at = sent,
            Err(e) if e.code == ErrorCode::SessionExpired => {
                error!(
                    session = id,
                    "session expired: its locks were released; opening a new one"
                );
                match open_raw(&self.client, self.lease_ms, &self.label).await {
                    Ok(info) => {
                        info!(session = info.id, "new session opened");
                        let mut st = self.state();
                        st.id = info.id;
                        st.renewed_at = sent;
                    }
                    Err(e) => warn!(error = %e, "opening a new session failed; will retry"),
                }
            }
            Err(e) => {
                let since = self.state().renewed_at.elapsed();
                if since >= Duration::from_millis(self.lease_ms) {
                    error!(session = id, error = %e, "lease not renewed for {} ms: treating the session's locks as lost", since.as_millis());
                } else {
                    warn!(session = id, error = %e, "lease renewal failed; will retry");
                }
            }
        }
    }

    /// Ends the session (at unmount): its locks are released at once instead of at
    /// lease expiry.
    pub async fn close(&self) {
        let id = self.id();
        if let Err(e) = self.client.meta(MetaOp::CloseSession { session: id }).await {
            warn!(session = id, error = %e, "closing the session failed; its lease will expire");
        }
    }
}
