//! plaitd configuration: a TOML file (`--config`) in which every key may also be given as a
//! flag; a flag wins over the file, the file over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;

/// Default Raft heartbeat interval, in milliseconds. openraft also uses it as the timeout
/// of one AppendEntries round, so it must leave room for a follower's fsync under load.
const HEARTBEAT_DEFAULT_MS: u64 = 250;

/// Default bounds of the Raft election timeout, in milliseconds. openraft makes a follower
/// that heard from a leader wait `election_max_ms` (the leader lease: it refuses votes
/// meanwhile) plus a random timeout in these bounds before it stands: a dead leader is
/// replaced 1.5–2 s after its last heartbeat with these values (3–4 s with 1,000–2,000).
const ELECTION_MIN_DEFAULT_MS: u64 = 500;
const ELECTION_MAX_DEFAULT_MS: u64 = 1_000;

/// Command-line flags; each mirrors a key of the TOML file.
#[derive(Debug, Parser, Default)]
#[command(name = "plaitd", version, about = "Plait storage node daemon")]
pub struct Args {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Raft id of this node (unique in the cluster, > 0).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// UDP address to listen on for QUIC.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address peers use to reach this node (default: `listen`).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Directory for the database and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory for chunks (default: `<data_dir>/chunks`).
    #[arg(long)]
    pub chunk_dir: Option<PathBuf>,
    /// Cluster CA certificate (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the CA.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Initialize a new metadata group with this node as its only voter (first start only).
    #[arg(long)]
    pub bootstrap: bool,
    /// A chunk unreferenced for at least this long may be deleted by GC.
    #[arg(long)]
    pub gc_grace_ms: Option<u64>,
    /// Pause between GC passes.
    #[arg(long)]
    pub gc_interval_ms: Option<u64>,
    /// Pause between heal passes (copies this node is missing, from the heal index).
    #[arg(long)]
    pub heal_interval_ms: Option<u64>,
    /// Raft heartbeat interval.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the Raft election timeout.
    #[arg(long)]
    pub election_min_ms: Option<u64>,
    /// Upper bound of the Raft election timeout.
    #[arg(long)]
    pub election_max_ms: Option<u64>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Join a cluster with this one-time token (from `plait node add`) on first start: the
    /// node gets its id and certificate from the cluster and keeps them in
    /// `<data_dir>/tls`; later starts use those and ignore the token.
    #[arg(long)]
    pub join: Option<String>,
    /// The cluster CA's private key (PEM): lets this node sign the certificates of nodes
    /// that join through it. Without it, it refuses joins.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Role of a statically configured node: both (default), data or witness. A joining
    /// node takes its role from its token.
    #[arg(long)]
    pub role: Option<String>,
    /// Failure zone of a statically configured node (a joining node takes its token's).
    #[arg(long)]
    pub zone: Option<String>,
}

/// The TOML file: same keys as the flags.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    chunk_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    bootstrap: Option<bool>,
    gc_grace_ms: Option<u64>,
    gc_interval_ms: Option<u64>,
    heal_interval_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    log_json: Option<bool>,
    join: Option<String>,
    ca_key: Option<PathBuf>,
    role: Option<String>,
    zone: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Set for a statically configured node; a joined node reads its id from its data dir.
    pub node_id: Option<u64>,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub data_dir: PathBuf,
    pub chunk_dir: PathBuf,
    /// `ca`, `cert` and `key` of a statically configured node.
    pub tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    pub join: Option<String>,
    pub ca_key: Option<PathBuf>,
    pub role: plait_proto::NodeRole,
    pub zone: Option<String>,
    pub bootstrap: bool,
    pub gc_grace_ms: u64,
    pub gc_interval_ms: u64,
    pub heal_interval_ms: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub log_json: bool,
}

fn required<T>(v: Option<T>, name: &str) -> Result<T> {
    v.with_context(|| {
        format!(
            "missing setting `{name}` (flag --{} or key in --config)",
            name.replace('_', "-")
        )
    })
}

