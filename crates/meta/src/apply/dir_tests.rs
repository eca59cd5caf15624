//! Tests of directory create delegations: grants, batches, recalls, fencing.

use plait_proto::meta::{DirBatchOp, RenameMode};
use plait_proto::{ChunkId, ErrorCode, Extent, MetaOp, MetaQuery, MetaReply};

use crate::testutil::{Fs, code};

fn session(fs: &mut Fs, lease_ms: u64) -> u64 {
    match fs.exec(MetaOp::OpenSession {
        lease_ms,
        client: "test".into(),
    }) {
        Ok(MetaReply::Session(s)) => s.id,
        other => panic!("{other:?}"),
    }
}

fn delegate(fs: &mut Fs, dir: u64, session: u64) -> Option<(u64, u64)> {
    match fs.exec(MetaOp::DelegateDir { dir, session }) {
        Ok(MetaReply::DirDelegated { first_ino, count }) => Some((first_ino, count)),
        Ok(MetaReply::DirBusy) => None,
        other => panic!("{other:?}"),
    }
}

fn create_op(name: &str, ino: u64) -> DirBatchOp {
    DirBatchOp::CreateFile {
        name: name.as_bytes().to_vec(),
        ino,
        perm: 0o640,
        uid: 7,
        gid: 8,
    }
}

/// One extent at offset 0 holding all of `body`, as one inline chunk.
fn inline_extent(body: &[u8]) -> Extent {
    Extent {
        file_offset: 0,
        len: body.len() as u64,
        chunk: ChunkId::of(body),
        chunk_offset: 0,
    }
}

fn inline_write(ino: u64, body: &[u8]) -> DirBatchOp {
    DirBatchOp::Write {
        ino,
        extents: vec![inline_extent(body)],
        under_replicated: Vec::new(),
        inline: vec![body.to_vec()],
    }
}

fn batch(
    fs: &mut Fs,
    dir: u64,
    session: u64,
    ops: Vec<DirBatchOp>,
) -> Result<MetaReply, plait_proto::RpcError> {
    fs.exec(MetaOp::DirBatch { dir, session, ops })
}

fn recalls(fs: &Fs, session: u64) -> Vec<u64> {
    match fs.q(MetaQuery::DirRecalls { session }) {
        Ok(MetaReply::Recalls(v)) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_creates_files_with_their_bytes_in_one_commit() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 10_000);
    let (first, count) = delegate(&mut fs, dir, s).expect("granted");
    assert_eq!(count, plait_proto::meta::DIR_INO_RANGE);
    let reply = batch(
        &mut fs,
        dir,
        s,
        vec![
            create_op("a", first),
            inline_write(first, b"hello"),
            create_op("b", first + 1),
        ],
    )
    .unwrap();
    let MetaReply::Batch(replies) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(replies.len(), 3);
    assert_eq!(fs.lookup(dir, "a"), Some(first));
    assert_eq!(fs.lookup(dir, "b"), Some(first + 1));
    let a = fs.attr(first);
    assert_eq!((a.size, a.perm, a.uid, a.gid), (5, 0o640, 7, 8));
    assert_eq!(fs.attr(dir).mtime, fs.attr(first).mtime);
    // Ordinary creates take numbers past the delegated range.
    let other = fs.mkfile(root, "x");
    assert!(other >= first + count, "{other} inside {first}+{count}");
    fs.check();
}

