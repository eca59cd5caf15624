//! Re-placement with real processes: after a dead node is removed, every chunk that had a
//! copy on it gets one on the node it now ranks to, so each chunk is back on all of its
//! placed nodes (hash verified), without any heal entry or CLI call driving it.

use std::fs;
use std::time::{Duration, Instant};

use plait_tests::{Playground, content, leader, nodes_missing_chunk, placed_nodes};

/// Files written before the node dies (each one chunk of 33–37 KiB on the data nodes).
const FILES: usize = 60;

/// Copies per chunk of the test volume.
const REPLICAS: usize = 3;

/// How long the copies may take to appear before the test fails.
const SETTLE_MAX_MS: u64 = 20_000;

/// `plait node list --output json` as (id, placement state, copies made by placement).
fn placement_states(pg: &Playground) -> Vec<(u64, String, u64)> {
    let out = pg.admin(&["node", "list", "--output", "json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["placement"].as_str().unwrap_or("-").to_string(),
                r["placement_copied_chunks"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until every file's chunk is intact on all its placed nodes under `map`; returns
/// the time it took.
fn wait_all_placed(pg: &Playground, map: &[u32], files: &[Vec<u8>]) -> Duration {
    let dir = pg.dir.path();
    let start = Instant::now();
    loop {
        let missing: Vec<(usize, Vec<u32>)> = files
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let placed = placed_nodes(map, REPLICAS, data);
                assert_eq!(placed.len(), REPLICAS);
                (i, nodes_missing_chunk(dir, &placed, data))
            })
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if missing.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_millis(SETTLE_MAX_MS),
            "after {:?}, {} files still miss placed copies (file, nodes): {:?}",
            start.elapsed(),
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_removed_nodes_chunks_are_copied_to_their_new_placed_nodes() {
    let t0 = Instant::now();
    let pg = Playground::up(4, REPLICAS as u32, &[]).unwrap();
    let ids: Vec<u64> = placement_states(&pg).iter().map(|r| r.0).collect();
    assert_eq!(ids, [1, 2, 3, 4], "playground node K must have id K");

    let files: Vec<Vec<u8>> = (0..FILES).map(|i| content("replace", i, 4096)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(pg.mnt.join(format!("f-{i}")), data).unwrap();
    }
    // The background copies of the writes land on all placed nodes of the full map.
    let before = wait_all_placed(&pg, &[1, 2, 3, 4], &files);
    eprintln!("all copies written after {before:?}");

    // SIGKILL a node that is not the leader, and remove it.
    let lead = leader(&pg).expect("no leader");
    let gone = (2..=4).rev().find(|n| *n != lead).unwrap();
    let map: Vec<u32> = (1..=4).filter(|n| *n != gone).collect();
    let moved = files
        .iter()
        .filter(|d| placed_nodes(&[1, 2, 3, 4], REPLICAS, d).contains(&gone))
        .count();
    assert!(moved > 0, "node {gone} holds no copy");
    pg.cmd("stop-node", &[&gone.to_string()]).unwrap();
    let out = pg.admin(&["node", "remove", &gone.to_string()]).unwrap();
    assert!(out.contains("removed"), "{out}");
    let removed = Instant::now();
    eprintln!("node {gone} (leader {lead}) killed and removed; {moved} chunks had a copy on it");

    // Without `heal start`: the nodes notice the new map and copy what they now hold.
    let took = wait_all_placed(&pg, &map, &files);
    eprintln!(
        "every chunk on its {REPLICAS} placed nodes {took:?} after the removal ({:?} since)",
        removed.elapsed()
    );

    // The passes finish and say what they copied; `heal info` shows them too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = placement_states(&pg);
        let copied: u64 = states.iter().map(|s| s.2).sum();
        if states.iter().all(|s| s.1 == "idle") && copied >= moved as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "placement passes: {states:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = pg.admin(&["heal", "info"]).unwrap();
    assert!(info.contains("placement node"), "{info}");
    assert!(plait_tests::heal_pending(&pg).unwrap().is_empty());
    // `heal start` triggers a pass and waits for it (nothing is left to copy).
    pg.admin(&["heal", "start", "--stall-timeout-s", "20"])
        .unwrap();

    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(pg.mnt.join(format!("f-{i}"))).unwrap(), data);
    }
    eprintln!("replace test took {:?}", t0.elapsed());
}
