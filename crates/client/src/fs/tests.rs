//! End-to-end tests of [`PlaitFs`] against the in-memory fake cluster.

use plait_proto::meta::{NewKind, SetAttr};
use plait_proto::{CHUNK_MAX_BYTES, ErrorCode, INLINE_CHUNK_MAX_BYTES, Ino};

use super::*;
use crate::fake::{self, Fake, ROOT};

const MIB: usize = 1024 * 1024;

async fn mount(fake: &Fake, config: FsConfig) -> PlaitFs {
    match PlaitFs::open_volume(fake::client(fake), "vol", config).await {
        Ok(fs) => fs,
        Err(e) => panic!("open_volume: {e}"),
    }
}

async fn new_file(fs: &PlaitFs, name: &str) -> (Ino, u64) {
    let intent = OpenIntent::from_flags(libc::O_RDWR | libc::O_CREAT);
    let (attr, fh) = fs
        .create(ROOT, name.as_bytes(), 0o644, 0, 0, intent)
        .await
        .unwrap();
    (attr.ino, fh)
}

fn state(fake: &Fake) -> std::sync::MutexGuard<'_, fake::FakeState> {
    fake.lock().unwrap()
}

#[tokio::test]
async fn writes_are_read_back_before_and_after_flush() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    assert_eq!(fs.write(ino, fh, 0, b"hello").await.unwrap(), 5);
    assert!(
        state(&fake).writes.is_empty(),
        "nothing committed before flush"
    );
    assert_eq!(fs.read(ino, fh, 0, 100).await.unwrap(), b"hello");
    assert_eq!(fs.getattr(ino).await.unwrap().size, 5);
    assert_eq!(fs.dirty_total_bytes(), 5);

    fs.flush(ino).await.unwrap();
    assert_eq!(state(&fake).file_bytes(ino), b"hello");
    assert_eq!(state(&fake).writes, vec![(ino, 1)]);
    assert_eq!(fs.dirty_total_bytes(), 0);
    assert_eq!(fs.read(ino, fh, 1, 3).await.unwrap(), b"ell");
    fs.release(ino, fh).await.unwrap();
}

#[tokio::test]
async fn dirty_bytes_overlay_committed_data_and_holes() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.write(ino, fh, 0, b"aaaaaaaaaa").await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.write(ino, fh, 3, b"XY").await.unwrap();
    fs.write(ino, fh, 20, b"zz").await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().size, 22);
    let mut want = b"aaaXYaaaaa".to_vec();
    want.extend_from_slice(&[0; 10]);
    want.extend_from_slice(b"zz");
    assert_eq!(fs.read(ino, fh, 0, 4096).await.unwrap(), want);
    // Past the end: short, then empty.
    assert_eq!(fs.read(ino, fh, 21, 10).await.unwrap(), b"z");
    assert!(fs.read(ino, fh, 22, 10).await.unwrap().is_empty());

    fs.release(ino, fh).await.unwrap();
    assert_eq!(state(&fake).file_bytes(ino), want);
}

#[tokio::test]
async fn a_large_file_is_cut_at_chunk_boundaries_in_one_commit() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "big").await;
    let data: Vec<u8> = (0..9 * MIB).map(|i| (i % 251) as u8).collect();
    for (i, piece) in data.chunks(MIB).enumerate() {
        fs.write(ino, fh, (i * MIB) as u64, piece).await.unwrap();
    }
    fs.flush(ino).await.unwrap();
    {
        let st = state(&fake);
        assert_eq!(
            st.writes,
            vec![(ino, 3)],
            "9 MiB = 3 aligned chunks, one Write op"
        );
        let lens: Vec<u64> = st.extents[&ino].values().map(|e| e.len).collect();
        let chunk = CHUNK_MAX_BYTES as u64;
        assert_eq!(lens, vec![chunk, chunk, MIB as u64]);
        assert_eq!(st.file_bytes(ino), data);
    }
    // Read back across the chunk boundary (through the cache).
    let at = CHUNK_MAX_BYTES as u64 - 10;
    let got = fs.read(ino, fh, at, 20).await.unwrap();
    assert_eq!(got, &data[at as usize..at as usize + 20]);
}

#[tokio::test]
async fn per_file_bound_flushes_before_buffering_more() {
    let fake = fake::new_fake();
    let config = FsConfig {
        dirty_max_bytes: 1000,
        ..FsConfig::default()
    };
    let fs = mount(&fake, config).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.write(ino, fh, 0, &[1; 600]).await.unwrap();
    assert!(state(&fake).writes.is_empty());
    fs.write(ino, fh, 600, &[2; 600]).await.unwrap();
    assert_eq!(state(&fake).writes.len(), 1, "first 600 bytes flushed");
    assert_eq!(fs.dirty_total_bytes(), 600);
    let got = fs.read(ino, fh, 0, 2000).await.unwrap();
    assert_eq!(&got[..600], &[1; 600][..]);
    assert_eq!(&got[600..], &[2; 600][..]);
}

