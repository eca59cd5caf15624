//! Cluster membership with real plaitd processes: nodes join with one-time tokens (the
//! playground's nodes 2..N already do), a used or expired token is refused with one
//! generic error, a witness gives a majority without storing chunks, and `node remove`
//! removes a dead node but refuses to break the quorum.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plait_net::RpcClient;
use plait_net::token::JoinToken;
use plait_proto::{ErrorCode, Request, Response};
use plait_tests::Playground;

/// Chunk files (64-hex names) under a node's chunk directory.
fn chunk_count(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.len() == 64) {
                n += 1;
            }
        }
    }
    n
}

/// `plait node list --output json` as (id, role, state, voter).
fn node_list(pg: &Playground) -> Vec<(u64, String, String, bool)> {
    let out = pg.admin(&["node", "list", "--output", "json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["role"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["voter"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_joiner(token: &str, addr: SocketAddr, data: &Path) -> Child {
    let bin = plait_tests::bin_dir().unwrap().join("plaitd");
    let log = fs::File::create(data.with_extension("log")).unwrap();
    Command::new(bin)
        .args(["--join", token, "--listen", &addr.to_string(), "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Sends a join request for `token` to its first address; returns the answer.
async fn try_join(token: &JoinToken) -> Response {
    let client = RpcClient::for_join(token.ca_fingerprint).unwrap();
    let (csr_pem, _key) = plait_net::certs::new_csr("intruder").unwrap();
    let req = Request::Join {
        token_id: token.token_id,
        secret: token.secret,
        csr_pem,
        addr: "127.0.0.1:9".into(),
    };
    let addr: SocketAddr = token.addrs[0].parse().unwrap();
    client
        .call(addr, &req, Duration::from_secs(10))
        .await
        .unwrap()
}

fn assert_refused(r: &Response) {
    match r {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::AccessDenied, "{e:?}");
            assert_eq!(e.message, JOIN_REFUSED, "refusal must be generic");
        }
        other => panic!("join accepted: {other:?}"),
    }
}

/// The one message of every refused join (`plait_meta::JOIN_REFUSED`).
const JOIN_REFUSED: &str = "join refused";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_join_once_witness_holds_no_chunks_and_remove_keeps_quorum() {
    let t0 = Instant::now();
    // Two data nodes and a witness; nodes 2 and 3 joined with tokens.
    let pg = Playground::up_with(3, 2, &[], &["--witness", "1"]).unwrap();
    let roles: Vec<(u64, String)> = node_list(&pg)
        .into_iter()
        .map(|(id, role, state, voter)| {
            assert_eq!(state, "up");
            assert!(voter, "node {id} is not a voter");
            (id, role)
        })
        .collect();
    assert_eq!(
        roles,
        [
            (1, "both".into()),
            (2, "both".into()),
            (3, "witness".into())
        ]
    );

    // Writes land on the two data nodes only.
    for i in 0..20 {
        fs::write(
            pg.mnt.join(format!("f{i}")),
            plait_tests::content("w", i, 5000),
        )
        .unwrap();
    }
    let chunks = |k: u32| chunk_count(&pg.dir.path().join(format!("node{k}/data/chunks")));
    assert_eq!(chunks(3), 0, "the witness stores chunks");
    assert!(
        chunks(1) >= 20 && chunks(2) >= 20,
        "{} {}",
        chunks(1),
        chunks(2)
    );

    // A new node joins with a token from `node add` and serves.
    let token_text = pg.admin(&["node", "add", "--ttl-s", "60"]).unwrap();
    let token = JoinToken::decode(&token_text).unwrap();
    let extra = tempfile::tempdir().unwrap();
    let addr4 = free_addr();
    let mut node4 = start_joiner(token_text.trim(), addr4, &extra.path().join("node4"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = node_list(&pg);
        if list
            .iter()
            .any(|(id, _, state, voter)| *id == 4 && state == "up" && *voter)
        {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not join: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(extra.path().join("node4/tls/node.pem").exists());

    // The same token again, a wrong secret and an expired token: one generic refusal.
    assert_refused(&try_join(&token).await);
    let mut wrong = token.clone();
    wrong.secret[0] ^= 1;
    assert_refused(&try_join(&wrong).await);
    let short = pg
        .admin(&["node", "add", "--role", "data", "--ttl-ms", "1"])
        .unwrap();
    let short = JoinToken::decode(&short).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = node_list(&pg);
    assert_refused(&try_join(&short).await);
    assert_eq!(node_list(&pg), before, "a refused join changed the cluster");

    // Node 4 dies for good and is removed.
    node4.kill().unwrap();
    node4.wait().unwrap();
    let out = pg.admin(&["node", "remove", "4"]).unwrap();
    assert!(out.contains("removed"), "{out}");
    assert!(node_list(&pg).iter().all(|(id, ..)| *id != 4));
    assert!(
        plait_tests::heal_pending(&pg)
            .unwrap()
            .iter()
            .all(|(n, _)| *n != 4)
    );

    // With node 2 down, removing another voter would leave no answering majority.
    pg.cmd("stop-node", &["2"]).unwrap();
    let err = pg.admin(&["node", "remove", "3"]).unwrap_err().to_string();
    assert!(err.contains("no majority"), "{err}");
    assert_eq!(node_list(&pg).len(), 3);

    // A joined node restarts from the certificate it saved (its token is used up).
    pg.cmd("start-node", &["2"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node_list(&pg)
        .iter()
        .any(|(id, _, state, _)| *id == 2 && state == "up")
    {
        assert!(Instant::now() < deadline, "node 2 did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..20 {
        assert_eq!(
            fs::read(pg.mnt.join(format!("f{i}"))).unwrap(),
            plait_tests::content("w", i, 5000)
        );
    }
    eprintln!("membership test took {:?}", t0.elapsed());
}

/// Kills the child process when dropped (a failing test leaves no node behind).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a node whose data directory is `data_dir` keeps the chunk holding `data`.
fn chunk_path(data_dir: &Path, data: &[u8]) -> std::path::PathBuf {
    let hex = blake3::hash(data).to_hex().to_string();
    data_dir
        .join("chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex)
}

#[test]
fn a_joined_data_node_takes_its_chunks_and_the_old_holders_drop_theirs() {
    // Three data nodes, two copies of each chunk.
    let pg = Playground::up(3, 2, &[]).unwrap();
    let files: Vec<Vec<u8>> = (0..24)
        .map(|i| {
            format!("surplus {i} ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(40_000 + i)
                .collect()
        })
        .collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(pg.mnt.join(format!("f{i}")), data).unwrap();
    }

    // A fourth data node joins: the chunks that now rank to it move there, and the node
    // each one displaced drops its copy once both placed nodes hold one.
    let token = pg
        .admin(&["node", "add", "--role", "data", "--ttl-s", "60"])
        .unwrap();
    let extra = tempfile::tempdir().unwrap();
    let node4_dir = extra.path().join("node4");
    let _node4 = KillOnDrop(start_joiner(token.trim(), free_addr(), &node4_dir));
    let data_dir = |k: u32| match k {
        4 => node4_dir.clone(),
        k => pg.dir.path().join(format!("node{k}/data")),
    };
    let holders = |data: &[u8]| -> Vec<u32> {
        (1..=4)
            .filter(|k| plait_tests::chunk_intact(&chunk_path(&data_dir(*k), data)))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let wrong: Vec<(usize, Vec<u32>, Vec<u32>)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, data)| {
                let mut want = plait_tests::placed_nodes(&[1, 2, 3, 4], 2, data);
                want.sort_unstable();
                let have = holders(data);
                (have != want).then_some((i, have, want))
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copies not where the 4-node map places them (file, held on, placed on): {wrong:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let moved = files
        .iter()
        .filter(|d| plait_tests::placed_nodes(&[1, 2, 3, 4], 2, d).contains(&4))
        .count();
    assert!(moved > 0, "no chunk ranks to the new node");
    let info = pg.admin(&["heal", "info"]).unwrap();
    eprintln!("{moved} of {} chunks moved to node 4\n{info}", files.len());
    assert!(info.contains("surplus copies dropped"), "{info}");
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(pg.mnt.join(format!("f{i}"))).unwrap(), data);
    }
}
