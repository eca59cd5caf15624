//! `plait lock list`: who holds and who waits for which locks, cluster-wide.

use std::collections::HashMap;

use anyhow::{Result, bail};
use clap::Subcommand;
use plait_client::ClusterClient;
use plait_proto::lock::{LockType, OFFSET_MAX, SessionInfo};
use plait_proto::{Ino, MetaQuery, MetaReply};
use serde::Serialize;

use crate::admin::Output;
use crate::conn::ConnArgs;

/// Files asked for per `ListLocks` page.
const PAGE_FILES: u32 = 256;

/// `plait lock ...`
#[derive(Debug, Subcommand)]
pub enum LockCmd {
    /// Holders and waiters of every lock: path, range, type, session, client, pid, since.
    List {
        /// The volume `--path` is in (lock tables are cluster-wide: without `--path`
        /// every volume's locks are listed, with paths from their volume's root).
        #[arg(long, default_value = "default")]
        volume: String,
        /// Only locks of this file, a path inside the volume (e.g. /storage/logs/app.log).
        #[arg(long)]
        path: Option<String>,
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
    let mut rows = Vec::new();
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