#[tokio::test]
async fn total_bound_flushes_the_fullest_file() {
    let fake = fake::new_fake();
    let config = FsConfig {
        dirty_total_max_bytes: 1000,
        ..FsConfig::default()
    };
    let fs = mount(&fake, config).await;
    let (a, fa) = new_file(&fs, "a").await;
    let (b, fb) = new_file(&fs, "b").await;
    fs.write(a, fa, 0, &[1; 700]).await.unwrap();
    fs.write(b, fb, 0, &[2; 600]).await.unwrap();
    assert_eq!(state(&fake).writes, vec![(a, 1)]);
    assert_eq!(fs.dirty_total_bytes(), 600);
    assert!(fs.dirty_total_bytes() <= 1000);
}

#[tokio::test]
async fn a_failed_flush_keeps_the_bytes_and_reports_the_error() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    // Larger than an inline chunk, so the flush uploads to data nodes.
    let mut data = b"precious".to_vec();
    data.resize(INLINE_CHUNK_MAX_BYTES + 1, b'.');
    fs.write(ino, fh, 0, &data).await.unwrap();
    state(&fake).fail_puts = Some(ErrorCode::NoSpace);
    let err = fs.flush(ino).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
    // Writes that arrived meanwhile win over the restored bytes.
    fs.write(ino, fh, 0, b"P").await.unwrap();
    assert_eq!(fs.read(ino, fh, 0, 8).await.unwrap(), b"Precious");
    assert_eq!(fs.dirty_total_bytes(), data.len() as u64);
    // Close reports the error too, and the bytes survive it.
    assert!(fs.release(ino, fh).await.is_err());
    state(&fake).fail_puts = None;
    fs.flush(ino).await.unwrap();
    data[0] = b'P';
    assert_eq!(state(&fake).file_bytes(ino), data);
    assert_eq!(fs.dirty_total_bytes(), 0);
}

#[tokio::test]
async fn small_pieces_commit_inline_and_read_back_without_a_chunk_fetch() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    // A chunk upload would fail: small pieces must not need one.
    state(&fake).fail_puts = Some(ErrorCode::NoSpace);
    fs.write(ino, fh, 0, b"small file").await.unwrap();
    fs.write(ino, fh, 100, &[7u8; INLINE_CHUNK_MAX_BYTES - 100])
        .await
        .unwrap();
    fs.release(ino, fh).await.unwrap();
    assert_eq!(state(&fake).writes, vec![(ino, 2)]);
    assert_eq!(state(&fake).inline.len(), 2);
    // Another mount reads it with the extents, fetching no chunk from a node.
    let other = mount(&fake, FsConfig::default()).await;
    let fh = other.open(ino, false).await.unwrap();
    let got = other.read(ino, fh, 0, 200).await.unwrap();
    assert_eq!(&got[..10], b"small file");
    assert_eq!(&got[10..100], &[0u8; 90][..]);
    assert_eq!(&got[100..], &[7u8; 100][..]);
    assert_eq!(state(&fake).chunk_gets, 0);
    // One byte over the bound goes to the data nodes (and fails here).
    let (big, fh) = new_file(&fs, "big").await;
    fs.write(big, fh, 0, &vec![1u8; INLINE_CHUNK_MAX_BYTES + 1])
        .await
        .unwrap();
    assert_eq!(fs.flush(big).await.unwrap_err().errno(), libc::ENOSPC);
}

#[tokio::test]
async fn an_orphan_is_reaped_at_its_last_release() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh1) = new_file(&fs, "f").await;
    let fh2 = fs.open(ino, false).await.unwrap();
    fs.write(ino, fh1, 0, b"data").await.unwrap();
    fs.unlink(ROOT, b"f").await.unwrap();
    assert!(state(&fake).reaped.is_empty());
    fs.release(ino, fh1).await.unwrap();
    assert!(state(&fake).reaped.is_empty());
    // Still readable through the remaining handle.
    assert_eq!(fs.read(ino, fh2, 0, 10).await.unwrap(), b"data");
    fs.release(ino, fh2).await.unwrap();
    assert_eq!(reaped_reaching(&fake, 1).await, vec![ino]);
}

#[tokio::test]
async fn an_orphan_not_open_here_is_reaped_at_once() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.release(ino, fh).await.unwrap();
    fs.unlink(ROOT, b"f").await.unwrap();
    // The reap runs in the background; unmounting (flush_all) waits for it.
    fs.flush_all().await.unwrap();
    assert_eq!(state(&fake).reaped, vec![ino]);
    // A rename replacing a target orphans it as well.
    let (a, fa) = new_file(&fs, "a").await;
    let (b, fb) = new_file(&fs, "b").await;
    fs.release(a, fa).await.unwrap();
    fs.release(b, fb).await.unwrap();
    fs.rename(ROOT, b"a", ROOT, b"b", RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(reaped_reaching(&fake, 2).await, vec![ino, b]);
}

