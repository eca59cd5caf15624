//! The UDP socket under every QUIC endpoint, with buffers sized for chunk transfers.
//!
//! The kernel's default receive buffer (about 208 KiB) holds only a few large QUIC
//! datagrams; a 4 MiB chunk arriving while the receiving task is busy overflows it, the
//! kernel drops datagrams (`RcvbufErrors` in `/proc/net/snmp`), and QUIC treats the drops
//! as congestion: it retransmits and slows down. Bigger buffers absorb such bursts.

use std::net::SocketAddr;

use quinn::{Endpoint, EndpointConfig, ServerConfig};
use socket2::{Domain, Protocol, Socket, Type};

use crate::NetError;

/// Receive and send buffer asked of the kernel for each endpoint's socket, in bytes. The
/// kernel caps it at `net.core.rmem_max` / `wmem_max`; a smaller grant only costs speed.
pub(crate) const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Largest UDP payload a connection may grow to by path MTU discovery, in bytes.
///
/// QUIC starts at 1,200 bytes and probes upward; quinn stops at 1,452 by default (Ethernet).
/// Every datagram costs a header, an AEAD call, an entry in the sent-packet tracking and its
/// acknowledgement, so on paths that carry more (loopback, jumbo frames) bigger datagrams
/// cut the CPU per byte: on this project's 3-node playground, sequential writes went from
/// ~110 to ~150 MB/s and cold reads from ~380 to ~500 MB/s. The bound is not higher because
/// quinn sends up to 10 datagrams per `sendmsg` with UDP segmentation offload, and the
/// kernel refuses a batch over 64 KiB: bigger datagrams were refused, taken for losses,
/// and MTU discovery fell back to 1,200 ("black hole"). Where the path carries less,
/// discovery simply stops lower.
pub(crate) const DATAGRAM_PAYLOAD_MAX_BYTES: u16 = 6_500;

/// Datagrams quinn puts in one segmentation-offload batch (its `MAX_TRANSMIT_SEGMENTS`).
const GSO_BATCH_DATAGRAMS_MAX: usize = 10;

/// The largest batch the kernel sends in one go: the IPv4 total length is 16 bits.
const GSO_BATCH_BYTES_MAX: usize = 65_507;

const _: () =
    assert!(DATAGRAM_PAYLOAD_MAX_BYTES as usize * GSO_BATCH_DATAGRAMS_MAX <= GSO_BATCH_BYTES_MAX);

/// A QUIC endpoint on a new UDP socket bound to `addr` (an IPv6 unspecified address also
/// accepts IPv4), serving `server` if given.
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<ServerConfig>,
) -> Result<Endpoint, NetError> {
    let socket = udp_socket(addr)?;
    let runtime = quinn::default_runtime().ok_or_else(|| {
        NetError::Io(std::io::Error::other(
            "no async runtime for the QUIC endpoint",
        ))
    })?;
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(DATAGRAM_PAYLOAD_MAX_BYTES)
        .map_err(|e| NetError::Io(std::io::Error::other(e.to_string())))?;
    let endpoint = Endpoint::new(config, server, socket.into(), runtime)?;
    Ok(endpoint)
}

/// A UDP socket bound to `addr` with buffers of [`UDP_BUFFER_BYTES`] asked for.
fn udp_socket(addr: SocketAddr) -> Result<Socket, NetError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6()
        && let Err(e) = socket.set_only_v6(false)
    {
        tracing::debug!(error = %e, "IPv6 socket stays IPv6-only");
    }
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not size the UDP {what} buffer; using the default");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's usual `net.core.rmem_default`.
    const KERNEL_DEFAULT_RCVBUF_BYTES: usize = 212_992;

    #[test]
    fn sockets_get_bigger_buffers_than_the_kernel_default() {
        let socket = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        // Linux doubles what it grants (bookkeeping) and caps it at rmem_max, which is
        // at least the default: anything the call took is above the default.
        assert!(socket.recv_buffer_size().unwrap() > KERNEL_DEFAULT_RCVBUF_BYTES);
        assert!(socket.send_buffer_size().unwrap() > KERNEL_DEFAULT_RCVBUF_BYTES);
    }

    #[tokio::test]
    async fn an_endpoint_binds_where_asked() {
        let endpoint = endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None).unwrap();
        let addr = endpoint.local_addr().unwrap();
        assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        assert_ne!(addr.port(), 0);
    }
}