#[test]
fn a_batch_is_applied_whole_or_not_at_all() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 10_000);
    let (first, count) = delegate(&mut fs, dir, s).unwrap();
    let outside = batch(
        &mut fs,
        dir,
        s,
        vec![create_op("a", first), create_op("b", first + count)],
    );
    assert_eq!(code(outside), ErrorCode::InvalidArgument);
    assert_eq!(fs.lookup(dir, "a"), None);
    let taken = batch(
        &mut fs,
        dir,
        s,
        vec![create_op("a", first), create_op("a", first + 1)],
    );
    assert_eq!(code(taken), ErrorCode::Exists);
    let reused = batch(
        &mut fs,
        dir,
        s,
        vec![create_op("a", first), create_op("b", first)],
    );
    assert_eq!(code(reused), ErrorCode::Exists);
    // Another session cannot use the holder's delegation, nor a range of another directory.
    let other = session(&mut fs, 10_000);
    assert_eq!(
        code(batch(&mut fs, dir, other, vec![create_op("a", first)])),
        ErrorCode::Stale
    );
    let dir2 = fs.mkdir(root, "e");
    let (first2, _) = delegate(&mut fs, dir2, s).unwrap();
    let foreign = batch(&mut fs, dir, s, vec![create_op("a", first2)]);
    assert_eq!(code(foreign), ErrorCode::InvalidArgument);
    assert_eq!(fs.lookup(dir, "a"), None);
    fs.check();
}

#[test]
fn another_sessions_change_recalls_the_directory_and_waits() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let holder = session(&mut fs, 10_000);
    let (first, _) = delegate(&mut fs, dir, holder).unwrap();
    let other = session(&mut fs, 10_000);
    assert_eq!(delegate(&mut fs, dir, other), None);
    // Every op that adds or removes a name in the directory, or removes it, waits.
    let ops = [
        MetaOp::Create {
            parent: dir,
            name: b"x".to_vec(),
            kind: plait_proto::meta::NewKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
        },
        MetaOp::Rmdir {
            parent: root,
            name: b"d".to_vec(),
        },
        MetaOp::Rename {
            parent: root,
            name: b"d".to_vec(),
            new_parent: dir,
            new_name: b"loop".to_vec(),
            mode: RenameMode::Replace,
        },
    ];
    for op in ops {
        assert_eq!(fs.exec(op).unwrap(), MetaReply::DirRecalling { dir });
        assert_eq!(fs.lookup(dir, "x"), None);
    }
    assert_eq!(recalls(&fs, holder), vec![dir]);
    // A recalled holder commits what it created, then gives the directory back.
    assert_eq!(
        delegate(&mut fs, dir, holder),
        None,
        "no new range once recalled"
    );
    batch(&mut fs, dir, holder, vec![create_op("mine", first)]).unwrap();
    fs.exec(MetaOp::ReturnDirDelegation {
        dir,
        session: holder,
    })
    .unwrap();
    assert_eq!(recalls(&fs, holder), Vec::<u64>::new());
    assert_eq!(
        fs.q(MetaQuery::DirDelegation { dir }).unwrap(),
        MetaReply::Delegated(None)
    );
    fs.mkfile(dir, "x");
    assert_eq!(fs.lookup(dir, "mine"), Some(first));
    // It cools down before it is delegated again.
    assert_eq!(delegate(&mut fs, dir, holder), None);
    for _ in 0..10 {
        fs.mkfile(root, &format!("tick{}", fs.clock));
    }
    assert!(delegate(&mut fs, dir, holder).is_some());
    fs.check();
}

#[test]
fn a_directory_given_back_unasked_can_be_delegated_again_at_once() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 10_000);
    let (a, _) = delegate(&mut fs, dir, s).unwrap();
    let (b, _) = delegate(&mut fs, dir, s).unwrap();
    assert_ne!(a, b, "a second range");
    // Both ranges may be used.
    batch(&mut fs, dir, s, vec![create_op("a", a), create_op("b", b)]).unwrap();
    fs.exec(MetaOp::ReturnDirDelegation { dir, session: s })
        .unwrap();
    assert!(delegate(&mut fs, dir, s).is_some());
    fs.check();
}

