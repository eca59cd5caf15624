//! Admin commands that talk to a running cluster: volumes and status.

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use plait_proto::{ErrorCode, MetaOp, MetaQuery, MetaReply, VolumeInfo};
use serde::Serialize;

use crate::conn::ConnArgs;

/// Output format of admin commands.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    #[default]
    Text,
    /// JSON for scripts.
    Json,
}

/// `plait volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        /// Volume name.
        name: String,
        /// Copies of each chunk (1..=5, at most the number of data nodes).
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Durable acknowledgements before a write commits (default: a majority of replicas).
        #[arg(long)]
        write_quorum: Option<u32>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List volumes.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show one volume.
    Info {
        /// Volume name.
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Flags of `plait status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A majority of `replicas`, the default write quorum.
pub fn default_quorum(replicas: u32) -> u32 {
    replicas / 2 + 1
}

fn print_volumes(vols: &[VolumeInfo], output: Output) -> Result<()> {
    #[derive(Serialize)]
    struct V<'a> {
        name: &'a str,
        replicas: u32,
        write_quorum: u32,
        root_ino: u64,
    }
    let rows: Vec<V> = vols
        .iter()
        .map(|v| V {
            name: &v.name,
            replicas: v.replicas,
            write_quorum: v.write_quorum,
            root_ino: v.root,
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            println!("{:<24} {:>8} {:>12}", "NAME", "REPLICAS", "WRITE-QUORUM");
            for v in rows {
                println!("{:<24} {:>8} {:>12}", v.name, v.replicas, v.write_quorum);
            }
        }
    }
    Ok(())
}

/// Creates a volume; `Ok(false)` if it already existed with the same settings.
pub async fn create_volume(
    client: &plait_client::ClusterClient,
    name: &str,
    replicas: u32,
    write_quorum: Option<u32>,
) -> Result<bool> {
    let write_quorum = write_quorum.unwrap_or_else(|| default_quorum(replicas));
    // Every copy needs its own node: more replicas than data nodes could never be met.
    let data_nodes = client
        .members()
        .await
        .map_err(|e| anyhow::anyhow!("reading the cluster map: {e}"))?
        .len();
    if replicas as usize > data_nodes {
        bail!(
            "volume {name}: {replicas} replicas need {replicas} data nodes, the cluster has {data_nodes}"
        );
    }
    if write_quorum == 0 || write_quorum > replicas {
        bail!("volume {name}: the write quorum must be between 1 and the replicas ({replicas})");
    }
    let op = MetaOp::CreateVolume {
        name: name.to_string(),
        replicas,
        write_quorum,
    };
    match client.meta(op).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == ErrorCode::Exists => Ok(false),
        Err(e) => bail!("creating volume {name}: {e}"),
    }
}

/// Runs a `plait volume` command.
pub async fn volume(cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            replicas,
            write_quorum,
            conn,
        } => {
            let client = conn.connect().await?;
            if create_volume(&client, &name, replicas, write_quorum).await? {
                println!("volume {name} created (replicas {replicas})");
            } else {
                bail!("volume {name} already exists");
            }
        }
        VolumeCmd::List { conn, output } => {
            let client = conn.connect().await?;
            match client.query(MetaQuery::ListVolumes).await? {
                MetaReply::Volumes(v) => print_volumes(&v, output)?,
                other => bail!("unexpected reply {other:?}"),
            }
        }
        VolumeCmd::Info { name, conn, output } => {
            let client = conn.connect().await?;
            match client.query(MetaQuery::Volume { name }).await? {
                MetaReply::Volume(v) => print_volumes(&[v], output)?,
                other => bail!("unexpected reply {other:?}"),
            }
        }
    }
    Ok(())
}

/// Runs `plait status`: every node's view of the cluster.
pub async fn status(args: StatusArgs) -> Result<()> {
    let client = args.conn.connect().await?;
    #[derive(Serialize)]
    struct Row {
        addr: String,
        up: bool,
        node_id: Option<u64>,
        leader: Option<u64>,
        term: Option<u64>,
        last_applied: Option<u64>,
        disk_free_bytes: Option<u64>,
        chunks: Option<u64>,
        error: Option<String>,
    }
    let mut rows = Vec::new();
    for addr in &args.conn.nodes {
        rows.push(match client.node_status(*addr).await {
            Ok(s) => Row {
                addr: addr.to_string(),
                up: true,
                node_id: Some(s.node_id),
                leader: s.leader,
                term: Some(s.term),
                last_applied: Some(s.last_applied),
                disk_free_bytes: Some(s.disk_free_bytes),
                chunks: Some(s.chunk_count),
                error: None,
            },
            Err(e) => Row {
                addr: addr.to_string(),
                up: false,
                node_id: None,
                leader: None,
                term: None,
                last_applied: None,
                disk_free_bytes: None,
                chunks: None,
                error: Some(e.to_string()),
            },
        });
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            println!(
                "{:<22} {:<5} {:>4} {:>7} {:>6} {:>10} {:>12} {:>8}",
                "NODE", "UP", "ID", "LEADER", "TERM", "APPLIED", "FREE-MIB", "CHUNKS"
            );
            for r in rows {
                let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<22} {:<5} {:>4} {:>7} {:>6} {:>10} {:>12} {:>8}{}",
                    r.addr,
                    if r.up { "yes" } else { "no" },
                    opt(r.node_id),
                    opt(r.leader),
                    opt(r.term),
                    opt(r.last_applied),
                    opt(r.disk_free_bytes.map(|b| b / (1024 * 1024))),
                    opt(r.chunks),
                    r.error.map(|e| format!("  ({e})")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
