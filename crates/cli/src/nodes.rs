//! `plait node list`: every member of the cluster with its role, state, address and disk.

use anyhow::Result;
use clap::Subcommand;
use plait_proto::{HealNodeSummary, MetaQuery, MetaReply};
use serde::Serialize;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// `plait node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Members of the cluster: id, role, zone, state, address, disk use, chunks, heal
    /// backlog.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Serialize)]
struct Row {
    id: u64,
    /// Every member is a metadata voter and a data node (witness roles are not built yet).
    role: &'static str,
    /// Failure zones are not built yet.
    zone: Option<String>,
    state: &'static str,
    leader: bool,
    addr: String,
    disk_total_bytes: Option<u64>,
    disk_used_bytes: Option<u64>,
    chunks: Option<u64>,
    heal_pending_chunks: u64,
    error: Option<String>,
}

/// Runs a `plait node` command.
pub async fn run(cmd: NodeCmd) -> Result<()> {
    let NodeCmd::List { conn, output } = cmd;
    let client = conn.connect().await?;
    let members = client.members().await?;
    let heal: Vec<HealNodeSummary> = match client.query(MetaQuery::HealSummary).await {
        Ok(MetaReply::HealSummary(s)) => s,
        _ => Vec::new(),
    };
    let mut rows = Vec::with_capacity(members.len());
    for (id, addr) in members {
        let pending = heal.iter().find(|h| h.node == id).map_or(0, |h| h.chunks);
        let row = match client.node_status(addr).await {
            Ok(s) => Row {
                id,
                role: "voter+data",
                zone: None,
                state: "up",
                leader: s.leader == Some(id),
                addr: addr.to_string(),
                disk_total_bytes: Some(s.disk_total_bytes),
                disk_used_bytes: Some(s.disk_total_bytes.saturating_sub(s.disk_free_bytes)),
                chunks: Some(s.chunk_count),
                heal_pending_chunks: pending,
                error: None,
            },
            Err(e) => Row {
                id,
                role: "voter+data",
                zone: None,
                state: "down",
                leader: false,
                addr: addr.to_string(),
                disk_total_bytes: None,
                disk_used_bytes: None,
                chunks: None,
                heal_pending_chunks: pending,
                error: Some(e.to_string()),
            },
        };
        rows.push(row);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            const MIB: u64 = 1024 * 1024;
            println!(
                "{:>4} {:<11} {:<5} {:<5} {:<22} {:>15} {:>9} {:>11}",
                "ID", "ROLE", "ZONE", "STATE", "ADDRESS", "DISK-USED-MIB", "CHUNKS", "HEAL-PENDING"
            );
            for r in &rows {
                let used = match (r.disk_used_bytes, r.disk_total_bytes) {
                    (Some(u), Some(t)) => format!("{}/{}", u / MIB, t / MIB),
                    _ => "-".into(),
                };
                let state = if r.leader { "up*" } else { r.state };
                println!(
                    "{:>4} {:<11} {:<5} {:<5} {:<22} {:>15} {:>9} {:>11}",
                    r.id,
                    r.role,
                    r.zone.as_deref().unwrap_or("-"),
                    state,
                    r.addr,
                    used,
                    r.chunks.map_or("-".into(), |c| c.to_string()),
                    r.heal_pending_chunks
                );
            }
            println!("(* metadata leader)");
        }
    }
    Ok(())
}
