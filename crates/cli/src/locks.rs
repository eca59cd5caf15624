//! `plait lock list`: who holds and who waits for which locks, cluster-wide.

use std::collections::HashMap;

use anyhow::{Result, bail};
use clap::Subcommand;
use plait_client::ClusterClient;
use plait_proto::lock::{DelegationInfo, LockType, OFFSET_MAX, SessionInfo};
use plait_proto::{Ino, MetaOp, MetaQuery, MetaReply};
use serde::Serialize;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// Files asked for per `ListLocks` page.
const PAGE_FILES: u32 = 256;

/// `plait lock ...`
#[derive(Debug, Subcommand)]
pub enum LockCmd {
    /// Holders and waiters of every lock, and delegated files: path, range, type,
    /// session, client, pid, since.
    List {
        /// The volume `--path` is in (lock tables are cluster-wide: without `--path`
        /// every volume's locks are listed, with paths from their volume's root).
        #[arg(long, default_value = "default")]
        volume: String,
        /// Only locks of this file, a path inside the volume (e.g. /storage/logs/app.log).
        #[arg(long)]
        path: Option<String>,
        /// Ask mounts to give their lock delegations back first, so every lock shows up
        /// with its owner and range (a delegated file is otherwise listed as one
        /// "delegated" row: its mount grants its locks locally).
        #[arg(long)]
        exact: bool,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Serialize)]
struct Row {
    path: String,
    ino: Ino,
    state: &'static str,
    lock_type: &'static str,
    start: u64,
    /// Last byte, or null for "to end of file".
    end: Option<u64>,
    session: u64,
    client: String,
    pid: u32,
    /// Milliseconds since the epoch (held since / queued since).
    since_ms: u64,
}

async fn volume_root(client: &ClusterClient, name: &str) -> Result<Ino> {
    match client
        .query(MetaQuery::Volume {
            name: name.to_string(),
        })
        .await?
    {
        MetaReply::Volume(v) => Ok(v.root),
        other => bail!("unexpected reply {other:?}"),
    }
}

async fn resolve(client: &ClusterClient, root: Ino, path: &str) -> Result<Ino> {
    let mut ino = root;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match client
            .query(MetaQuery::Lookup {
                parent: ino,
                name: part.as_bytes().to_vec(),
                session: None,
            })
            .await?
        {
            MetaReply::Attr(a) => ino = a.ino,
            other => bail!("unexpected reply {other:?}"),
        }
    }
    Ok(ino)
}

/// The path of `ino` from its volume root, or `?` if it has none (unlinked).
async fn path_of(client: &ClusterClient, ino: Ino) -> String {
    match client.query(MetaQuery::InodePath { ino }).await {
        Ok(MetaReply::Path(Some(p))) => String::from_utf8_lossy(&p).into_owned(),
        _ => "?".to_string(),
    }
}

/// Every delegation (or only that of `only`), in inode order.
async fn delegations(client: &ClusterClient, only: Option<Ino>) -> Result<Vec<DelegationInfo>> {
    let mut out = Vec::new();
    let mut after = only.map(|i| i.saturating_sub(1));
    loop {
        let page = match client
            .query(MetaQuery::ListDelegations {
                after,
                limit: PAGE_FILES,
            })
            .await?
        {
            MetaReply::Delegations(d) => d,
            other => bail!("unexpected reply {other:?}"),
        };
        let Some(last) = page.last() else { break };
        after = Some(last.ino);
        let full = page.len() == PAGE_FILES as usize;
        out.extend(page.into_iter().filter(|d| only.is_none_or(|i| i == d.ino)));
        if !full || only.is_some() {
            break;
        }
    }
    Ok(out)
}

/// Most time `--exact` waits for mounts to give their delegations back, in milliseconds.
const RECALL_WAIT_MS: u64 = 5_000;

