//! `plait heal`: what copies are missing where, and driving heal to completion.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use plait_client::ClusterClient;
use plait_proto::{HealNodeSummary, MetaQuery, MetaReply, PlacementPass};
use serde::Serialize;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// How often `heal start` polls the heal index.
const POLL_INTERVAL_MS: u64 = 500;

/// `plait heal ...`
#[derive(Debug, Subcommand)]
pub enum HealCmd {
    /// Copies still missing, per node (chunks and bytes), from the heal index.
    Info {
        /// Accepted for symmetry with other commands; the heal index is cluster-wide
        /// (chunks are shared between files and volumes), so every volume is shown.
        volume: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Ask every node for a heal pass now and follow it until nothing is pending.
    Start {
        /// Give up waiting (exit status 1) when nothing healed for this long, in seconds.
        #[arg(long, default_value_t = 60)]
        stall_timeout_s: u64,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Pending heal work, one entry per node with any.
pub async fn summary(client: &ClusterClient) -> Result<Vec<HealNodeSummary>> {
    match client.query(MetaQuery::HealSummary).await? {
        MetaReply::HealSummary(s) => Ok(s),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn totals(s: &[HealNodeSummary]) -> (u64, u64) {
    s.iter().fold((0, 0), |(c, b), n| {
        (c + n.chunks, b.saturating_add(n.bytes))
    })
}

/// Runs a `plait heal` command.
pub async fn run(cmd: HealCmd) -> Result<()> {
    match cmd {
        HealCmd::Info {
            volume: _,
            conn,
            output,
        } => {
            let client = conn.connect().await?;
            let s = summary(&client).await?;
            print_summary(&s, output)?;
            if matches!(output, Output::Text) {
                // Not in the JSON output, which stays the array of pending rows.
                for p in placement(&client).await? {
                    println!(
                        "placement node {}: {} ({} chunks copied, {} surplus copies dropped since start)",
                        p.node,
                        p.state.map_or("no answer", PlacementPass::name),
                        p.copied_chunks,
                        p.dropped_chunks
                    );
                }
            }
            Ok(())
        }
        HealCmd::Start {
            stall_timeout_s,
            conn,
        } => {
            let client = conn.connect().await?;
            start(&client, Duration::from_secs(stall_timeout_s)).await
        }
    }
}

fn print_summary(s: &[HealNodeSummary], output: Output) -> Result<()> {
    #[derive(Serialize)]
    struct Row {
        node: u64,
        pending_chunks: u64,
        pending_bytes: u64,
    }
    let rows: Vec<Row> = s
        .iter()
        .map(|n| Row {
            node: n.node,
            pending_chunks: n.chunks,
            pending_bytes: n.bytes,
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            let (chunks, bytes) = totals(s);
            println!(
                "{:>6} {:>14} {:>16}",
                "NODE", "PENDING-CHUNKS", "PENDING-BYTES"
            );
            for r in &rows {
                println!(
                    "{:>6} {:>14} {:>16}",
                    r.node, r.pending_chunks, r.pending_bytes
                );
            }
            println!("total: {chunks} chunks, {bytes} bytes pending");
        }
    }
    Ok(())
}

/// One data node's placement pass, from its status.
struct NodePlacement {
    node: u64,
    /// `None`: the node did not answer.
    state: Option<PlacementPass>,
    copied_chunks: u64,
    dropped_chunks: u64,
}

/// Every data node's placement pass (each asked once).
async fn placement(client: &ClusterClient) -> Result<Vec<NodePlacement>> {
    let mut out = Vec::new();
    for (node, addr) in client.members().await? {
        let p = match client.node_status(addr).await {
            Ok(s) => NodePlacement {
                node,
                state: Some(s.placement),
                copied_chunks: s.placement_copied_chunks,
                dropped_chunks: s.placement_dropped_chunks,
            },
            Err(_) => NodePlacement {
                node,
                state: None,
                copied_chunks: 0,
                dropped_chunks: 0,
            },
        };
        out.push(p);
    }
    Ok(out)
}

/// Waits until no data node that answers has a placement pass pending or running (a pass
/// that cannot fetch a copy records it in the heal index instead of stalling).
async fn wait_placement(client: &ClusterClient, stall_timeout: Duration) -> Result<()> {
    let mut last_progress = Instant::now();
    let mut last_copied = 0u64;
    loop {
        let passes = placement(client).await?;
        let copied: u64 = passes.iter().map(|p| p.copied_chunks).sum();
        if copied != last_copied {
            last_copied = copied;
            last_progress = Instant::now();
        }
        let busy: Vec<u64> = passes
            .iter()
            .filter(|p| {
                matches!(
                    p.state,
                    Some(PlacementPass::Pending | PlacementPass::Running)
                )
            })
            .map(|p| p.node)
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if last_progress.elapsed() >= stall_timeout {
            bail!(
                "placement passes made no copy for {} s and still run on node(s) {busy:?}",
                stall_timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Wakes every node's heal worker (which also runs a placement pass), waits for the
/// placement passes, then shows progress until the index is empty or nothing moved for
/// `stall_timeout`.
async fn start(client: &ClusterClient, stall_timeout: Duration) -> Result<()> {
    let members = client.members().await?;
    for (node, addr) in &members {
        if let Err(e) = client.heal_now(*addr).await {
            eprintln!("node {node} ({addr}): could not start a pass: {e}");
        }
    }
    wait_placement(client, stall_timeout).await?;
    let first = summary(client).await?;
    let (start_chunks, _) = totals(&first);
    if start_chunks == 0 {
        println!("nothing to heal");
        return Ok(());
    }
    let bar = ProgressBar::new(start_chunks);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} healing [{bar:40}] {pos}/{len} chunks ({per_sec}, eta {eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let began = Instant::now();
    let mut last_pending = start_chunks;
    let mut last_progress = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        let s = summary(client).await?;
        let (pending, bytes) = totals(&s);
        if pending > bar.length().unwrap_or(0) {
            bar.set_length(pending.max(start_chunks));
        }
        bar.set_position(bar.length().unwrap_or(start_chunks).saturating_sub(pending));
        bar.set_message(format!("{} MiB left", bytes / (1024 * 1024)));
        if pending == 0 {
            bar.finish_and_clear();
            println!(
                "healed: nothing pending after {:.1} s",
                began.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if pending < last_pending {
            last_pending = pending;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= stall_timeout {
            bar.abandon();
            print_summary(&s, Output::Text)?;
            bail!(
                "no progress for {} s: the nodes above still miss copies (down, or no good copy reachable)",
                stall_timeout.as_secs()
            );
        }
    }
}