/// The inodes reaped so far, once there are `n` (reaps run in the background; waits at
/// most about a second).
async fn reaped_reaching(fake: &Fake, n: usize) -> Vec<Ino> {
    eventually(|| state(fake).reaped.len() >= n).await;
    state(fake).reaped.clone()
}

/// Waits until `done` holds, checking every 5 ms for at most about a second (work the
/// mount does in background tasks); the caller asserts on the outcome.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn truncation_drops_buffered_bytes_past_the_new_size() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.write(ino, fh, 0, &[9; 100]).await.unwrap();
    let set = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(ino, set).await.unwrap().size, 10);
    assert_eq!(state(&fake).file_bytes(ino), vec![9; 10]);
    assert_eq!(fs.read(ino, fh, 0, 100).await.unwrap(), vec![9; 10]);
    // Growing leaves a hole.
    let set = SetAttr {
        size: Some(20),
        ..SetAttr::default()
    };
    fs.setattr(ino, set).await.unwrap();
    let mut want = vec![9; 10];
    want.extend_from_slice(&[0; 10]);
    assert_eq!(fs.read(ino, fh, 0, 100).await.unwrap(), want);
}

#[tokio::test]
async fn open_with_truncate_empties_the_file() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.write(ino, fh, 0, b"old contents").await.unwrap();
    fs.release(ino, fh).await.unwrap();
    let fh = fs.open(ino, true).await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().size, 0);
    assert!(fs.read(ino, fh, 0, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn extent_replies_are_paged() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    let mut want = vec![0u8; 50];
    for i in 0..5u8 {
        let at = u64::from(i) * 10;
        fs.write(ino, fh, at, &[b'a' + i; 5]).await.unwrap();
        fs.flush(ino).await.unwrap();
        want[at as usize..at as usize + 5].copy_from_slice(&[b'a' + i; 5]);
    }
    fs.write(ino, fh, 45, &[b'z'; 5]).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    want[45..].copy_from_slice(&[b'z'; 5]);
    state(&fake).extents_page_max = 2;
    // The open fetches the first window (which proves the inode exists); reads use it.
    let before = state(&fake).extent_queries;
    let fh = fs.open(ino, false).await.unwrap();
    assert_eq!(fs.read(ino, fh, 0, 4096).await.unwrap(), want);
    assert_eq!(
        state(&fake).extent_queries - before,
        3,
        "6 extents, pages of 2"
    );
    // The window is cached: a second read asks nothing.
    assert_eq!(fs.read(ino, fh, 0, 4096).await.unwrap(), want);
    assert_eq!(state(&fake).extent_queries - before, 3);
}

#[tokio::test]
async fn close_to_open_between_two_mounts() {
    let fake = fake::new_fake();
    let one = mount(&fake, FsConfig::default()).await;
    let two = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&one, "shared").await;
    one.write(ino, fh, 0, b"version 1").await.unwrap();
    one.release(ino, fh).await.unwrap();

    let fh2 = two.open(ino, false).await.unwrap();
    assert_eq!(two.read(ino, fh2, 0, 100).await.unwrap(), b"version 1");

    let fh = one.open(ino, false).await.unwrap();
    one.write(ino, fh, 0, b"VERSION 2").await.unwrap();
    one.release(ino, fh).await.unwrap();

    two.release(ino, fh2).await.unwrap();
    let fh2 = two.open(ino, false).await.unwrap();
    assert_eq!(two.read(ino, fh2, 0, 100).await.unwrap(), b"VERSION 2");
}

#[tokio::test]
async fn chunks_are_cached_and_verified() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    let data = vec![5u8; 2 * MIB];
    fs.write(ino, fh, 0, &data).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    // 2 MiB is above the write-cache limit: the first read fetches, the second does not.
    let fh = fs.open(ino, false).await.unwrap();
    fs.read(ino, fh, 0, 4096).await.unwrap();
    fs.read(ino, fh, 4096, 4096).await.unwrap();
    assert_eq!(state(&fake).chunk_gets, 1);
    assert!(fs.cached_bytes() >= data.len() as u64);

    // A corrupt copy on the node is never returned.
    let fresh = mount(&fake, FsConfig::default()).await;
    for bytes in state(&fake).chunks.values_mut() {
        if let Some(b) = bytes.first_mut() {
            *b ^= 0xFF;
        }
    }
    let fh = fresh.open(ino, false).await.unwrap();
    let err = fresh.read(ino, fh, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
}

