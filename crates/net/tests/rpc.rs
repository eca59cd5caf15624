//! End-to-end tests of the transport over loopback (127.0.0.1 only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use plait_net::{
    ALPN, Handler, NetError, RpcClient, SERVER_NAME, Server, ServerLimits, TlsIdentity, certs,
};
use plait_proto::{
    ChunkId, Envelope, ErrorCode, FRAME_MAX_BYTES, NodeStatus, PROTOCOL_VERSION, Request, Response,
};
use rand::{Rng, SeedableRng};

const LOOPBACK: &str = "127.0.0.1:0";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Echoes chunk puts back as chunks, answers NodeStatus, and sleeps on ChunkGet.
struct Echo {
    calls: AtomicUsize,
    get_delay: Duration,
}

impl Echo {
    fn new(get_delay: Duration) -> Arc<Self> {
        Arc::new(Echo {
            calls: AtomicUsize::new(0),
            get_delay,
        })
    }
}

impl Handler for Echo {
    async fn handle(&self, req: Request) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match req {
            Request::ChunkPut { data, .. } => Response::Chunk(data),
            Request::ChunkGet { .. } => {
                tokio::time::sleep(self.get_delay).await;
                Response::ChunkStored
            }
            Request::NodeStatus => Response::NodeStatus(NodeStatus {
                node_id: 7,
                addr: "test".into(),
                leader: None,
                term: 1,
                last_applied: 2,
                disk_total_bytes: 3,
                disk_free_bytes: 4,
                chunk_count: 5,
                healed_chunks: 0,
                healed_bytes: 0,
                placement: plait_proto::PlacementPass::Idle,
                placement_copied_chunks: 0,
                placement_copied_bytes: 0,
                placement_dropped_chunks: 0,
            }),
            _ => Response::ChunkStored,
        }
    }
}

struct Cluster {
    ca: (String, String),
}

impl Cluster {
    fn new(name: &str) -> Self {
        Cluster {
            ca: certs::new_ca(name).unwrap(),
        }
    }

    fn identity(&self, name: &str) -> TlsIdentity {
        let (cert_pem, key_pem) = certs::issue(&self.ca.0, &self.ca.1, name).unwrap();
        TlsIdentity {
            ca_pem: self.ca.0.clone(),
            cert_pem,
            key_pem,
        }
    }
}

fn start(identity: &TlsIdentity, limits: ServerLimits, handler: Arc<Echo>) -> (Server, SocketAddr) {
    let server = Server::bind(LOOPBACK.parse().unwrap(), identity, limits).unwrap();
    let addr = server.local_addr().unwrap();
    let runner = server.clone();
    tokio::spawn(async move { runner.run(handler).await });
    (server, addr)
}

