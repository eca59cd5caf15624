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
        plait(&args)?;
        Ok(Self {
            dir,
            mnt,
            extra_mounts: 0,
        })
    }

    /// Adds another mount of the same volume and returns its path.
    pub fn mount(&mut self) -> Result<PathBuf> {
        self.extra_mounts += 1;
        let mnt = self
            .dir
            .path()
            .join(format!("mnt{}", self.extra_mounts + 1));
        plait(&[
            "playground",
            "mount",
            "--dir",
            &self.dir.path().to_string_lossy(),
            &mnt.to_string_lossy(),
        ])?;
        Ok(mnt)
    }

    /// Runs a playground subcommand against this playground (e.g. `stop-node 1`).
    pub fn cmd(&self, sub: &str, rest: &[&str]) -> Result<String> {
        let d = self.dir.path().to_string_lossy().into_owned();
        let mut args = vec!["playground", sub, "--dir", &d];
        args.extend_from_slice(rest);
        plait(&args)
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
