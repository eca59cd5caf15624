//! Tests of every op through the public `apply`, each followed by a full invariant check.

use plait_proto::meta::{NewKind, RenameMode, SetAttr, TimeSet, XattrMode};
use plait_proto::{ErrorCode, FILE_MAX_BYTES, FileKind, MetaOp, MetaQuery, MetaReply, Timestamp};

use crate::testutil::{Counting, Fs, chunk, code, ext, ext_at, ts};
use crate::{Command, KvRead, MemKv, NLINK_MAX, StoreError, WRITE_MAX_EXTENTS, keys};

use RenameMode::{Exchange, NoReplace, Replace};

fn removed(orphan: Option<u64>) -> Result<MetaReply, plait_proto::RpcError> {
    Ok(MetaReply::Removed { orphan })
}

fn files(fs: &Fs) -> u64 {
    match fs.q(MetaQuery::FsStats) {
        Ok(MetaReply::FsStats(s)) => s.files,
        other => panic!("{other:?}"),
    }
}

// ---- volumes ---------------------------------------------------------------------------

#[test]
fn create_volume_makes_a_root_directory() {
    let mut fs = Fs::default();
    let reply = fs.exec(MetaOp::CreateVolume {
        name: "data".into(),
        replicas: 3,
        write_quorum: 2,
    });
    let Ok(MetaReply::Volume(v)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (v.name.as_str(), v.root, v.replicas, v.write_quorum),
        ("data", 1, 3, 2)
    );
    let a = fs.attr(v.root);
    assert_eq!(
        (a.kind, a.perm, a.nlink, a.uid, a.gid),
        (FileKind::Dir, 0o755, 2, 0, 0)
    );
    assert_eq!(a.size, crate::DIR_SIZE_BYTES);
    assert_eq!(
        (a.atime, a.mtime, a.ctime, a.crtime),
        (ts(1), ts(1), ts(1), ts(1))
    );
    assert_eq!(
        fs.q(MetaQuery::Volume {
            name: "data".into()
        }),
        Ok(MetaReply::Volume(v.clone()))
    );
    let other = fs.volume("logs");
    assert_eq!(other, 2, "inode numbers are sequential");
    let Ok(MetaReply::Volumes(all)) = fs.q(MetaQuery::ListVolumes) else {
        panic!()
    };
    let names: Vec<_> = all.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["data", "logs"]);
    let Ok(MetaReply::Entries { parent, entries }) = fs.q(MetaQuery::ReadDir {
        ino: v.root,
        after: None,
        limit: 10,
        session: None,
    }) else {
        panic!()
    };
    assert_eq!((parent, entries.len()), (v.root, 0));
    assert_eq!(files(&fs), 2);
    fs.check();
}

#[test]
fn create_volume_refusals() {
    let mut fs = Fs::default();
    fs.volume("v");
    let mut cv = |name: &str, replicas, write_quorum| {
        code(fs.exec(MetaOp::CreateVolume {
            name: name.into(),
            replicas,
            write_quorum,
        }))
    };
    assert_eq!(cv("v", 3, 2), ErrorCode::Exists);
    assert_eq!(cv("", 3, 2), ErrorCode::InvalidArgument);
    assert_eq!(cv("a/b", 3, 2), ErrorCode::InvalidArgument);
    assert_eq!(cv("w", 6, 2), ErrorCode::InvalidArgument);
    assert_eq!(cv("w", 3, 4), ErrorCode::InvalidArgument);
    assert_eq!(cv("w", 3, 0), ErrorCode::InvalidArgument);
    assert_eq!(
        code(fs.q(MetaQuery::Volume {
            name: "nope".into()
        })),
        ErrorCode::NotFound
    );
    fs.check();
}

// ---- create ----------------------------------------------------------------------------

#[test]
fn create_every_kind() {
    let (mut fs, root) = Fs::with_volume();
    let kinds = [
        ("f", NewKind::File, FileKind::File),
        ("d", NewKind::Dir, FileKind::Dir),
        (
            "l",
            NewKind::Symlink {
                target: b"../x".to_vec(),
            },
            FileKind::Symlink,
        ),
        ("p", NewKind::Fifo, FileKind::Fifo),
        ("s", NewKind::Socket, FileKind::Socket),
        ("c", NewKind::CharDev { rdev: 0x0501 }, FileKind::CharDev),
        ("b", NewKind::BlockDev { rdev: 0x0802 }, FileKind::BlockDev),
    ];
    for (name, kind, expected) in kinds {
        let now = fs.next_now();
        let Ok(MetaReply::Attr(a)) = fs.create(root, name, kind) else {
            panic!("{name}")
        };
        assert_eq!(a.kind, expected);
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!((a.atime, a.mtime, a.ctime, a.crtime), (now, now, now, now));
        assert_eq!(fs.lookup(root, name), Some(a.ino));
        assert_eq!(fs.attr(a.ino), a);
        let parent = fs.attr(root);
        assert_eq!((parent.mtime, parent.ctime), (now, now));
        match expected {
            FileKind::Dir => assert_eq!((a.nlink, a.perm, a.size), (2, 0o644, 4096)),
            FileKind::Symlink => {
                assert_eq!((a.nlink, a.perm, a.size), (1, 0o777, 4));
                assert_eq!(
                    fs.q(MetaQuery::ReadLink { ino: a.ino }),
                    Ok(MetaReply::Link(b"../x".to_vec()))
                );
            }
            FileKind::CharDev => assert_eq!(a.rdev, 0x0501),
            FileKind::BlockDev => assert_eq!(a.rdev, 0x0802),
            _ => assert_eq!((a.nlink, a.perm, a.size, a.rdev), (1, 0o644, 0, 0)),
        }
    }
    assert_eq!(fs.attr(root).nlink, 3, "one subdirectory");
    assert_eq!(files(&fs), 8);
    fs.check();
}

#[test]
fn create_masks_perm_and_honours_setgid_parent() {
    let (mut fs, root) = Fs::with_volume();
    let Ok(MetaReply::Attr(a)) = fs.exec(MetaOp::Create {
        parent: root,
        name: b"f".to_vec(),
        kind: NewKind::File,
        perm: 0o170_644,
        uid: 1,
        gid: 2,
    }) else {
        panic!()
    };
    assert_eq!(a.perm, 0o644);
    let shared = fs.mkdir(root, "shared");
    fs.edit_inode(shared, |r| {
        r.perm = 0o2775;
        r.gid = 50;
    });
    let f = fs.mkfile(shared, "f");
    assert_eq!((fs.attr(f).gid, fs.attr(f).perm), (50, 0o644));
    let d = fs.mkdir(shared, "d");
    assert_eq!((fs.attr(d).gid, fs.attr(d).perm), (50, 0o2644));
    let plain = fs.mkdir(root, "plain");
    let g = fs.mkfile(plain, "g");
    assert_eq!(fs.attr(g).gid, 1000);
    fs.check();
}

