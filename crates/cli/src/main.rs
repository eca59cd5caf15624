//! plait: the admin CLI of a Plait cluster, the FUSE mount, and the playground.

mod admin;
mod cluster;
mod conn;
mod debug;
mod heal;
mod locks;
mod mount;
mod nodes;
mod playground;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "plait",
    version,
    about = "Plait replicated filesystem: admin, mount, playground"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Cluster-wide setup.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Volumes.
    #[command(subcommand)]
    Volume(admin::VolumeCmd),
    /// Members of the cluster.
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    /// Missing copies and healing them.
    #[command(subcommand)]
    Heal(heal::HealCmd),
    /// Cluster-wide fcntl and flock locks.
    #[command(subcommand)]
    Lock(locks::LockCmd),
    /// Every node's view of the cluster.
    Status(admin::StatusArgs),
    /// Mount a volume through FUSE.
    Mount(mount::MountArgs),
    /// Unmount a Plait mount.
    Umount {
        /// The mount point.
        mountpoint: std::path::PathBuf,
    },
    /// A local throwaway cluster for trying and testing Plait.
    #[command(subcommand)]
    Playground(playground::PlaygroundCmd),
    /// Checks for developers and tests (state digests).
    #[command(subcommand)]
    Debug(debug::DebugCmd),
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create the cluster CA and the first node's certificate and configuration.
    Init(cluster::InitArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Lets a closed stdout (`plait lock list | head`) end the process quietly, as it does
/// other command-line tools, instead of panicking in `println!`. Not for the mount, which
/// must never die of a signal meant for a pipe.
fn die_on_broken_pipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Mount(_)) {
        die_on_broken_pipe();
    }
    match cli.cmd {
        Cmd::Cluster(ClusterCmd::Init(args)) => cluster::init(&args),
        Cmd::Volume(cmd) => runtime()?.block_on(admin::volume(cmd)),
        Cmd::Lock(cmd) => runtime()?.block_on(locks::run(cmd)),
        Cmd::Node(cmd) => runtime()?.block_on(nodes::run(cmd)),
        Cmd::Heal(cmd) => runtime()?.block_on(heal::run(cmd)),
        Cmd::Status(args) => runtime()?.block_on(admin::status(args)),
        // The mount builds its own runtime: fuser's loop blocks the calling thread.
        Cmd::Mount(args) => mount::run(&args),
        Cmd::Umount { mountpoint } => mount::unmount(&mountpoint),
        Cmd::Playground(cmd) => runtime()?.block_on(playground::run(cmd)),
        Cmd::Debug(cmd) => runtime()?.block_on(debug::run(cmd)),
    }
}
