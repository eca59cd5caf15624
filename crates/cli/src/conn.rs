//! How the CLI reaches a cluster: node addresses and a TLS directory holding the CA
//! certificate and a client certificate (`ca.pem`, `client.pem`, `client.key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use plait_client::{ClientConfig, ClusterClient};
use plait_net::TlsIdentity;

/// Flags that name a cluster and the credentials to reach it.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Comma-separated node addresses (ip:port).
    #[arg(long, env = "PLAIT_NODES", value_delimiter = ',')]
    pub nodes: Vec<SocketAddr>,
    /// Directory with ca.pem, client.pem and client.key.
    #[arg(long, env = "PLAIT_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// Timeout of one RPC, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub rpc_timeout_ms: u64,
    /// Timeout of one operation including retries and leader changes, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub op_timeout_ms: u64,
}

/// Loads the client identity from a TLS directory.
pub fn client_identity(tls_dir: &Path) -> Result<TlsIdentity> {
    TlsIdentity::load(
        &tls_dir.join("ca.pem"),
        &tls_dir.join("client.pem"),
        &tls_dir.join("client.key"),
    )
    .with_context(|| format!("loading client certificate from {}", tls_dir.display()))
}

impl ConnArgs {
    /// Connects to the cluster.
    pub async fn connect(&self) -> Result<Arc<ClusterClient>> {
        if self.nodes.is_empty() {
            bail!("no node addresses: pass --nodes or set PLAIT_NODES");
        }
        let identity = client_identity(&self.tls_dir)?;
        let config = ClientConfig {
            nodes: self.nodes.clone(),
            rpc_timeout_ms: self.rpc_timeout_ms,
            op_timeout_ms: self.op_timeout_ms,
        };
        let client = ClusterClient::connect(&identity, config)
            .await
            .context("connecting to the cluster")?;
        Ok(Arc::new(client))
    }
}
