//! Hostile and broken input: malformed RPC frames, peers without a valid certificate,
//! a corrupt chunk on disk, a full disk. Nothing may crash a node or lose committed data.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plait_net::{RpcClient, TlsIdentity};
use plait_proto::{Request, Response};
use plait_tests::Playground;
use rand::{Rng, SeedableRng};

fn node_addr(pg: &Playground) -> SocketAddr {
    let text = fs::read_to_string(pg.dir.path().join("playground.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with("addr")).unwrap();
    line.split('"').nth(1).unwrap().parse().unwrap()
}

fn tls(pg: &Playground) -> PathBuf {
    pg.dir.path().join("tls")
}

fn identity(dir: &Path) -> TlsIdentity {
    TlsIdentity::load(
        &dir.join("ca.pem"),
        &dir.join("client.pem"),
        &dir.join("client.key"),
    )
    .unwrap()
}

async fn status_ok(client: &RpcClient, addr: SocketAddr) -> bool {
    matches!(
        client
            .call(addr, &Request::NodeStatus, Duration::from_secs(5))
            .await,
        Ok(Response::NodeStatus(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_foreign_certificates_are_refused() {
    let pg = Playground::up(1, 1, &[]).unwrap();
    let addr = node_addr(&pg);
    let client = RpcClient::new(&identity(&tls(&pg))).unwrap();
    assert!(status_ok(&client, addr).await);

    // Random garbage, truncated frames, an oversized frame: each gets an error or a closed
    // stream, and the node keeps serving.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let valid = plait_proto::encode_frame(plait_proto::Envelope::new(Request::NodeStatus))
        .unwrap()
        .into_vec();
    let mut frames: Vec<Vec<u8>> = vec![vec![], valid[..valid.len() - 1].to_vec()];
    for _ in 0..200 {
        let len = rng.random_range(0..2048);
        frames.push((0..len).map(|_| rng.random()).collect());
    }
    frames.push(vec![0xAB; plait_proto::FRAME_MAX_BYTES + 10]);
    for frame in &frames {
        if let Ok(bytes) = client.call_raw(addr, frame, Duration::from_secs(5)).await {
            let resp: Response =
                plait_proto::decode_frame(bytes).expect("node answers with a valid frame");
            assert!(
                matches!(resp, Response::Error(_)),
                "garbage accepted: {resp:?}"
            );
        }
    }
    assert!(
        status_ok(&client, addr).await,
        "node stopped serving after garbage"
    );

    // A peer whose certificate comes from another CA is refused.
    let other = tempfile::tempdir().unwrap();
    let (ca, key) = plait_net::certs::new_ca("other").unwrap();
    let (cert, ckey) = plait_net::certs::issue(&ca, &key, "client").unwrap();
    let own_ca = fs::read_to_string(tls(&pg).join("ca.pem")).unwrap();
    // It trusts our CA (so it could talk to us) but presents a foreign certificate.
    let foreign = TlsIdentity {
        ca_pem: own_ca,
        cert_pem: cert,
        key_pem: ckey,
    };
    let intruder = RpcClient::new(&foreign).unwrap();
    let r = intruder
        .call(addr, &Request::NodeStatus, Duration::from_secs(5))
        .await;
    assert!(r.is_err(), "foreign certificate accepted: {r:?}");
    drop(other);
    assert!(status_ok(&client, addr).await);
}

fn chunk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "tmp") {
                    stack.push(p);
                }
            } else if p.file_name().is_some_and(|n| n.len() == 64) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn corrupt_chunk_is_never_served() {
    let mut pg = Playground::up(1, 1, &[]).unwrap();
    let data = vec![42u8; 100_000];
    fs::write(pg.mnt.join("victim"), &data).unwrap();
    let files = chunk_files(&pg.dir.path().join("node1/data/chunks"));
    assert_eq!(files.len(), 1, "expected one chunk: {files:?}");
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[500] ^= 0xFF;
    fs::write(&files[0], &bytes).unwrap();
    // A fresh mount has no cached copy.
    let m2 = pg.mount().unwrap();
    let err = fs::read(m2.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = fs::read_to_string(pg.node_log(1)).unwrap();
    let id = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&id[..16]) || log.contains(&id),
        "corruption not logged with the chunk id"
    );
}

#[test]
fn full_disk_gives_enospc_and_keeps_committed_data() {
    let tmpfs = plait_tests::Tmpfs::mount(24).unwrap();
    let chunks = tmpfs.path.clone();
    let arg = format!("--chunk-dir={}", chunks.display());
    let pg = Playground::up(1, 1, &[&arg]).unwrap();
    let keep: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    fs::write(pg.mnt.join("keep"), &keep).unwrap();
    let mut saw_enospc = false;
    for i in 0..20 {
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32)
            .map(|j| ((j + i) % 241) as u8)
            .collect();
        // fsync: a close error is invisible to fs::write, which ignores close's result.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = fs::File::create(pg.mnt.join(format!("fill{i}")))?;
            f.write_all(&payload)?;
            f.sync_all()
        };
        match write() {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                saw_enospc = true;
                break;
            }
        }
    }
    assert!(saw_enospc, "the disk never filled up");
    assert_eq!(fs::read(pg.mnt.join("keep")).unwrap(), keep);
}
