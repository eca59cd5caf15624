//! How a node gets its identity: from configured certificate files, from what an earlier
//! join saved in `<data_dir>/tls`, or by redeeming a join token now. Also the background
//! steps that put a node into the cluster map: asking the leader to add a freshly joined
//! node to the metadata group, and recording a statically configured node's role and zone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plait_net::token::JoinToken;
use plait_net::{RpcClient, TlsIdentity};
use plait_proto::{ErrorCode, MetaOp, MetaQuery, MetaReply, NodeRecord, Request, Response};

use crate::config::Config;
use crate::service::Service;

/// Longest time a joiner keeps trying the token's nodes (a follower may not have applied
/// the token yet, a leader may be changing).
const JOIN_TRY_MS: u64 = 30_000;

/// Timeout of one join request.
const JOIN_RPC_TIMEOUT_MS: u64 = 10_000;

/// Timeout of one request asking the leader to add this node (it waits for the learner to
/// catch up with the log).
const ADD_SELF_RPC_TIMEOUT_MS: u64 = 60_000;

/// Pause between rounds of background membership steps.
const RETRY_PAUSE_MS: u64 = 1_000;

/// Files a joined node keeps in `<data_dir>/tls`.
const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "node.pem";
const KEY_FILE: &str = "node.key";
const ID_FILE: &str = "node_id";
/// Present (holding the token's addresses) until the leader confirmed the node as a
/// member: a node that restarts before that asks again.
const PENDING_FILE: &str = "join-pending";

/// This node's id and TLS identity, and, if it still has to be added to the metadata
/// group, the nodes to ask.
pub struct NodeIdentity {
    pub node_id: u64,
    pub tls: TlsIdentity,
    pub pending_add: Option<Vec<String>>,
}

fn tls_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("tls")
}

fn write_tls_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    plait_net::certs::write_file(path, contents, private)
        .with_context(|| format!("writing {}", path.display()))
}

/// Resolves this node's identity (see the module docs); joins if needed.
pub async fn identity(cfg: &Config) -> Result<NodeIdentity> {
    if let Some((ca, cert, key)) = &cfg.tls_files {
        let tls = TlsIdentity::load(ca, cert, key).context("loading TLS identity")?;
        let node_id = cfg
            .node_id
            .context("node_id is required with certificate files")?;
        return Ok(NodeIdentity {
            node_id,
            tls,
            pending_add: None,
        });
    }
    let dir = tls_dir(cfg);
    if dir.join(ID_FILE).exists() {
        let tls = TlsIdentity::load(
            &dir.join(CA_FILE),
            &dir.join(CERT_FILE),
            &dir.join(KEY_FILE),
        )
        .context("loading the certificate saved by the join")?;
        let text = std::fs::read_to_string(dir.join(ID_FILE))?;
        let node_id: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("bad node id in {}", dir.join(ID_FILE).display()))?;
        let pending_add = match std::fs::read_to_string(dir.join(PENDING_FILE)) {
            Ok(t) => Some(t.lines().map(str::to_string).collect()),
            Err(_) => None,
        };
        tracing::info!(node_id, "using the identity saved by an earlier join");
        return Ok(NodeIdentity {
            node_id,
            tls,
            pending_add,
        });
    }
    let Some(text) = &cfg.join else {
        bail!("no certificate configured and no join token given (--join)");
    };
    let token = JoinToken::decode(text)?;
    join(cfg, &token, &dir).await
}

