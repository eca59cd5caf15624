//! `plait debug`: checks for developers and tests, not for day-to-day administration.

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// `plait debug ...`
#[derive(Debug, Subcommand)]
pub enum DebugCmd {
    /// Every node's applied metadata index and a digest of its metadata state (all nodes
    /// asked at once). Nodes at the same applied index must show the same digest; a
    /// difference means their replicas diverged.
    Digest {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// One node's answer to `plait debug digest`.
#[derive(Debug, Serialize)]
struct Row {
    addr: String,
    node_id: Option<u64>,
    last_applied: Option<u64>,
    entries: Option<u64>,
    digest: Option<String>,
    error: Option<String>,
}

/// Runs a `plait debug` command.
pub async fn run(cmd: DebugCmd) -> Result<()> {
    match cmd {
        DebugCmd::Digest { conn, output } => digest(&conn, output).await,
    }
}

async fn digest(conn: &ConnArgs, output: Output) -> Result<()> {
    let client = conn.connect().await?;
    // Asked in parallel so that the answers are as close in time as possible.
    let mut set = JoinSet::new();
    for (i, addr) in conn.nodes.iter().copied().enumerate() {
        let client = client.clone();
        set.spawn(async move { (i, addr, client.state_digest(addr).await) });
    }
    let mut rows: Vec<(usize, Row)> = Vec::with_capacity(conn.nodes.len());
    while let Some(joined) = set.join_next().await {
        let (i, addr, result) = joined?;
        let row = match result {
            Ok(d) => Row {
                addr: addr.to_string(),
                node_id: Some(d.node_id),
                last_applied: Some(d.last_applied),
                entries: Some(d.entries),
                digest: Some(d.digest),
                error: None,
            },
            Err(e) => Row {
                addr: addr.to_string(),
                node_id: None,
                last_applied: None,
                entries: None,
                digest: None,
                error: Some(e.to_string()),
            },
        };
        rows.push((i, row));
    }
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            println!(
                "{:<22} {:>4} {:>10} {:>8}  DIGEST",
                "NODE", "ID", "APPLIED", "ENTRIES"
            );
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            for r in rows {
                println!(
                    "{:<22} {:>4} {:>10} {:>8}  {}{}",
                    r.addr,
                    opt(r.node_id),
                    opt(r.last_applied),
                    opt(r.entries),
                    r.digest.as_deref().unwrap_or("-"),
                    r.error.map(|e| format!("  ({e})")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