#[tokio::test]
async fn readdir_pages_and_snapshots() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let dir = fs
        .create_node(ROOT, b"d", NewKind::Dir, 0o755, 0, 0)
        .await
        .unwrap();
    for i in 0..1500 {
        fs.create_node(
            dir.ino,
            format!("e{i:05}").as_bytes(),
            NewKind::File,
            0o644,
            0,
            0,
        )
        .await
        .unwrap();
    }
    let fh = fs.opendir(dir.ino).await.unwrap();
    let listing = fs.dir_listing(fh).unwrap();
    assert_eq!(listing.len(), 1502);
    assert_eq!(listing.slot(0), Some(DirSlot::Dot(dir.ino)));
    assert_eq!(listing.slot(1), Some(DirSlot::DotDot(ROOT)));
    assert!(matches!(listing.slot(1501), Some(DirSlot::Entry(e)) if e.name == b"e01499"));
    // The snapshot does not change under the handle.
    fs.unlink(dir.ino, b"e00000").await.unwrap();
    assert_eq!(fs.dir_listing(fh).unwrap().len(), 1502);
    fs.releasedir(fh).unwrap();
    assert!(matches!(fs.dir_listing(fh), Err(FsError::BadHandle(_))));
    // The root lists itself as its parent.
    let fh = fs.opendir(ROOT).await.unwrap();
    assert_eq!(
        fs.dir_listing(fh).unwrap().slot(1),
        Some(DirSlot::DotDot(ROOT))
    );
}

#[tokio::test]
async fn create_opens_a_file_another_mount_created_unless_exclusive() {
    let fake = fake::new_fake();
    let one = mount(&fake, FsConfig::default()).await;
    let two = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&one, "f").await;
    one.write(ino, fh, 0, b"abc").await.unwrap();
    one.release(ino, fh).await.unwrap();

    let excl = OpenIntent::from_flags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL);
    let err = two.create(ROOT, b"f", 0o644, 0, 0, excl).await.unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);

    let plain = OpenIntent::from_flags(libc::O_RDWR | libc::O_CREAT);
    let (attr, fh) = two.create(ROOT, b"f", 0o644, 0, 0, plain).await.unwrap();
    assert_eq!(attr.ino, ino);
    assert_eq!(two.read(ino, fh, 0, 10).await.unwrap(), b"abc");

    // Another user without write permission is refused.
    let err = two
        .create(ROOT, b"f", 0o644, 1000, 1000, plain)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
}

#[tokio::test]
async fn bad_names_and_handles_fail_locally() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let long = vec![b'x'; 256];
    let err = fs.lookup(ROOT, &long).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    let err = fs
        .create_node(ROOT, &long, NewKind::Dir, 0o755, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    let err = fs.read(ROOT, 999, 0, 1).await.unwrap_err();
    assert_eq!(err.errno(), libc::EBADF);
    assert_eq!(fs.lookup(ROOT, b"..").await.unwrap().ino, ROOT);
    assert_eq!(fs.lookup(ROOT, b".").await.unwrap().ino, ROOT);
}

#[tokio::test]
async fn xattrs_statfs_and_fallocate() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "f").await;
    fs.setxattr(ino, b"user.a", b"1", XattrMode::Upsert)
        .await
        .unwrap();
    assert_eq!(fs.getxattr(ino, b"user.a").await.unwrap(), b"1");
    assert_eq!(fs.listxattr(ino).await.unwrap(), vec![b"user.a".to_vec()]);
    fs.removexattr(ino, b"user.a").await.unwrap();
    let err = fs.getxattr(ino, b"user.a").await.unwrap_err();
    assert_eq!(err.errno(), libc::ENODATA);
    assert_eq!(fs.statfs().await.unwrap().total_bytes, 1 << 30);
    fs.fallocate(ino, 100, 50).await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().size, 150);
    fs.fallocate(ino, 0, 10).await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().size, 150);
    fs.release(ino, fh).await.unwrap();
}

/// The fake's chunk fetch count once it reached `n` (read-ahead runs in the background),
/// or after about a second.
async fn chunk_gets_reaching(fake: &Fake, n: usize) -> usize {
    eventually(|| state(fake).chunk_gets >= n).await;
    state(fake).chunk_gets
}