#[test]
fn an_expired_session_loses_its_directories_and_its_batches_are_refused() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 1_000);
    let (first, _) = delegate(&mut fs, dir, s).unwrap();
    for _ in 0..3 {
        fs.mkfile(root, &format!("tick{}", fs.clock));
    }
    fs.exec(MetaOp::ExpireSessions).unwrap();
    assert_eq!(
        fs.q(MetaQuery::DirDelegation { dir }).unwrap(),
        MetaReply::Delegated(None)
    );
    let late = batch(&mut fs, dir, s, vec![create_op("a", first)]);
    assert_eq!(code(late), ErrorCode::SessionExpired);
    fs.mkfile(dir, "a");
    fs.check();
}

#[test]
fn removing_a_directory_forgets_its_delegation_record() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 10_000);
    delegate(&mut fs, dir, s).unwrap();
    assert_eq!(
        fs.exec(MetaOp::RecallDir { dir }).unwrap(),
        MetaReply::DirRecalling { dir }
    );
    fs.exec(MetaOp::ReturnDirDelegation { dir, session: s })
        .unwrap();
    fs.rmdir(root, "d").unwrap();
    assert_eq!(
        fs.exec(MetaOp::RecallDir { dir }).unwrap(),
        MetaReply::Empty
    );
    fs.check();
}

#[test]
fn a_resent_batch_changes_nothing_but_times() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let s = session(&mut fs, 10_000);
    let (first, _) = delegate(&mut fs, dir, s).unwrap();
    let ops = vec![create_op("a", first), inline_write(first, b"hello")];
    batch(&mut fs, dir, s, ops.clone()).unwrap();
    batch(&mut fs, dir, s, ops).unwrap();
    assert_eq!(fs.lookup(dir, "a"), Some(first));
    assert_eq!(fs.attr(first).size, 5);
    assert_eq!(fs.attr(first).nlink, 1);
    // The number under another name is still refused.
    let other = batch(&mut fs, dir, s, vec![create_op("b", first)]);
    assert_eq!(code(other), ErrorCode::Exists);
    fs.check();
}

#[test]
fn a_batch_removes_names_and_a_resent_unlink_spares_a_new_file_of_that_name() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let sub = fs.mkdir(dir, "sub");
    let old = fs.mkfile(dir, "a");
    let s = session(&mut fs, 10_000);
    let (first, _) = delegate(&mut fs, dir, s).unwrap();
    let unlink = |name: &str, ino| DirBatchOp::Unlink {
        name: name.as_bytes().to_vec(),
        ino,
        reap: false,
    };
    // Remove "a" and create a new "a" in one batch: the old file is an orphan to reap.
    let ops = vec![unlink("a", old), create_op("a", first)];
    let reply = batch(&mut fs, dir, s, ops.clone()).unwrap();
    let MetaReply::Batch(replies) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(replies[0], MetaReply::Removed { orphan: Some(old) });
    assert_eq!(fs.lookup(dir, "a"), Some(first));
    // The same batch again (its answer was lost): the new "a" stays, and the orphan not
    // reaped yet is named again so that the sender reaps it.
    let MetaReply::Batch(again) = batch(&mut fs, dir, s, ops.clone()).unwrap() else {
        panic!()
    };
    assert_eq!(again[0], MetaReply::Removed { orphan: Some(old) });
    assert_eq!(fs.lookup(dir, "a"), Some(first));
    assert_eq!(fs.attr(first).nlink, 1);
    fs.exec(MetaOp::Reap { ino: old }).unwrap();
    let MetaReply::Batch(late) = batch(&mut fs, dir, s, ops).unwrap() else {
        panic!()
    };
    assert_eq!(late[0], MetaReply::Removed { orphan: None });
    // A directory is not unlinked, and nothing of its batch is applied.
    let refused = batch(
        &mut fs,
        dir,
        s,
        vec![create_op("b", first + 1), unlink("sub", sub)],
    );
    assert_eq!(code(refused), ErrorCode::IsDir);
    assert_eq!(fs.lookup(dir, "sub"), Some(sub));
    assert_eq!(fs.lookup(dir, "b"), None);
    // Reaped in the same commit when asked: nothing left to reap, also on a resend.
    let reaped = vec![DirBatchOp::Unlink {
        name: b"a".to_vec(),
        ino: first,
        reap: true,
    }];
    for _ in 0..2 {
        let MetaReply::Batch(r) = batch(&mut fs, dir, s, reaped.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(r[0], MetaReply::Removed { orphan: None });
        assert!(!fs.exists(first), "reaped with its unlink");
        assert!(!fs.is_orphan(first));
    }
    fs.check();
}

