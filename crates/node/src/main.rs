//! plaitd: one Plait storage node. It serves the metadata group (Raft over RocksDB), the
//! chunk store, and one QUIC endpoint with mutual TLS for every peer.

// openraft's error types (StorageError, RPCError) are large by design; we return them as
// its traits require.
#![allow(clippy::result_large_err)]

mod config;
mod gc;
mod heal;
mod join;
mod network;
mod placement;
mod raft_types;
mod recent_puts;
mod service;
mod sessions;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use openraft::BasicNode;
use plait_chunks::ChunkStore;
use plait_net::{RpcClient, Server, ServerLimits};

use crate::config::{Args, Config};
use crate::service::Service;

/// How often the leader looks for sessions past their lease.
const SESSION_SWEEP_INTERVAL_MS: u64 = 500;

/// How often the chunk count shown by `plait status` is refreshed.
const CHUNK_COUNT_INTERVAL_MS: u64 = 10_000;

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn raft_config(cfg: &Config) -> Result<Arc<openraft::Config>> {
    let rc = openraft::Config {
        cluster_name: "plait".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_min_ms,
        election_timeout_max: cfg.election_max_ms,
        // Keep AppendEntries frames well under plait_proto::FRAME_MAX_BYTES.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(50_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    };
    Ok(Arc::new(rc.validate().context("raft config")?))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::load(Args::parse())?;
    init_logging(cfg.log_json);
    run(cfg).await
}

async fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let ident = join::identity(&cfg).await?;
    let identity = ident.tls.clone();
    let node_id = ident.node_id;
    let ca_key = match &cfg.ca_key {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading CA key {}", path.display()))?,
        ),
        None => None,
    };
    let db = store::Db::open(&cfg.data_dir.join("db")).context("opening database")?;
    let chunks = Arc::new(ChunkStore::open(&cfg.chunk_dir).context("opening chunk store")?);

    // Node-to-node packets leave from the node's own listen address (any port), so peers
    // and packet filters see them as this node's; an unspecified listen address leaves the
    // choice to the kernel.
    let rpc = if cfg.listen.ip().is_unspecified() {
        RpcClient::new(&identity)
    } else {
        RpcClient::bound(&identity, cfg.listen.ip())
    }
    .context("creating QUIC client")?;
    let log_store = store::LogStore::new(db.clone(), node_id).context("opening the Raft log")?;
    let durable = log_store.durable();
    let state_machine = store::StateMachine::new(
        db.clone(),
        cfg.data_dir.join("snapshot.bin"),
        durable.clone(),
    );
    let applied = state_machine.applied();
    let raft = openraft::Raft::new(
        node_id,
        raft_config(&cfg)?,
        network::Network::new(rpc.clone(), durable),
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;

    let server = Server::bind(cfg.listen, &identity, ServerLimits::default())
        .with_context(|| format!("binding {}", cfg.listen))?;
    let service = Arc::new(Service {
        node_id,
        addr: cfg.advertise.to_string(),
        ca_pem: identity.ca_pem.clone(),
        ca_key,
        join_permits: tokio::sync::Semaphore::new(service::JOINS_IN_FLIGHT_MAX),
        raft: raft.clone(),
        db,
        applied,
        read_lease_ms: cfg.election_min_ms / 2,
        read_lease: std::sync::Mutex::new(None),
        chunks,
        chunk_count: AtomicU64::new(0),
        rpc,
        heal_trigger: tokio::sync::Notify::new(),
        healed_chunks: AtomicU64::new(0),
        healed_bytes: AtomicU64::new(0),
        recent_puts: recent_puts::RecentPuts::new(),
        // A node runs a placement pass at start: one cut by a restart runs again.
        placement_requested: AtomicBool::new(true),
        placement_running: AtomicBool::new(false),
        placement_copied_chunks: AtomicU64::new(0),
        placement_copied_bytes: AtomicU64::new(0),
        placement_dropped_chunks: AtomicU64::new(0),
    });

    if cfg.bootstrap && !raft.is_initialized().await? {
        let mut members = BTreeMap::new();
        members.insert(
            node_id,
            BasicNode {
                addr: cfg.advertise.to_string(),
            },
        );
        raft.initialize(members)
            .await
            .context("bootstrapping metadata group")?;
        tracing::info!(node_id, "bootstrapped a new metadata group");
    }
    match ident.pending_add {
        Some(addrs) => {
            tokio::spawn(join::add_self(service.clone(), cfg.data_dir.clone(), addrs));
        }
        None if cfg.tls_files.is_some() => {
            tokio::spawn(join::register_self(
                service.clone(),
                cfg.role,
                cfg.zone.clone(),
            ));
        }
        None => {}
    }

    let counter = service.clone();
    tokio::spawn(async move {
        loop {
            counter.refresh_chunk_count().await;
            tokio::time::sleep(Duration::from_millis(CHUNK_COUNT_INTERVAL_MS)).await;
        }
    });
    tokio::spawn(gc::run(
        service.clone(),
        Duration::from_millis(cfg.gc_interval_ms),
        Duration::from_millis(cfg.gc_grace_ms),
    ));
    tokio::spawn(heal::run(
        service.clone(),
        Duration::from_millis(cfg.heal_interval_ms),
    ));
    tokio::spawn(sessions::run(
        service.clone(),
        Duration::from_millis(SESSION_SWEEP_INTERVAL_MS),
    ));
    tracing::info!(node_id, listen = %cfg.listen, "plaitd serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = server.run(Arc::new(service::Handler(service.clone()))) => {}
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    server.close();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    Ok(())
}