#[tokio::test]
async fn a_sequential_reader_finds_the_next_windows_fetched_ahead() {
    use super::data::READ_AHEAD_WINDOWS;
    use super::extents::EXTENT_WINDOW_BYTES;
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (ino, fh) = new_file(&fs, "big").await;
    let window = EXTENT_WINDOW_BYTES as usize;
    let ahead = READ_AHEAD_WINDOWS as usize;
    let windows = u8::try_from(ahead + 2).unwrap();
    // Windows each its own chunk (distinct bytes, so distinct ids).
    for w in 0..windows {
        fs.write(ino, fh, (w as usize * window) as u64, &vec![w + 1; window])
            .await
            .unwrap();
    }
    fs.release(ino, fh).await.unwrap();

    let reader = mount(&fake, FsConfig::default()).await;
    let fh = reader.open(ino, false).await.unwrap();
    // A read in the second half of the first window looks sequential: the next
    // READ_AHEAD_WINDOWS windows are fetched ahead, the last one not yet.
    let half = (window / 2) as u64;
    let got = reader.read(ino, fh, half, 1024).await.unwrap();
    assert_eq!(got, vec![1u8; 1024]);
    assert_eq!(chunk_gets_reaching(&fake, 1 + ahead).await, 1 + ahead);
    // Reading them costs no further fetch; the last window is fetched ahead then.
    let got = reader
        .read(ino, fh, EXTENT_WINDOW_BYTES + half, 1024)
        .await
        .unwrap();
    assert_eq!(got, vec![2u8; 1024]);
    let got = reader
        .read(ino, fh, 2 * EXTENT_WINDOW_BYTES, 1024)
        .await
        .unwrap();
    assert_eq!(got, vec![3u8; 1024]);
    assert_eq!(chunk_gets_reaching(&fake, 2 + ahead).await, 2 + ahead);
    // A read the cache can answer (its window is cached, nothing more to fetch ahead)
    // is answered without waiting, and says what the waiting read says.
    let offset = EXTENT_WINDOW_BYTES * 2 + 4096;
    let local = reader.read_local(ino, fh, offset, 1024).expect("cached");
    assert_eq!(local, reader.read(ino, fh, offset, 1024).await.unwrap());
}

#[tokio::test]
async fn inline_bytes_and_clean_closes_are_answered_without_waiting() {
    let fake = fake::new_fake();
    let fs = mount(&fake, FsConfig::default()).await;
    let (small, fh) = new_file(&fs, "small").await;
    fs.write(small, fh, 0, b"hello inline").await.unwrap();
    // Buffered bytes: a close has work to do.
    assert!(!fs.flush_is_noop(small, 7));
    fs.release(small, fh).await.unwrap();
    let (big, fh) = new_file(&fs, "big").await;
    fs.write(big, fh, 0, &vec![5u8; INLINE_CHUNK_MAX_BYTES + 1])
        .await
        .unwrap();
    fs.release(big, fh).await.unwrap();

    let reader = mount(&fake, FsConfig::default()).await;
    let fh = reader.open(small, false).await.unwrap();
    // The open fetched the extents with the inline bytes: the read needs nothing else,
    // and says the same as the waiting read.
    let local = reader
        .read_local(small, fh, 0, 100)
        .expect("answered locally");
    assert_eq!(local, b"hello inline");
    assert_eq!(reader.read(small, fh, 0, 100).await.unwrap(), local);
    assert_eq!(reader.read_local(small, fh, 6, 3).unwrap(), b"inl");
    assert_eq!(reader.read_local(small, fh, 50, 10).unwrap(), b"");
    // A wrong handle is the slow path's to report.
    assert!(reader.read_local(small, fh + 1000, 0, 10).is_none());
    assert!(reader.flush_is_noop(small, 7));
    reader.release(small, fh).await.unwrap();

    // Bytes on data nodes are read here only once a read brought them into the cache.
    let fh = reader.open(big, false).await.unwrap();
    assert!(reader.read_local(big, fh, 0, 10).is_none());
    let waited = reader.read(big, fh, 0, 10).await.unwrap();
    assert_eq!(reader.read_local(big, fh, 0, 10).expect("cached"), waited);
    reader.release(big, fh).await.unwrap();
}

/// A mount of the fake whose write-behind task runs (abort the handle at the end).
async fn mount_writing_behind(fake: &Fake) -> (Arc<PlaitFs>, tokio::task::JoinHandle<()>) {
    let fs = Arc::new(mount(fake, FsConfig::default()).await);
    let serving = tokio::spawn(fs.clone().serve_write_behind());
    (fs, serving)
}

/// Waits (at most about a second) until the fake has `n` extents committed for `ino`.
async fn committed_extents_reaching(fake: &Fake, ino: Ino, n: usize) -> usize {
    let count = || state(fake).extents.get(&ino).map_or(0, |e| e.len());
    eventually(|| count() >= n).await;
    count()
}

