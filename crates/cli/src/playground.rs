//! `plait playground`: a throwaway cluster of plaitd processes on 127.0.0.1 (or one
//! loopback address per node, `--distinct-ips`), with mounts, for trying Plait and for
//! tests. Its state lives in `DIR/playground.toml`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::cluster;
use crate::conn::ConnArgs;
use crate::mount::{self, MountArgs};

/// How long a node may take to start and elect a leader.
const NODE_READY_MS: u64 = 30_000;

/// How long a freshly started node may take to log that it serves before the playground
/// goes on without that sign, in milliseconds.
const NODE_START_MS: u64 = 5_000;

/// Ports tried for one node's first start.
const LAUNCH_ATTEMPTS_MAX: u32 = 3;
/// Most nodes a playground starts.
const NODES_MAX: u32 = 9;
/// How long a stopped process may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE_MS: u64 = 5_000;
/// With `--distinct-ips`, node K listens on and sends from 127.0.0.(this + K).
const DISTINCT_IP_BASE: u8 = 10;

/// `plait playground ...`
#[derive(Debug, Subcommand)]
pub enum PlaygroundCmd {
    /// Start N nodes, create volume `default`, optionally mount it.
    Up {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Mount the volume here.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Extra flags for plaitd, e.g. "--gc-grace-ms=1000".
        #[arg(long, allow_hyphen_values = true)]
        node_arg: Vec<String>,
        /// Lock session lease of the mount, in milliseconds.
        #[arg(long, default_value_t = plait_client::session::LEASE_DEFAULT_MS)]
        lease_ms: u64,
        /// Give node K the address 127.0.0.(10+K) (listen, advertise and source of its
        /// outgoing traffic) instead of 127.0.0.1, so that traffic between two nodes can
        /// be told apart from (and dropped independently of) all other loopback traffic.
        #[arg(long)]
        distinct_ips: bool,
        /// Make the last K of the nodes witnesses (metadata voters that store no chunks).
        #[arg(long, default_value_t = 0)]
        witness: u32,
    },
    /// Add another mount of the volume.
    Mount {
        #[arg(long)]
        dir: PathBuf,
        mountpoint: PathBuf,
        /// Lock session lease of the mount, in milliseconds.
        #[arg(long, default_value_t = plait_client::session::LEASE_DEFAULT_MS)]
        lease_ms: u64,
        /// Give the mount only node K's address (repeatable; default: every node): its
        /// metadata calls then reach the rest of the cluster only through what K tells it.
        #[arg(long)]
        via_node: Vec<u32>,
        /// Every close waits for its commit (see `plait mount --close-durable`).
        #[arg(long)]
        close_durable: bool,
    },
    /// SIGSTOP node K: a hung node that keeps its sockets open.
    PauseNode {
        #[arg(long)]
        dir: PathBuf,
        k: u32,
    },
    /// SIGCONT node K after `pause-node`.
    ResumeNode {
        #[arg(long)]
        dir: PathBuf,
        k: u32,
    },
    /// SIGKILL node K (1-based).
    StopNode {
        #[arg(long)]
        dir: PathBuf,
        k: u32,
    },
    /// Restart node K.
    StartNode {
        #[arg(long)]
        dir: PathBuf,
        k: u32,
    },
    /// Show nodes, mounts and volumes.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the environment for admin commands against this playground
    /// (`eval $(plait playground env --dir DIR)`).
    Env {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Unmount everything and stop every process.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeEntry {
    id: u64,
    addr: SocketAddr,
    pid: Option<u32>,
    extra_args: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MountEntry {
    path: PathBuf,
    pid: u32,
    log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct State {
    nodes: Vec<NodeEntry>,
    mounts: Vec<MountEntry>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("playground.toml")
}

fn load(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no playground in {} (run `plait playground up`)",
            dir.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn save(dir: &Path, state: &State) -> Result<()> {
    let text = toml::to_string(state)?;
    cluster::write_file(&state_path(dir), &text, false)
}

fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

fn node_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}"))
}

/// A UDP port free on `ip` at the time of the call.
fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("finding a free UDP port on {ip}"))?;
    Ok(sock.local_addr()?)
}

/// The address node `id` listens on: its own loopback address with `distinct_ips`.
fn node_ip(id: u64, distinct_ips: bool) -> Result<IpAddr> {
    if !distinct_ips {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let last = u8::try_from(id)
        .ok()
        .and_then(|id| id.checked_add(DISTINCT_IP_BASE))
        .with_context(|| format!("node {id}: no distinct loopback address"))?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

fn plaitd_path() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("plaitd");
    if sibling.exists() {
        return Ok(sibling);
    }
    Ok(PathBuf::from("plaitd"))
}

fn conn(dir: &Path, state: &State) -> ConnArgs {
    ConnArgs {
        nodes: state.nodes.iter().map(|n| n.addr).collect(),
        tls_dir: tls_dir(dir),
        // The default RPC timeout, so that failover is measured as deployed; a shorter
        // operation timeout, so that a playground without a majority fails fast.
        rpc_timeout_ms: plait_client::RPC_TIMEOUT_DEFAULT_MS,
        op_timeout_ms: 10_000,
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Starts node `i` of `state` for the first time on a free port picked now (a port picked
/// ahead and released could be taken by any other socket before the node binds it), with
/// the config `write_config` writes for that address; on another port if the node exits
/// at once (its port was taken between the pick and its bind), at most
/// [`LAUNCH_ATTEMPTS_MAX`] times.
fn launch(
    dir: &Path,
    state: &mut State,
    i: usize,
    write_config: impl Fn(SocketAddr) -> Result<()>,
) -> Result<()> {
    let ip = state.nodes[i].addr.ip();
    let id = state.nodes[i].id;
    for attempt in 1..=LAUNCH_ATTEMPTS_MAX {
        let addr = free_port(ip)?;
        state.nodes[i].addr = addr;
        write_config(addr)?;
        start_node(dir, &mut state.nodes[i])?;
        if serving_soon(dir, &state.nodes[i]) {
            return Ok(());
        }
        eprintln!("node {id} exited at start on {addr} (attempt {attempt}); trying another port");
    }
    bail!("node {id} did not start in {LAUNCH_ATTEMPTS_MAX} attempts (see its plaitd.log)")
}

/// False if `node` exited before its log said it serves (within [`NODE_START_MS`]); true
/// once it serves, or if it is still running then.
fn serving_soon(dir: &Path, node: &NodeEntry) -> bool {
    let Some(pid) = node.pid else {
        return false;
    };
    let log = node_dir(dir, node.id).join("plaitd.log");
    let deadline = Instant::now() + Duration::from_millis(NODE_START_MS);
    while Instant::now() < deadline {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains("plaitd serving")) {
            return true;
        }
        if let Ok(p) = i32::try_from(pid) {
            // SAFETY: non-blocking waitpid on our own child: reaps it if it exited.
            let reaped = unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
            if reaped == p {
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    alive(pid)
}

fn start_node(dir: &Path, node: &mut NodeEntry) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let ndir = node_dir(dir, node.id);
    let log_path = ndir.join("plaitd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = Command::new(plaitd_path()?)
        .arg("--config")
        .arg(ndir.join("plaitd.toml"))
        .args(&node.extra_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting plaitd")?;
    node.pid = Some(child.id());
    Ok(())
}

fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: sending a signal to a process we started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // Reap it if it is our child (it is not, after the CLI that started it exited).
        if let Ok(p) = i32::try_from(pid) {
            // SAFETY: non-blocking waitpid on a pid; harmless if it is not our child.
            unsafe {
                libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

async fn wait_ready(dir: &Path, state: &State) -> Result<()> {
    wait_ready_with(&conn(dir, state)).await
}

async fn wait_ready_with(conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let deadline = Instant::now() + Duration::from_millis(NODE_READY_MS);
    let mut last_err = String::new();
    while Instant::now() < deadline {
        match client.query(plait_proto::MetaQuery::ListVolumes).await {
            Ok(_) => return Ok(()),
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("cluster not ready after {NODE_READY_MS} ms: {last_err}")
}

/// Options of `playground up`.
struct UpArgs<'a> {
    nodes: u32,
    replicas: u32,
    witness: u32,
    mountpoint: Option<(&'a Path, u64)>,
    extra: &'a [String],
    distinct_ips: bool,
}

async fn up(dir: &Path, args: UpArgs<'_>) -> Result<()> {
    let UpArgs {
        nodes,
        replicas,
        witness,
        mountpoint,
        extra,
        distinct_ips,
    } = args;
    if !(1..=NODES_MAX).contains(&nodes) {
        bail!("--nodes must be between 1 and {NODES_MAX}");
    }
    if witness >= nodes {
        bail!("--witness must leave at least one data node (--nodes {nodes})");
    }
    let data_nodes = nodes - witness;
    if replicas == 0 || replicas > data_nodes {
        bail!("--replicas must be between 1 and the data nodes ({data_nodes})");
    }
    if state_path(dir).exists() {
        let state = load(dir)?;
        if state.nodes.iter().any(|n| n.pid.is_some_and(alive)) {
            bail!(
                "a playground is already running in {}; run `plait playground down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
    }
    // Start clean: a previous playground's nodes would hold another CA and Raft state.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("node") || name == "tls" {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    std::fs::create_dir_all(dir)?;
    let tls = tls_dir(dir);
    let ca = cluster::create_ca(&tls, "plait-playground")?;
    let mut state = State::default();
    // Node 1 is configured statically and bootstraps the metadata group; every other
    // node joins through the real token path (`plaitd --join`), as on a real cluster.
    cluster::issue_node_cert(&tls, &ca, 1)?;
    for id in 1..=u64::from(nodes) {
        std::fs::create_dir_all(node_dir(dir, id))?;
        state.nodes.push(NodeEntry {
            id,
            // Picked when the node starts (see `launch`).
            addr: SocketAddr::new(node_ip(id, distinct_ips)?, 0),
            pid: None,
            extra_args: extra.to_vec(),
        });
    }
    let first_dir = node_dir(dir, 1);
    launch(dir, &mut state, 0, |addr| {
        let config = cluster::node_config(1, addr, &first_dir.join("data"), &tls, true);
        cluster::write_file(&first_dir.join("plaitd.toml"), &config, false)
    })?;
    save(dir, &state)?;
    let mut first = conn(dir, &state);
    first.nodes.truncate(1);
    wait_ready_with(&first).await?;
    let ca_key = tls.join("ca.key");
    for i in 1..state.nodes.len() {
        let id = state.nodes[i].id;
        let role = if id > u64::from(data_nodes) {
            plait_proto::NodeRole::Witness
        } else {
            plait_proto::NodeRole::Both
        };
        let mut known = conn(dir, &state);
        known.nodes.truncate(i);
        let client = known.connect().await?;
        let token = crate::nodes::create_token(&client, &tls, role, None, NODE_READY_MS)
            .await
            .with_context(|| format!("creating a join token for node {id}"))?;
        let ndir = node_dir(dir, id);
        launch(dir, &mut state, i, |addr| {
            let config =
                cluster::joining_node_config(addr, &ndir.join("data"), &token, Some(&ca_key));
            cluster::write_file(&ndir.join("plaitd.toml"), &config, false)
        })?;
        save(dir, &state)?;
        wait_member(&client, id, state.nodes[i].addr, role.votes()).await?;
    }
    let client = conn(dir, &state).connect().await?;
    crate::admin::create_volume(&client, "default", replicas, None).await?;
    println!(
        "playground up in {}: {} node(s), volume `default` with {} replica(s)",
        dir.display(),
        nodes,
        replicas
    );
    for n in &state.nodes {
        println!("  node {} at {} (pid {})", n.id, n.addr, n.pid.unwrap_or(0));
    }
    if let Some((mnt, lease_ms)) = mountpoint {
        add_mount(dir, &mut state, mnt, lease_ms, &[], false)?;
    }
    println!(
        "admin CLI: export PLAIT_NODES={} PLAIT_TLS_DIR={}",
        state
            .nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(","),
        tls.display()
    );
    Ok(())
}

/// Waits until node `id` at `addr` is a member of the metadata group (a voter if
/// `voter`): it joined with its token and the leader added it.
async fn wait_member(
    client: &plait_client::ClusterClient,
    id: u64,
    addr: SocketAddr,
    voter: bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(NODE_READY_MS);
    let addr = addr.to_string();
    let mut last = String::from("not in the cluster map yet");
    while Instant::now() < deadline {
        match client.node_infos().await {
            Ok(nodes) => {
                if let Some(n) = nodes.iter().find(|n| n.addr == addr) {
                    if n.id != id {
                        bail!("node at {addr} joined as node {} instead of {id}", n.id);
                    }
                    if n.member && (n.voter || !voter) {
                        return Ok(());
                    }
                    last = format!("member: {}, voter: {}", n.member, n.voter);
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("node {id} did not join within {NODE_READY_MS} ms: {last}")
}

/// Mounts volume `default` at `mnt` with a lock lease of `lease_ms`, through the nodes
/// `via` (1-based; empty: all nodes), closes durable if `close_durable`.
fn add_mount(
    dir: &Path,
    state: &mut State,
    mnt: &Path,
    lease_ms: u64,
    via: &[u32],
    close_durable: bool,
) -> Result<()> {
    std::fs::create_dir_all(mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let mnt = std::fs::canonicalize(mnt)?;
    if mount::is_plait_mount(&mnt) {
        bail!("{} is already a Plait mount", mnt.display());
    }
    let log = dir.join(format!("mount-{}.log", state.mounts.len() + 1));
    let mut conn = conn(dir, state);
    if !via.is_empty() {
        let mut nodes = Vec::with_capacity(via.len());
        for k in via {
            nodes.push(state.nodes[node_index(state, *k)?].addr);
        }
        conn.nodes = nodes;
    }
    let args = MountArgs {
        mountpoint: mnt.clone(),
        volume: "default".into(),
        conn,
        foreground: true,
        log_file: Some(log.clone()),
        attr_timeout_ms: 1_000,
        entry_timeout_ms: 1_000,
        data_cache_mib: 256,
        dirty_file_mib: 64,
        dirty_total_mib: 256,
        allow_other: true,
        threads: 2,
        lease_ms,
        no_dir_delegation: false,
        close_durable,
    };
    let mut child = mount::spawn_detached(&args, &log)?;
    mount::wait_mounted(&mnt, &mut child, &log)?;
    println!("  mounted at {} (pid {})", mnt.display(), child.id());
    state.mounts.push(MountEntry {
        path: mnt,
        pid: child.id(),
        log,
    });
    save(dir, state)
}

fn node_index(state: &State, k: u32) -> Result<usize> {
    let idx = usize::try_from(k).unwrap_or(0);
    if idx == 0 || idx > state.nodes.len() {
        bail!(
            "node {k} does not exist (the playground has {} nodes)",
            state.nodes.len()
        );
    }
    Ok(idx - 1)
}

async fn status(dir: &Path) -> Result<()> {
    let state = load(dir)?;
    let client = conn(dir, &state).connect().await?;
    println!(
        "{:<6} {:<22} {:<8} {:<8} {:>6}",
        "NODE", "ADDRESS", "PROCESS", "LEADER", "TERM"
    );
    for n in &state.nodes {
        let running = n.pid.is_some_and(alive);
        let (leader, term) = match client.node_status(n.addr).await {
            Ok(s) => (
                s.leader.map(|l| l.to_string()).unwrap_or("-".into()),
                s.term.to_string(),
            ),
            Err(_) => ("-".into(), "-".into()),
        };
        println!(
            "{:<6} {:<22} {:<8} {:<8} {:>6}",
            n.id,
            n.addr,
            if running { "running" } else { "stopped" },
            leader,
            term
        );
    }
    for m in &state.mounts {
        let ok = alive(m.pid) && mount::is_plait_mount(&m.path);
        println!(
            "mount {} (pid {}): {}",
            m.path.display(),
            m.pid,
            if ok { "mounted" } else { "NOT mounted" }
        );
    }
    match client.query(plait_proto::MetaQuery::ListVolumes).await {
        Ok(plait_proto::MetaReply::Volumes(vols)) => {
            for v in vols {
                println!(
                    "volume {}: replicas {}, write quorum {}, healthy",
                    v.name, v.replicas, v.write_quorum
                );
            }
        }
        Ok(other) => println!("volumes: unexpected reply {other:?}"),
        Err(e) => println!("volumes: unavailable ({e})"),
    }
    Ok(())
}

/// Stops a process: SIGTERM, then SIGKILL if it is still there after the grace period.
fn stop_process(pid: u32) {
    if !alive(pid) {
        return;
    }
    kill(pid, libc::SIGTERM);
    if !wait_exit(pid, Duration::from_millis(STOP_GRACE_MS)) {
        kill(pid, libc::SIGKILL);
        wait_exit(pid, Duration::from_millis(STOP_GRACE_MS));
    }
}

fn down(dir: &Path) -> Result<()> {
    let mut state = load(dir)?;
    for m in &state.mounts {
        if mount::is_plait_mount(&m.path)
            && let Err(e) = mount::unmount(&m.path)
        {
            eprintln!("warning: {e:#}");
        }
        stop_process(m.pid);
    }
    state.mounts.clear();
    for n in &mut state.nodes {
        if let Some(pid) = n.pid.take() {
            stop_process(pid);
        }
    }
    match std::fs::remove_file(state_path(dir)) {
        Ok(()) => {}
        // Another `down` finished first: the playground is down either way.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    println!("playground in {} is down", dir.display());
    Ok(())
}

/// Sends `signal` to node K's process.
fn signal_node(dir: &Path, k: u32, signal: i32, done: &str) -> Result<()> {
    let state = load(dir)?;
    let i = node_index(&state, k)?;
    match state.nodes[i].pid {
        Some(pid) if alive(pid) => {
            kill(pid, signal);
            println!("node {k} {done}");
            Ok(())
        }
        _ => bail!("node {k} is not running"),
    }
}

/// Runs a `plait playground` command.
pub async fn run(cmd: PlaygroundCmd) -> Result<()> {
    match cmd {
        PlaygroundCmd::Up {
            dir,
            nodes,
            replicas,
            mount,
            node_arg,
            lease_ms,
            distinct_ips,
            witness,
        } => {
            let mountpoint = mount.as_deref().map(|m| (m, lease_ms));
            let args = UpArgs {
                nodes,
                replicas,
                witness,
                mountpoint,
                extra: &node_arg,
                distinct_ips,
            };
            up(&dir, args).await
        }
        PlaygroundCmd::Mount {
            dir,
            mountpoint,
            lease_ms,
            via_node,
            close_durable,
        } => {
            let mut state = load(&dir)?;
            add_mount(
                &dir,
                &mut state,
                &mountpoint,
                lease_ms,
                &via_node,
                close_durable,
            )
        }
        PlaygroundCmd::StopNode { dir, k } => {
            let mut state = load(&dir)?;
            let i = node_index(&state, k)?;
            if let Some(pid) = state.nodes[i].pid.take() {
                kill(pid, libc::SIGKILL);
                wait_exit(pid, Duration::from_millis(STOP_GRACE_MS));
            }
            save(&dir, &state)?;
            println!("node {k} killed");
            Ok(())
        }
        PlaygroundCmd::PauseNode { dir, k } => signal_node(&dir, k, libc::SIGSTOP, "paused"),
        PlaygroundCmd::ResumeNode { dir, k } => signal_node(&dir, k, libc::SIGCONT, "resumed"),
        PlaygroundCmd::StartNode { dir, k } => {
            let mut state = load(&dir)?;
            let i = node_index(&state, k)?;
            if state.nodes[i].pid.is_some_and(alive) {
                bail!("node {k} is already running");
            }
            start_node(&dir, &mut state.nodes[i])?;
            save(&dir, &state)?;
            wait_ready(&dir, &state).await?;
            println!("node {k} started");
            Ok(())
        }
        PlaygroundCmd::Status { dir } => status(&dir).await,
        PlaygroundCmd::Env { dir } => {
            let state = load(&dir)?;
            let c = conn(&dir, &state);
            let nodes: Vec<String> = c.nodes.iter().map(ToString::to_string).collect();
            println!(
                "export PLAIT_NODES={} PLAIT_TLS_DIR={}",
                nodes.join(","),
                c.tls_dir.display()
            );
            Ok(())
        }
        PlaygroundCmd::Down { dir } => down(&dir),
    }
}
