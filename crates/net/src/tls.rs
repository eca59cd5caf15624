//! rustls and quinn configuration from a [`TlsIdentity`]: TLS 1.3 only, the *ring* provider
//! only, client certificates required by servers and presented by clients.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::{ALPN, NetError, TlsIdentity};

/// Longest interval between keep-alive PINGs; with the idle timeout this bounds how long a
/// dead peer goes unnoticed.
const KEEP_ALIVE_INTERVAL_MAX_MS: u64 = 1_000;

/// The one crypto provider we use: *ring* (never aws-lc, which needs cmake to build).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM string; at least one is required.
pub(crate) fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::Tls(format!("bad {what} PEM: {e}")))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!("no {what} found in PEM")));
    }
    Ok(certs)
}

/// The first private key in a PEM string.
pub(crate) fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, NetError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| NetError::Tls(format!("bad private key PEM: {e}")))
}

fn roots(identity: &TlsIdentity) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(&identity.ca_pem, "CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| NetError::Tls(format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Server side: our certificate, and a verifier that requires a client certificate signed
/// by the cluster CA.
pub(crate) fn server_crypto(identity: &TlsIdentity) -> Result<QuicServerConfig, NetError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_certs(&identity.cert_pem, "certificate")?,
            parse_key(&identity.key_pem)?,
        )
        .map_err(|e| NetError::Tls(format!("certificate/key: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: requests are not all idempotent and 0-RTT data can be replayed.
    config.max_early_data_size = 0;
    QuicServerConfig::try_from(config).map_err(|e| NetError::Tls(e.to_string()))
}

/// Client side: trust only the cluster CA, present our certificate.
pub(crate) fn client_crypto(identity: &TlsIdentity) -> Result<QuicClientConfig, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(
            parse_certs(&identity.cert_pem, "certificate")?,
            parse_key(&identity.key_pem)?,
        )
        .map_err(|e| NetError::Tls(format!("certificate/key: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(config).map_err(|e| NetError::Tls(e.to_string()))
}

/// QUIC transport settings shared by both sides: keep-alives so a dead peer is noticed
/// within `idle_timeout_ms`, and a bound on the streams the peer may open concurrently.
pub(crate) fn transport(
    idle_timeout_ms: u64,
    peer_bidi_streams_max: u32,
) -> Result<TransportConfig, NetError> {
    if idle_timeout_ms == 0 {
        return Err(NetError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "idle timeout must be > 0 ms",
        )));
    }
    let idle = IdleTimeout::try_from(Duration::from_millis(idle_timeout_ms)).map_err(|_| {
        NetError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "idle timeout out of range",
        ))
    })?;
    let keep_alive_ms = (idle_timeout_ms / 3).clamp(1, KEEP_ALIVE_INTERVAL_MAX_MS);
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(Duration::from_millis(keep_alive_ms)))
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams_max))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(transport)
}