#[test]
fn create_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let long = "x".repeat(256);
    for (parent, name, kind, expected) in [
        (root, "", NewKind::File, ErrorCode::InvalidArgument),
        (root, ".", NewKind::Dir, ErrorCode::InvalidArgument),
        (root, "..", NewKind::File, ErrorCode::InvalidArgument),
        (root, "a/b", NewKind::File, ErrorCode::InvalidArgument),
        (root, "a\0b", NewKind::File, ErrorCode::InvalidArgument),
        (root, long.as_str(), NewKind::File, ErrorCode::NameTooLong),
        (root, "f", NewKind::File, ErrorCode::Exists),
        (root, "f", NewKind::Dir, ErrorCode::Exists),
        (999, "g", NewKind::File, ErrorCode::NotFound),
        (f, "g", NewKind::File, ErrorCode::NotDir),
        (
            root,
            "l",
            NewKind::Symlink { target: Vec::new() },
            ErrorCode::NotFound,
        ),
        (
            root,
            "l",
            NewKind::Symlink {
                target: vec![b'a'; plait_proto::SYMLINK_MAX_BYTES + 1],
            },
            ErrorCode::NameTooLong,
        ),
    ] {
        assert_eq!(code(fs.create(parent, name, kind)), expected, "{name:?}");
    }
    assert!(fs.create(root, &"x".repeat(255), NewKind::File).is_ok());
    fs.check();
}

#[test]
fn missing_inode_errors_name_the_inode() {
    let (fs, _) = Fs::with_volume();
    let err = fs.q(MetaQuery::GetAttr { ino: 4242 }).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("4242"), "{}", err.message);
}

// ---- unlink, rmdir, reap ---------------------------------------------------------------

#[test]
fn unlink_last_link_makes_an_orphan() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1)]).unwrap();
    let now = fs.next_now();
    assert_eq!(fs.unlink(root, "f"), removed(Some(f)));
    assert_eq!(fs.lookup(root, "f"), None);
    let a = fs.attr(f);
    assert_eq!((a.nlink, a.ctime), (0, now), "orphan stays readable");
    assert_eq!(fs.attr(root).mtime, now);
    assert!(fs.is_orphan(f));
    assert_eq!(fs.refcount(1), 1, "orphan keeps its data");
    let Ok(MetaReply::Extents { extents, .. }) = fs.q(MetaQuery::Extents {
        ino: f,
        offset: 0,
        len: 100,
    }) else {
        panic!()
    };
    assert_eq!(extents.len(), 1);
    fs.check();
}

#[test]
fn unlink_one_of_two_links() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.link(f, root, "g").unwrap();
    assert_eq!(fs.unlink(root, "f"), removed(None));
    assert_eq!(fs.attr(f).nlink, 1);
    assert!(!fs.is_orphan(f));
    assert_eq!(fs.lookup(root, "g"), Some(f));
    fs.check();
}

#[test]
fn unlink_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.mkdir(root, "d");
    assert_eq!(code(fs.unlink(root, "d")), ErrorCode::IsDir);
    assert_eq!(code(fs.unlink(root, "nope")), ErrorCode::NotFound);
    assert_eq!(code(fs.unlink(999, "f")), ErrorCode::NotFound);
    assert_eq!(code(fs.unlink(f, "x")), ErrorCode::NotDir);
    assert_eq!(code(fs.unlink(root, "..")), ErrorCode::InvalidArgument);
    fs.check();
}

#[test]
fn rmdir_removes_an_empty_directory() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    fs.exec(MetaOp::SetXattr {
        ino: d,
        name: b"user.a".to_vec(),
        value: b"1".to_vec(),
        mode: XattrMode::Upsert,
    })
    .unwrap();
    assert_eq!(fs.attr(root).nlink, 3);
    assert_eq!(files(&fs), 2);
    let now = fs.next_now();
    assert_eq!(fs.rmdir(root, "d"), removed(None));
    assert!(!fs.exists(d));
    assert_eq!(fs.lookup(root, "d"), None);
    let r = fs.attr(root);
    assert_eq!((r.nlink, r.mtime, r.ctime), (2, now, now));
    assert_eq!(files(&fs), 1);
    assert!(
        fs.kv
            .scan(&keys::xattr_prefix(d), None, 10)
            .unwrap()
            .is_empty()
    );
    fs.check();
}

#[test]
fn rmdir_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    fs.mkfile(d, "inner");
    fs.mkfile(root, "f");
    assert_eq!(code(fs.rmdir(root, "d")), ErrorCode::NotEmpty);
    assert_eq!(code(fs.rmdir(root, "f")), ErrorCode::NotDir);
    assert_eq!(code(fs.rmdir(root, "nope")), ErrorCode::NotFound);
    assert_eq!(code(fs.rmdir(root, ".")), ErrorCode::InvalidArgument);
    fs.check();
}

#[test]
fn rmdir_refuses_a_volume_root() {
    // A root has no entry, so craft one pointing at it to reach the check.
    let (mut fs, root) = Fs::with_volume();
    let other = fs.volume("w");
    let d = crate::records::DentryRec {
        ino: other,
        kind: FileKind::Dir,
    };
    fs.kv.apply_mutations(&[crate::Mutation::Put(
        keys::dentry(root, b"w"),
        crate::records::encode(&d).unwrap(),
    )]);
    assert_eq!(code(fs.rmdir(root, "w")), ErrorCode::InvalidArgument);
}

#[test]
fn reap_releases_chunks_to_garbage() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let g = fs.mkfile(root, "g");
    fs.write(f, &[ext(0, 10, 1), ext(10, 10, 2)]).unwrap();
    fs.write(g, &[ext(0, 10, 2)]).unwrap();
    fs.exec(MetaOp::SetXattr {
        ino: f,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode: XattrMode::Upsert,
    })
    .unwrap();
    assert_eq!(code(fs.reap(f)), ErrorCode::InvalidArgument, "still linked");
    fs.unlink(root, "f").unwrap();
    let now = fs.next_now();
    assert_eq!(fs.reap(f), Ok(MetaReply::Empty));
    assert!(!fs.exists(f));
    assert!(!fs.is_orphan(f));
    assert_eq!((fs.refcount(1), fs.refcount(2)), (0, 1));
    assert!(fs.is_garbage(1) && !fs.is_garbage(2));
    assert_eq!(
        crate::garbage(&fs.kv, None, 10).unwrap(),
        vec![(chunk(1), now)]
    );
    assert!(
        fs.kv
            .scan(&keys::xattr_prefix(f), None, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        fs.kv
            .scan(&keys::extent_prefix(f), None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(files(&fs), 2);
    fs.check();
    assert_eq!(fs.reap(f), Ok(MetaReply::Empty), "idempotent");
    assert!(fs.last.is_empty(), "a second reap writes nothing");
    assert_eq!(fs.reap(12345), Ok(MetaReply::Empty));
    fs.check();
}

#[test]
fn reaping_a_missing_inode_writes_nothing() {
    let (fs, _) = Fs::with_volume();
    let cmd = Command {
        now: ts(9),
        op: MetaOp::Reap { ino: 77 },
    };
    let (muts, reply) = crate::apply(&fs.kv, &cmd).unwrap();
    assert_eq!((muts, reply), (Vec::new(), Ok(MetaReply::Empty)));
}

// ---- rename ----------------------------------------------------------------------------

#[test]
fn rename_within_a_directory() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "a");
    let now = fs.next_now();
    assert_eq!(fs.rename(root, "a", root, "b", Replace), removed(None));
    assert_eq!(
        (fs.lookup(root, "a"), fs.lookup(root, "b")),
        (None, Some(f))
    );
    assert_eq!(fs.attr(f).ctime, now);
    assert_eq!(fs.attr(root).mtime, now);
    assert_eq!(fs.attr(root).nlink, 2);
    fs.check();
}