async fn join(cfg: &Config, token: &JoinToken, dir: &Path) -> Result<NodeIdentity> {
    let (csr_pem, key_pem) = plait_net::certs::new_csr("joining")?;
    let client = RpcClient::for_join(token.ca_fingerprint).context("creating join client")?;
    let req = Request::Join {
        token_id: token.token_id,
        secret: token.secret,
        csr_pem,
        addr: cfg.advertise.to_string(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(JOIN_TRY_MS);
    let mut last_error = String::from("no node address in the token");
    let (node_id, cert_pem, ca_pem) = 'found: loop {
        for addr in &token.addrs {
            let Ok(sock) = addr.parse::<SocketAddr>() else {
                last_error = format!("bad address {addr} in the token");
                continue;
            };
            let timeout = Duration::from_millis(JOIN_RPC_TIMEOUT_MS);
            match client.call(sock, &req, timeout).await {
                Ok(Response::Joined {
                    node_id,
                    cert_pem,
                    ca_pem,
                }) => break 'found (node_id, cert_pem, ca_pem),
                Ok(Response::Error(e)) => last_error = format!("{addr}: {e}"),
                Ok(_) => last_error = format!("{addr}: unexpected answer"),
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("joining the cluster failed: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    };
    if plait_net::certs::ca_fingerprint(&ca_pem)? != token.ca_fingerprint {
        bail!("the cluster answered with a CA other than the token's");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_tls_file(&dir.join(CA_FILE), &ca_pem, false)?;
    write_tls_file(&dir.join(CERT_FILE), &cert_pem, false)?;
    write_tls_file(&dir.join(KEY_FILE), &key_pem, true)?;
    write_tls_file(&dir.join(PENDING_FILE), &token.addrs.join("\n"), false)?;
    // The id last: its presence means the identity is complete.
    write_tls_file(&dir.join(ID_FILE), &format!("{node_id}\n"), false)?;
    tracing::info!(node_id, "joined the cluster; certificate saved");
    Ok(NodeIdentity {
        node_id,
        tls: TlsIdentity {
            ca_pem,
            cert_pem,
            key_pem,
        },
        pending_add: Some(token.addrs.clone()),
    })
}

/// Asks the metadata leader (found through `addrs` and `NotLeader` hints) to add this
/// node to the metadata group, until it has; then forgets the pending marker.
pub async fn add_self(service: Arc<Service>, data_dir: PathBuf, addrs: Vec<String>) {
    let req = Request::AddVoter {
        node_id: service.node_id,
        addr: service.addr.clone(),
    };
    let timeout = Duration::from_millis(ADD_SELF_RPC_TIMEOUT_MS);
    loop {
        let mut targets: Vec<String> = addrs.clone();
        let mut i = 0;
        while i < targets.len() && i < 2 * plait_net::token::TOKEN_ADDRS_MAX {
            let addr = targets[i].clone();
            i += 1;
            let Ok(sock) = addr.parse::<SocketAddr>() else {
                continue;
            };
            match service.rpc.call(sock, &req, timeout).await {
                Ok(Response::Members(_)) => {
                    tracing::info!(node_id = service.node_id, "added to the metadata group");
                    let _ = std::fs::remove_file(data_dir.join("tls").join(PENDING_FILE));
                    return;
                }
                Ok(Response::Error(e)) if e.code == ErrorCode::NotLeader => {
                    if let Some(hint) = e.leader_hint
                        && !targets.contains(&hint)
                    {
                        targets.push(hint);
                    }
                }
                Ok(Response::Error(e)) => {
                    tracing::warn!(%addr, error = %e, "asking to be added to the cluster")
                }
                Ok(_) => tracing::warn!(%addr, "unexpected answer to AddVoter"),
                Err(e) => tracing::debug!(%addr, error = %e, "asking to be added"),
            }
        }
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    }
}

/// Makes sure the replicated state has a record of this statically configured node
/// (bootstrap, `cluster init`), with the configured role and zone if it has none yet.
pub async fn register_self(
    service: Arc<Service>,
    role: plait_proto::NodeRole,
    zone: Option<String>,
) {
    let rec = NodeRecord {
        id: service.node_id,
        addr: service.addr.clone(),
        role,
        zone,
    };
    loop {
        if let Ok(MetaReply::NodeRecords(nodes)) = service.query_local(MetaQuery::ListNodes)
            && nodes.iter().any(|n| n.id == rec.id && n.addr == rec.addr)
        {
            return;
        }
        if service.is_member() {
            match service
                .propose_anywhere(MetaOp::RegisterNode { node: rec.clone() })
                .await
            {
                Ok(_) => {
                    tracing::info!(node_id = rec.id, role = rec.role.name(), "node registered");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "registering this node"),
            }
        }
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    }
}