// ---- random interleavings of two sessions and a third party ---------------------------

mod random {
    use std::collections::BTreeMap;

    use plait_proto::meta::{DirBatchOp, NewKind};
    use plait_proto::{MetaOp, MetaReply};
    use proptest::prelude::*;

    use super::{create_op, inline_write, session};
    use crate::KvRead;
    use crate::apply::dir_delegation::dir_holder;
    use crate::keys;
    use crate::testutil::{Fs, check_invariants};

    /// Directories in the test.
    const DIRS: usize = 2;
    /// Names per directory.
    const NAMES: u8 = 4;

    #[derive(Debug, Clone)]
    enum Step {
        /// Session `s` asks for directory `d`.
        Delegate(usize, usize),
        /// Session `s` commits a batch creating name `n` in `d` (with bytes or not).
        Batch(usize, usize, u8, bool),
        /// Session `s` gives `d` back.
        Return(usize, usize),
        /// A session without delegations creates `n` in `d` the ordinary way.
        Create(usize, u8),
        /// ... or unlinks it.
        Unlink(usize, u8),
        /// ... or asks for `d` back explicitly.
        Recall(usize),
        /// Session `s` renews its lease.
        Renew(usize),
        /// Time passes and the leader expires lapsed sessions.
        Expire,
    }

    fn step() -> impl Strategy<Value = Step> {
        let s = 0..2usize;
        let d = 0..DIRS;
        let n = 0..NAMES;
        prop_oneof![
            3 => (s.clone(), d.clone()).prop_map(|(s, d)| Step::Delegate(s, d)),
            5 => (s.clone(), d.clone(), n.clone(), any::<bool>())
                .prop_map(|(s, d, n, w)| Step::Batch(s, d, n, w)),
            2 => (s.clone(), d.clone()).prop_map(|(s, d)| Step::Return(s, d)),
            3 => (d.clone(), n.clone()).prop_map(|(d, n)| Step::Create(d, n)),
            2 => (d.clone(), n).prop_map(|(d, n)| Step::Unlink(d, n)),
            1 => d.prop_map(Step::Recall),
            2 => s.prop_map(Step::Renew),
            1 => Just(Step::Expire),
        ]
    }