#[tokio::test]
async fn whole_chunks_are_flushed_behind_a_sequential_writer() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_writing_behind(&fake).await;
    let (ino, fh) = new_file(&fs, "big").await;
    let data: Vec<u8> = (0..2 * CHUNK_MAX_BYTES + 1000)
        .map(|i| (i % 251) as u8)
        .collect();
    for (k, piece) in data.chunks(MIB).enumerate() {
        fs.write(ino, fh, (k * MIB) as u64, piece).await.unwrap();
    }
    // Before any flush or close, both whole chunks are committed; the tail is not.
    assert_eq!(committed_extents_reaching(&fake, ino, 2).await, 2);
    let chunk = CHUNK_MAX_BYTES as u64;
    {
        let st = state(&fake);
        let lens: Vec<u64> = st.extents[&ino].values().map(|e| e.len).collect();
        assert_eq!(lens, vec![chunk, chunk], "aligned whole chunks only");
    }
    // Everything reads back meanwhile: committed chunks and the buffered tail.
    let at = 2 * chunk - 10;
    let got = fs.read(ino, fh, at, 1010).await.unwrap();
    assert_eq!(got, &data[at as usize..]);
    fs.release(ino, fh).await.unwrap();
    {
        let st = state(&fake);
        assert_eq!(st.file_bytes(ino), data);
        let lens: Vec<u64> = st.extents[&ino].values().map(|e| e.len).collect();
        assert_eq!(
            lens,
            vec![chunk, chunk, 1000],
            "same chunks as a flush at close"
        );
    }
    assert_eq!(fs.dirty_total_bytes(), 0);
    serving.abort();
}

#[tokio::test]
async fn a_failed_flush_behind_the_writer_is_retried_and_reported_at_close() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_writing_behind(&fake).await;
    let (ino, fh) = new_file(&fs, "big").await;
    state(&fake).fail_puts = Some(ErrorCode::NoSpace);
    let data: Vec<u8> = (0..CHUNK_MAX_BYTES + 5).map(|i| (i % 253) as u8).collect();
    for (k, piece) in data.chunks(MIB).enumerate() {
        fs.write(ino, fh, (k * MIB) as u64, piece).await.unwrap();
    }
    // The flush behind the writer fails; its bytes stay buffered and readable.
    eventually(|| {
        fs.inode_entry(ino)
            .is_some_and(|e| e.lock().flushing.is_none())
            && state(&fake).chunk_puts_failed > 0
    })
    .await;
    assert!(state(&fake).chunk_puts_failed > 0, "the flush behind ran");
    assert_eq!(fs.dirty_total_bytes(), data.len() as u64);
    assert_eq!(fs.read(ino, fh, 0, 16).await.unwrap(), &data[..16]);
    // The close retries and reports the error; once the cluster takes the bytes a
    // later flush stores them all.
    assert_eq!(fs.release(ino, fh).await.unwrap_err().errno(), libc::ENOSPC);
    state(&fake).fail_puts = None;
    fs.flush(ino).await.unwrap();
    assert_eq!(state(&fake).file_bytes(ino), data);
    serving.abort();
}

#[tokio::test]
async fn chunks_completed_while_a_flush_behind_runs_follow_it_without_a_close() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_writing_behind(&fake).await;
    let (ino, fh) = new_file(&fs, "big").await;
    let data: Vec<u8> = (0..3 * CHUNK_MAX_BYTES).map(|i| (i % 241) as u8).collect();
    let pieces: Vec<&[u8]> = data.chunks(MIB).collect();
    let per_chunk = CHUNK_MAX_BYTES / MIB;
    for (k, piece) in pieces[..per_chunk].iter().enumerate() {
        fs.write(ino, fh, (k * MIB) as u64, piece).await.unwrap();
    }
    // Catch the first chunk's flush in flight, then complete two more chunks: the writer
    // queues nothing while a flush runs, and stops writing here.
    let flushing = || {
        fs.inode_entry(ino)
            .is_some_and(|e| e.lock().flushing.is_some())
    };
    for _ in 0..10_000 {
        if flushing() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(flushing(), "the first chunk's flush started");
    for (k, piece) in pieces.iter().enumerate().skip(per_chunk) {
        fs.write(ino, fh, (k * MIB) as u64, piece).await.unwrap();
    }
    assert_eq!(committed_extents_reaching(&fake, ino, 3).await, 3);
    assert_eq!(state(&fake).file_bytes(ino), data);
    fs.release(ino, fh).await.unwrap();
    serving.abort();
}

/// A mount of the fake with a session and the close-behind batch task running (abort
/// the handle at the end).
async fn mount_closing_behind(fake: &Fake) -> (Arc<PlaitFs>, tokio::task::JoinHandle<()>) {
    let fs = Arc::new(mount(fake, FsConfig::default()).await);
    let session = crate::session::Session::open(fs.client().clone(), 10_000, "test".into())
        .await
        .unwrap();
    fs.set_session(session);
    let serving = tokio::spawn(fs.clone().serve_dir_batches());
    (fs, serving)
}

/// Creates `name` in the root with `bytes` and closes it (FUSE flush, then release).
async fn create_and_close(fs: &PlaitFs, name: &str, bytes: &[u8]) -> Ino {
    let (ino, fh) = new_file(fs, name).await;
    fs.write(ino, fh, 0, bytes).await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    ino
}