impl Config {
    /// Merges flags over the file named by `--config` (if any) over defaults, and checks it.
    pub fn load(args: Args) -> Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_id = args.node_id.or(file.node_id);
        let join = args.join.or(file.join);
        let ca = args.ca.or(file.ca);
        let cert = args.cert.or(file.cert);
        let key = args.key.or(file.key);
        // A node either has its certificate files configured, or joins (and then keeps
        // what it got in its data dir).
        let tls_files = if join.is_some() && cert.is_none() {
            None
        } else {
            Some((
                required(ca, "ca")?,
                required(cert, "cert")?,
                required(key, "key")?,
            ))
        };
        if tls_files.is_some() && node_id.is_none() {
            required(node_id, "node_id")?;
        }
        let role = match args.role.or(file.role).as_deref() {
            None | Some("both") => plait_proto::NodeRole::Both,
            Some("data") => plait_proto::NodeRole::Data,
            Some("witness" | "voter") => plait_proto::NodeRole::Witness,
            Some(other) => bail!("role must be both, data or witness, not {other:?}"),
        };
        let listen = required(args.listen.or(file.listen), "listen")?;
        let data_dir = required(args.data_dir.or(file.data_dir), "data_dir")?;
        let chunk_dir = args
            .chunk_dir
            .or(file.chunk_dir)
            .unwrap_or_else(|| data_dir.join("chunks"));
        let heartbeat_ms = args
            .heartbeat_ms
            .or(file.heartbeat_ms)
            .unwrap_or(HEARTBEAT_DEFAULT_MS);
        let (election_min_ms, election_max_ms) = election_bounds(
            heartbeat_ms,
            args.election_min_ms.or(file.election_min_ms),
            args.election_max_ms.or(file.election_max_ms),
        );
        let cfg = Config {
            node_id,
            listen,
            advertise: args.advertise.or(file.advertise).unwrap_or(listen),
            chunk_dir,
            tls_files,
            join,
            ca_key: args.ca_key.or(file.ca_key),
            role,
            zone: args.zone.or(file.zone),
            bootstrap: args.bootstrap || file.bootstrap.unwrap_or(false),
            gc_grace_ms: args.gc_grace_ms.or(file.gc_grace_ms).unwrap_or(120_000),
            gc_interval_ms: args.gc_interval_ms.or(file.gc_interval_ms).unwrap_or(5_000),
            heal_interval_ms: args
                .heal_interval_ms
                .or(file.heal_interval_ms)
                .unwrap_or(1_000),
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            log_json: args.log_json || file.log_json.unwrap_or(false),
            data_dir,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if self.node_id == Some(0) {
            bail!("node_id must be greater than 0");
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.election_min_ms {
            bail!("heartbeat_ms must be > 0 and at most half of election_min_ms");
        }
        if self.election_min_ms >= self.election_max_ms {
            bail!("election_min_ms must be below election_max_ms");
        }
        if self.gc_interval_ms == 0 {
            bail!("gc_interval_ms must be > 0");
        }
        if self.heal_interval_ms == 0 {
            bail!("heal_interval_ms must be > 0");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// The election timeout bounds, in milliseconds: as configured, with a missing one derived
/// from the other (max = 2 × min), and with neither the defaults, raised to 2 × and 4 ×
/// the heartbeat when that is longer than the defaults allow. So a config written for
/// the old defaults (`election_min_ms = 1000` alone) or a longer heartbeat still loads.
fn election_bounds(heartbeat_ms: u64, min_ms: Option<u64>, max_ms: Option<u64>) -> (u64, u64) {
    match (min_ms, max_ms) {
        (Some(min), Some(max)) => (min, max),
        (Some(min), None) => (min, min.saturating_mul(2)),
        (None, Some(max)) => (max / 2, max),
        (None, None) => (
            ELECTION_MIN_DEFAULT_MS.max(heartbeat_ms.saturating_mul(2)),
            ELECTION_MAX_DEFAULT_MS.max(heartbeat_ms.saturating_mul(4)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_election_bound_is_derived_from_the_other() {
        assert_eq!(election_bounds(250, None, None), (500, 1_000));
        assert_eq!(election_bounds(250, Some(1_000), None), (1_000, 2_000));
        assert_eq!(election_bounds(250, None, Some(3_000)), (1_500, 3_000));
        assert_eq!(election_bounds(250, Some(700), Some(900)), (700, 900));
        // A longer heartbeat alone still gives bounds that pass the check.
        assert_eq!(election_bounds(400, None, None), (800, 1_600));
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plaitd.toml");
        std::fs::write(
            &path,
            "node_id = 3\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/d\"\nca = \"/ca\"\ncert = \"/c\"\nkey = \"/k\"\ngc_grace_ms = 5\n",
        )
        .unwrap();
        let args = Args {
            config: Some(path),
            gc_grace_ms: Some(9),
            ..Args::default()
        };
        let cfg = Config::load(args).unwrap();
        assert_eq!(cfg.node_id, Some(3));
        assert_eq!(cfg.gc_grace_ms, 9);
        assert_eq!(cfg.chunk_dir, PathBuf::from("/d/chunks"));
        assert_eq!(cfg.advertise, cfg.listen);
    }

    #[test]
    fn unknown_keys_and_missing_settings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plaitd.toml");
        std::fs::write(&path, "nodeid = 3\n").unwrap();
        let err = Config::load(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("nodeid"));
        let err = Config::load(Args {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/d".into()),
            ca: Some("/ca".into()),
            cert: Some("/c".into()),
            key: Some("/k".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("node_id"));
        // A joining node needs neither an id nor certificate files.
        let cfg = Config::load(Args {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/d".into()),
            join: Some("plait-join-1-00".into()),
            ..Args::default()
        })
        .unwrap();
        assert!(cfg.node_id.is_none() && cfg.tls_files.is_none());
    }
}