    /// The entries of directory `dir`, as stored.
    fn entries(fs: &Fs, dir: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        fs.kv
            .scan(&keys::dentry_prefix(dir), None, 1000)
            .expect("scan")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the interleaving, every invariant holds after every step, and while a
        /// directory is delegated nothing but its holder's batches changes its names.
        #[test]
        fn recalls_and_batches_keep_delegated_directories_exclusive(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let (mut fs, root) = Fs::with_volume();
            let dirs: Vec<u64> = (0..DIRS).map(|i| fs.mkdir(root, &format!("d{i}"))).collect();
            let sessions = [session(&mut fs, 5_000), session(&mut fs, 5_000)];
            // Unused numbers of each (session, dir) grant seen, in order.
            let mut free: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
            for st in &steps {
                let held: Vec<Option<u64>> = dirs
                    .iter()
                    .map(|d| dir_holder(&fs.kv, *d).expect("holder"))
                    .collect();
                let before: Vec<_> = dirs.iter().map(|d| entries(&fs, *d)).collect();
                let mut batch_of = None;
                match st {
                    Step::Delegate(s, d) => {
                        let reply = fs.exec(MetaOp::DelegateDir { dir: dirs[*d], session: sessions[*s] });
                        if let Ok(MetaReply::DirDelegated { first_ino, count }) = reply {
                            free.entry((*s, *d)).or_default().extend(first_ino..first_ino + count.min(8));
                        }
                    }
                    Step::Batch(s, d, n, write) => {
                        let Some(ino) = free.get_mut(&(*s, *d)).and_then(|v| v.pop()) else { continue };
                        let mut ops: Vec<DirBatchOp> = vec![create_op(&format!("n{n}"), ino)];
                        if *write {
                            ops.push(inline_write(ino, &[*n; 20]));
                        }
                        let reply = fs.exec(MetaOp::DirBatch { dir: dirs[*d], session: sessions[*s], ops });
                        if reply.is_ok() {
                            prop_assert_eq!(held[*d], Some(sessions[*s]), "a batch of a non-holder succeeded");
                            prop_assert_eq!(fs.lookup(dirs[*d], &format!("n{n}")), Some(ino));
                        }
                        batch_of = Some(*d);
                    }
                    Step::Return(s, d) => {
                        fs.exec(MetaOp::ReturnDirDelegation { dir: dirs[*d], session: sessions[*s] })
                            .expect("return is idempotent");
                    }
                    Step::Create(d, n) => {
                        let reply = fs.exec(MetaOp::Create {
                            parent: dirs[*d],
                            name: format!("n{n}").into_bytes(),
                            kind: NewKind::File,
                            perm: 0o644,
                            uid: 0,
                            gid: 0,
                        });
                        if held[*d].is_some() {
                            prop_assert_eq!(reply.ok(), Some(MetaReply::DirRecalling { dir: dirs[*d] }));
                        }
                    }
                    Step::Unlink(d, n) => {
                        let reply = fs.exec(MetaOp::Unlink { parent: dirs[*d], name: format!("n{n}").into_bytes() });
                        if held[*d].is_some() {
                            prop_assert_eq!(reply.ok(), Some(MetaReply::DirRecalling { dir: dirs[*d] }));
                        }
                    }
                    Step::Recall(d) => {
                        let reply = fs.exec(MetaOp::RecallDir { dir: dirs[*d] }).expect("recall");
                        let expect = if held[*d].is_some() { MetaReply::DirRecalling { dir: dirs[*d] } } else { MetaReply::Empty };
                        prop_assert_eq!(reply, expect);
                    }
                    Step::Renew(s) => {
                        let _ = fs.exec(MetaOp::RenewSession { session: sessions[*s] });
                    }
                    Step::Expire => {
                        fs.clock += 6;
                        fs.exec(MetaOp::ExpireSessions).expect("expire");
                    }
                }
                check_invariants(&fs.kv);
                for (i, d) in dirs.iter().enumerate() {
                    if held[i].is_some() && batch_of != Some(i) {
                        prop_assert_eq!(&before[i], &entries(&fs, *d), "names of a delegated directory changed");
                    }
                }
            }
        }
    }
}