#[test]
fn rename_file_across_directories() {
    let (mut fs, root) = Fs::with_volume();
    let d1 = fs.mkdir(root, "d1");
    let d2 = fs.mkdir(root, "d2");
    let f = fs.mkfile(d1, "f");
    let now = fs.next_now();
    fs.rename(d1, "f", d2, "g", NoReplace).unwrap();
    assert_eq!((fs.lookup(d1, "f"), fs.lookup(d2, "g")), (None, Some(f)));
    for d in [d1, d2] {
        let a = fs.attr(d);
        assert_eq!((a.nlink, a.mtime, a.ctime), (2, now, now));
    }
    fs.check();
}

#[test]
fn rename_dir_across_directories_moves_links_and_parent() {
    let (mut fs, root) = Fs::with_volume();
    let d1 = fs.mkdir(root, "d1");
    let d2 = fs.mkdir(root, "d2");
    let sub = fs.mkdir(d1, "sub");
    assert_eq!(fs.attr(d1).nlink, 3);
    fs.rename(d1, "sub", d2, "sub2", Replace).unwrap();
    assert_eq!((fs.attr(d1).nlink, fs.attr(d2).nlink), (2, 3));
    let Ok(MetaReply::Entries { parent, .. }) = fs.q(MetaQuery::ReadDir {
        ino: sub,
        after: None,
        limit: 1,
        session: None,
    }) else {
        panic!()
    };
    assert_eq!(parent, d2, "`..` follows the move");
    fs.check();
}

#[test]
fn rename_onto_itself_is_a_no_op() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "a");
    let before = fs.kv.clone();
    assert_eq!(fs.rename(root, "a", root, "a", Replace), removed(None));
    assert_eq!(fs.kv, before);
    assert_eq!(fs.rename(root, "a", root, "a", Exchange), removed(None));
    assert_eq!(fs.kv, before);
    // Linux checks RENAME_NOREPLACE before noticing source and target are one.
    assert_eq!(
        code(fs.rename(root, "a", root, "a", NoReplace)),
        ErrorCode::Exists
    );
    assert_eq!(fs.lookup(root, "a"), Some(f));
    fs.check();
}

#[test]
fn rename_between_hard_links_of_one_inode_does_nothing() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(root, "a");
    fs.link(f, d, "b").unwrap();
    let before = fs.kv.clone();
    assert_eq!(fs.rename(root, "a", d, "b", Replace), removed(None));
    assert_eq!(fs.kv, before);
    assert_eq!(
        (fs.lookup(root, "a"), fs.lookup(d, "b")),
        (Some(f), Some(f))
    );
    assert_eq!(fs.attr(f).nlink, 2);
    fs.check();
}

#[test]
fn rename_replacing_a_file_orphans_it() {
    let (mut fs, root) = Fs::with_volume();
    let a = fs.mkfile(root, "a");
    let b = fs.mkfile(root, "b");
    let now = fs.next_now();
    assert_eq!(fs.rename(root, "a", root, "b", Replace), removed(Some(b)));
    assert_eq!(fs.lookup(root, "b"), Some(a));
    assert_eq!(fs.lookup(root, "a"), None);
    let old = fs.attr(b);
    assert_eq!((old.nlink, old.ctime), (0, now));
    assert!(fs.is_orphan(b));
    fs.check();
    fs.reap(b).unwrap();
    fs.check();
}

#[test]
fn rename_replacing_a_linked_file_keeps_it() {
    let (mut fs, root) = Fs::with_volume();
    fs.mkfile(root, "a");
    let b = fs.mkfile(root, "b");
    fs.link(b, root, "b2").unwrap();
    assert_eq!(fs.rename(root, "a", root, "b", Replace), removed(None));
    assert_eq!(fs.attr(b).nlink, 1);
    fs.check();
}

#[test]
fn rename_dir_over_empty_dir() {
    let (mut fs, root) = Fs::with_volume();
    let d1 = fs.mkdir(root, "d1");
    let d2 = fs.mkdir(root, "d2");
    let src = fs.mkdir(d1, "src");
    let victim = fs.mkdir(d2, "victim");
    fs.rename(d1, "src", d2, "victim", Replace).unwrap();
    assert!(!fs.exists(victim));
    assert_eq!(fs.lookup(d2, "victim"), Some(src));
    assert_eq!((fs.attr(d1).nlink, fs.attr(d2).nlink), (2, 3));
    // Same parent: the directory loses one subdirectory.
    let x = fs.mkdir(root, "x");
    let y = fs.mkdir(root, "y");
    assert_eq!(fs.attr(root).nlink, 6);
    fs.rename(root, "x", root, "y", Replace).unwrap();
    assert!(!fs.exists(y));
    assert_eq!(fs.lookup(root, "y"), Some(x));
    assert_eq!(fs.attr(root).nlink, 5);
    assert_eq!(files(&fs), 5);
    fs.check();
}