/// The committed inode of `name` in the root, if the fake has it.
fn committed(fake: &Fake, name: &str) -> Option<Ino> {
    state(fake)
        .dentries
        .get(&(ROOT, name.as_bytes().to_vec()))
        .copied()
}

#[tokio::test]
async fn closes_under_a_held_directory_are_committed_in_batches_and_fsync_waits() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    let mut inos = Vec::new();
    for i in 0..20 {
        inos.push(create_and_close(&fs, &format!("f{i}"), format!("bytes {i}").as_bytes()).await);
    }
    // The third create asked for the directory; the rest were created here and queued.
    assert!(state(&fake).dir_holders.contains_key(&ROOT));
    fs.fsync(inos[19]).await.unwrap();
    for (i, ino) in inos.iter().enumerate() {
        assert_eq!(committed(&fake, &format!("f{i}")), Some(*ino), "f{i}");
        assert_eq!(
            state(&fake).file_bytes(*ino),
            format!("bytes {i}").as_bytes()
        );
    }
    let batches = state(&fake).batches.clone();
    let files: usize = batches.iter().sum();
    assert!(files >= 17, "{batches:?}");
    assert!(
        batches.len() < files,
        "no batch carried two files: {batches:?}"
    );
    serving.abort();
}

#[tokio::test]
async fn a_batch_refused_for_a_passing_reason_is_sent_again() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    state(&fake)
        .fail_batches
        .extend([ErrorCode::Unavailable, ErrorCode::NotLeader]);
    let mut inos = Vec::new();
    for i in 0..6 {
        inos.push(create_and_close(&fs, &format!("r{i}"), b"again").await);
    }
    fs.fsync(inos[5]).await.unwrap();
    for (i, ino) in inos.iter().enumerate() {
        assert_eq!(committed(&fake, &format!("r{i}")), Some(*ino), "r{i}");
        assert_eq!(state(&fake).file_bytes(*ino), b"again");
    }
    assert!(state(&fake).fail_batches.is_empty());
    serving.abort();
}

#[tokio::test]
async fn a_file_refused_for_good_fails_alone() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    state(&fake).refuse_batch_name = Some(b"bad".to_vec());
    for i in 0..3 {
        create_and_close(&fs, &format!("warm{i}"), b"w").await;
    }
    let good1 = create_and_close(&fs, "good1", b"one").await;
    let bad = create_and_close(&fs, "bad", b"refused").await;
    let good2 = create_and_close(&fs, "good2", b"two").await;
    // The refused file's sync reports it; the others are committed.
    let err = fs.fsync(bad).await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    fs.fsync(good2).await.unwrap();
    fs.fsync(good1).await.unwrap();
    assert_eq!(committed(&fake, "good1"), Some(good1));
    assert_eq!(committed(&fake, "good2"), Some(good2));
    assert_eq!(committed(&fake, "bad"), None);
    assert_eq!(state(&fake).file_bytes(good2), b"two");
    serving.abort();
}

#[tokio::test]
async fn queued_files_of_a_lost_delegation_are_dropped_and_their_sync_fails() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    let mut warm = 0;
    for i in 0..3 {
        warm = create_and_close(&fs, &format!("warm{i}"), b"w").await;
    }
    fs.fsync(warm).await.unwrap();
    state(&fake)
        .fail_batches
        .push_back(ErrorCode::SessionExpired);
    let lost = create_and_close(&fs, "lost", b"never committed").await;
    let err = fs.fsync(lost).await.unwrap_err();
    assert_eq!(err.errno(), ErrorCode::SessionExpired.errno(), "{err}");
    assert_eq!(committed(&fake, "lost"), None);
    serving.abort();
}

#[tokio::test]
async fn unlinks_under_a_held_directory_are_committed_in_batches() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    let mut inos = Vec::new();
    for i in 0..12 {
        inos.push(create_and_close(&fs, &format!("u{i}"), b"gone soon").await);
    }
    fs.settle_dir(ROOT).await.unwrap();
    assert!(state(&fake).dir_holders.contains_key(&ROOT));
    let batches_before = state(&fake).batches.len();
    for i in 0..12 {
        fs.unlink(ROOT, format!("u{i}").as_bytes()).await.unwrap();
        // Gone here at once, before its commit.
        let err = fs
            .lookup(ROOT, format!("u{i}").as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT, "{err}");
    }
    // A name removed and created again: the new file survives the removal's commit, also
    // when that batch must be sent twice (the fake fails it once as a lost leader would).
    state(&fake).fail_batches.push_back(ErrorCode::Unavailable);
    let again = create_and_close(&fs, "u0", b"new").await;
    fs.settle_dir(ROOT).await.unwrap();
    for i in 1..12 {
        assert_eq!(committed(&fake, &format!("u{i}")), None, "u{i}");
    }
    assert_eq!(committed(&fake, "u0"), Some(again));
    assert_eq!(state(&fake).file_bytes(again), b"new");
    let unlink_batches = state(&fake).batches.len() - batches_before;
    assert!(
        unlink_batches < 12,
        "{unlink_batches} batches for 12 unlinks and a create"
    );
    // The removed files lost their last link: they are reaped (in the background).
    for _ in 0..200 {
        if inos.iter().all(|i| state(&fake).reaped.contains(i)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let reaped = state(&fake).reaped.clone();
    assert!(inos.iter().all(|i| reaped.contains(i)), "{reaped:?}");
    serving.abort();
}

#[tokio::test]
async fn an_unlink_of_a_file_open_here_is_committed_before_it_returns() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    for i in 0..4 {
        create_and_close(&fs, &format!("w{i}"), b"w").await;
    }
    assert!(state(&fake).dir_holders.contains_key(&ROOT));
    let (ino, fh) = new_file(&fs, "open").await;
    fs.write(ino, fh, 0, b"still readable").await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.unlink(ROOT, b"open").await.unwrap();
    // fstat through the open handle sees the last link gone at once.
    assert_eq!(fs.getattr(ino).await.unwrap().nlink, 0);
    assert_eq!(committed(&fake, "open"), None);
    fs.release(ino, fh).await.unwrap();
    serving.abort();
}

