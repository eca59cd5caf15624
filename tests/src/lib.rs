//! Helpers for multi-process tests: start a real playground (plaitd processes and FUSE
//! mounts) through the `plait` binary, and tear it down when the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Directory holding the built `plait` and `plaitd` binaries: `$PLAIT_BIN_DIR`, or the
/// cargo profile directory this test executable was built into.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PLAIT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/<triple>/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the cargo profile directory")?;
    Ok(dir.to_path_buf())
}

/// Runs `plait ARGS...` and returns its stdout; fails with its stderr if it fails.
pub fn plait(args: &[&str]) -> Result<String> {
    let bin = bin_dir()?.join("plait");
    if !bin.exists() {
        bail!(
            "{} not built: run `cargo build --bins` first",
            bin.display()
        );
    }
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "plait {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running playground with one mount; brought down on drop.
pub struct Playground {
    /// Playground state directory (kept in a temp dir).
    pub dir: tempfile::TempDir,
    /// The first mount.
    pub mnt: PathBuf,
    extra_mounts: u32,
}

impl Playground {
    /// Starts `nodes` nodes with volume `default` of `replicas` copies, mounted at
    /// `<dir>/mnt`. `node_args` are passed to every plaitd.
    pub fn up(nodes: u32, replicas: u32, node_args: &[&str]) -> Result<Self> {
        Self::up_with(nodes, replicas, node_args, &[])
    }

    /// Like [`Playground::up`], with extra flags for `plait playground up` itself (e.g.
    /// `--distinct-ips`).
    pub fn up_with(
        nodes: u32,
        replicas: u32,
        node_args: &[&str],
        up_flags: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("plait-test-").tempdir()?;
        let mnt = dir.path().join("mnt");
        let d = dir.path().to_string_lossy().into_owned();
        let m = mnt.to_string_lossy().into_owned();
        let n = nodes.to_string();
        let r = replicas.to_string();
        let mut args = vec![
            "playground",
            "up",
            "--dir",
            &d,
            "--nodes",
            &n,
            "--replicas",
            &r,
            "--mount",
            &m,
        ];
        let node_args: Vec<String> = node_args
            .iter()
            .map(|a| format!("--node-arg={a}"))
            .collect();
        args.extend(node_args.iter().map(String::as_str));
        args.extend_from_slice(up_flags);
        plait(&args)?;
        Ok(Self {
            dir,
            mnt,
            extra_mounts: 0,
        })
    }

    /// Adds another mount of the same volume and returns its path.
    pub fn mount(&mut self) -> Result<PathBuf> {
        self.mount_via(&[])
    }

    /// Adds another mount of the same volume that is given only the addresses of nodes
    /// `via` (1-based; empty: all), and returns its path.
    pub fn mount_via(&mut self, via: &[u32]) -> Result<PathBuf> {
        let via: Vec<String> = via.iter().map(|k| format!("--via-node={k}")).collect();
        let via: Vec<&str> = via.iter().map(String::as_str).collect();
        self.mount_with(&via)
    }

    /// Adds another mount of the same volume with extra `playground mount` flags (e.g.
    /// `--lease-ms=2000`), and returns its path.
    pub fn mount_with(&mut self, flags: &[&str]) -> Result<PathBuf> {
        self.extra_mounts += 1;
        let mnt = self
            .dir
            .path()
            .join(format!("mnt{}", self.extra_mounts + 1));
        let d = self.dir.path().to_string_lossy().into_owned();
        let m = mnt.to_string_lossy().into_owned();
        let mut args = vec!["playground", "mount", "--dir", &d];
        args.extend_from_slice(flags);
        args.push(&m);
        plait(&args)?;
        Ok(mnt)
    }

    /// Runs a playground subcommand against this playground (e.g. `stop-node 1`).
    pub fn cmd(&self, sub: &str, rest: &[&str]) -> Result<String> {
        let d = self.dir.path().to_string_lossy().into_owned();
        let mut args = vec!["playground", sub, "--dir", &d];
        args.extend_from_slice(rest);
        plait(&args)
    }

    /// Runs an admin command (`plait heal info`, ...) against this playground's nodes.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let env = self.cmd("env", &[])?;
        let mut cmd = Command::new(bin_dir()?.join("plait"));
        cmd.args(args);
        for pair in env.trim().trim_start_matches("export ").split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                cmd.env(k, v);
            }
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "plait {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Path of the node's log, for diagnostics.
    pub fn node_log(&self, k: u32) -> PathBuf {
        self.dir.path().join(format!("node{k}")).join("plaitd.log")
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Err(e) = self.cmd("down", &[]) {
            eprintln!("playground down failed: {e:#}");
        }
    }
}

