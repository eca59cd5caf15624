//! Mutual TLS with real plaitd processes: a peer without a certificate may only redeem a
//! join token, a peer with a certificate from another CA does not get past the handshake,
//! and neither learns anything or changes anything.

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use plait_net::{RpcClient, TlsIdentity};
use plait_proto::{ChunkId, ErrorCode, MetaOp, MetaQuery, Request, Response};
use plait_tests::Playground;

fn addrs(pg: &Playground) -> Vec<SocketAddr> {
    let env = pg.cmd("env", &[]).unwrap();
    let nodes = env
        .split_whitespace()
        .find_map(|p| p.strip_prefix("PLAIT_NODES="))
        .unwrap();
    nodes.split(',').map(|a| a.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_cluster_certificate_learn_and_change_nothing() {
    let t0 = std::time::Instant::now();
    // Three nodes: 2 and 3 joined with tokens, so every node serves joined-node TLS.
    let pg = Playground::up(3, 3, &[]).unwrap();
    let data = plait_tests::content("secret", 1, 10_000);
    fs::write(pg.mnt.join("secret"), &data).unwrap();
    // No mount: nothing but the attacks below could change the metadata state.
    plait_tests::plait(&["umount", &pg.mnt.to_string_lossy()]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = plait_tests::state_digests(&pg).unwrap();

    let tls = pg.dir.path().join("tls");
    let ca_pem = fs::read_to_string(tls.join("ca.pem")).unwrap();
    let requests = vec![
        Request::NodeStatus,
        Request::Members,
        Request::Nodes,
        Request::StateDigest,
        Request::Query(MetaQuery::ListVolumes),
        Request::Meta(MetaOp::CreateVolume {
            name: "evil".into(),
            replicas: 1,
            write_quorum: 1,
        }),
        Request::ChunkGet {
            id: ChunkId::of(&data),
        },
        Request::ChunkPut {
            id: ChunkId::of(b"x"),
            data: b"x".to_vec(),
        },
        Request::AddVoter {
            node_id: 99,
            addr: "127.0.0.1:9".into(),
        },
        Request::RemoveNode { node_id: 2 },
        Request::HealNow,
    ];

    // No certificate: every request but Join gets the same refusal, naming nothing.
    let anonymous = RpcClient::anonymous(&ca_pem).unwrap();
    for addr in addrs(&pg) {
        for req in &requests {
            let r = anonymous
                .call(addr, req, Duration::from_secs(5))
                .await
                .unwrap();
            match r {
                Response::Error(e) => {
                    assert_eq!(e.code, ErrorCode::AccessDenied);
                    assert_eq!(e.message, plait_net::REFUSED);
                    assert!(e.leader_hint.is_none());
                }
                other => panic!("{req:?} without a certificate answered {other:?}"),
            }
        }
        // A join with a made-up token: the generic join refusal.
        let (csr_pem, _) = plait_net::certs::new_csr("x").unwrap();
        let join = Request::Join {
            token_id: 1,
            secret: [7; 32],
            csr_pem,
            addr: "127.0.0.1:9".into(),
        };
        match anonymous
            .call(addr, &join, Duration::from_secs(5))
            .await
            .unwrap()
        {
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::AccessDenied);
                assert_eq!(e.message, "join refused");
            }
            other => panic!("made-up token accepted: {other:?}"),
        }
    }

    // A certificate from another CA (trusting ours): refused at the handshake.
    let (other_ca, other_key) = plait_net::certs::new_ca("other").unwrap();
    let (cert_pem, key_pem) = plait_net::certs::issue(&other_ca, &other_key, "client").unwrap();
    let foreign = RpcClient::new(&TlsIdentity {
        ca_pem: ca_pem.clone(),
        cert_pem,
        key_pem,
    })
    .unwrap();
    for addr in addrs(&pg) {
        for req in &requests {
            let r = foreign.call(addr, req, Duration::from_secs(5)).await;
            assert!(r.is_err(), "foreign certificate got an answer: {r:?}");
        }
    }
    // A joiner pinning another CA does not even send its request.
    let impostor = RpcClient::anonymous(&other_ca).unwrap();
    let r = impostor
        .call(addrs(&pg)[0], &Request::NodeStatus, Duration::from_secs(5))
        .await;
    assert!(r.is_err(), "{r:?}");

    // Nothing changed on any node.
    let after = plait_tests::state_digests(&pg).unwrap();
    assert_eq!(before, after);
    let out = pg.admin(&["volume", "list"]).unwrap();
    assert!(!out.contains("evil"), "{out}");
    eprintln!("security test took {:?}", t0.elapsed());
}