/// Opens and reads `ino` whole through a new handle.
async fn open_and_read(fs: &PlaitFs, ino: Ino) -> Vec<u8> {
    let fh = fs.open(ino, false).await.unwrap();
    let bytes = fs.read(ino, fh, 0, 4096).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    bytes
}

#[tokio::test]
async fn opens_of_files_a_held_directory_guards_need_no_request() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    let mut inos = Vec::new();
    for i in 0..8 {
        inos.push(create_and_close(&fs, &format!("r{i}"), format!("body {i}").as_bytes()).await);
    }
    fs.settle_dir(ROOT).await.unwrap();
    assert!(state(&fake).dir_holders.contains_key(&ROOT));
    // The files committed by batches are known here; the first few (created before the
    // directory was held) are fetched once and kept.
    let queries = || state(&fake).extent_queries;
    let before = queries();
    for (i, ino) in inos.iter().enumerate() {
        assert_eq!(
            open_and_read(&fs, *ino).await,
            format!("body {i}").as_bytes()
        );
    }
    assert!(queries() - before < 3, "{} queries", queries() - before);
    let before = queries();
    for (i, ino) in inos.iter().enumerate() {
        assert_eq!(
            open_and_read(&fs, *ino).await,
            format!("body {i}").as_bytes()
        );
        // The fast path of the FUSE adapter answers the same way.
        let fh = fs.open_local(*ino, false).expect("answered here");
        fs.release(*ino, fh).await.unwrap();
    }
    assert_eq!(queries(), before, "no open asked the group");
    // A change of this mount's own drops the kept window: the next open asks again.
    let fh = fs.open(inos[5], false).await.unwrap();
    fs.write(inos[5], fh, 0, b"BODY").await.unwrap();
    fs.flush(inos[5]).await.unwrap();
    fs.release(inos[5], fh).await.unwrap();
    assert!(fs.open_local(inos[5], false).is_none());
    assert_eq!(open_and_read(&fs, inos[5]).await, b"BODY 5");
    fs.setattr(
        inos[6],
        SetAttr {
            size: Some(2),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(open_and_read(&fs, inos[6]).await, b"bo");
    // O_TRUNC always asks.
    assert!(fs.open_local(inos[7], true).is_none());
    // Given back: nothing is answered here any more.
    fs.give_back_all_dirs().await.unwrap();
    assert!(inos.iter().all(|ino| fs.open_local(*ino, false).is_none()));
    let before = queries();
    assert_eq!(open_and_read(&fs, inos[7]).await, b"body 7");
    assert_eq!(queries(), before + 1);
    serving.abort();
}

#[tokio::test]
async fn an_open_racing_an_unlink_behind_finds_the_file_gone() {
    let fake = fake::new_fake();
    let (fs, serving) = mount_closing_behind(&fake).await;
    let mut inos = Vec::new();
    for i in 0..6 {
        inos.push(create_and_close(&fs, &format!("g{i}"), b"going").await);
    }
    fs.settle_dir(ROOT).await.unwrap();
    // Opened and read once (its window kept), then unlinked behind: an open by inode
    // (a kernel dentry looked up before the unlink) neither gets the kept window nor a
    // handle on a file the unlink's commit reaps.
    assert_eq!(open_and_read(&fs, inos[4]).await, b"going");
    fs.unlink(ROOT, b"g4").await.unwrap();
    assert!(fs.open_local(inos[4], false).is_none());
    let err = fs.open(inos[4], false).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    assert!(state(&fake).reaped.contains(&inos[4]));
    assert!(!fs.is_open_here(inos[4]));
    serving.abort();
}