#[test]
fn rename_type_and_emptiness_refusals() {
    let (mut fs, root) = Fs::with_volume();
    fs.mkdir(root, "d");
    let full = fs.mkdir(root, "full");
    fs.mkfile(full, "x");
    fs.mkfile(root, "f");
    assert_eq!(
        code(fs.rename(root, "d", root, "f", Replace)),
        ErrorCode::NotDir
    );
    assert_eq!(
        code(fs.rename(root, "f", root, "d", Replace)),
        ErrorCode::IsDir
    );
    assert_eq!(
        code(fs.rename(root, "d", root, "full", Replace)),
        ErrorCode::NotEmpty
    );
    assert_eq!(
        code(fs.rename(root, "nope", root, "z", Replace)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(fs.rename(root, "f", root, "d", NoReplace)),
        ErrorCode::Exists
    );
    assert_eq!(
        code(fs.rename(root, "f", root, "z", Exchange)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(fs.rename(root, "f", 999, "z", Replace)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(fs.rename(root, "f", root, "", Replace)),
        ErrorCode::InvalidArgument
    );
    fs.check();
}

#[test]
fn rename_into_own_subtree_is_refused() {
    let (mut fs, root) = Fs::with_volume();
    let a = fs.mkdir(root, "a");
    let b = fs.mkdir(a, "b");
    let c = fs.mkdir(b, "c");
    // Onto an existing directory below itself (the target must exist for an exchange).
    fs.mkdir(c, "t");
    for mode in [Replace, Exchange] {
        assert_eq!(
            code(fs.rename(root, "a", c, "t", mode)),
            ErrorCode::InvalidArgument
        );
    }
    // RENAME_NOREPLACE reports the existing target first, as Linux does.
    assert_eq!(
        code(fs.rename(root, "a", c, "t", NoReplace)),
        ErrorCode::Exists
    );
    fs.rmdir(c, "t").unwrap();
    for mode in [Replace, NoReplace] {
        assert_eq!(
            code(fs.rename(root, "a", c, "t", mode)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(fs.rename(root, "a", a, "t", mode)),
            ErrorCode::InvalidArgument
        );
    }
    assert_eq!(
        code(fs.rename(root, "a", c, "new", Replace)),
        ErrorCode::InvalidArgument
    );
    // The target may not be an ancestor of the source either.
    assert_eq!(
        code(fs.rename(b, "c", root, "a", Replace)),
        ErrorCode::NotEmpty
    );
    assert_eq!(
        code(fs.rename(b, "c", root, "a", Exchange)),
        ErrorCode::InvalidArgument
    );
    // Moving up is fine.
    fs.rename(b, "c", root, "c", Replace).unwrap();
    assert_eq!(fs.lookup(root, "c"), Some(c));
    fs.check();
}

#[test]
fn rename_through_a_parent_cycle_stops() {
    // Parent pointers that never reach a root: the walk stops at DIR_DEPTH_MAX.
    let (mut fs, root) = Fs::with_volume();
    fs.mkdir(root, "a");
    let b = fs.mkdir(root, "b");
    let c = fs.mkdir(root, "c");
    fs.edit_inode(b, |r| r.parent = c);
    fs.edit_inode(c, |r| r.parent = b);
    assert_eq!(
        code(fs.rename(root, "a", b, "x", Replace)),
        ErrorCode::InvalidArgument
    );
    // A parent pointer to nothing is corruption.
    fs.edit_inode(b, |r| r.parent = 4242);
    let cmd = Command {
        now: ts(99),
        op: MetaOp::Rename {
            parent: root,
            name: b"a".to_vec(),
            new_parent: b,
            new_name: b"x".to_vec(),
            mode: Replace,
        },
    };
    assert!(matches!(
        crate::apply(&fs.kv, &cmd),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn rename_across_volumes_is_refused() {
    let (mut fs, root) = Fs::with_volume();
    let other = fs.volume("w");
    fs.mkfile(root, "f");
    assert_eq!(
        code(fs.rename(root, "f", other, "f", Replace)),
        ErrorCode::CrossDevice
    );
    fs.check();
}

#[test]
fn exchange_file_and_dir_across_directories() {
    let (mut fs, root) = Fs::with_volume();
    let d1 = fs.mkdir(root, "d1");
    let d2 = fs.mkdir(root, "d2");
    let f = fs.mkfile(d1, "f");
    let sub = fs.mkdir(d2, "sub");
    fs.mkfile(sub, "inner");
    let now = fs.next_now();
    assert_eq!(fs.rename(d1, "f", d2, "sub", Exchange), removed(None));
    assert_eq!(
        (fs.lookup(d1, "f"), fs.lookup(d2, "sub")),
        (Some(sub), Some(f))
    );
    assert_eq!((fs.attr(d1).nlink, fs.attr(d2).nlink), (3, 2));
    assert_eq!((fs.attr(f).ctime, fs.attr(sub).ctime), (now, now));
    assert_eq!((fs.attr(d1).mtime, fs.attr(d2).mtime), (now, now));
    let Ok(MetaReply::Entries { parent, .. }) = fs.q(MetaQuery::ReadDir {
        ino: sub,
        after: None,
        limit: 1,
        session: None,
    }) else {
        panic!()
    };
    assert_eq!(parent, d1);
    fs.check();
}

#[test]
fn exchange_two_dirs_and_within_one_dir() {
    let (mut fs, root) = Fs::with_volume();
    let d1 = fs.mkdir(root, "d1");
    let d2 = fs.mkdir(root, "d2");
    let a = fs.mkdir(d1, "a");
    let b = fs.mkdir(d2, "b");
    fs.rename(d1, "a", d2, "b", Exchange).unwrap();
    assert_eq!((fs.lookup(d1, "a"), fs.lookup(d2, "b")), (Some(b), Some(a)));
    assert_eq!((fs.attr(d1).nlink, fs.attr(d2).nlink), (3, 3));
    fs.check();
    let f = fs.mkfile(d1, "f");
    fs.rename(d1, "f", d1, "a", Exchange).unwrap();
    assert_eq!((fs.lookup(d1, "f"), fs.lookup(d1, "a")), (Some(b), Some(f)));
    assert_eq!(fs.attr(d1).nlink, 3);
    fs.check();
}

// ---- link ------------------------------------------------------------------------------

#[test]
fn link_adds_a_name() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(root, "f");
    let now = fs.next_now();
    let Ok(MetaReply::Attr(a)) = fs.link(f, d, "g") else {
        panic!()
    };
    assert_eq!((a.ino, a.nlink, a.ctime), (f, 2, now));
    assert_eq!(fs.lookup(d, "g"), Some(f));
    assert_eq!(fs.attr(d).mtime, now);
    fs.check();
}

#[test]
fn link_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(root, "f");
    assert_eq!(code(fs.link(d, root, "d2")), ErrorCode::NotPermitted);
    assert_eq!(code(fs.link(f, root, "d")), ErrorCode::Exists);
    assert_eq!(code(fs.link(999, root, "x")), ErrorCode::NotFound);
    assert_eq!(code(fs.link(f, f, "x")), ErrorCode::NotDir);
    assert_eq!(code(fs.link(f, root, "a/b")), ErrorCode::InvalidArgument);
    let o = fs.mkfile(root, "o");
    fs.unlink(root, "o").unwrap();
    assert_eq!(code(fs.link(o, root, "back")), ErrorCode::NotFound);
    fs.edit_inode(f, |r| r.nlink = NLINK_MAX);
    assert_eq!(code(fs.link(f, root, "x")), ErrorCode::TooManyLinks);
}

// ---- setattr ---------------------------------------------------------------------------

#[test]
fn set_attr_fields_and_times() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let now = fs.next_now();
    let Ok(MetaReply::Attr(a)) = fs.exec(MetaOp::SetAttr {
        ino: f,
        set: SetAttr {
            perm: Some(0o104_755),
            uid: Some(7),
            gid: Some(8),
            size: None,
            atime: Some(TimeSet::At(ts(100))),
            mtime: Some(TimeSet::Now),
        },
        session: None,
    }) else {
        panic!()
    };
    assert_eq!((a.perm, a.uid, a.gid), (0o4755, 7, 8));
    assert_eq!((a.atime, a.mtime, a.ctime), (ts(100), now, now));
    assert_eq!(fs.attr(f), a);
    let before = fs.kv.clone();
    let Ok(MetaReply::Attr(same)) = fs.exec(MetaOp::SetAttr {
        ino: f,
        set: SetAttr::default(),
        session: None,
    }) else {
        panic!()
    };
    assert_eq!(
        (same, &fs.kv),
        (a, &before),
        "an empty change changes nothing"
    );
    fs.check();
}

#[test]
fn set_attr_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(root, "f");
    fs.create(
        root,
        "l",
        NewKind::Symlink {
            target: b"f".to_vec(),
        },
    )
    .unwrap();
    let l = fs.lookup(root, "l").unwrap();
    assert_eq!(code(fs.truncate(d, 0)), ErrorCode::IsDir);
    assert_eq!(code(fs.truncate(l, 0)), ErrorCode::InvalidArgument);
    assert_eq!(
        code(fs.truncate(f, FILE_MAX_BYTES + 1)),
        ErrorCode::FileTooBig
    );
    assert_eq!(code(fs.truncate(999, 0)), ErrorCode::NotFound);
    assert!(fs.truncate(f, FILE_MAX_BYTES).is_ok());
    fs.check();
}

#[test]
fn truncate_shrink_trims_and_releases() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1), ext(100, 100, 2), ext(300, 50, 3)])
        .unwrap();
    assert_eq!(fs.attr(f).allocated_bytes, 250);
    let now = fs.next_now();
    let Ok(MetaReply::Attr(a)) = fs.truncate(f, 150) else {
        panic!()
    };
    assert_eq!(
        (a.size, a.allocated_bytes, a.mtime, a.ctime),
        (150, 150, now, now)
    );
    assert_eq!(fs.extents(f), vec![ext(0, 100, 1), ext(100, 50, 2)]);
    assert_eq!((fs.refcount(2), fs.refcount(3)), (1, 0));
    assert!(fs.is_garbage(3) && !fs.is_garbage(2));
    fs.check();
    fs.truncate(f, 0).unwrap();
    assert!(fs.extents(f).is_empty());
    assert_eq!(fs.attr(f).allocated_bytes, 0);
    assert!(fs.is_garbage(1) && fs.is_garbage(2));
    fs.check();
}

