//! `plait cluster init`: creates the cluster CA, the first node's certificate and
//! configuration, and a client certificate for mounts and the admin CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

/// Flags of `plait cluster init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for certificates and the node configuration (created; must not hold a CA yet).
    #[arg(long, default_value = "/etc/plait")]
    pub dir: PathBuf,
    /// Address the first node listens on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Data directory of the first node.
    #[arg(long, default_value = "/var/lib/plait")]
    pub data_dir: PathBuf,
    /// Cluster name, written into the CA certificate.
    #[arg(long, default_value = "plait")]
    pub name: String,
}

/// Writes `contents` to `path` readable by the owner only (keys) or by all (certificates).
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    plait_net::certs::write_file(path, contents, private)
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates a CA in `dir` and a client certificate; returns the CA (cert, key) PEMs.
pub fn create_ca(dir: &Path, name: &str) -> Result<(String, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = plait_net::certs::new_ca(name)?;
    write_file(&dir.join("ca.pem"), &ca_cert, false)?;
    write_file(&dir.join("ca.key"), &ca_key, true)?;
    let (cert, key) = plait_net::certs::issue(&ca_cert, &ca_key, "client")?;
    write_file(&dir.join("client.pem"), &cert, false)?;
    write_file(&dir.join("client.key"), &key, true)?;
    Ok((ca_cert, ca_key))
}

/// Issues `node<id>.pem` / `node<id>.key` in `dir`.
pub fn issue_node_cert(dir: &Path, ca: &(String, String), node_id: u64) -> Result<()> {
    let (cert, key) = plait_net::certs::issue(&ca.0, &ca.1, &format!("node{node_id}"))?;
    write_file(&dir.join(format!("node{node_id}.pem")), &cert, false)?;
    write_file(&dir.join(format!("node{node_id}.key")), &key, true)?;
    Ok(())
}

/// The TOML configuration of a node whose certificates are in `tls_dir`. The node gets
/// the CA key (`tls_dir/ca.key`) too, so that it can sign the certificates of nodes that
/// join through it.
pub fn node_config(
    node_id: u64,
    listen: SocketAddr,
    data_dir: &Path,
    tls_dir: &Path,
    bootstrap: bool,
) -> String {
    format!(
        "node_id = {node_id}\nlisten = \"{listen}\"\ndata_dir = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nca_key = \"{}\"\nbootstrap = {bootstrap}\n",
        data_dir.display(),
        tls_dir.join("ca.pem").display(),
        tls_dir.join(format!("node{node_id}.pem")).display(),
        tls_dir.join(format!("node{node_id}.key")).display(),
        tls_dir.join("ca.key").display(),
    )
}

/// The TOML configuration of a node that joins with `token` (used on its first start
/// only; later it uses the certificate the join saved in its data directory). With
/// `ca_key`, it can sign joiners' certificates too.
pub fn joining_node_config(
    listen: SocketAddr,
    data_dir: &Path,
    token: &str,
    ca_key: Option<&Path>,
) -> String {
    let mut s = format!(
        "listen = \"{listen}\"\ndata_dir = \"{}\"\njoin = \"{token}\"\n",
        data_dir.display()
    );
    if let Some(k) = ca_key {
        s.push_str(&format!("ca_key = \"{}\"\n", k.display()));
    }
    s
}

/// Runs `plait cluster init`.
pub fn init(args: &InitArgs) -> Result<()> {
    if args.dir.join("ca.pem").exists() {
        bail!(
            "{} already holds a cluster CA; refusing to overwrite it",
            args.dir.display()
        );
    }
    let ca = create_ca(&args.dir, &args.name)?;
    issue_node_cert(&args.dir, &ca, 1)?;
    let config = node_config(1, args.listen, &args.data_dir, &args.dir, true);
    let config_path = args.dir.join("plaitd.toml");
    write_file(&config_path, &config, false)?;
    println!(
        "cluster CA, node 1 and client certificates written to {}",
        args.dir.display()
    );
    println!(
        "start the first node:  plaitd --config {}",
        config_path.display()
    );
    println!(
        "then create a volume:  plait volume create rconfig --replicas 1 --nodes {} --tls-dir {}",
        args.listen,
        args.dir.display()
    );
    Ok(())
}
