//! Ordinary file operations on a real FUSE mount of a real single-node playground.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use plait_tests::Playground;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn statvfs_free(path: &Path) -> u64 {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    assert!(s.f_blocks > 0, "statfs reports no blocks");
    s.f_bfree * s.f_frsize
}

#[test]
fn posix_file_operations() {
    // Chunks on a tmpfs of their own, so that statfs figures move only with this test's
    // data (the machine's disk is shared with other tests and programs).
    let tmpfs = plait_tests::Tmpfs::mount(256).unwrap();
    let chunk_dir = format!("--chunk-dir={}", tmpfs.path.display());
    let pg = Playground::up(
        1,
        1,
        &["--gc-grace-ms=500", "--gc-interval-ms=200", &chunk_dir],
    )
    .unwrap();
    let m = &pg.mnt;

    // create, write, read back
    let a = m.join("a.txt");
    fs::write(&a, b"hello plait").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"hello plait");

    // write at an offset past EOF leaves a hole of zeros
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_at(b"XYZ", 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let data = fs::read(&a).unwrap();
    assert_eq!(data.len(), 103);
    assert_eq!(&data[..11], b"hello plait");
    assert!(data[11..100].iter().all(|b| *b == 0));
    assert_eq!(&data[100..], b"XYZ");

    // overwrite in the middle
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_at(b"J", 0).unwrap();
    drop(f);
    assert_eq!(&fs::read(&a).unwrap()[..5], b"Jello");

    // truncate down and extend
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"Jello");
    f.set_len(10).unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), b"Jello\0\0\0\0\0");

    // O_APPEND
    let mut f = OpenOptions::new().append(true).open(&a).unwrap();
    f.write_all(b"++").unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), b"Jello\0\0\0\0\0++");

    // many small writes, read back identical
    let many = m.join("many.bin");
    let mut f = File::create(&many).unwrap();
    let mut expect = Vec::new();
    for i in 0..5000u32 {
        let line = format!("line {i}\n");
        f.write_all(line.as_bytes()).unwrap();
        expect.extend_from_slice(line.as_bytes());
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(&many).unwrap(), expect);

    // a multi-chunk file (10 MiB), random read in the middle
    let big = m.join("big.bin");
    let pattern: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(&big, &pattern).unwrap();
    let mut f = File::open(&big).unwrap();
    f.seek(SeekFrom::Start(4 * 1024 * 1024 - 10)).unwrap();
    let mut buf = vec![0u8; 20];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf[..],
        &pattern[4 * 1024 * 1024 - 10..4 * 1024 * 1024 + 10]
    );
    assert_eq!(fs::read(&big).unwrap(), pattern);

    // files over 4 GiB (sparse)
    let huge = m.join("huge.bin");
    let f = File::create(&huge).unwrap();
    f.write_at(b"end", 5 * 1024 * 1024 * 1024).unwrap();
    drop(f);
    let md = fs::metadata(&huge).unwrap();
    assert_eq!(md.len(), 5 * 1024 * 1024 * 1024 + 3);
    let f = File::open(&huge).unwrap();
    let mut buf = [0u8; 3];
    f.read_exact_at(&mut buf, 5 * 1024 * 1024 * 1024).unwrap();
    assert_eq!(&buf, b"end");
    f.read_exact_at(&mut buf, 1024).unwrap();
    assert_eq!(buf, [0, 0, 0]);

    // directories
    let d = m.join("dir");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("inner"), b"x").unwrap();
    assert_eq!(errno(&fs::remove_dir(&d).unwrap_err()), libc::ENOTEMPTY);
    let mut names: Vec<String> = fs::read_dir(m)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "big.bin", "dir", "huge.bin", "many.bin"]);
    assert_eq!(fs::metadata(m).unwrap().nlink(), 3);

    // names: too long, and the error a local fs gives
    let long = m.join("n".repeat(256));
    assert_eq!(errno(&File::create(&long).unwrap_err()), libc::ENAMETOOLONG);
    fs::write(m.join("n".repeat(255)), b"ok").unwrap();
    fs::remove_file(m.join("n".repeat(255))).unwrap();

    // rename: over an existing file, across directories, NOREPLACE, EXCHANGE
    fs::write(m.join("r1"), b"one").unwrap();
    fs::write(m.join("r2"), b"two").unwrap();
    fs::rename(m.join("r1"), m.join("r2")).unwrap();
    assert_eq!(fs::read(m.join("r2")).unwrap(), b"one");
    assert!(!m.join("r1").exists());
    fs::rename(m.join("r2"), d.join("moved")).unwrap();
    assert_eq!(fs::read(d.join("moved")).unwrap(), b"one");
    fs::write(m.join("x1"), b"x1").unwrap();
    let e = renameat2(&m.join("x1"), &d.join("moved"), libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    renameat2(&m.join("x1"), &d.join("moved"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.join("x1")).unwrap(), b"one");
    assert_eq!(fs::read(d.join("moved")).unwrap(), b"x1");
    let e = fs::rename(&d, d.join("sub")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);

    // hard links and symlinks
    fs::hard_link(m.join("x1"), m.join("x1-link")).unwrap();
    assert_eq!(fs::metadata(m.join("x1")).unwrap().nlink(), 2);
    fs::remove_file(m.join("x1")).unwrap();
    assert_eq!(fs::read(m.join("x1-link")).unwrap(), b"one");
    assert_eq!(fs::metadata(m.join("x1-link")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("dir/moved", m.join("sym")).unwrap();
    assert_eq!(
        fs::read_link(m.join("sym")).unwrap().to_str(),
        Some("dir/moved")
    );
    assert_eq!(fs::read(m.join("sym")).unwrap(), b"x1");

    // chmod, chown, utimens with nanoseconds
    fs::set_permissions(m.join("x1-link"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.join("x1-link")).unwrap().mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::chown(m.join("x1-link"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(m.join("x1-link")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    let f = File::options().write(true).open(m.join("x1-link")).unwrap();
    f.set_modified(t).unwrap();
    drop(f);
    let md = fs::metadata(m.join("x1-link")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));

    // unlinked while open: still readable through the open handle
    fs::write(m.join("ghost"), b"boo").unwrap();
    let mut g = File::open(m.join("ghost")).unwrap();
    fs::remove_file(m.join("ghost")).unwrap();
    let mut s = String::new();
    g.read_to_string(&mut s).unwrap();
    assert_eq!(s, "boo");
    drop(g);

    // O_EXCL on an existing name
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.join("x1-link"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);

    // statfs has real figures, and deleting data gives space back
    let before = statvfs_free(m);
    let fat = m.join("fat.bin");
    // Distinct bytes per chunk: identical chunks would be stored once (content addressing).
    let fat_data: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i / 4096 % 251) as u8 ^ (i >> 22) as u8)
        .collect();
    fs::write(&fat, &fat_data).unwrap();
    let during = statvfs_free(m);
    assert!(
        during + 16 * 1024 * 1024 < before,
        "free space did not drop: {before} -> {during}"
    );
    fs::remove_file(&fat).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let after = statvfs_free(m);
        if after + 8 * 1024 * 1024 > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "space not reclaimed: {before} -> {during} -> {after}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn extended_attributes() {
    let pg = Playground::up(1, 1, &[]).unwrap();
    let p = pg.mnt.join("xa");
    fs::write(&p, b"x").unwrap();
    let set = |name: &str, val: &[u8], flags: i32| -> std::io::Result<()> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid pointers for the call.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let get = |name: &str| -> std::io::Result<Vec<u8>> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 1024];
        // SAFETY: valid pointers for the call.
        let rc =
            unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(rc as usize);
        Ok(buf)
    };
    set("user.color", b"blue", 0).unwrap();
    assert_eq!(get("user.color").unwrap(), b"blue");
    assert_eq!(
        errno(&set("user.color", b"red", libc::XATTR_CREATE).unwrap_err()),
        libc::EEXIST
    );
    set("user.color", b"red", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get("user.color").unwrap(), b"red");
    assert_eq!(errno(&get("user.none").unwrap_err()), libc::ENODATA);
    assert_eq!(
        errno(&set("user.none", b"x", libc::XATTR_REPLACE).unwrap_err()),
        libc::ENODATA
    );
}

#[test]
fn close_to_open_across_mounts_and_restart() {
    let mut pg = Playground::up(1, 1, &[]).unwrap();
    let m2 = pg.mount().unwrap();
    fs::write(pg.mnt.join("shared.txt"), b"from mount one").unwrap();
    assert_eq!(fs::read(m2.join("shared.txt")).unwrap(), b"from mount one");
    fs::create_dir(m2.join("d2")).unwrap();
    fs::write(m2.join("d2/f"), b"from mount two").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fs::read(pg.mnt.join("d2/f")).unwrap(), b"from mount two");

    // Everything acknowledged survives a SIGKILL of the node.
    pg.cmd("stop-node", &["1"]).unwrap();
    pg.cmd("start-node", &["1"]).unwrap();
    assert_eq!(
        fs::read(pg.mnt.join("shared.txt")).unwrap(),
        b"from mount one"
    );
    assert_eq!(fs::read(m2.join("d2/f")).unwrap(), b"from mount two");
    fs::write(pg.mnt.join("after-restart"), b"ok").unwrap();
    assert_eq!(fs::read(m2.join("after-restart")).unwrap(), b"ok");
}

/// Close-to-open when the reader's kernel holds a size from a recent `stat`: mount two
/// stats a file, mount one rewrites it longer and closes it, and mount two's next open
/// reads all of it at once (not only the size its kernel cached for the attribute
/// timeout).
#[test]
fn an_open_reads_past_a_size_the_kernel_cached() {
    let mut pg = Playground::up(1, 1, &[]).unwrap();
    let m2 = pg.mount().unwrap();
    let long: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for round in 0..3 {
        let name = format!("grows-{round}");
        fs::write(pg.mnt.join(&name), b"short").unwrap();
        assert_eq!(fs::metadata(m2.join(&name)).unwrap().len(), 5);
        fs::write(pg.mnt.join(&name), &long).unwrap();
        let got = fs::read(m2.join(&name)).unwrap();
        assert_eq!(
            got.len(),
            long.len(),
            "round {round}: length read by mount two"
        );
        assert!(got == long, "round {round}: bytes read by mount two");
    }
}
