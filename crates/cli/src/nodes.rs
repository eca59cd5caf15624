//! `plait node add|list|remove`: join tokens for new nodes, every node of the cluster
//! with its role, zone, state, address and disk, and removing a node that is gone.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use plait_client::ClusterClient;
use plait_net::token::{JoinToken, TOKEN_ADDRS_MAX};
use plait_proto::{HealNodeSummary, MetaOp, MetaQuery, MetaReply, NodeRole};
use serde::Serialize;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// Default lifetime of a join token, in seconds (one hour).
const TOKEN_TTL_DEFAULT_S: u64 = 3_600;

/// A role as the CLI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Metadata voter and chunk store.
    Both,
    /// Chunk store only (not a voter).
    Data,
    /// Metadata voter without chunks (same as `witness`).
    Voter,
    /// Metadata voter without chunks (GlusterFS's arbiter).
    Witness,
}

impl From<RoleArg> for NodeRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Both => NodeRole::Both,
            RoleArg::Data => NodeRole::Data,
            RoleArg::Voter | RoleArg::Witness => NodeRole::Witness,
        }
    }
}

/// `plait node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Create a one-time join token for a new node and print it; start the node with
    /// `plaitd --join TOKEN --listen IP:PORT --data-dir DIR`.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// What the new node does.
        #[arg(long, value_enum, default_value_t = RoleArg::Both)]
        role: RoleArg,
        /// The new node's failure zone.
        #[arg(long)]
        zone: Option<String>,
        /// Lifetime of the token, in seconds.
        #[arg(long, default_value_t = TOKEN_TTL_DEFAULT_S)]
        ttl_s: u64,
        /// Lifetime of the token in milliseconds (overrides --ttl-s; for tests).
        #[arg(long, hide = true)]
        ttl_ms: Option<u64>,
    },
    /// Members of the cluster: id, role, zone, state, address, disk use, chunks, heal
    /// backlog.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove a node that is gone for good: from the metadata group, the cluster map and
    /// the heal index.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// The node's id.
        id: u64,
    },
}

/// Creates a join token for a node of `role` in `zone`, valid `ttl_ms`, and returns its
/// text. The CA certificate in `tls_dir` is pinned by the token; the addresses of the
/// cluster's members (voters first) tell the joiner where to go.
pub async fn create_token(
    client: &ClusterClient,
    tls_dir: &Path,
    role: NodeRole,
    zone: Option<String>,
    ttl_ms: u64,
) -> Result<String> {
    let ca_pem = std::fs::read_to_string(tls_dir.join("ca.pem"))
        .with_context(|| format!("reading {}", tls_dir.join("ca.pem").display()))?;
    let fingerprint = plait_net::certs::ca_fingerprint(&ca_pem)?;
    let mut nodes = client
        .node_infos()
        .await
        .map_err(|e| anyhow::anyhow!("reading the cluster map: {e}"))?;
    nodes.retain(|n| n.member);
    nodes.sort_by_key(|n| (!n.voter, n.id));
    let addrs: Vec<String> = nodes
        .into_iter()
        .map(|n| n.addr)
        .take(TOKEN_ADDRS_MAX)
        .collect();
    let token = JoinToken::generate(fingerprint, addrs);
    let op = MetaOp::CreateJoinToken {
        token_id: token.token_id,
        secret_hash: token.secret_hash(),
        role,
        zone,
        ttl_ms,
    };
    client
        .meta(op)
        .await
        .map_err(|e| anyhow::anyhow!("creating the join token: {e}"))?;
    Ok(token.encode()?)
}

#[derive(Debug, Serialize)]
struct Row {
    id: u64,
    role: &'static str,
    voter: bool,
    zone: Option<String>,
    /// up: answered a status probe now; down: did not; joining: not in the metadata group
    /// yet.
    state: &'static str,
    leader: bool,
    addr: String,
    disk_total_bytes: Option<u64>,
    disk_used_bytes: Option<u64>,
    chunks: Option<u64>,
    heal_pending_chunks: u64,
    /// The node's placement pass: idle, pending or running (`None`: no answer).
    placement: Option<&'static str>,
    /// Copies its placement passes made since it started.
    placement_copied_chunks: Option<u64>,
    error: Option<String>,
}

