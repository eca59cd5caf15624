//! Directory create delegations with real processes: a mount that creates files in a run
//! holds the directory, creates them locally and commits them in batches after their
//! closes; another mount that looks for, lists or changes the directory's names recalls
//! it; a mount that lost its session loses only what it never acknowledged durably.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::{Duration, Instant};

use plait_tests::{Playground, content, mount_pid};

#[test]
fn files_created_in_a_run_are_committed_at_close_and_recalled_by_another_mount() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let a = pg.mnt.clone();
    let b = pg.mount().unwrap();
    fs::create_dir(a.join("d")).unwrap();
    // A run of creates: after the first few the directory is this mount's.
    for i in 0..50 {
        fs::write(a.join(format!("d/f{i}")), content("run", i, 9000)).unwrap();
    }
    // Every closed file is committed: the other mount reads each in full.
    for i in 0..50 {
        assert_eq!(
            fs::read(b.join(format!("d/f{i}"))).unwrap(),
            content("run", i, 9000),
            "d/f{i} on the other mount"
        );
    }

    // An appender on a file the holder creates (Monolog: fopen "a", flock, write).
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(a.join("d/app.log"))
        .unwrap();
    log.write_all(b"line 0\n").unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor for the duration of the calls.
        assert_eq!(unsafe { libc::flock(log.as_raw_fd(), libc::LOCK_EX) }, 0);
        log.write_all(b"line 1\n").unwrap();
        assert_eq!(unsafe { libc::flock(log.as_raw_fd(), libc::LOCK_UN) }, 0);
    }
    log.write_all(b"line 2\n").unwrap();
    drop(log);
    assert_eq!(
        fs::read_to_string(b.join("d/app.log")).unwrap(),
        "line 0\nline 1\nline 2\n"
    );

    // The holder's own view of files it created and has not closed yet.
    fs::write(a.join("d/g0"), b"x").unwrap();
    let mut open = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(a.join("d/open"))
        .unwrap();
    open.write_all(b"written before the recall").unwrap();
    let listed: Vec<String> = fs::read_dir(a.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(listed.contains(&"open".to_string()), "{listed:?}");
    let exclusive = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(a.join("d/g0"));
    assert_eq!(
        exclusive.unwrap_err().raw_os_error(),
        Some(libc::EEXIST),
        "O_EXCL of a name the holder created"
    );
    let mut again = String::new();
    fs::File::open(a.join("d/open"))
        .unwrap()
        .read_to_string(&mut again)
        .unwrap();
    assert_eq!(again, "written before the recall");

    // Another mount creating in the directory recalls it: the holder commits what it
    // created (with the bytes written so far), then the create goes ahead.
    let started = Instant::now();
    fs::write(b.join("d/from-b"), b"b").unwrap();
    eprintln!("create on the other mount took {:?}", started.elapsed());
    assert_eq!(
        fs::read(b.join("d/open")).unwrap(),
        b"written before the recall"
    );
    let meta = fs::metadata(b.join("d/open")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    open.write_all(b", and after").unwrap();
    drop(open);
    assert_eq!(
        fs::read(b.join("d/open")).unwrap(),
        b"written before the recall, and after"
    );
    assert_eq!(fs::read(a.join("d/from-b")).unwrap(), b"b");

    // The holder goes on creating (the ordinary way while the directory cools down),
    // and its own renames, unlinks and attribute changes work on files it created.
    for i in 0..20 {
        fs::write(a.join(format!("d/h{i}")), content("after", i, 100)).unwrap();
    }
    fs::rename(a.join("d/h0"), a.join("d/h0-renamed")).unwrap();
    fs::remove_file(a.join("d/h1")).unwrap();
    fs::set_permissions(a.join("d/h2"), fs::Permissions::from_mode(0o600)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        fs::read(b.join("d/h0-renamed")).unwrap(),
        content("after", 0, 100)
    );
    assert!(!b.join("d/h1").exists());
    assert_eq!(
        fs::metadata(b.join("d/h2")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    for i in 3..20 {
        assert_eq!(
            fs::read(b.join(format!("d/h{i}"))).unwrap(),
            content("after", i, 100)
        );
    }
}

#[test]
fn a_mount_that_lost_its_session_loses_only_unacknowledged_creates() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let a = pg.mount_with(&["--lease-ms=2000"]).unwrap();
    let b = pg.mnt.clone();
    fs::create_dir(a.join("d")).unwrap();
    // Acknowledged durably: fsync before close (a close alone returns once the file is
    // queued for the next batch commit).
    for i in 0..10 {
        let mut f = fs::File::create(a.join(format!("d/f{i}"))).unwrap();
        f.write_all(&content("kept", i, 500)).unwrap();
        f.sync_all().unwrap();
    }
    // Closed only: committed within milliseconds, or (if the hang came first) lost
    // whole, never torn.
    for i in 0..10 {
        fs::write(a.join(format!("d/c{i}")), content("closed", i, 700)).unwrap();
    }
    // (Looked up before the file is opened: a child process closing its copy of the
    // descriptor would flush it.)
    let pid = mount_pid(&pg, &a).expect("mount pid");
    let mut open = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(a.join("d/never-closed"))
        .unwrap();
    open.write_all(b"not acknowledged").unwrap();

    // The holder hangs past its lease: the other mount's create waits for the recall
    // until the group drops the session (and the directory with it), then goes ahead.
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: plain syscall on a pid we own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let created = fs::write(b.join("d/from-b"), b"b");
    let waited = started.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    created.unwrap();
    eprintln!("the create waited {waited:?} for the hung holder");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");

    // The holder's close reports the loss; nothing of it appears anywhere.
    let closed = open.flush().and_then(|()| open.sync_all());
    assert!(closed.is_err(), "fsync under a lost delegation succeeded");
    drop(open);
    assert!(!b.join("d/never-closed").exists());
    // Everything it acknowledged is there.
    for i in 0..10 {
        assert_eq!(
            fs::read(b.join(format!("d/f{i}"))).unwrap(),
            content("kept", i, 500)
        );
    }
    let mut closed_kept = 0;
    for i in 0..10 {
        match fs::read(b.join(format!("d/c{i}"))) {
            Ok(bytes) => {
                assert_eq!(bytes, content("closed", i, 700), "d/c{i} torn");
                closed_kept += 1;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "d/c{i}: {e}"),
        }
    }
    eprintln!("{closed_kept} of 10 files closed without fsync before the hang survived it");
    // And it works again with a new session.
    let deadline = Instant::now() + Duration::from_secs(20);
    plait_tests::write_until_ok(&a.join("d/after"), b"again", deadline);
    assert_eq!(fs::read(b.join("d/after")).unwrap(), b"again");
}

#[test]
fn removals_under_a_held_directory_are_seen_by_another_mount() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let a = pg.mnt.clone();
    let b = pg.mount().unwrap();
    fs::create_dir(a.join("r")).unwrap();
    for i in 0..40 {
        fs::write(a.join(format!("r/f{i}")), content("rm", i, 3000)).unwrap();
    }
    assert_eq!(fs::read(b.join("r/f30")).unwrap(), content("rm", 30, 3000));
    // A descriptor open on a file the holder then removes keeps reading it.
    let mut kept = fs::File::open(a.join("r/f5")).unwrap();
    // Removals in a run (the holder still holds the directory): gone here at once.
    for i in 0..20 {
        fs::remove_file(a.join(format!("r/f{i}"))).unwrap();
        assert!(!a.join(format!("r/f{i}")).exists(), "r/f{i} still here");
    }
    // A name removed and written again holds the new bytes.
    fs::write(a.join("r/f3"), b"again").unwrap();
    let mut bytes = Vec::new();
    kept.read_to_end(&mut bytes).unwrap();
    assert_eq!(
        bytes,
        content("rm", 5, 3000),
        "the removed file through its descriptor"
    );
    drop(kept);
    // The other mount's listing recalls the directory and sees exactly what is left.
    let mut listed: Vec<String> = fs::read_dir(b.join("r"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut want: Vec<String> = (20..40).map(|i| format!("f{i}")).collect();
    want.push("f3".into());
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(fs::read(b.join("r/f3")).unwrap(), b"again");
    for i in [0, 1, 2, 4, 5, 19] {
        let gone = fs::metadata(b.join(format!("r/f{i}")));
        assert_eq!(
            gone.unwrap_err().raw_os_error(),
            Some(libc::ENOENT),
            "r/f{i} on the other mount"
        );
    }
    // The holder's view after the give-back agrees.
    assert!(!a.join("r/f0").exists());
    assert_eq!(fs::read(a.join("r/f25")).unwrap(), content("rm", 25, 3000));
}

#[test]
fn the_holders_opens_see_what_another_mount_wrote_after_it_closed() {
    let mut pg = Playground::up(3, 3, &[]).unwrap();
    let a = pg.mnt.clone();
    let b = pg.mount().unwrap();
    fs::create_dir(a.join("o")).unwrap();
    for i in 0..30 {
        fs::write(a.join(format!("o/f{i}")), content("open", i, 2000)).unwrap();
    }
    // Opened and read on the holder, twice (the second time without asking the group).
    for _ in 0..2 {
        for i in 0..30 {
            assert_eq!(
                fs::read(a.join(format!("o/f{i}"))).unwrap(),
                content("open", i, 2000),
                "o/f{i}"
            );
        }
    }
    // The holder changes its own files freely (overwrite, append) and reads them back.
    fs::write(a.join("o/f9"), b"mine again").unwrap();
    let mut own = OpenOptions::new()
        .append(true)
        .open(a.join("o/f10"))
        .unwrap();
    own.write_all(b"+tail").unwrap();
    drop(own);
    let mut f10 = content("open", 10, 2000);
    f10.extend_from_slice(b"+tail");
    for _ in 0..2 {
        assert_eq!(fs::read(a.join("o/f9")).unwrap(), b"mine again");
        assert_eq!(fs::read(a.join("o/f10")).unwrap(), f10);
    }
    // Another mount replaces a file's bytes (open with O_TRUNC: a size change, then a
    // write): the group makes it wait for the holder to give the directory back.
    fs::write(b.join("o/f7"), b"from b").unwrap();
    assert_eq!(fs::read(a.join("o/f7")).unwrap(), b"from b");
    // After the directory's cool-down the holder takes it again with a run of creates,
    // reads a file (kept again), and the other mount appends to it.
    std::thread::sleep(Duration::from_millis(10_500));
    for i in 30..40 {
        fs::write(a.join(format!("o/f{i}")), content("open", i, 2000)).unwrap();
    }
    for _ in 0..2 {
        assert_eq!(fs::read(a.join("o/f8")).unwrap(), content("open", 8, 2000));
        assert_eq!(
            fs::read(a.join("o/f35")).unwrap(),
            content("open", 35, 2000)
        );
    }
    let mut log = OpenOptions::new()
        .append(true)
        .open(b.join("o/f35"))
        .unwrap();
    log.write_all(b"appended").unwrap();
    drop(log);
    let mut want = content("open", 35, 2000);
    want.extend_from_slice(b"appended");
    assert_eq!(fs::read(a.join("o/f35")).unwrap(), want);
    assert_eq!(fs::read(b.join("o/f35")).unwrap(), want);
    // Nothing of the holder's was lost on the way.
    assert_eq!(fs::read(b.join("o/f9")).unwrap(), b"mine again");
    assert_eq!(fs::read(b.join("o/f10")).unwrap(), f10);
    for i in (0..40).filter(|i| ![7, 9, 10, 35].contains(i)) {
        assert_eq!(
            fs::read(b.join(format!("o/f{i}"))).unwrap(),
            content("open", i, 2000),
            "o/f{i} on the other mount"
        );
    }
}
