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

/// RTT assumed before a connection has measured one, in milliseconds (quinn's default,
/// 333 ms, is meant for the internet). It sets the handshake's loss timers, and a
/// handshake gives up after the larger of the idle timeout and three of them: with the
/// default a new connection to a dead node took about 3 s to fail; with this, the idle
/// timeout decides. Cluster nodes sit on one site, where round trips are far shorter.
const INITIAL_RTT_MS: u64 = 100;

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

/// Server side: our certificate followed by the CA certificate (so that a joiner, who
/// only knows the CA's fingerprint, can check the chain), and a verifier that accepts a
/// client certificate only if the cluster CA signed it. A client that presents no
/// certificate is let through the handshake but marked unauthenticated: the server then
/// serves it nothing but `Request::Join` (see `server.rs`). A certificate from another CA
/// fails the handshake.
pub(crate) fn server_crypto(identity: &TlsIdentity) -> Result<QuicServerConfig, NetError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    let mut chain = parse_certs(&identity.cert_pem, "certificate")?;
    chain.extend(parse_certs(&identity.ca_pem, "CA certificate")?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, parse_key(&identity.key_pem)?)
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

/// Client side for a joiner, which has no certificate and no CA certificate yet, only the
/// CA's fingerprint from its token: no client certificate, and a server verifier that
/// accepts a chain only if the server sent the CA certificate with that fingerprint and
/// the server's certificate verifies against it (as any client would check it).
pub(crate) fn join_client_crypto(ca_fingerprint: [u8; 32]) -> Result<QuicClientConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(config).map_err(|e| NetError::Tls(e.to_string()))
}

/// Verifies a server against the CA whose certificate's blake3 fingerprint is pinned.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A standard verifier rooted at the pinned CA, found among the certificates the server
    /// sent; an error if it sent none with the pinned fingerprint.
    fn rooted(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| blake3::hash(c.as_ref()).as_bytes() == &self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.rooted(intermediates)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// QUIC transport settings shared by both sides: keep-alives so a dead peer is noticed
/// within `idle_timeout_ms`, a bound on the streams the peer may open concurrently, and
/// path MTU discovery up to [`DATAGRAM_PAYLOAD_MAX_BYTES`](crate::socket::DATAGRAM_PAYLOAD_MAX_BYTES).
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
        .initial_rtt(Duration::from_millis(INITIAL_RTT_MS))
        .keep_alive_interval(Some(Duration::from_millis(keep_alive_ms)))
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams_max))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(crate::socket::DATAGRAM_PAYLOAD_MAX_BYTES);
    transport.mtu_discovery_config(Some(mtu));
    Ok(transport)
}
