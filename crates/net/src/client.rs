//! The client side: one QUIC endpoint, one cached connection per peer address, one stream
//! per request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use plait_proto::{Envelope, FRAME_MAX_BYTES, Request, Response};
use quinn::{
    ClientConfig, Connection, ConnectionError, Endpoint, ReadError, ReadToEndError, WriteError,
};

use crate::{NetError, SERVER_NAME, TlsIdentity, tls};

/// Idle timeout of client connections, in milliseconds (the effective value is the smaller
/// of this and the server's); keep-alives (a third of this) make only a dead or hung peer
/// go idle. This, not the RPC timeout, is how long a call in flight to a peer that died or
/// hung takes to fail: the leader's death costs this plus the election, whatever RPC
/// timeout a mount was given (5 s by default; a long poll or a busy node may rightly take
/// longer to answer, a live peer never goes 1.5 s without acknowledging a packet).
const CLIENT_IDLE_TIMEOUT_MS: u64 = 1_500;

/// One address's cached connection. The async mutex is held while connecting, so that
/// concurrent first calls to an address share one connection instead of racing.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// Sends requests to nodes. Cheap to clone: clones share the endpoint and the connections.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// Per-address slots. This std mutex is only held to look up or insert a slot, never
    /// across an await.
    conns: Mutex<HashMap<SocketAddr, Slot>>,
}

/// Why one request/response exchange failed: the connection (worth reconnecting) or the
/// stream/frame (not).
enum ExchangeError {
    Connection(ConnectionError),
    Other(NetError),
}

/// A request frame ready to send, cheap to clone: a request sent to several peers (a chunk
/// to its replicas) is encoded once and its bytes shared by every send.
#[derive(Debug, Clone)]
pub struct EncodedRequest {
    bulk: Bytes,
    head: Bytes,
}

impl EncodedRequest {
    /// Decodes the frame back into its request, as a node would (for in-process fakes).
    pub fn decode(&self) -> Result<Request, NetError> {
        let frame = [self.bulk.as_ref(), self.head.as_ref()].concat();
        Ok(plait_proto::decode_frame::<Envelope<Request>>(frame)?.body)
    }
}

/// Encodes `req` as a request frame for [`RpcClient::call_encoded`]. A chunk's bytes are
/// copied once into the frame's bulk; use [`encode_request_owned`] to move them instead.
pub fn encode_request(req: &Request) -> Result<EncodedRequest, NetError> {
    encode_request_owned(req.clone())
}

/// Encodes `req` as a request frame, moving its bulk (a chunk's bytes) without a copy.
pub fn encode_request_owned(req: Request) -> Result<EncodedRequest, NetError> {
    let frame = plait_proto::encode_frame(Envelope::new(req))?;
    Ok(EncodedRequest {
        bulk: Bytes::from(frame.bulk),
        head: Bytes::from(frame.head),
    })
}