#[test]
fn truncate_grow_leaves_a_hole() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    fs.truncate(f, 1 << 20).unwrap();
    let a = fs.attr(f);
    assert_eq!((a.size, a.allocated_bytes), (1 << 20, 10));
    assert_eq!(fs.extents(f), vec![ext(0, 10, 1)]);
    fs.check();
}

#[test]
fn truncate_mtime_rules() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.truncate(f, 10).unwrap();
    let before = fs.attr(f).mtime;
    let now = fs.next_now();
    fs.truncate(f, 10).unwrap();
    let a = fs.attr(f);
    assert_eq!((a.mtime, a.ctime), (before, now), "same size: only ctime");
    fs.exec(MetaOp::SetAttr {
        ino: f,
        set: SetAttr {
            size: Some(0),
            mtime: Some(TimeSet::At(ts(5))),
            ..Default::default()
        },
        session: None,
    })
    .unwrap();
    assert_eq!(fs.attr(f).mtime, ts(5), "explicit mtime wins");
    fs.check();
}

// ---- write -----------------------------------------------------------------------------

#[test]
fn write_appends_extents() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let now = fs.next_now();
    let Ok(MetaReply::Attr(a)) = fs.write(f, &[ext(4096, 10, 2), ext(0, 4096, 1)]) else {
        panic!()
    };
    assert_eq!(
        (a.size, a.allocated_bytes, a.mtime, a.ctime),
        (4106, 4106, now, now)
    );
    assert_eq!(fs.extents(f), vec![ext(0, 4096, 1), ext(4096, 10, 2)]);
    assert_eq!((fs.refcount(1), fs.refcount(2)), (1, 1));
    fs.write(f, &[ext(0, 5, 3)]).unwrap();
    assert_eq!(fs.attr(f).size, 4106, "size never shrinks on write");
    fs.check();
}

#[test]
fn write_splits_an_extent_it_lands_inside() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext_at(0, 100, 1, 1000)]).unwrap();
    fs.write(f, &[ext(40, 20, 2)]).unwrap();
    assert_eq!(
        fs.extents(f),
        vec![
            ext_at(0, 40, 1, 1000),
            ext(40, 20, 2),
            ext_at(60, 40, 1, 1060)
        ]
    );
    assert_eq!((fs.refcount(1), fs.refcount(2)), (2, 1));
    assert_eq!(fs.attr(f).allocated_bytes, 100);
    fs.check();
}

#[test]
fn write_trims_and_drops_overlapped_extents() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1), ext(100, 100, 2), ext(200, 100, 3)])
        .unwrap();
    fs.write(f, &[ext(50, 200, 4)]).unwrap();
    assert_eq!(
        fs.extents(f),
        vec![ext(0, 50, 1), ext(50, 200, 4), ext_at(250, 50, 3, 50)]
    );
    assert_eq!(
        (
            fs.refcount(1),
            fs.refcount(2),
            fs.refcount(3),
            fs.refcount(4)
        ),
        (1, 0, 1, 1)
    );
    assert!(fs.is_garbage(2));
    assert_eq!(fs.attr(f).allocated_bytes, 300);
    // Exact overwrite of an extent.
    fs.write(f, &[ext(50, 200, 5)]).unwrap();
    assert!(fs.is_garbage(4));
    assert_eq!(fs.refcount(5), 1);
    fs.check();
}

#[test]
fn rewriting_with_the_same_chunk_never_makes_it_garbage() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1)]).unwrap();
    fs.write(f, &[ext(0, 100, 1)]).unwrap();
    assert_eq!(fs.refcount(1), 1);
    assert!(!fs.is_garbage(1));
    assert!(
        !fs.last.iter().any(|m| matches!(m, crate::Mutation::Delete(k) | crate::Mutation::Put(k, _) if k.first() == Some(&keys::GARBAGE))),
        "no garbage churn: {:?}",
        fs.last
    );
    fs.check();
}

#[test]
fn a_garbage_chunk_referenced_again_leaves_the_garbage_set() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 100, 1)]).unwrap();
    fs.truncate(f, 0).unwrap();
    assert!(fs.is_garbage(1));
    fs.write(f, &[ext(0, 100, 1)]).unwrap();
    assert!(!fs.is_garbage(1));
    assert_eq!(fs.refcount(1), 1);
    fs.check();
}

#[test]
fn write_over_many_small_extents_pages_through_them() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    for round in 0..3u64 {
        let batch: Vec<_> = (0..WRITE_MAX_EXTENTS as u64)
            .map(|i| ext_at(round * 1024 + i, 1, 1, round * 1024 + i))
            .collect();
        fs.write(f, &batch).unwrap();
    }
    assert_eq!(fs.refcount(1), 3072);
    fs.write(f, &[ext(0, 3072, 2)]).unwrap();
    assert_eq!(fs.extents(f), vec![ext(0, 3072, 2)]);
    assert_eq!(fs.refcount(1), 0);
    assert!(fs.is_garbage(1));
    fs.check();
}

/// Applies `op` to `fs` through a counting view; returns the entries read by scans and
/// reverse seeks, and the number of reverse seeks.
fn apply_counting(fs: &mut Fs, op: MetaOp) -> (usize, usize) {
    let cmd = Command {
        now: fs.next_now(),
        op,
    };
    let view = Counting::new(&fs.kv);
    let (muts, reply) = crate::apply(&view, &cmd).unwrap();
    reply.unwrap();
    let read = (view.entries.get(), view.seek_prevs.get());
    fs.clock += 1;
    fs.kv.apply_mutations(&muts);
    read
}

#[test]
fn writes_read_only_the_extents_they_overlap() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    // 1000 extents of 5 bytes, 10 bytes apart: [10 i, 10 i + 5) from chunk 1.
    let batch: Vec<_> = (0..1000u64).map(|i| ext_at(i * 10, 5, 1, i * 5)).collect();
    fs.write(f, &batch).unwrap();
    let mut expected = batch;
    let cases = [
        // Exact overwrite of extent 500.
        ext(5000, 5, 2),
        // Inside extent 400: split in two.
        ext_at(4001, 2, 2, 10),
        // Tail of 300, all of 301, head of 302.
        ext_at(3003, 20, 2, 20),
        // Into the gap after 700 and the head of 701.
        ext_at(7007, 5, 2, 40),
    ];
    for new in cases {
        let (entries, seek_prevs) = apply_counting(
            &mut fs,
            MetaOp::Write {
                ino: f,
                extents: vec![new],
                under_replicated: Vec::new(),
                session: None,
                inline: Vec::new(),
                mount_session: None,
            },
        );
        assert!(entries < 40, "write {new:?} read {entries} entries");
        assert_eq!(seek_prevs, 0, "write {new:?} seeks backwards");
        expected = overwrite(&expected, new);
        assert_eq!(fs.extents(f), expected);
        fs.check();
    }
    // A truncate in the middle reads the extents it removes, and nothing before them.
    let (entries, seek_prevs) = apply_counting(
        &mut fs,
        MetaOp::SetAttr {
            ino: f,
            set: SetAttr {
                size: Some(9002),
                ..Default::default()
            },
            session: None,
        },
    );
    assert!(entries <= 100 + 1, "truncate read {entries} entries");
    assert_eq!(seek_prevs, 0);
    expected.retain(|e| e.file_offset < 9002);
    if let Some(last) = expected.last_mut() {
        last.len = last.len.min(9002 - last.file_offset);
    }
    assert_eq!(fs.extents(f), expected);
    fs.check();
}

