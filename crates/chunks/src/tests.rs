use super::*;

use std::process::Command;

fn chunk(seed: u8, len: usize) -> (ChunkId, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (ChunkId::of(&data), data)
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::open(path).unwrap().set_modified(t).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn put_get_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    for (seed, len) in [(1u8, 0usize), (2, 1), (3, 4096), (4, CHUNK_MAX_BYTES)] {
        let (id, data) = chunk(seed, len);
        assert!(!store.contains(&id));
        store.put(&id, &data).unwrap();
        assert!(store.contains(&id));
        assert_eq!(store.get(&id).unwrap(), data);
        let hex = id.to_hex();
        assert!(
            dir.path()
                .join(&hex[..2])
                .join(&hex[2..4])
                .join(&hex)
                .is_file()
        );
    }
    // Nothing is left behind in tmp.
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    // A reopened store sees the same chunks.
    drop(store);
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, data) = chunk(3, 4096);
    assert_eq!(store.get(&id).unwrap(), data);
}

#[test]
fn missing_chunk_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, _) = chunk(9, 10);
    let err = store.get(&id).unwrap_err();
    assert!(matches!(err, ChunkError::NotFound(x) if x == id));
    assert_eq!(err.code(), ErrorCode::NotFound);
}

#[test]
fn put_with_wrong_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, _) = chunk(1, 100);
    let (_, other) = chunk(2, 100);
    let err = store.put(&id, &other).unwrap_err();
    assert!(matches!(err, ChunkError::HashMismatch { expected, .. } if expected == id));
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(!store.contains(&id));
    assert_eq!(store.usage().unwrap(), (0, 0));
}

#[test]
fn oversized_chunk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let data = vec![0u8; CHUNK_MAX_BYTES + 1];
    let id = ChunkId::of(&data);
    let err = store.put(&id, &data).unwrap_err();
    assert!(
        matches!(err, ChunkError::TooLarge { size_bytes } if size_bytes == CHUNK_MAX_BYTES + 1)
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[test]
fn corrupt_file_is_detected_and_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, data) = chunk(5, 10_000);
    store.put(&id, &data).unwrap();
    let path = store.chunk_path(&id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[1234] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let err = store.get(&id).unwrap_err();
    assert!(matches!(&err, ChunkError::Corrupt { id: x, path: p } if *x == id && *p == path));
    assert_eq!(err.code(), ErrorCode::Io);

    // A truncated file is corrupt too.
    fs::write(&path, &data[..100]).unwrap();
    assert!(matches!(store.get(&id), Err(ChunkError::Corrupt { .. })));

    // Putting the good bytes again (heal) replaces the corrupt copy.
    store.put(&id, &data).unwrap();
    assert_eq!(store.get(&id).unwrap(), data);
}

#[test]
fn put_existing_is_idempotent_and_refreshes_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, data) = chunk(6, 5000);
    store.put(&id, &data).unwrap();
    let path = store.chunk_path(&id);
    let old = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&path, old);
    let ino_before = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&path).unwrap().ino()
    };
    store.put(&id, &data).unwrap();
    let ino_after = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&path).unwrap().ino()
    };
    assert_eq!(
        ino_before, ino_after,
        "an intact chunk must not be rewritten"
    );
    assert!(mtime(&path) > old + Duration::from_secs(3000));
    assert_eq!(store.get(&id).unwrap(), data);
    assert_eq!(store.usage().unwrap(), (1, 5000));
}

#[test]
fn delete_if_older_respects_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, data) = chunk(7, 300);
    let grace = Duration::from_secs(600);

    // Missing chunk: nothing to delete.
    assert!(!store.delete_if_older(&id, grace).unwrap());

    store.put(&id, &data).unwrap();
    // Fresh: kept.
    assert!(!store.delete_if_older(&id, grace).unwrap());
    assert!(store.contains(&id));

    // Old: deleted.
    set_mtime(
        &store.chunk_path(&id),
        SystemTime::now() - Duration::from_secs(601),
    );
    assert!(store.delete_if_older(&id, grace).unwrap());
    assert!(!store.contains(&id));
    assert!(matches!(store.get(&id), Err(ChunkError::NotFound(_))));

    // Old, but a put refreshes it before GC looks: kept.
    store.put(&id, &data).unwrap();
    set_mtime(
        &store.chunk_path(&id),
        SystemTime::now() - Duration::from_secs(601),
    );
    store.put(&id, &data).unwrap();
    assert!(!store.delete_if_older(&id, grace).unwrap());
    assert!(store.contains(&id));

    // A zero grace deletes at once.
    assert!(store.delete_if_older(&id, Duration::ZERO).unwrap());
}