fn expect_error(resp: &Response, code: ErrorCode) {
    match resp {
        Response::Error(e) => assert_eq!(e.code, code, "unexpected error {e:?}"),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

async fn status_ok(client: &RpcClient, addr: SocketAddr) {
    let resp = client
        .call(addr, &Request::NodeStatus, CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(resp, Response::NodeStatus(NodeStatus { node_id: 7, .. })),
        "{resp:?}"
    );
}

/// A client bound to one loopback address sends from it (the partition test filters
/// node-to-node packets by source address) and still reaches a server on another.
#[tokio::test]
async fn bound_client_sends_from_its_address() {
    let cluster = Cluster::new("bound");
    let (_server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        Echo::new(Duration::ZERO),
    );
    let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let client = RpcClient::bound(&cluster.identity("node-2"), ip).unwrap();
    let local = client.local_addr().unwrap();
    assert_eq!(local.ip(), ip);
    assert_ne!(local.port(), 0);
    status_ok(&client, addr).await;
}

#[tokio::test]
async fn round_trip() {
    let cluster = Cluster::new("rt");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();

    status_ok(&client, addr).await;
    // A full-size chunk both ways.
    let data = vec![0xAB; plait_proto::CHUNK_MAX_BYTES];
    let req = Request::ChunkPut {
        id: ChunkId::of(&data),
        data: data.clone(),
    };
    match client.call(addr, &req, CALL_TIMEOUT).await.unwrap() {
        Response::Chunk(back) => assert_eq!(back, data),
        other => panic!("{other:?}"),
    }
    // Many calls share one connection.
    for _ in 0..20 {
        status_ok(&client, addr).await;
    }
    assert_eq!(server.open_connections(), 1);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 22);
    server.close();
}

#[tokio::test]
async fn concurrent_first_calls_share_one_connection() {
    let cluster = Cluster::new("conc");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { status_ok(&client, addr).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.open_connections(), 1);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 32);
    server.close();
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::new("good");
    let other = Cluster::new("evil");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );

    // Trusts the right CA (so it would accept the server), but its own certificate was
    // signed by another CA: the server must refuse it.
    let mut intruder = other.identity("client-x");
    intruder.ca_pem = cluster.ca.0.clone();
    let client = RpcClient::new(&intruder).unwrap();
    let result = client
        .call(addr, &Request::NodeStatus, Duration::from_secs(5))
        .await;
    eprintln!("foreign certificate: {result:?}");
    assert!(
        result.is_err(),
        "call with a foreign certificate succeeded: {result:?}"
    );

    // A client of the other cluster entirely does not trust the server either.
    let stranger = RpcClient::new(&other.identity("client-y")).unwrap();
    let result = stranger
        .call(addr, &Request::NodeStatus, Duration::from_secs(5))
        .await;
    eprintln!("foreign CA: {result:?}");
    assert!(result.is_err(), "{result:?}");

    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    // The server still serves its own cluster.
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    status_ok(&client, addr).await;
    server.close();
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let cluster = Cluster::new("nocert");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );

    // A rustls client that trusts the CA but presents no certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cluster.ca.0.as_bytes()).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(LOOPBACK.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let attempt = async {
        let conn = endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = plait_proto::encode_frame(Envelope::new(Request::NodeStatus))
            .unwrap()
            .into_vec();
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(FRAME_MAX_BYTES)
            .await
            .map_err(|e| e.to_string())
    };
    let result = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("refusal should be prompt");
    eprintln!("no certificate: {result:?}");
    // The handshake succeeds (a joiner has no certificate yet), but the request gets the
    // one generic refusal and never reaches the handler.
    let bytes = result.expect("an answer frame");
    match plait_proto::decode_frame::<Response>(bytes).unwrap() {
        Response::Error(e) => {
            assert_eq!(e.code, plait_proto::ErrorCode::AccessDenied);
            assert_eq!(e.message, plait_net::REFUSED);
        }
        other => panic!("a client without a certificate got {other:?}"),
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);

    // The same through RpcClient::anonymous: only a join reaches the handler, and an
    // oversized frame is cut off at the unauthenticated bound.
    let anon = plait_net::RpcClient::anonymous(&cluster.ca.0).unwrap();
    let r = anon
        .call(addr, &Request::NodeStatus, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Response::Error(_)), "{r:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    let join = Request::Join {
        token_id: 1,
        secret: [0; 32],
        csr_pem: String::new(),
        addr: "127.0.0.1:1".into(),
    };
    anon.call(addr, &join, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    let big = Request::Join {
        token_id: 1,
        secret: [0; 32],
        csr_pem: "x".repeat(plait_net::UNAUTHENTICATED_FRAME_MAX_BYTES),
        addr: String::new(),
    };
    let r = anon.call(addr, &big, Duration::from_secs(5)).await;
    assert!(
        matches!(r, Err(_) | Ok(Response::Error(_))),
        "oversized join frame answered: {r:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);

    // A client that pins another CA's fingerprint does not talk to this server at all.
    let (other_ca, _) = plait_net::certs::new_ca("other").unwrap();
    let wrong = plait_net::RpcClient::anonymous(&other_ca).unwrap();
    assert!(
        wrong
            .call(addr, &join, Duration::from_secs(5))
            .await
            .is_err()
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    server.close();
}

#[tokio::test]
async fn malformed_frames_get_protocol_errors_and_the_server_survives() {
    let cluster = Cluster::new("fuzz");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let sizes = [
        0usize,
        1,
        2,
        3,
        5,
        8,
        17,
        64,
        255,
        1024,
        65_536,
        1 << 20,
        FRAME_MAX_BYTES,
        FRAME_MAX_BYTES + 1,
        FRAME_MAX_BYTES + 300_000,
    ];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for &size in &sizes {
        for _ in 0..3 {
            let mut f = vec![0u8; size];
            rng.fill(&mut f[..]);
            frames.push(f);
        }
    }
    // Truncations of a valid frame, and the valid frame plus a trailing byte.
    let valid = plait_proto::encode_frame(Envelope::new(Request::ChunkPut {
        id: ChunkId([1; 32]),
        data: vec![9; 5000],
    }))
    .unwrap()
    .into_vec();
    for cut in [1, 2, 10, 34, 35, 100, valid.len() / 2, valid.len() - 1] {
        frames.push(valid[..cut].to_vec());
    }
    let mut trailing = valid.clone();
    trailing.push(0);
    frames.push(trailing);

    for frame in &frames {
        let is_valid = matches!(
            plait_proto::decode_frame::<Envelope<Request>>(frame.clone()),
            Ok(env) if env.version == PROTOCOL_VERSION
        );
        let result = client.call_raw(addr, frame, CALL_TIMEOUT).await;
        if is_valid {
            continue; // random bytes that happen to be a request: any answer is fine
        }
        match result {
            Ok(bytes) => {
                let resp: Response = plait_proto::decode_frame(bytes).unwrap();
                expect_error(&resp, ErrorCode::Protocol);
            }
            // A closed stream is acceptable for frames the server refused to read.
            Err(NetError::Stream(e)) => {
                eprintln!("frame of {} bytes: stream closed: {e}", frame.len());
                assert!(frame.len() > FRAME_MAX_BYTES)
            }
            Err(e) => panic!("frame of {} bytes: unexpected error {e}", frame.len()),
        }
    }
    // The connection and the server survived.
    status_ok(&client, addr).await;
    assert_eq!(server.open_connections(), 1);
    server.close();
}

#[tokio::test]
async fn wrong_protocol_version_is_refused() {
    let cluster = Cluster::new("ver");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    let frame = plait_proto::encode_frame(Envelope {
        version: PROTOCOL_VERSION + 1,
        body: Request::NodeStatus,
    })
    .unwrap()
    .into_vec();
    let bytes = client.call_raw(addr, &frame, CALL_TIMEOUT).await.unwrap();
    let resp: Response = plait_proto::decode_frame(bytes).unwrap();
    expect_error(&resp, ErrorCode::Protocol);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    status_ok(&client, addr).await;
    server.close();
}

#[tokio::test]
async fn slow_handler_times_out_with_unavailable() {
    let cluster = Cluster::new("slow");
    let handler = Echo::new(Duration::from_secs(30));
    let limits = ServerLimits {
        request_timeout_ms: 200,
        ..ServerLimits::default()
    };
    let (server, addr) = start(&cluster.identity("node-1"), limits, handler.clone());
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    let started = std::time::Instant::now();
    let resp = client
        .call(
            addr,
            &Request::ChunkGet {
                id: ChunkId([0; 32]),
            },
            CALL_TIMEOUT,
        )
        .await
        .unwrap();
    expect_error(&resp, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(5));
    status_ok(&client, addr).await;
    server.close();
}

#[tokio::test]
async fn client_call_timeout() {
    let cluster = Cluster::new("ct");
    let handler = Echo::new(Duration::from_secs(30));
    let (server, addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler.clone(),
    );
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    let result = client
        .call(
            addr,
            &Request::ChunkGet {
                id: ChunkId([0; 32]),
            },
            Duration::from_millis(300),
        )
        .await;
    assert!(matches!(result, Err(NetError::Timeout)), "{result:?}");
    // The connection is still usable.
    status_ok(&client, addr).await;
    server.close();
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let cluster = Cluster::new("restart");
    let node = cluster.identity("node-1");
    let handler = Echo::new(Duration::ZERO);
    let (server, addr) = start(&node, ServerLimits::default(), handler.clone());
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    status_ok(&client, addr).await;

    server.close();
    drop(server);
    // Rebind the same port (the old socket may take a moment to be released).
    let mut restarted = None;
    for _ in 0..100 {
        match Server::bind(addr, &node, ServerLimits::default()) {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let server = restarted.expect("could not rebind the port");
    let runner = server.clone();
    let handler2 = handler.clone();
    tokio::spawn(async move { runner.run(handler2).await });

    status_ok(&client, addr).await;
    server.close();
}

/// A UDP relay between one client and `server` that can be made to drop everything: a
/// peer that hangs (SIGSTOP, a partition) keeps its address but answers nothing. Counts
/// the QUIC Initial packets (new handshakes) the client sends while it is silent.
async fn relay(
    server: SocketAddr,
    silent: Arc<std::sync::atomic::AtomicBool>,
    handshakes_while_silent: Arc<AtomicUsize>,
) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, c, quiet) = (front.clone(), back.clone(), client.clone(), silent.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !quiet.load(Ordering::SeqCst) {
                let _ = b.send(&buf[..n]).await;
            } else if n > 0 && buf[0] & 0xf0 == 0xc0 {
                // Long header, type Initial: the client started a new connection.
                handshakes_while_silent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to
                && !silent.load(Ordering::SeqCst)
            {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// A call in flight to a peer that falls silent fails when the connection goes idle
/// (1.5 s without an acknowledgement), not at the call's own timeout, and without a new
/// handshake (which would only wait out the call's timeout): a hung leader must not hold
/// a mount's operation for the whole RPC timeout. Once the peer answers again, a new
/// connection serves.
#[tokio::test]
async fn a_call_to_a_peer_that_falls_silent_fails_when_the_connection_goes_idle() {
    let cluster = Cluster::new("silent");
    let handler = Echo::new(Duration::from_secs(3_600));
    let (server, server_addr) = start(
        &cluster.identity("node-1"),
        ServerLimits::default(),
        handler,
    );
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let addr = relay(server_addr, silent.clone(), handshakes.clone()).await;
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    status_ok(&client, addr).await;

    silent.store(true, Ordering::SeqCst);
    let call_timeout = Duration::from_secs(120);
    let started = std::time::Instant::now();
    // The handler never answers ChunkGet: only the transport can end this call.
    let result = client
        .call(
            addr,
            &Request::ChunkGet {
                id: ChunkId([0; 32]),
            },
            call_timeout,
        )
        .await;
    let took = started.elapsed();
    eprintln!("silent peer: {result:?} after {took:?}");
    assert!(matches!(result, Err(NetError::Timeout)), "{result:?}");
    // Generous: the point is that the idle timeout, not the call's, ended it.
    assert!(took < call_timeout / 4, "the call waited {took:?}");
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "the client tried to reconnect to a silent peer"
    );

    // A new connection to the silent peer fails as well (its handshake times out), again
    // long before the call's own timeout.
    let started = std::time::Instant::now();
    let result = client.call(addr, &Request::NodeStatus, call_timeout).await;
    let took = started.elapsed();
    eprintln!("new connection to a silent peer: {result:?} after {took:?}");
    assert!(result.is_err(), "{result:?}");
    assert!(took < call_timeout / 4, "the connect waited {took:?}");

    silent.store(false, Ordering::SeqCst);
    status_ok(&client, addr).await;
    server.close();
}

#[tokio::test]
async fn nothing_listening_is_an_error_not_a_hang() {
    let cluster = Cluster::new("void");
    let client = RpcClient::new(&cluster.identity("client-1")).unwrap();
    // Bind and drop a UDP socket to find a port where nothing listens.
    let port = std::net::UdpSocket::bind(LOOPBACK)
        .unwrap()
        .local_addr()
        .unwrap();
    let result = client
        .call(port, &Request::NodeStatus, Duration::from_millis(500))
        .await;
    eprintln!("nothing listening: {result:?}");
    assert!(result.is_err());
}

#[test]
fn identity_load_reads_and_checks_files() {
    let cluster = Cluster::new("files");
    let id = cluster.identity("node-1");
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("node.pem"),
        dir.path().join("node.key"),
    );
    std::fs::write(&ca, &id.ca_pem).unwrap();
    std::fs::write(&cert, &id.cert_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    let loaded = TlsIdentity::load(&ca, &cert, &key).unwrap();
    assert_eq!(loaded.cert_pem, id.cert_pem);
    assert!(!format!("{loaded:?}").contains("PRIVATE"));

    std::fs::write(&key, "garbage").unwrap();
    assert!(matches!(
        TlsIdentity::load(&ca, &cert, &key),
        Err(NetError::Tls(_))
    ));
    assert!(matches!(
        TlsIdentity::load(&dir.path().join("missing"), &cert, &key),
        Err(NetError::Io(_))
    ));
}