/// Asks the holders of every delegation (or of `only`'s) to give it back and waits, at
/// most [`RECALL_WAIT_MS`], until they did.
async fn recall_all(client: &ClusterClient, only: Option<Ino>) -> Result<()> {
    // Session 0 is never handed out, so it never holds a delegation itself.
    const NO_SESSION: u64 = 0;
    for d in delegations(client, only).await? {
        client
            .meta(MetaOp::RecallDelegation {
                ino: d.ino,
                session: NO_SESSION,
            })
            .await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(RECALL_WAIT_MS);
    while std::time::Instant::now() < deadline {
        if delegations(client, only).await?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("some mounts did not give their delegations back in time; listed as delegated");
    Ok(())
}

/// One row per delegated file.
async fn delegated_rows(
    client: &ClusterClient,
    only: Option<Ino>,
    sessions: &HashMap<u64, SessionInfo>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for d in delegations(client, only).await? {
        rows.push(Row {
            path: path_of(client, d.ino).await,
            ino: d.ino,
            state: "delegated",
            lock_type: "any",
            start: 0,
            end: None,
            session: d.session,
            client: sessions
                .get(&d.session)
                .map(|i| i.client.clone())
                .unwrap_or_else(|| "(expired)".into()),
            pid: 0,
            since_ms: u64::try_from(d.since.sec)
                .unwrap_or(0)
                .saturating_mul(1000)
                .saturating_add(u64::from(d.since.nsec / 1_000_000)),
        });
    }
    Ok(rows)
}

fn type_name(t: LockType) -> &'static str {
    match t {
        LockType::Read => "read",
        LockType::Write => "write",
    }
}

/// Runs a `plait lock` command.
pub async fn run(cmd: LockCmd) -> Result<()> {
    let LockCmd::List {
        volume,
        path,
        exact,
        conn,
        output,
    } = cmd;
    let client = conn.connect().await?;
    let only: Option<Ino> = match &path {
        Some(p) => Some(resolve(&client, volume_root(&client, &volume).await?, p).await?),
        None => None,
    };
    let sessions: HashMap<u64, SessionInfo> = match client.query(MetaQuery::ListSessions).await? {
        MetaReply::Sessions(s) => s.into_iter().map(|s| (s.id, s)).collect(),
        other => bail!("unexpected reply {other:?}"),
    };
    if exact {
        recall_all(&client, only).await?;
    }
    let mut rows = delegated_rows(&client, only, &sessions).await?;
    let mut after = only.map(|i| i.saturating_sub(1));
    loop {
        let page = match client
            .query(MetaQuery::ListLocks {
                after,
                limit: PAGE_FILES,
            })
            .await?
        {
            MetaReply::Locks(l) => l,
            other => bail!("unexpected reply {other:?}"),
        };
        let Some(last) = page.last() else { break };
        after = Some(last.ino);
        let full = page.len() == PAGE_FILES as usize;
        for file in page {
            if only.is_some_and(|i| i != file.ino) {
                continue;
            }
            let path = path_of(&client, file.ino).await;
            let client_of = |s: u64| {
                sessions
                    .get(&s)
                    .map(|i| i.client.clone())
                    .unwrap_or_else(|| "(expired)".into())
            };
            let end = |e: u64| (e < OFFSET_MAX && e != u64::MAX).then_some(e);
            for h in &file.holders {
                rows.push(Row {
                    path: path.clone(),
                    ino: file.ino,
                    state: "held",
                    lock_type: type_name(h.lock_type),
                    start: h.range.start(),
                    end: end(h.range.end()),
                    session: h.owner.session,
                    client: client_of(h.owner.session),
                    pid: h.pid,
                    since_ms: h.since_ms,
                });
            }
            for w in &file.waiters {
                rows.push(Row {
                    path: path.clone(),
                    ino: file.ino,
                    state: "waiting",
                    lock_type: type_name(w.lock_type),
                    start: w.range.start(),
                    end: end(w.range.end()),
                    session: w.owner.session,
                    client: client_of(w.owner.session),
                    pid: w.pid,
                    since_ms: w.queued_ms,
                });
            }
        }
        if !full || only.is_some() {
            break;
        }
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            println!(
                "{:<32} {:<8} {:<6} {:>21} {:>8} {:<24} {:>8} {:>9}",
                "PATH", "STATE", "TYPE", "RANGE", "SESSION", "CLIENT", "PID", "FOR-S"
            );
            for r in &rows {
                let range = match r.end {
                    Some(e) => format!("{}-{}", r.start, e),
                    None => format!("{}-EOF", r.start),
                };
                println!(
                    "{:<32} {:<8} {:<6} {:>21} {:>8} {:<24} {:>8} {:>9.1}",
                    r.path,
                    r.state,
                    r.lock_type,
                    range,
                    r.session,
                    r.client,
                    r.pid,
                    now_ms.saturating_sub(r.since_ms) as f64 / 1000.0
                );
            }
            println!("{} lock(s) held or awaited", rows.len());
        }
    }
    Ok(())
}