#[test]
fn concurrent_put_and_delete_never_lose_an_acknowledged_refresh() {
    // Each round: the chunk is old; a put (refresh) races a GC delete with a long grace. After
    // both, if the put finished the chunk must exist unless the delete won the lock first, in
    // which case the put must have re-created it. Either way the chunk is present at the end.
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(ChunkStore::open(dir.path()).unwrap());
    let (id, data) = chunk(8, 2000);
    for _ in 0..50 {
        store.put(&id, &data).unwrap();
        set_mtime(
            &store.chunk_path(&id),
            SystemTime::now() - Duration::from_secs(3600),
        );
        let s = store.clone();
        let d = data.clone();
        let putter = std::thread::spawn(move || s.put(&id, &d).unwrap());
        let _ = store.delete_if_older(&id, Duration::from_secs(60)).unwrap();
        putter.join().unwrap();
        assert_eq!(store.get(&id).unwrap(), data);
    }
}

#[test]
fn list_orders_and_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let mut ids: Vec<ChunkId> = (0..40u8)
        .map(|seed| {
            let (id, data) = chunk(seed, 64 + seed as usize);
            store.put(&id, &data).unwrap();
            id
        })
        .collect();
    ids.sort();
    // Stray files are ignored: a non-hex name, a file in tmp that is not .tmp is left alone.
    fs::write(dir.path().join("README"), b"x").unwrap();

    assert_eq!(store.list(None, 1000).unwrap(), ids);
    assert!(store.list(None, 0).unwrap().is_empty());

    let mut paged = Vec::new();
    let mut after: Option<ChunkId> = None;
    loop {
        let page = store.list(after.as_ref(), 7).unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        paged.extend(page);
    }
    assert_eq!(paged, ids);

    // `after` need not be a stored id.
    let probe = ChunkId([0x80; 32]);
    let expected: Vec<ChunkId> = ids.iter().copied().filter(|x| *x > probe).collect();
    assert_eq!(store.list(Some(&probe), 1000).unwrap(), expected);

    let total: u64 = (0..40u64).map(|s| 64 + s).sum();
    assert_eq!(store.usage().unwrap(), (40, total));
}

#[test]
fn open_removes_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (id, data) = chunk(1, 10);
    store.put(&id, &data).unwrap();
    drop(store);
    let leftover = dir
        .path()
        .join("tmp")
        .join(format!("{}.1.2.tmp", id.to_hex()));
    fs::write(&leftover, b"half a chunk").unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    assert!(!leftover.exists());
    assert_eq!(store.get(&id).unwrap(), data);
}

#[test]
fn disk_space_reports_something_sane() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (total, free) = store.disk_space().unwrap();
    assert!(total > 0);
    assert!(free <= total);
}

#[test]
fn io_errors_map_no_space() {
    assert!(matches!(
        ChunkError::from(io::Error::from_raw_os_error(libc::ENOSPC)),
        ChunkError::NoSpace
    ));
    assert!(matches!(
        ChunkError::from(io::Error::from_raw_os_error(libc::EDQUOT)),
        ChunkError::NoSpace
    ));
    assert!(matches!(
        ChunkError::from(io::Error::from_raw_os_error(libc::EIO)),
        ChunkError::Io(_)
    ));
    assert_eq!(ChunkError::NoSpace.code(), ErrorCode::NoSpace);
}

/// Unmounts the tmpfs even if the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_reports_no_space_and_keeps_earlier_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipping full_disk test: could not mount a tmpfs (not root?)");
        return;
    }
    let _mount = Mount(mnt.clone());

    let store = ChunkStore::open(&mnt.join("chunks")).unwrap();
    let (total, _) = store.disk_space().unwrap();
    assert!(
        total <= 2 * 1024 * 1024,
        "tmpfs should be about 1 MiB, got {total}"
    );

    let mut stored = Vec::new();
    let mut hit_no_space = false;
    for seed in 0..64u8 {
        let (id, data) = chunk(seed, 150 * 1024);
        match store.put(&id, &data) {
            Ok(()) => stored.push((id, data)),
            Err(ChunkError::NoSpace) => {
                hit_no_space = true;
                assert!(!store.contains(&id));
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(hit_no_space, "1 MiB tmpfs never filled up");
    assert!(!stored.is_empty());
    // The failed write left no temp file behind, and every earlier chunk is intact.
    assert_eq!(
        fs::read_dir(mnt.join("chunks").join("tmp"))
            .unwrap()
            .count(),
        0
    );
    for (id, data) in &stored {
        assert_eq!(&store.get(id).unwrap(), data);
    }
    // Freeing space makes puts work again.
    let (first, _) = stored[0];
    assert!(store.delete_if_older(&first, Duration::ZERO).unwrap());
    let (id, data) = chunk(200, 10 * 1024);
    store.put(&id, &data).unwrap();
    assert_eq!(store.get(&id).unwrap(), data);
}
