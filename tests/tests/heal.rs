//! Heal with real processes: a node that was down gets every copy it missed from the heal
//! index, and a corrupt copy found on read is replaced from a good one.

use std::fs;
use std::time::{Duration, Instant};

use plait_tests::{Playground, chunk_file, chunk_intact, content, heal_pending, leader};

/// Files written while a node is down (each one chunk of 33–37 KiB on the data nodes).
const FILES_WHILE_DOWN: usize = 300;

/// How long heal may take in the test before it fails (the measured time is printed; the
/// bound is loose for a loaded CI machine).
const HEAL_MAX_MS: u64 = 120_000;

fn pending_for(pg: &Playground, node: u32) -> u64 {
    heal_pending(pg)
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == u64::from(node))
        .map(|(_, c)| *c)
        .sum()
}

#[test]
fn a_restarted_node_gets_every_copy_it_missed() {
    let pg = Playground::up(3, 3, &[]).unwrap();
    let dir = pg.dir.path().to_path_buf();
    let lead = leader(&pg).expect("no leader");
    let down = (1..=3).find(|n| *n != lead).unwrap();
    pg.cmd("stop-node", &[&down.to_string()]).unwrap();
    eprintln!("node {down} stopped (leader is {lead})");

    let files: Vec<_> = (0..FILES_WHILE_DOWN)
        .map(|i| content("missed", i, 4096))
        .collect();
    let t = Instant::now();
    for (i, data) in files.iter().enumerate() {
        fs::write(pg.mnt.join(format!("f-{i}")), data).unwrap();
    }
    eprintln!(
        "{} files written degraded in {:?}",
        files.len(),
        t.elapsed()
    );
    // A close may return before its file's batch is committed (close-behind): wait for
    // the last one's commit (a directory's batches commit in order).
    fs::File::open(pg.mnt.join(format!("f-{}", FILES_WHILE_DOWN - 1)))
        .and_then(|f| f.sync_all())
        .unwrap();

    // Every file's chunk is recorded as missing on the stopped node, and only there
    // (the live nodes' own entries, if any, settle within a heal interval).
    assert_eq!(pending_for(&pg, down), FILES_WHILE_DOWN as u64);
    for data in &files {
        assert!(!chunk_file(&dir, down, data).exists());
    }

    pg.cmd("start-node", &[&down.to_string()]).unwrap();
    let started = Instant::now();
    let out = pg
        .admin(&["heal", "start", "--stall-timeout-s", "60"])
        .unwrap();
    eprintln!("{}", out.trim());
    loop {
        let pending: u64 = heal_pending(&pg).unwrap().iter().map(|(_, c)| c).sum();
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(HEAL_MAX_MS),
            "{pending} chunks still pending"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "heal of {} chunks on node {down} drained in {:?}",
        files.len(),
        started.elapsed()
    );

    // Verified by hash on every node: each chunk is on all three placed replicas.
    for (i, data) in files.iter().enumerate() {
        for node in 1..=3 {
            assert!(
                chunk_intact(&chunk_file(&dir, node, data)),
                "f-{i}: copy on node {node} missing or corrupt"
            );
        }
        assert_eq!(&fs::read(pg.mnt.join(format!("f-{i}"))).unwrap(), data);
    }
}

#[test]
fn a_corrupt_copy_found_on_read_is_healed() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let dir = pg.dir.path().to_path_buf();
    let data = content("corrupt", 1, 100_000);
    fs::write(pg.mnt.join("f"), &data).unwrap();
    let settle = Instant::now() + Duration::from_secs(10);
    while !(1..=3).all(|n| chunk_intact(&chunk_file(&dir, n, &data))) {
        assert!(Instant::now() < settle, "not all replicas written");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Corrupt the copy the readers try first (placement order), keeping its length.
    let id = plait_proto::ChunkId::of(&data);
    let first = plait_client::placement::rank(&id, &[1u64, 2, 3], |n| *n)[0];
    let first = u32::try_from(first).unwrap();
    let path = chunk_file(&dir, first, &data);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert!(!chunk_intact(&path));

    // A fresh mount (empty chunk cache) reads the right bytes from another replica...
    let m2 = pg.mount().unwrap();
    assert_eq!(fs::read(m2.join("f")).unwrap(), data);
    // ...and the bad copy is replaced from a good one without anyone asking.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chunk_intact(&path) {
        assert!(
            Instant::now() < deadline,
            "corrupt copy on node {first} not healed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = fs::read_to_string(pg.node_log(first)).unwrap_or_default();
    assert!(
        log.contains("corrupt"),
        "node {first} did not log the corrupt copy"
    );
    let drained = Instant::now() + Duration::from_secs(10);
    while pending_for(&pg, first) > 0 {
        assert!(Instant::now() < drained, "heal entry not settled");
        std::thread::sleep(Duration::from_millis(100));
    }
}
