//! Plait's transport: QUIC (quinn) with mutual TLS (rustls with the *ring* provider).
//!
//! Every peer — node, mount, admin CLI — holds a certificate signed by the cluster CA
//! ([`certs`]); servers refuse a certificate from any other CA at the handshake, serve a
//! peer without a certificate nothing but `Request::Join` (a new node redeeming its join
//! token), and clients only talk to servers whose certificate was signed by the same CA and
//! names [`SERVER_NAME`] (a joiner: by the CA its token pins).
//!
//! Framing: one request per bidirectional stream. The client writes one
//! `Envelope<Request>` frame ([`plait_proto::frame`]: a chunk's raw bytes, then the encoded
//! rest) and finishes its side; the server answers with one `Response` frame and finishes.
//! Both directions are bounded by [`plait_proto::FRAME_MAX_BYTES`].
//!
//! - [`Server`] accepts connections and streams, and calls a [`Handler`] per request.
//! - [`RpcClient`] keeps one connection per peer address and sends requests over it.

#![warn(missing_docs)]

pub mod certs;
mod client;
mod server;
mod socket;
mod tls;
pub mod token;

use std::fmt;
use std::path::Path;

pub use client::{EncodedRequest, RpcClient, encode_request, encode_request_owned};
pub use server::{REFUSED, Server, ServerLimits, UNAUTHENTICATED_FRAME_MAX_BYTES};

/// DNS name carried (as a SAN) by every certificate the cluster CA issues; clients verify the
/// server's certificate against this name, since peers are addressed by IP and port.
pub const SERVER_NAME: &str = "plait";

/// ALPN protocol id both sides offer (QUIC requires ALPN). Bump with incompatible framing.
pub const ALPN: &[u8] = b"plait/3";

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate, key or TLS configuration problem (bad PEM, wrong CA, unusable key).
    #[error("TLS: {0}")]
    Tls(String),
    /// A local I/O error (reading PEM files, binding a socket).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The connection could not be established or was aborted by the peer's QUIC/TLS stack
    /// (for example because our certificate was refused).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The call did not complete within its timeout, or the peer stopped answering.
    #[error("timed out")]
    Timeout,
    /// A frame could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] plait_proto::CodecError),
    /// The request's stream failed (reset or stopped by the peer, response too long).
    #[error("stream failed: {0}")]
    Stream(String),
    /// The connection or endpoint was closed (by us or by the peer).
    #[error("connection closed")]
    Closed,
}

/// PEM strings of the cluster CA certificate and of this peer's certificate and private key:
/// everything a peer needs to authenticate and to authenticate others.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The cluster CA certificate (PEM); peers must present certificates it signed.
    pub ca_pem: String,
    /// This peer's certificate (PEM), optionally followed by intermediates.
    pub cert_pem: String,
    /// This peer's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// Reads the three PEM files and checks that they parse, so that a misconfiguration is
    /// reported at startup with the offending path.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, NetError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| {
                NetError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let identity = TlsIdentity {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        let with_path = |path: &Path, e: NetError| match e {
            NetError::Tls(msg) => NetError::Tls(format!("{}: {msg}", path.display())),
            other => other,
        };
        tls::parse_certs(&identity.ca_pem, "CA certificate").map_err(|e| with_path(ca, e))?;
        tls::parse_certs(&identity.cert_pem, "certificate").map_err(|e| with_path(cert, e))?;
        tls::parse_key(&identity.key_pem).map_err(|e| with_path(key, e))?;
        Ok(identity)
    }
}

/// The node's RPC service, called once per request by [`Server::run`].
///
/// Errors are answered in-band (`Response::Error`); the handler never sees transport
/// failures. A handler that takes longer than [`ServerLimits::request_timeout_ms`] is
/// cancelled (its future dropped) and the peer gets `ErrorCode::Unavailable`.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request.
    fn handle(
        &self,
        req: plait_proto::Request,
    ) -> impl std::future::Future<Output = plait_proto::Response> + Send;
}