/// Runs a `plait node` command.
pub async fn run(cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Add {
            conn,
            role,
            zone,
            ttl_s,
            ttl_ms,
        } => {
            let client = conn.connect().await?;
            let ttl_ms = ttl_ms.unwrap_or(ttl_s.saturating_mul(1000));
            let token = create_token(&client, &conn.tls_dir, role.into(), zone, ttl_ms).await?;
            println!("{token}");
            eprintln!(
                "one-time token, valid {} s; on the new node run:\n  plaitd --join <TOKEN> --listen IP:PORT --data-dir DIR",
                ttl_ms / 1000
            );
            Ok(())
        }
        NodeCmd::List { conn, output } => list(conn, output).await,
        NodeCmd::Remove { conn, id } => {
            let client = conn.connect().await?;
            match client.remove_node(id).await {
                Ok(nodes) => {
                    println!(
                        "node {id} removed; the cluster has {} node(s) left",
                        nodes.len()
                    );
                    Ok(())
                }
                Err(e) => bail!("removing node {id}: {}", e.message),
            }
        }
    }
}

async fn list(conn: ConnArgs, output: Output) -> Result<()> {
    let client = conn.connect().await?;
    let nodes = client
        .node_infos()
        .await
        .map_err(|e| anyhow::anyhow!("reading the cluster map: {e}"))?;
    let heal: Vec<HealNodeSummary> = match client.query(MetaQuery::HealSummary).await {
        Ok(MetaReply::HealSummary(s)) => s,
        _ => Vec::new(),
    };
    let mut rows = Vec::with_capacity(nodes.len());
    for n in nodes {
        let pending = heal.iter().find(|h| h.node == n.id).map_or(0, |h| h.chunks);
        let mut row = Row {
            id: n.id,
            role: n.role.name(),
            voter: n.voter,
            zone: n.zone.clone(),
            state: "down",
            leader: false,
            addr: n.addr.clone(),
            disk_total_bytes: None,
            disk_used_bytes: None,
            chunks: None,
            heal_pending_chunks: pending,
            placement: None,
            placement_copied_chunks: None,
            error: None,
        };
        match n.addr.parse() {
            Ok(addr) => match client.node_status(addr).await {
                Ok(s) => {
                    row.state = if n.member { "up" } else { "joining" };
                    row.leader = s.leader == Some(n.id);
                    row.disk_total_bytes = Some(s.disk_total_bytes);
                    row.disk_used_bytes =
                        Some(s.disk_total_bytes.saturating_sub(s.disk_free_bytes));
                    row.chunks = Some(s.chunk_count);
                    row.placement = Some(s.placement.name());
                    row.placement_copied_chunks = Some(s.placement_copied_chunks);
                }
                Err(e) => row.error = Some(e.to_string()),
            },
            Err(e) => row.error = Some(format!("bad address: {e}")),
        }
        rows.push(row);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            const MIB: u64 = 1024 * 1024;
            println!(
                "{:>4} {:<8} {:<8} {:<7} {:<22} {:>15} {:>9} {:>12} {:<9} {:>9}",
                "ID",
                "ROLE",
                "ZONE",
                "STATE",
                "ADDRESS",
                "DISK-USED-MIB",
                "CHUNKS",
                "HEAL-PENDING",
                "PLACEMENT",
                "PLACED"
            );
            for r in &rows {
                let used = match (r.disk_used_bytes, r.disk_total_bytes) {
                    (Some(u), Some(t)) => format!("{}/{}", u / MIB, t / MIB),
                    _ => "-".into(),
                };
                let state = if r.leader {
                    format!("{}*", r.state)
                } else {
                    r.state.to_string()
                };
                println!(
                    "{:>4} {:<8} {:<8} {:<7} {:<22} {:>15} {:>9} {:>12} {:<9} {:>9}",
                    r.id,
                    r.role,
                    r.zone.as_deref().unwrap_or("-"),
                    state,
                    r.addr,
                    used,
                    r.chunks.map_or("-".into(), |c| c.to_string()),
                    r.heal_pending_chunks,
                    r.placement.unwrap_or("-"),
                    r.placement_copied_chunks
                        .map_or("-".into(), |c| c.to_string())
                );
            }
            println!("(* metadata leader)");
        }
    }
    Ok(())
}