/// A tmpfs mounted for one test (root only), unmounted on drop: gives a test a file system
/// whose free space only it changes, or one small enough to fill.
pub struct Tmpfs {
    /// Kept alive so the mount point outlives the mount.
    _dir: tempfile::TempDir,
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at a fresh temporary directory.
    pub fn mount(size_mib: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("plait-tmpfs-").tempdir()?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .status()?
            .success();
        if !ok {
            bail!("mounting a tmpfs at {} failed (needs root)", path.display());
        }
        Ok(Self { _dir: dir, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Smallest [`content`]: just over the inline bound, so every such file is a chunk on the
/// data nodes (smaller files live in the metadata group).
pub const CONTENT_MIN_BYTES: usize = plait_proto::INLINE_CHUNK_MAX_BYTES + 1024;

/// Distinct bytes for file `i` of a test run tagged `tag`: between [`CONTENT_MIN_BYTES`]
/// and `CONTENT_MIN_BYTES + max_extra_bytes`, so that every file is one chunk of its own
/// stored on data nodes.
pub fn content(tag: &str, i: usize, max_extra_bytes: usize) -> Vec<u8> {
    let len = CONTENT_MIN_BYTES + (i * 7919) % max_extra_bytes.max(1);
    let seed = blake3::hash(format!("{tag}-{i}").as_bytes());
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(seed.as_bytes());
    }
    out.truncate(len);
    out
}

/// Where playground node `node` under `dir` keeps the chunk holding exactly `data`.
pub fn chunk_file(dir: &Path, node: u32, data: &[u8]) -> PathBuf {
    let hex = blake3::hash(data).to_hex().to_string();
    dir.join(format!("node{node}"))
        .join("data")
        .join("chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex)
}

/// Whether the file at `path` exists and holds bytes hashing to its name's chunk id.
pub fn chunk_intact(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    std::fs::read(path).is_ok_and(|bytes| blake3::hash(&bytes).to_hex().as_str() == name)
}

/// The `replicas` data nodes (playground node K has id K) the chunk holding exactly
/// `data` is placed on under the map `nodes` (no zones), as the client computes it.
pub fn placed_nodes(nodes: &[u32], replicas: usize, data: &[u8]) -> Vec<u32> {
    let id = plait_proto::ChunkId::of(data);
    plait_client::placement::place(&id, nodes, replicas, |n| u64::from(*n))
}

/// Of `nodes`, the ones without an intact (hash-verified) copy of the chunk holding
/// exactly `data`.
pub fn nodes_missing_chunk(dir: &Path, nodes: &[u32], data: &[u8]) -> Vec<u32> {
    nodes
        .iter()
        .copied()
        .filter(|n| !chunk_intact(&chunk_file(dir, *n, data)))
        .collect()
}

/// The metadata leader according to `playground status` (the LEADER column of a running
/// node that knows one).
pub fn leader(pg: &Playground) -> Option<u32> {
    let out = pg.cmd("status", &[]).ok()?;
    out.lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("running"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .next()
}

/// Pending heal chunks per node, from `plait heal info --output json`.
pub fn heal_pending(pg: &Playground) -> Result<Vec<(u64, u64)>> {
    let out = pg.admin(&["heal", "info", "--output", "json"])?;
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    Ok(rows
        .as_array()
        .context("heal info: not a JSON array")?
        .iter()
        .filter_map(|r| Some((r["node"].as_u64()?, r["pending_chunks"].as_u64()?)))
        .collect())
}

/// One node's row of `plait debug digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDigest {
    /// Raft id of the node.
    pub node: u32,
    /// Its QUIC address.
    pub addr: String,
    /// Index of the last log entry it applied.
    pub last_applied: u64,
    /// Keys in its metadata state.
    pub entries: u64,
    /// Digest of its metadata state (and `last_applied`).
    pub digest: String,
}

/// Every node's applied index and state digest, from `plait debug digest --output json`
/// (all nodes asked at once); fails if a node did not answer.
pub fn state_digests(pg: &Playground) -> Result<Vec<NodeDigest>> {
    let out = pg.admin(&["debug", "digest", "--output", "json"])?;
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    let rows = rows.as_array().context("debug digest: not a JSON array")?;
    let mut digests = Vec::with_capacity(rows.len());
    for r in rows {
        let addr = r["addr"].as_str().unwrap_or_default().to_string();
        if let Some(e) = r["error"].as_str() {
            bail!("node {addr}: no digest: {e}");
        }
        digests.push(NodeDigest {
            node: r["node_id"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .context("debug digest: no node_id")?,
            last_applied: r["last_applied"]
                .as_u64()
                .context("debug digest: no last_applied")?,
            entries: r["entries"].as_u64().context("debug digest: no entries")?,
            digest: r["digest"]
                .as_str()
                .context("debug digest: no digest")?
                .to_string(),
            addr,
        });
    }
    Ok(digests)
}

/// One node's row of `plait playground status`: what that node says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node (1-based).
    pub node: u32,
    /// Its QUIC address.
    pub addr: String,
    /// The leader it knows of (`None`: none, or it did not answer).
    pub leader: Option<u32>,
    /// Its Raft term (`None` if it did not answer).
    pub term: Option<u64>,
}

/// Every node's view, from `plait playground status`.
pub fn node_views(pg: &Playground) -> Result<Vec<NodeView>> {
    let out = pg.cmd("status", &[])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(NodeView {
                node: f.first()?.parse().ok()?,
                addr: f.get(1)?.to_string(),
                leader: f.get(3).and_then(|v| v.parse().ok()),
                term: f.get(4).and_then(|v| v.parse().ok()),
            })
        })
        .collect())
}

/// The process id of the playground mount at `mnt`, from `playground status`.
pub fn mount_pid(pg: &Playground, mnt: &Path) -> Option<u32> {
    let out = pg.cmd("status", &[]).ok()?;
    let want = format!("mount {} (pid ", mnt.display());
    out.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
}

/// Path of a helper script under `tests/scripts/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Writes `data` to `path`, retrying failed attempts every 100 ms until `deadline` (an
/// op whose outcome was unknown in a failover, or that reached an isolated leader, fails
/// with EIO and is never acknowledged). Returns the time until success and the number of
/// failed attempts; panics if writes did not resume before `deadline`.
pub fn write_until_ok(
    path: &Path,
    data: &[u8],
    deadline: std::time::Instant,
) -> (std::time::Duration, u32) {
    let start = std::time::Instant::now();
    let mut failures = 0;
    loop {
        match std::fs::write(path, data) {
            Ok(()) => return (start.elapsed(), failures),
            Err(e) => {
                failures += 1;
                eprintln!("write {} failed (attempt {failures}): {e}", path.display());
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes did not resume: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
