//! `plait mount`: serves a volume through FUSE. By default it detaches (the mount keeps
//! running in the background) and returns once the mount is usable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use plait_client::fs::FsConfig;
use plait_fuse::MountOptions;

use crate::conn::ConnArgs;

/// How long a detached mount may take to become usable.
const MOUNT_WAIT_MS: u64 = 30_000;

/// Flags of `plait mount`.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Volume to mount.
    #[arg(long, default_value = "default")]
    pub volume: String,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Stay in the foreground (do not detach).
    #[arg(long)]
    pub foreground: bool,
    /// Log file of a detached mount (default: /var/log/plait-mount-<volume>.log).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// How long the kernel may cache attributes, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub attr_timeout_ms: u64,
    /// How long the kernel may cache name lookups, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub entry_timeout_ms: u64,
    /// Bound of the chunk cache, in MiB.
    #[arg(long, default_value_t = 256)]
    pub data_cache_mib: u64,
    /// Dirty bytes one file may buffer before they are written out, in MiB.
    #[arg(long, default_value_t = 64)]
    pub dirty_file_mib: u64,
    /// Dirty bytes all files may buffer together, in MiB.
    #[arg(long, default_value_t = 256)]
    pub dirty_total_mib: u64,
    /// Let users other than root use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Threads reading kernel requests.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Lease of the mount's lock session, in milliseconds: if the mount dies or is cut
    /// off, its locks are released this long after its last renewal.
    #[arg(long, default_value_t = plait_client::session::LEASE_DEFAULT_MS)]
    pub lease_ms: u64,
    /// Never ask for directory create delegations (every create is its own commits).
    #[arg(long)]
    pub no_dir_delegation: bool,
    /// Every close waits for its file's commit. By default a close of a file created in
    /// a directory this mount holds returns once the file is queued for the next batch
    /// commit (fsync still waits): files closed in the last few milliseconds before a
    /// crash of this mount are lost, as on a local disk.
    #[arg(long)]
    pub close_durable: bool,
}

const MIB: u64 = 1024 * 1024;

/// Serves the mount in this process until it is unmounted.
pub fn run_foreground(args: &MountArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting runtime")?;
    let client = rt.block_on(args.conn.connect())?;
    let opts = MountOptions {
        mountpoint: args.mountpoint.clone(),
        volume: args.volume.clone(),
        fs: FsConfig {
            attr_timeout_ms: args.attr_timeout_ms,
            entry_timeout_ms: args.entry_timeout_ms,
            data_cache_bytes: args.data_cache_mib.saturating_mul(MIB),
            dirty_max_bytes: args.dirty_file_mib.saturating_mul(MIB),
            dirty_total_max_bytes: args.dirty_total_mib.saturating_mul(MIB),
            delegate_dirs: !args.no_dir_delegation,
            close_behind: !args.close_durable,
        },
        allow_other: args.allow_other,
        threads: args.threads.max(1),
        lease_ms: args.lease_ms,
    };
    plait_fuse::mount_blocking(client, rt.handle().clone(), opts).context("serving the mount")?;
    Ok(())
}

/// Starts `plait mount --foreground` as a detached process logging to `log_file`.
pub fn spawn_detached(args: &MountArgs, log_file: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the plait binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let nodes: Vec<String> = args.conn.nodes.iter().map(|a| a.to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--volume")
        .arg(&args.volume)
        .arg("--nodes")
        .arg(nodes.join(","))
        .arg("--tls-dir")
        .arg(&args.conn.tls_dir)
        .arg("--rpc-timeout-ms")
        .arg(args.conn.rpc_timeout_ms.to_string())
        .arg("--op-timeout-ms")
        .arg(args.conn.op_timeout_ms.to_string())
        .arg("--attr-timeout-ms")
        .arg(args.attr_timeout_ms.to_string())
        .arg("--entry-timeout-ms")
        .arg(args.entry_timeout_ms.to_string())
        .arg("--data-cache-mib")
        .arg(args.data_cache_mib.to_string())
        .arg("--dirty-file-mib")
        .arg(args.dirty_file_mib.to_string())
        .arg("--dirty-total-mib")
        .arg(args.dirty_total_mib.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--lease-ms")
        .arg(args.lease_ms.to_string());
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if args.no_dir_delegation {
        cmd.arg("--no-dir-delegation");
    }
    if args.close_durable {
        cmd.arg("--close-durable");
    }
    cmd.arg(&args.mountpoint)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    cmd.spawn().context("starting the mount process")
}

/// True if `path` is a mount point of a Plait FUSE mount.
pub fn is_plait_mount(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4) == Some(&want.as_str())
            && fields
                .get(sep + 1)
                .is_some_and(|t| t.starts_with("fuse.plait"))
    })
}

/// Waits until the mount at `path` answers, or fails if `child` exits first.
pub fn wait_mounted(path: &Path, child: &mut Child, log_file: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(MOUNT_WAIT_MS);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("mount process exited with {status}:\n{}", tail.join("\n"));
        }
        if is_plait_mount(path) && std::fs::metadata(path).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "mount at {} not ready after {} ms",
        path.display(),
        MOUNT_WAIT_MS
    )
}

/// Runs `plait mount`.
pub fn run(args: &MountArgs) -> Result<()> {
    if args.foreground {
        return run_foreground(args);
    }
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating {}", args.mountpoint.display()))?;
    let log_file = args
        .log_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/log/plait-mount-{}.log", args.volume)));
    let mut child = spawn_detached(args, &log_file)?;
    wait_mounted(&args.mountpoint, &mut child, &log_file)?;
    println!(
        "mounted volume {} at {} (pid {}, log {})",
        args.volume,
        args.mountpoint.display(),
        child.id(),
        log_file.display()
    );
    Ok(())
}

/// Unmounts a FUSE mount (lazily if busy) with umount(2).
pub fn unmount(path: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).context("mount path contains NUL")?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    bail!(
        "umount {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    )
}