/// `extents` with `new` written over them, as the byte model sees it: overlapped
/// extents trimmed or split, then `new` added; sorted by file offset.
fn overwrite(
    extents: &[plait_proto::Extent],
    new: plait_proto::Extent,
) -> Vec<plait_proto::Extent> {
    let mut out = Vec::new();
    for e in extents {
        if e.end() <= new.file_offset || e.file_offset >= new.end() {
            out.push(*e);
            continue;
        }
        if e.file_offset < new.file_offset {
            out.push(plait_proto::Extent {
                len: new.file_offset - e.file_offset,
                ..*e
            });
        }
        if e.end() > new.end() {
            out.push(plait_proto::Extent {
                file_offset: new.end(),
                len: e.end() - new.end(),
                chunk_offset: e.chunk_offset + (new.end() - e.file_offset),
                ..*e
            });
        }
    }
    out.push(new);
    out.sort_by_key(|e| e.file_offset);
    out
}

#[test]
fn write_to_an_orphan_is_allowed() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.unlink(root, "f").unwrap();
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    fs.check();
    fs.reap(f).unwrap();
    assert!(fs.is_garbage(1));
    fs.check();
}

#[test]
fn write_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(root, "f");
    fs.create(root, "p", NewKind::Fifo).unwrap();
    let p = fs.lookup(root, "p").unwrap();
    let chunk_max = plait_proto::CHUNK_MAX_BYTES as u64;
    assert_eq!(code(fs.write(d, &[ext(0, 1, 1)])), ErrorCode::IsDir);
    assert_eq!(
        code(fs.write(p, &[ext(0, 1, 1)])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(fs.write(999, &[ext(0, 1, 1)])), ErrorCode::NotFound);
    assert_eq!(
        code(fs.write(f, &[ext(0, 0, 1)])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(fs.write(f, &[ext(0, chunk_max + 1, 1)])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(fs.write(f, &[ext(0, 10, 1), ext(5, 10, 2)])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(fs.write(f, &[ext(FILE_MAX_BYTES - 1, 2, 1)])),
        ErrorCode::FileTooBig
    );
    let too_many: Vec<_> = (0..=WRITE_MAX_EXTENTS as u64)
        .map(|i| ext(i, 1, 1))
        .collect();
    assert_eq!(code(fs.write(f, &too_many)), ErrorCode::InvalidArgument);
    assert!(fs.write(f, &[ext(0, chunk_max, 1)]).is_ok());
    let a = fs.attr(f);
    assert_eq!(fs.write(f, &[]), Ok(MetaReply::Attr(a)));
    fs.check();
}

// ---- xattrs ----------------------------------------------------------------------------

fn set_x(
    fs: &mut Fs,
    ino: u64,
    name: &str,
    value: &[u8],
    mode: XattrMode,
) -> Result<MetaReply, plait_proto::RpcError> {
    fs.exec(MetaOp::SetXattr {
        ino,
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
        mode,
    })
}

fn get_x(fs: &Fs, ino: u64, name: &str) -> Result<MetaReply, plait_proto::RpcError> {
    fs.q(MetaQuery::GetXattr {
        ino,
        name: name.as_bytes().to_vec(),
    })
}

#[test]
fn xattr_lifecycle() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let now = fs.next_now();
    assert_eq!(
        set_x(&mut fs, f, "user.b", b"1", XattrMode::Create),
        Ok(MetaReply::Empty)
    );
    assert_eq!(fs.attr(f).ctime, now);
    set_x(&mut fs, f, "user.a", b"", XattrMode::Upsert).unwrap();
    set_x(&mut fs, f, "user.b", b"2", XattrMode::Replace).unwrap();
    set_x(&mut fs, f, "user.a", b"3", XattrMode::Upsert).unwrap();
    assert_eq!(get_x(&fs, f, "user.b"), Ok(MetaReply::Xattr(b"2".to_vec())));
    assert_eq!(get_x(&fs, f, "user.a"), Ok(MetaReply::Xattr(b"3".to_vec())));
    assert_eq!(
        fs.q(MetaQuery::ListXattr { ino: f }),
        Ok(MetaReply::XattrNames(vec![
            b"user.a".to_vec(),
            b"user.b".to_vec()
        ]))
    );
    let now = fs.next_now();
    assert_eq!(
        fs.exec(MetaOp::RemoveXattr {
            ino: f,
            name: b"user.a".to_vec()
        }),
        Ok(MetaReply::Empty)
    );
    assert_eq!(fs.attr(f).ctime, now);
    assert_eq!(code(get_x(&fs, f, "user.a")), ErrorCode::NoAttr);
    fs.check();
}

#[test]
fn xattr_refusals() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    set_x(&mut fs, f, "user.a", b"1", XattrMode::Upsert).unwrap();
    assert_eq!(
        code(set_x(&mut fs, f, "user.a", b"1", XattrMode::Create)),
        ErrorCode::Exists
    );
    assert_eq!(
        code(set_x(&mut fs, f, "user.z", b"1", XattrMode::Replace)),
        ErrorCode::NoAttr
    );
    assert_eq!(
        code(set_x(&mut fs, f, "", b"1", XattrMode::Upsert)),
        ErrorCode::Range
    );
    assert_eq!(
        code(set_x(&mut fs, f, &"n".repeat(256), b"1", XattrMode::Upsert)),
        ErrorCode::Range
    );
    let big = vec![0; plait_proto::XATTR_VALUE_MAX_BYTES + 1];
    assert_eq!(
        code(set_x(&mut fs, f, "user.big", &big, XattrMode::Upsert)),
        ErrorCode::Range
    );
    assert_eq!(
        code(set_x(&mut fs, 999, "user.a", b"1", XattrMode::Upsert)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(fs.exec(MetaOp::RemoveXattr {
            ino: f,
            name: b"user.z".to_vec()
        })),
        ErrorCode::NoAttr
    );
    assert_eq!(code(get_x(&fs, f, "user.z")), ErrorCode::NoAttr);
    assert_eq!(code(get_x(&fs, 999, "user.a")), ErrorCode::NotFound);
    assert_eq!(
        code(fs.q(MetaQuery::ListXattr { ino: 999 })),
        ErrorCode::NotFound
    );
    fs.check();
}

#[test]
fn xattr_list_over_the_limit_is_refused() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    // 256 names of 255 bytes plus a NUL each: 65 536 bytes, just at the limit.
    for i in 0..256u32 {
        let name = format!("user.{i:0>250}");
        set_x(&mut fs, f, &name, b"", XattrMode::Upsert).unwrap();
    }
    let Ok(MetaReply::XattrNames(names)) = fs.q(MetaQuery::ListXattr { ino: f }) else {
        panic!()
    };
    assert_eq!(names.len(), 256);
    set_x(&mut fs, f, "user.more", b"", XattrMode::Upsert).unwrap();
    assert_eq!(
        code(fs.q(MetaQuery::ListXattr { ino: f })),
        ErrorCode::Range
    );
}

// ---- robustness ------------------------------------------------------------------------

#[test]
fn corrupt_records_are_store_errors_not_panics() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    let mut bad = fs.kv.clone();
    bad.apply_mutations(&[crate::Mutation::Put(keys::inode(f), vec![0xff, 0xff])]);
    let cmd = |op| Command { now: ts(100), op };
    let r = crate::apply(
        &bad,
        &cmd(MetaOp::Unlink {
            parent: root,
            name: b"f".to_vec(),
        }),
    );
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    let r = crate::query(&bad, &MetaQuery::GetAttr { ino: f });
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");

    let mut bad = fs.kv.clone();
    bad.apply_mutations(&[crate::Mutation::Delete(keys::chunk_ref(&chunk(1)))]);
    let r = crate::apply(
        &bad,
        &cmd(MetaOp::SetAttr {
            ino: f,
            set: SetAttr {
                size: Some(0),
                ..Default::default()
            },
            session: None,
        }),
    );
    assert!(
        matches!(r, Err(StoreError::Corrupt(_))),
        "refcount underflow: {r:?}"
    );

    let mut bad = fs.kv.clone();
    bad.apply_mutations(&[crate::Mutation::Delete(keys::inode(f))]);
    let r = crate::query(
        &bad,
        &MetaQuery::Lookup {
            parent: root,
            name: b"f".to_vec(),
            session: None,
        },
    );
    assert!(
        matches!(r, Err(StoreError::Corrupt(_))),
        "dangling entry: {r:?}"
    );
}