#[test]
fn other_sessions_questions_about_absent_names_and_listings_wait_for_the_holder() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let sub = fs.mkdir(dir, "sub");
    let holder = session(&mut fs, 10_000);
    let other = session(&mut fs, 10_000);
    let (first, _) = delegate(&mut fs, dir, holder).expect("granted");
    let lookup = |session, name: &str| MetaQuery::Lookup {
        parent: dir,
        name: name.as_bytes().to_vec(),
        session,
    };
    let list = |session| MetaQuery::ReadDir {
        ino: dir,
        after: None,
        limit: 10,
        session,
    };
    // A committed name is answered to anyone: path walks through a held directory cost
    // nothing.
    assert!(matches!(fs.q(lookup(Some(other), "sub")), Ok(MetaReply::Attr(a)) if a.ino == sub));
    // An absent name may be the holder's uncommitted file: another session must recall.
    assert_eq!(
        fs.q(lookup(Some(other), "new")),
        Ok(MetaReply::DirRecalling { dir })
    );
    assert_eq!(fs.q(list(Some(other))), Ok(MetaReply::DirRecalling { dir }));
    // The holder and tools (no session) read what is committed.
    assert_eq!(code(fs.q(lookup(Some(holder), "new"))), ErrorCode::NotFound);
    assert_eq!(code(fs.q(lookup(None, "new"))), ErrorCode::NotFound);
    assert!(
        matches!(fs.q(list(None)), Ok(MetaReply::Entries { entries, .. }) if entries.len() == 1)
    );
    // Queries change nothing: the asker recalls with an op, the holder commits and gives
    // the directory back, and the question is answered.
    assert!(recalls(&fs, holder).is_empty());
    assert_eq!(
        fs.exec(MetaOp::RecallDir { dir }),
        Ok(MetaReply::DirRecalling { dir })
    );
    assert_eq!(recalls(&fs, holder), vec![dir]);
    batch(
        &mut fs,
        dir,
        holder,
        vec![create_op("new", first), inline_write(first, b"x")],
    )
    .expect("batch");
    fs.exec(MetaOp::ReturnDirDelegation {
        dir,
        session: holder,
    })
    .expect("returned");
    assert!(
        matches!(fs.q(lookup(Some(other), "new")), Ok(MetaReply::Attr(a)) if a.ino == first && a.size == 1)
    );
    assert!(
        matches!(fs.q(list(Some(other))), Ok(MetaReply::Entries { entries, .. }) if entries.len() == 2)
    );
}

fn guard_dir(fs: &Fs, ino: u64) -> Option<u64> {
    match fs.q(MetaQuery::Extents {
        ino,
        offset: 0,
        len: 1,
    }) {
        Ok(MetaReply::Extents { guard_dir, .. }) => guard_dir,
        other => panic!("{other:?}"),
    }
}

/// A write by a mount whose session is `session`, holding no lock on the file (so its
/// fencing session is `None`, as the mount sends it).
fn write_as(fs: &mut Fs, ino: u64, body: &[u8], session: Option<u64>) -> MetaReply {
    fs.exec(MetaOp::Write {
        ino,
        extents: vec![inline_extent(body)],
        under_replicated: Vec::new(),
        session: None,
        inline: vec![body.to_vec()],
        mount_session: session,
    })
    .unwrap()
}

fn truncate_as(fs: &mut Fs, ino: u64, size: Option<u64>, session: Option<u64>) -> MetaReply {
    fs.exec(MetaOp::SetAttr {
        ino,
        set: plait_proto::meta::SetAttr {
            size,
            perm: Some(0o600),
            ..Default::default()
        },
        session,
    })
    .unwrap()
}

#[test]
fn another_sessions_content_change_recalls_the_guarding_directory() {
    let (mut fs, root) = Fs::with_volume();
    let dir = fs.mkdir(root, "d");
    let f = fs.mkfile(dir, "f");
    assert_eq!(guard_dir(&fs, f), Some(dir));
    let holder = session(&mut fs, 10_000);
    let other = session(&mut fs, 10_000);
    delegate(&mut fs, dir, holder).unwrap();
    // The holder changes its files' content freely.
    assert!(matches!(
        write_as(&mut fs, f, b"mine", Some(holder)),
        MetaReply::Attr(_)
    ));
    assert!(matches!(
        truncate_as(&mut fs, f, Some(2), Some(holder)),
        MetaReply::Attr(_)
    ));
    assert_eq!(recalls(&fs, holder), Vec::<u64>::new());
    // Anyone else's write or size change (tools included) waits for the directory.
    for session in [Some(other), None] {
        assert_eq!(
            write_as(&mut fs, f, b"theirs", session),
            MetaReply::DirRecalling { dir }
        );
        assert_eq!(
            truncate_as(&mut fs, f, Some(0), session),
            MetaReply::DirRecalling { dir }
        );
    }
    assert_eq!(fs.attr(f).size, 2, "nothing applied");
    assert_eq!(recalls(&fs, holder), vec![dir]);
    // Other attribute changes are not content: applied.
    assert!(matches!(
        truncate_as(&mut fs, f, None, Some(other)),
        MetaReply::Attr(_)
    ));
    // Given back: the write goes through.
    fs.exec(MetaOp::ReturnDirDelegation {
        dir,
        session: holder,
    })
    .unwrap();
    assert!(matches!(
        write_as(&mut fs, f, b"theirs", Some(other)),
        MetaReply::Attr(_)
    ));
    assert_eq!(fs.attr(f).size, 6);
    fs.check();
}

