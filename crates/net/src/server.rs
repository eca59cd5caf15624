//! The server side: a QUIC endpoint that requires client certificates, accepts connections
//! and serves one request per bidirectional stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plait_proto::{
    Envelope, ErrorCode, FRAME_MAX_BYTES, PROTOCOL_VERSION, Request, Response, RpcError,
};
use quinn::{ConnectionError, Endpoint, Incoming, ReadToEndError, RecvStream, SendStream, VarInt};

use crate::{Handler, NetError, TlsIdentity, tls};

/// Application error code on a receive stream we stop reading (oversized or late request).
const STREAM_REFUSED: VarInt = VarInt::from_u32(1);

/// Largest request frame accepted from a peer without a client certificate, in bytes: a
/// join request (token, CSR, address) fits in a few KiB.
pub const UNAUTHENTICATED_FRAME_MAX_BYTES: usize = 16 * 1024;

/// The one answer every request but `Join` gets from a peer without a client
/// certificate: it names no resource and carries no state.
pub const REFUSED: &str = "refused: no client certificate";

/// Application error code of connections closed by [`Server::close`].
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);

/// Bounds that keep one peer (or many) from exhausting a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; further handshakes are refused.
    pub max_connections: u32,
    /// Requests (bidirectional streams) one connection may have in flight at once; QUIC flow
    /// control makes the peer wait for more.
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long is dropped (keep-alives are sent every
    /// second or a third of this, whichever is shorter, so only a dead peer goes idle).
    pub idle_timeout_ms: u64,
    /// Longest time to receive a request, and separately to run the handler and to send the
    /// response; a handler that overruns is cancelled and answered `ErrorCode::Unavailable`.
    pub request_timeout_ms: u64,
}

impl Default for ServerLimits {
    /// 1024 connections, 256 streams per connection, 10 s idle timeout, 60 s per request.
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_streams_per_connection: 256,
            idle_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
        }
    }
}

/// A bound QUIC endpoint serving RPCs. Cheap to clone: clones share the endpoint, so one
/// clone can [`run`](Server::run) while another calls [`close`](Server::close).
#[derive(Clone)]
pub struct Server {
    endpoint: Endpoint,
    limits: ServerLimits,
}

impl Server {
    /// Binds a QUIC endpoint on `addr` that requires a client certificate signed by the
    /// identity's CA (connections without one fail the handshake). Must be called inside a
    /// tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        limits: ServerLimits,
    ) -> Result<Server, NetError> {
        let crypto = tls::server_crypto(identity)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(tls::transport(
            limits.idle_timeout_ms,
            limits.max_streams_per_connection,
        )?));
        // Bound handshakes in progress as well as established connections.
        config.max_incoming(limits.max_connections.max(1) as usize);
        let endpoint = crate::socket::endpoint(addr, Some(config))?;
        tracing::info!(addr = %endpoint.local_addr()?, "QUIC server bound");
        Ok(Server { endpoint, limits })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Connections currently open (for metrics and tests).
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Accepts connections until [`close`](Server::close), serving each request with
    /// `handler` in its own task. Malformed, truncated, oversized or wrong-version frames
    /// are answered with `ErrorCode::Protocol` (best effort); neither the connection nor
    /// the server is affected.
    pub async fn run<H: Handler>(&self, handler: Arc<H>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let open = self.endpoint.open_connections();
            if open >= self.limits.max_connections as usize {
                tracing::warn!(
                    remote = %incoming.remote_address(),
                    open,
                    max_connections = self.limits.max_connections,
                    "refusing connection: too many open"
                );
                incoming.refuse();
                continue;
            }
            let handler = handler.clone();
            let limits = self.limits;
            tokio::spawn(serve_connection(incoming, handler, limits));
        }
        tracing::info!("QUIC server stopped accepting");
    }

    /// Stops accepting, closes every connection (requests in flight are abandoned) and
    /// makes [`run`](Server::run) return.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"server shutdown");
    }
}

async fn serve_connection<H: Handler>(incoming: Incoming, handler: Arc<H>, limits: ServerLimits) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "could not accept connection");
            return;
        }
    };
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            // Includes peers without a certificate from our CA.
            tracing::info!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    // The verifier accepted either a certificate of the cluster CA or none at all.
    let authenticated = conn.peer_identity().is_some();
    tracing::debug!(%remote, authenticated, "connection established");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let peer = Peer {
                    remote,
                    authenticated,
                };
                tokio::spawn(serve_stream(send, recv, handler.clone(), limits, peer));
            }
            Err(
                ConnectionError::ApplicationClosed(_)
                | ConnectionError::LocallyClosed
                | ConnectionError::ConnectionClosed(_),
            ) => {
                tracing::debug!(%remote, "connection closed");
                return;
            }
            Err(e) => {
                tracing::info!(%remote, error = %e, "connection lost");
                return;
            }
        }
    }
}

