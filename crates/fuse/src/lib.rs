//! Plait's FUSE adapter: serves a volume's [`PlaitFs`] to the kernel through fuser 0.18.
//!
//! [`mount_blocking`] mounts (as root, with mount(2) directly; no fusermount), serves
//! requests until the filesystem is unmounted or the process gets SIGTERM/SIGINT, and
//! then returns. Kernel requests are read by `threads` session threads and served by
//! tasks on a tokio runtime, which send the replies.

#![warn(missing_docs)]

mod adapter;
mod convert;
mod signals;
mod sizes;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use plait_client::ClusterClient;
use plait_client::fs::{FsConfig, FsError, PlaitFs};
use plait_client::session::Session as LockSession;
use tokio::runtime::Handle;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

pub use adapter::{MAX_READAHEAD_BYTES, MAX_WRITE_BYTES};
pub use convert::InoMap;

use adapter::PlaitFuse;

/// How to mount a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Name of the volume to serve.
    pub volume: String,
    /// Tunables of the filesystem layer (timeouts, cache and buffer bounds).
    pub fs: FsConfig,
    /// Let users other than the mounting one (root) use the mount.
    pub allow_other: bool,
    /// Threads reading kernel requests (at least 1).
    pub threads: usize,
    /// Lease of the mount's lock session, in milliseconds.
    pub lease_ms: u64,
}

/// Why a mount could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The mount point does not exist or cannot be resolved.
    #[error("mount point {path}: {source}")]
    Mountpoint {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The volume could not be looked up (unknown name, cluster unreachable...).
    #[error("volume {volume}: {source}")]
    Volume {
        /// The volume name given.
        volume: String,
        /// What went wrong.
        source: FsError,
    },
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    /// The kernel refused the mount, or the FUSE handshake failed.
    #[error("mount failed: {0}")]
    Mount(std::io::Error),
    /// The session ended with an error (the FUSE device failed).
    #[error("FUSE session failed: {0}")]
    Session(std::io::Error),
}

/// Mounts volume `opts.volume` at `opts.mountpoint` and serves it until it is unmounted
/// (`umount`, `fusermount3 -u`) or the process gets SIGTERM or SIGINT (then it unmounts:
/// cleanly if nothing is open, else lazily, serving open files until they are closed).
///
/// Blocks the calling thread, which must not be one of `rt`'s workers; `rt` must be a
/// multi-threaded runtime (filesystem calls run on it while this thread waits). At the end,
/// buffered writes that are still uncommitted are flushed once more.
pub fn mount_blocking(
    client: Arc<ClusterClient>,
    rt: Handle,
    opts: MountOptions,
) -> Result<(), FuseError> {
    let mountpoint =
        std::fs::canonicalize(&opts.mountpoint).map_err(|source| FuseError::Mountpoint {
            path: opts.mountpoint.clone(),
            source,
        })?;
    let fs = rt
        .block_on(PlaitFs::open_volume(client, &opts.volume, opts.fs.clone()))
        .map_err(|source| FuseError::Volume {
            volume: opts.volume.clone(),
            source,
        })?;
    let signals = {
        let _guard = rt.enter();
        ShutdownSignals::install().map_err(FuseError::Signals)?
    };
    let label = format!("{}:{}", hostname(), std::process::id());
    let lock_session = rt
        .block_on(LockSession::open(fs.client().clone(), opts.lease_ms, label))
        .map_err(|e| FuseError::Volume {
            volume: opts.volume.clone(),
            source: e.into(),
        })?;
    fs.set_session(lock_session.clone());
    let renewals = rt.spawn(lock_session.clone().renew_forever());
    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = Arc::new(fs);
    let recalls = rt.spawn(fs.clone().serve_recalls());
    let dir_recalls = rt.spawn(fs.clone().serve_dir_recalls());
    let dir_batches = rt.spawn(fs.clone().serve_dir_batches());
    let write_behind = rt.spawn(fs.clone().serve_write_behind());
    let adapter = PlaitFuse::new(fs, rt.clone(), notifier.clone());
    let mut session =
        Session::new(adapter, &mountpoint, &session_config(&opts)).map_err(FuseError::Mount)?;
    let _ = notifier.set(session.notifier());
    info!(volume = %opts.volume, mountpoint = %mountpoint.display(), "mounted");
    let unmounter = session.unmount_callable();
    let watcher = rt.spawn(unmount_on_signal(signals, unmounter, mountpoint.clone()));
    let result = session.run();
    watcher.abort();
    renewals.abort();
    recalls.abort();
    dir_recalls.abort();
    dir_batches.abort();
    write_behind.abort();
    rt.block_on(lock_session.close());
    info!(mountpoint = %mountpoint.display(), "unmounted");
    result.map_err(FuseError::Session)
}

/// fuser's configuration: mount options and threads.
fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("plait:{}", opts.volume)),
        // Passed to the kernel, which then shows the type as "fuse.plait".
        MountOption::CUSTOM("subtype=plait".to_string()),
        MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    let threads = opts.threads.max(1);
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    config
}

/// SIGTERM and SIGINT streams (installed before mounting, so no signal is missed).
struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; needs a runtime context.
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first of the two signals.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Unmounts `mountpoint` at the first SIGTERM/SIGINT: plainly if possible, else lazily
/// (the session then keeps serving open files and ends when the last one is closed).
/// Later signals are ignored while the session drains.
async fn unmount_on_signal(
    mut signals: ShutdownSignals,
    unmounter: SessionUnmounter,
    mountpoint: PathBuf,
) {
    let which = signals.recv().await;
    info!(signal = which, mountpoint = %mountpoint.display(), "unmounting");
    let result = tokio::task::spawn_blocking(move || unmount(unmounter, &mountpoint)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "unmount failed"),
        Err(e) => warn!(error = %e, "unmount task failed"),
    }
    loop {
        let which = signals.recv().await;
        info!(
            signal = which,
            "already unmounting; waiting for open files to be closed"
        );
    }
}

/// Unmounts through fuser (so that it does not try again when the session ends), falling
/// back to a lazy umount2(MNT_DETACH) if the mount is busy.
fn unmount(mut unmounter: SessionUnmounter, mountpoint: &Path) -> std::io::Result<()> {
    let busy = match unmounter.unmount() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    warn!(error = %busy, "mount busy; detaching it lazily");
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

/// This host's name, for session labels (`plait lock list`); "unknown" if unreadable.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