#[test]
fn every_value_of_a_store_of_noise_fails_cleanly() {
    // A store whose every record is garbage: no op or query may panic.
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(d, "f");
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    let noisy: MemKv = fs
        .kv
        .iter()
        .map(|(k, _)| (k.to_vec(), vec![0xfe; 3]))
        .collect();
    let ops = [
        MetaOp::Create {
            parent: d,
            name: b"x".to_vec(),
            kind: NewKind::File,
            perm: 0,
            uid: 0,
            gid: 0,
        },
        MetaOp::Unlink {
            parent: d,
            name: b"f".to_vec(),
        },
        MetaOp::Rename {
            parent: d,
            name: b"f".to_vec(),
            new_parent: root,
            new_name: b"g".to_vec(),
            mode: Replace,
        },
        MetaOp::Write {
            ino: f,
            extents: vec![ext(5, 10, 2)],
            under_replicated: Vec::new(),
            session: None,
            inline: Vec::new(),
            mount_session: None,
        },
        MetaOp::Reap { ino: f },
        MetaOp::CreateVolume {
            name: "z".into(),
            replicas: 1,
            write_quorum: 1,
        },
    ];
    for op in ops {
        let _ = crate::apply(
            &noisy,
            &Command {
                now: Timestamp::default(),
                op,
            },
        );
    }
    for q in [
        MetaQuery::ReadDir {
            ino: d,
            after: None,
            limit: 10,
            session: None,
        },
        MetaQuery::Extents {
            ino: f,
            offset: 0,
            len: 100,
        },
        MetaQuery::ListVolumes,
        MetaQuery::FsStats,
    ] {
        let _ = crate::query(&noisy, &q);
    }
    let _ = crate::garbage(&noisy, None, 10);
    let _ = crate::referenced_chunks(&noisy, None, 10);
}

#[test]
fn identical_commands_give_identical_states() {
    let run = || {
        let (mut fs, root) = Fs::with_volume();
        let d = fs.mkdir(root, "d");
        let f = fs.mkfile(d, "f");
        fs.write(f, &[ext(0, 100, 1), ext(100, 50, 2)]).unwrap();
        fs.link(f, root, "g").unwrap();
        fs.rename(d, "f", root, "h", Replace).unwrap();
        fs.truncate(f, 120).unwrap();
        fs.unlink(root, "g").unwrap();
        fs.unlink(root, "h").unwrap();
        fs.reap(f).unwrap();
        fs.kv
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    crate::testutil::check_invariants(&a);
}

#[test]
fn refused_ops_write_nothing() {
    let (mut fs, root) = Fs::with_volume();
    fs.mkdir(root, "d");
    let cmd = Command {
        now: ts(50),
        op: MetaOp::Rmdir {
            parent: root,
            name: b"nope".to_vec(),
        },
    };
    let (muts, reply) = crate::apply(&fs.kv, &cmd).unwrap();
    assert!(muts.is_empty());
    assert_eq!(reply.unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn kv_read_is_implemented_for_references() {
    let (fs, root) = Fs::with_volume();
    let view: &MemKv = &fs.kv;
    let r = crate::query(&view, &MetaQuery::GetAttr { ino: root }).unwrap();
    assert!(r.is_ok());
    assert!(view.get(&keys::inode(root)).unwrap().is_some());
}

#[test]
fn forget_garbage_drops_only_unreferenced_entries() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    fs.write(f, &[ext(0, 10, 2)]).unwrap();
    assert!(fs.is_garbage(1));
    // Chunk 1 is referenced again before GC forgets it: the entry is already gone.
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    assert!(!fs.is_garbage(1) && fs.is_garbage(2));
    fs.exec(MetaOp::ForgetGarbage {
        chunks: vec![chunk(1), chunk(2)],
    })
    .unwrap();
    assert!(!fs.is_garbage(2));
    assert_eq!(fs.refcount(1), 1);
    let too_many = vec![chunk(3); crate::FORGET_GARBAGE_MAX + 1];
    assert_eq!(
        code(fs.exec(MetaOp::ForgetGarbage { chunks: too_many })),
        ErrorCode::InvalidArgument
    );
}

fn missing(n: u8, node: u64) -> plait_proto::MissingCopy {
    plait_proto::MissingCopy {
        chunk: chunk(n),
        node,
        size_bytes: 10,
    }
}

fn pending(fs: &Fs, node: u64) -> Vec<plait_proto::HealEntry> {
    match fs.q(MetaQuery::HealPending {
        node,
        after: None,
        limit: 100,
    }) {
        Ok(MetaReply::HealPending(p)) => p,
        other => panic!("{other:?}"),
    }
}

fn heal_summary(fs: &Fs) -> Vec<plait_proto::HealNodeSummary> {
    match fs.q(MetaQuery::HealSummary) {
        Ok(MetaReply::HealSummary(s)) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_records_under_replicated_copies_in_the_same_commit() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.exec(MetaOp::Write {
        ino: f,
        extents: vec![ext(0, 10, 1), ext(10, 10, 2)],
        under_replicated: vec![missing(1, 3), missing(2, 3), missing(2, 2)],
        session: None,
        inline: Vec::new(),
        mount_session: None,
    })
    .unwrap();
    let p3 = pending(&fs, 3);
    assert_eq!(p3.len(), 2);
    assert_eq!(p3[0].chunk, chunk(1));
    assert_eq!(pending(&fs, 2).len(), 1);
    assert!(pending(&fs, 1).is_empty());
    let summary = heal_summary(&fs);
    assert_eq!(summary.len(), 2);
    assert_eq!(
        (summary[0].node, summary[0].chunks, summary[0].bytes),
        (2, 1, 10)
    );
    assert_eq!(
        (summary[1].node, summary[1].chunks, summary[1].bytes),
        (3, 2, 20)
    );
    // Nothing is recorded for a chunk the write does not reference, nor for node 0.
    for bad in [missing(9, 3), missing(1, 0)] {
        assert_eq!(
            code(fs.exec(MetaOp::Write {
                ino: f,
                extents: vec![ext(0, 10, 1)],
                under_replicated: vec![bad],
                session: None,
                inline: Vec::new(),
                mount_session: None,
            })),
            ErrorCode::InvalidArgument
        );
    }
    assert_eq!(pending(&fs, 3).len(), 2);
}

#[test]
fn heal_done_removes_only_the_entry_the_node_saw() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.exec(MetaOp::Write {
        ino: f,
        extents: vec![ext(0, 10, 1), ext(10, 10, 2)],
        under_replicated: vec![missing(1, 3), missing(2, 3)],
        session: None,
        inline: Vec::new(),
        mount_session: None,
    })
    .unwrap();
    let seen = pending(&fs, 3);
    // Chunk 2 is found missing again after the node looked: that entry must stay.
    fs.exec(MetaOp::MarkUnderReplicated {
        copies: vec![missing(2, 3)],
    })
    .unwrap();
    fs.exec(MetaOp::HealDone {
        node: 3,
        chunks: seen.iter().map(|e| (e.chunk, e.since)).collect(),
    })
    .unwrap();
    let left = pending(&fs, 3);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].chunk, chunk(2));
    let too_many = vec![(chunk(1), ts(0)); crate::HEAL_DONE_MAX + 1];
    assert_eq!(
        code(fs.exec(MetaOp::HealDone {
            node: 3,
            chunks: too_many
        })),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn mark_under_replicated_ignores_unreferenced_chunks() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    fs.write(f, &[ext(0, 10, 1)]).unwrap();
    fs.exec(MetaOp::MarkUnderReplicated {
        copies: vec![missing(1, 2), missing(7, 2)],
    })
    .unwrap();
    let p = pending(&fs, 2);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].chunk, chunk(1));
    assert!(crate::is_referenced(&fs.kv, &chunk(1)).unwrap());
    assert!(!crate::is_referenced(&fs.kv, &chunk(7)).unwrap());
    let page = crate::heal_pending(&fs.kv, 2, Some(&chunk(1)), 10).unwrap();
    assert!(page.is_empty());
}