impl RpcClient {
    /// A client presenting `identity`'s certificate and trusting only its CA. Must be called
    /// inside a tokio runtime. Its socket is bound to the unspecified address (dual-stack if
    /// the host has IPv6), so the kernel picks the source address of each packet.
    pub fn new(identity: &TlsIdentity) -> Result<Self, NetError> {
        let endpoint =
            match crate::socket::endpoint(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), None) {
                Ok(e) => e,
                Err(e6) => {
                    tracing::debug!(error = %e6, "no IPv6 client socket; using IPv4");
                    crate::socket::endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None)?
                }
            };
        Self::with_endpoint(identity, endpoint)
    }

    /// Like [`new`](RpcClient::new), but the socket is bound to `ip` (any free port), so that
    /// every packet it sends carries `ip` as its source address. A node binds its outgoing
    /// client to its own listen address: peers (and packet filters, such as the partition
    /// test's) then see node-to-node traffic as coming from that node. Only peers reachable
    /// from `ip` (same address family) can be called.
    pub fn bound(identity: &TlsIdentity, ip: IpAddr) -> Result<Self, NetError> {
        let endpoint = crate::socket::endpoint(SocketAddr::new(ip, 0), None)?;
        Self::with_endpoint(identity, endpoint)
    }

    /// A client for a joiner: it presents no certificate (so nodes serve it nothing but
    /// `Request::Join`) and talks only to servers whose chain includes the CA certificate
    /// with blake3 fingerprint `ca_fingerprint`.
    pub fn for_join(ca_fingerprint: [u8; 32]) -> Result<Self, NetError> {
        let endpoint = crate::socket::endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None)?;
        Self::with_crypto(tls::join_client_crypto(ca_fingerprint)?, endpoint)
    }

    /// A client that presents no certificate but trusts `ca_pem`: for tests that check
    /// what an unauthenticated peer can do.
    pub fn anonymous(ca_pem: &str) -> Result<Self, NetError> {
        let fingerprint = crate::certs::ca_fingerprint(ca_pem)?;
        Self::for_join(fingerprint)
    }

    fn with_endpoint(identity: &TlsIdentity, endpoint: Endpoint) -> Result<Self, NetError> {
        Self::with_crypto(tls::client_crypto(identity)?, endpoint)
    }

    fn with_crypto(
        crypto: quinn::crypto::rustls::QuicClientConfig,
        mut endpoint: Endpoint,
    ) -> Result<Self, NetError> {
        let mut config = ClientConfig::new(Arc::new(crypto));
        // We never accept streams from servers.
        config.transport_config(Arc::new(tls::transport(CLIENT_IDLE_TIMEOUT_MS, 0)?));
        endpoint.set_default_client_config(config);
        Ok(RpcClient {
            inner: Arc::new(Inner {
                endpoint,
                conns: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The local address the client's socket is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// Sends `req` on a new stream of the cached connection to `addr` (connecting if
    /// needed) and returns the decoded response; an error response is `Ok(Response::Error)`.
    /// If a cached connection turns out to be dead it is dropped and the call retried once on
    /// a new connection. The whole call is bounded by `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let frame = match req {
            // Only a chunk has bulk worth not cloning; everything else is small.
            Request::ChunkPut { .. } => encode_request(req)?,
            _ => EncodedRequest {
                bulk: Bytes::new(),
                head: Bytes::from(plait_proto::encode_frame_ref(&Envelope::new(req))?.head),
            },
        };
        self.call_encoded(addr, &frame, timeout).await
    }

    /// Like [`call`](RpcClient::call) for a request already encoded by
    /// [`encode_request`]: a request sent to several peers (a chunk to its replicas) is
    /// encoded once and its bytes shared by every send, not copied.
    pub async fn call_encoded(
        &self,
        addr: SocketAddr,
        frame: &EncodedRequest,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let bytes = tokio::time::timeout(timeout, self.call_inner(addr, frame))
            .await
            .map_err(|_| NetError::Timeout)??;
        Ok(plait_proto::decode_frame(bytes)?)
    }

    /// Like [`call`](RpcClient::call) but sends `frame` as the request bytes as-is and
    /// returns the raw response bytes (for tests that throw malformed frames at a node).
    pub async fn call_raw(
        &self,
        addr: SocketAddr,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        let frame = EncodedRequest {
            bulk: Bytes::new(),
            head: Bytes::copy_from_slice(frame),
        };
        tokio::time::timeout(timeout, self.call_inner(addr, &frame))
            .await
            .map_err(|_| NetError::Timeout)?
    }

    async fn call_inner(
        &self,
        addr: SocketAddr,
        frame: &EncodedRequest,
    ) -> Result<Vec<u8>, NetError> {
        let slot = self.slot(addr);
        let (conn, reused) = self.connection(addr, &slot).await?;
        match exchange(&conn, frame).await {
            Ok(bytes) => Ok(bytes),
            Err(ExchangeError::Other(e)) => Err(e),
            Err(ExchangeError::Connection(e)) => {
                forget(&slot, &conn).await;
                // A connection that went idle means a dead or hung peer: a new handshake
                // would only wait out the caller's timeout, so fail now and let the caller
                // move on to another node. Other losses (a reset from a restarted peer)
                // are worth one reconnect.
                if !reused || matches!(e, ConnectionError::TimedOut) {
                    return Err(connection_error(e));
                }
                tracing::debug!(%addr, error = %e, "cached connection failed; reconnecting once");
                let (conn, _) = self.connection(addr, &slot).await?;
                match exchange(&conn, frame).await {
                    Ok(bytes) => Ok(bytes),
                    Err(ExchangeError::Other(e)) => Err(e),
                    Err(ExchangeError::Connection(e)) => {
                        forget(&slot, &conn).await;
                        Err(connection_error(e))
                    }
                }
            }
        }
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut conns = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        conns.entry(addr).or_default().clone()
    }

    /// The live cached connection to `addr`, or a new one; `true` if it was cached.
    async fn connection(
        &self,
        addr: SocketAddr,
        slot: &Slot,
    ) -> Result<(Connection, bool), NetError> {
        let mut cached = slot.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() {
                return Ok((conn.clone(), true));
            }
            *cached = None;
        }
        let connecting = self
            .inner
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| NetError::Connect(e.to_string()))?;
        let conn = connecting.await.map_err(|e| {
            tracing::debug!(%addr, error = %e, "connect failed");
            connection_error(e)
        })?;
        tracing::debug!(%addr, "connected");
        *cached = Some(conn.clone());
        Ok((conn, false))
    }
}

/// Drops `conn` from its slot unless the slot already holds another connection.
async fn forget(slot: &Slot, conn: &Connection) {
    let mut cached = slot.lock().await;
    if cached.as_ref().map(Connection::stable_id) == Some(conn.stable_id()) {
        *cached = None;
    }
}

/// One request/response on a new bidirectional stream.
async fn exchange(conn: &Connection, frame: &EncodedRequest) -> Result<Vec<u8>, ExchangeError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(ExchangeError::Connection)?;
    // The stream keeps references to the frame's bytes instead of copying them.
    match send
        .write_all_chunks(&mut [frame.bulk.clone(), frame.head.clone()])
        .await
    {
        Ok(()) => {
            // Only fails if the stream was already finished or reset: harmless.
            let _ = send.finish();
        }
        // The server stopped reading (an oversized frame): it may still have answered.
        Err(WriteError::Stopped(code)) => {
            tracing::debug!(%code, "server stopped reading the request");
        }
        Err(WriteError::ConnectionLost(e)) => return Err(ExchangeError::Connection(e)),
        Err(e) => return Err(ExchangeError::Other(NetError::Stream(e.to_string()))),
    }
    match recv.read_to_end(FRAME_MAX_BYTES).await {
        Ok(bytes) => Ok(bytes),
        Err(ReadToEndError::Read(ReadError::ConnectionLost(e))) => {
            Err(ExchangeError::Connection(e))
        }
        Err(ReadToEndError::TooLong) => Err(ExchangeError::Other(NetError::Stream(format!(
            "response exceeds {FRAME_MAX_BYTES} bytes"
        )))),
        Err(ReadToEndError::Read(e)) => Err(ExchangeError::Other(NetError::Stream(e.to_string()))),
    }
}

fn connection_error(e: ConnectionError) -> NetError {
    match e {
        ConnectionError::TimedOut => NetError::Timeout,
        ConnectionError::LocallyClosed
        | ConnectionError::ApplicationClosed(_)
        | ConnectionError::Reset => NetError::Closed,
        other => NetError::Connect(other.to_string()),
    }
}