#[test]
fn the_guarding_directory_follows_the_files_names() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let e = fs.mkdir(root, "e");
    let f = fs.mkfile(d, "f");
    fs.rename(d, "f", e, "g", RenameMode::Replace).unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    // A second name elsewhere: still guarded by the first while it exists.
    fs.link(f, d, "h").unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    fs.unlink(d, "h").unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    fs.link(f, d, "h").unwrap();
    fs.unlink(e, "g").unwrap();
    // Its directory's name went and the others' are not known: not guarded.
    assert_eq!(guard_dir(&fs, f), None);
    let holder = session(&mut fs, 10_000);
    delegate(&mut fs, d, holder).unwrap();
    let other = session(&mut fs, 10_000);
    assert!(matches!(
        write_as(&mut fs, f, b"x", Some(other)),
        MetaReply::Attr(_)
    ));
    // A new link makes it known again.
    fs.exec(MetaOp::ReturnDirDelegation {
        dir: d,
        session: holder,
    })
    .unwrap();
    fs.link(f, e, "again").unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    // Renaming or exchanging another of its names does not move the guard away from e
    // (that would not recall e).
    fs.rename(d, "h", d, "h2", RenameMode::Replace).unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    let other = fs.mkfile(d, "other");
    fs.rename(d, "h2", d, "other", RenameMode::Exchange)
        .unwrap();
    assert_eq!(guard_dir(&fs, f), Some(e));
    assert_eq!(guard_dir(&fs, other), Some(d));
    // Renaming the guarding name itself moves the guard with it.
    fs.rename(e, "again", root, "top", RenameMode::Replace)
        .unwrap();
    assert_eq!(guard_dir(&fs, f), Some(root));
    fs.check();
}

#[test]
fn a_rename_of_another_link_does_not_unguard_a_held_directory() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let e = fs.mkdir(root, "e");
    let f = fs.mkfile(d, "a");
    fs.link(f, e, "b").unwrap();
    let holder = session(&mut fs, 10_000);
    let other = session(&mut fs, 10_000);
    delegate(&mut fs, d, holder).unwrap();
    // Another session renames the link in e (no name of d changes: d is not recalled)...
    fs.rename(e, "b", e, "c", RenameMode::Replace).unwrap();
    assert_eq!(recalls(&fs, holder), Vec::<u64>::new());
    // ...and its write through that link still waits for d.
    assert_eq!(
        write_as(&mut fs, f, b"v2", Some(other)),
        MetaReply::DirRecalling { dir: d }
    );
    fs.check();
}

#[test]
fn a_batch_writes_only_files_its_directory_guards() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let e = fs.mkdir(root, "e");
    let elsewhere = fs.mkfile(e, "x");
    let s = session(&mut fs, 10_000);
    let (first, _) = delegate(&mut fs, d, s).unwrap();
    let refused = batch(
        &mut fs,
        d,
        s,
        vec![create_op("a", first), inline_write(elsewhere, b"sneaky")],
    );
    assert_eq!(code(refused), ErrorCode::InvalidArgument);
    assert_eq!(fs.attr(elsewhere).size, 0);
    assert_eq!(fs.lookup(d, "a"), None);
    batch(
        &mut fs,
        d,
        s,
        vec![create_op("a", first), inline_write(first, b"ok")],
    )
    .unwrap();
    assert_eq!(guard_dir(&fs, first), Some(d));
    fs.check();
}