/// Who sent a request: address and whether it presented a certificate of the cluster CA.
#[derive(Debug, Clone, Copy)]
struct Peer {
    remote: SocketAddr,
    authenticated: bool,
}

fn protocol_error(message: impl Into<String>) -> Response {
    Response::Error(RpcError::new(ErrorCode::Protocol, message))
}

async fn serve_stream<H: Handler>(
    mut send: SendStream,
    mut recv: RecvStream,
    handler: Arc<H>,
    limits: ServerLimits,
    peer: Peer,
) {
    let remote = peer.remote;
    let timeout = Duration::from_millis(limits.request_timeout_ms);
    let stream = send.id();
    let frame_max_bytes = if peer.authenticated {
        FRAME_MAX_BYTES
    } else {
        UNAUTHENTICATED_FRAME_MAX_BYTES
    };
    let response = match tokio::time::timeout(timeout, recv.read_to_end(frame_max_bytes)).await {
        Err(_) => {
            tracing::warn!(%remote, %stream, "request not received in time");
            let _ = recv.stop(STREAM_REFUSED);
            Response::Error(RpcError::new(
                ErrorCode::Unavailable,
                format!(
                    "request not received within {} ms",
                    limits.request_timeout_ms
                ),
            ))
        }
        Ok(Err(ReadToEndError::TooLong)) => {
            tracing::warn!(%remote, %stream, "request frame too large");
            let _ = recv.stop(STREAM_REFUSED);
            protocol_error(format!("request frame exceeds {frame_max_bytes} bytes"))
        }
        Ok(Err(ReadToEndError::Read(e))) => {
            // Reset by the peer or connection lost: there is nobody to answer.
            tracing::debug!(%remote, %stream, error = %e, "request stream failed");
            return;
        }
        Ok(Ok(frame)) => handle_frame(frame, handler, limits, peer).await,
    };

    let frame = match plait_proto::encode_frame(response) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(%remote, %stream, error = %e, "response could not be encoded");
            match plait_proto::encode_frame(Response::Error(RpcError::new(
                ErrorCode::Io,
                format!("response could not be encoded: {e}"),
            ))) {
                Ok(f) => f,
                Err(_) => {
                    let _ = send.reset(STREAM_REFUSED);
                    return;
                }
            }
        }
    };
    let write = async {
        // Handed over, not copied (a chunk is megabytes).
        send.write_all_chunks(&mut [
            bytes::Bytes::from(frame.bulk),
            bytes::Bytes::from(frame.head),
        ])
        .await?;
        send.finish()?;
        Ok::<(), quinn::WriteError>(())
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%remote, %stream, error = %e, "could not send response"),
        Err(_) => {
            tracing::warn!(%remote, %stream, "response not taken in time; resetting stream");
            let _ = send.reset(STREAM_REFUSED);
        }
    }
}

/// Decodes and checks one request frame, then runs the handler (in its own task, bounded
/// by the request timeout, panics contained).
async fn handle_frame<H: Handler>(
    frame: Vec<u8>,
    handler: Arc<H>,
    limits: ServerLimits,
    peer: Peer,
) -> Response {
    let remote = peer.remote;
    let len_bytes = frame.len();
    let envelope: Envelope<Request> = match plait_proto::decode_frame(frame) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(%remote, len_bytes, error = %e, "malformed request frame");
            return protocol_error(format!("malformed request: {e}"));
        }
    };
    if envelope.version != PROTOCOL_VERSION {
        tracing::warn!(%remote, version = envelope.version, "request of another protocol version");
        return protocol_error(format!(
            "protocol version {} not supported (this node speaks {PROTOCOL_VERSION})",
            envelope.version
        ));
    }
    let req = envelope.body;
    if !peer.authenticated && !matches!(req, Request::Join { .. }) {
        tracing::info!(%remote, "refusing a request from a peer without a certificate");
        return Response::Error(RpcError::new(ErrorCode::AccessDenied, REFUSED));
    }
    let mut task = tokio::spawn(async move { handler.handle(req).await });
    match tokio::time::timeout(Duration::from_millis(limits.request_timeout_ms), &mut task).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::error!(%remote, error = %e, "request handler failed");
            Response::Error(RpcError::new(
                ErrorCode::Io,
                "internal error in request handler",
            ))
        }
        Err(_) => {
            task.abort();
            tracing::warn!(%remote, timeout_ms = limits.request_timeout_ms, "request handler timed out");
            Response::Error(RpcError::new(
                ErrorCode::Unavailable,
                format!("request timed out after {} ms", limits.request_timeout_ms),
            ))
        }
    }
}