// ---- inline chunks -----------------------------------------------------------------

fn inline_write(ino: plait_proto::Ino, at: u64, body: &[u8]) -> MetaOp {
    MetaOp::Write {
        ino,
        extents: vec![plait_proto::Extent {
            file_offset: at,
            len: body.len() as u64,
            chunk: plait_proto::ChunkId::of(body),
            chunk_offset: 0,
        }],
        under_replicated: Vec::new(),
        session: None,
        inline: vec![body.to_vec()],
        mount_session: None,
    }
}

fn extents_reply(fs: &Fs, ino: plait_proto::Ino) -> (Vec<plait_proto::Extent>, Vec<Vec<u8>>) {
    match fs.q(MetaQuery::Extents {
        ino,
        offset: 0,
        len: u64::MAX,
    }) {
        Ok(MetaReply::Extents {
            extents, inline, ..
        }) => (extents, inline),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_small_write_keeps_its_bytes_inline_and_returns_them_with_the_extents() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let g = fs.mkfile(root, "g");
    let body = b"config: small".to_vec();
    let id = plait_proto::ChunkId::of(&body);
    fs.exec(inline_write(f, 0, &body)).unwrap();
    assert_eq!(fs.attr(f).size, body.len() as u64);
    let (extents, inline) = extents_reply(&fs, f);
    assert_eq!(extents.len(), 1);
    assert_eq!(inline, vec![body.clone()]);
    // Nothing for data nodes: no reference count, no garbage, no heal entry.
    assert!(
        crate::referenced_chunks(&fs.kv, None, 10)
            .unwrap()
            .is_empty()
    );
    // The same bytes in another file share the inline chunk.
    fs.exec(inline_write(g, 100, &body)).unwrap();
    let rec = crate::read::inline_chunk(&fs.kv, &id).unwrap().unwrap();
    assert_eq!(rec.refs, 2);
    // Overwriting one copy and truncating the other releases it without garbage.
    fs.exec(inline_write(f, 0, b"other bytes!!")).unwrap();
    fs.truncate(g, 0).unwrap();
    assert!(crate::read::inline_chunk(&fs.kv, &id).unwrap().is_none());
    assert!(crate::garbage(&fs.kv, None, 10).unwrap().is_empty());
    // Reaping the file drops its last inline chunk.
    fs.unlink(root, "f").unwrap();
    fs.reap(f).unwrap();
    assert!(
        fs.kv
            .scan(&[keys::INLINE_CHUNK], None, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_split_inline_extent_keeps_both_halves_readable() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let body = vec![9u8; 100];
    let id = plait_proto::ChunkId::of(&body);
    fs.exec(inline_write(f, 0, &body)).unwrap();
    // A write in the middle splits the extent: two references to the inline chunk.
    fs.exec(inline_write(f, 40, b"mid")).unwrap();
    let rec = crate::read::inline_chunk(&fs.kv, &id).unwrap().unwrap();
    assert_eq!(rec.refs, 2);
    let (extents, inline) = extents_reply(&fs, f);
    assert_eq!(extents.len(), 3);
    assert_eq!(inline.len(), 2, "each inline chunk once");
}

#[test]
fn bytes_already_on_data_nodes_are_not_copied_inline() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let body = b"same bytes".to_vec();
    let id = plait_proto::ChunkId::of(&body);
    // First written as an uploaded chunk (no body).
    fs.write(
        f,
        &[plait_proto::Extent {
            file_offset: 0,
            len: body.len() as u64,
            chunk: id,
            chunk_offset: 0,
        }],
    )
    .unwrap();
    fs.exec(inline_write(f, 50, &body)).unwrap();
    assert!(crate::read::inline_chunk(&fs.kv, &id).unwrap().is_none());
    assert_eq!(crate::read::refcount(&fs.kv, &id).unwrap(), 2);
    let (_, inline) = extents_reply(&fs, f);
    assert!(inline.is_empty());
}

#[test]
fn malformed_inline_bodies_are_refused_and_change_nothing() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let before = fs.attr(f);
    let ok = inline_write(f, 0, b"abc");
    let MetaOp::Write { extents, .. } = ok else {
        unreachable!()
    };
    let with = |extents: Vec<plait_proto::Extent>, inline: Vec<Vec<u8>>, missing| MetaOp::Write {
        ino: f,
        extents,
        under_replicated: missing,
        session: None,
        inline,
        mount_session: None,
    };
    let long = vec![1u8; plait_proto::INLINE_CHUNK_MAX_BYTES + 1];
    let long_extent = plait_proto::Extent {
        file_offset: 0,
        len: long.len() as u64,
        chunk: plait_proto::ChunkId::of(&long),
        chunk_offset: 0,
    };
    let past_end = plait_proto::Extent {
        len: 4,
        ..extents[0]
    };
    let cases = [
        // A body no extent references.
        with(extents.clone(), vec![b"xyz".to_vec()], vec![]),
        // The same body, but also one unreferenced.
        with(
            extents.clone(),
            vec![b"abc".to_vec(), b"zz".to_vec()],
            vec![],
        ),
        // An empty body, and one over the bound.
        with(extents.clone(), vec![Vec::new()], vec![]),
        with(vec![long_extent], vec![long], vec![]),
        // An extent reaching past its body's end.
        with(vec![past_end], vec![b"abc".to_vec()], vec![]),
        // A heal entry for an inline chunk (no data node is meant to hold it).
        with(
            extents.clone(),
            vec![b"abc".to_vec()],
            vec![plait_proto::MissingCopy {
                chunk: extents[0].chunk,
                node: 2,
                size_bytes: 3,
            }],
        ),
    ];
    for op in cases {
        assert_eq!(code(fs.exec(op)), ErrorCode::InvalidArgument);
    }
    assert_eq!(fs.attr(f), before);
    assert!(
        fs.kv
            .scan(&[keys::INLINE_CHUNK], None, 10)
            .unwrap()
            .is_empty()
    );
}
