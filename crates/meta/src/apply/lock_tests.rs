//! Tests of the lock service ops: sessions, leases, grants on release, fencing.

use plait_proto::lock::{LockKind, LockRange, LockSpec, LockType, SetOutcome, WaitState};
use plait_proto::{ErrorCode, MetaOp, MetaQuery, MetaReply};

use crate::testutil::{Fs, code, ext};

fn open(fs: &mut Fs, lease_ms: u64) -> u64 {
    match fs.exec(MetaOp::OpenSession {
        lease_ms,
        client: "test".into(),
    }) {
        Ok(MetaReply::Session(s)) => s.id,
        other => panic!("{other:?}"),
    }
}

fn spec(owner: u64, lock_type: LockType, start: u64, end: u64) -> LockSpec {
    LockSpec {
        kind: LockKind::Posix,
        owner,
        lock_type,
        range: LockRange::new(start, end).unwrap(),
        pid: 100 + u32::try_from(owner).unwrap(),
    }
}

fn set(fs: &mut Fs, ino: u64, session: u64, s: LockSpec, wait: Option<u32>) -> SetOutcome {
    match fs.exec(MetaOp::SetLock {
        ino,
        session,
        spec: s,
        wait,
        delegate: false,
    }) {
        Ok(MetaReply::LockSet(o)) => o,
        other => panic!("{other:?}"),
    }
}

fn wait_state(fs: &Fs, ino: u64, session: u64, seq: u32, s: LockSpec) -> WaitState {
    match fs.q(MetaQuery::LockWait {
        ino,
        session,
        seq,
        spec: s,
    }) {
        Ok(MetaReply::LockWait(w)) => w,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_waiter_is_granted_when_the_holder_unlocks() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let (a, b) = (open(&mut fs, 10_000), open(&mut fs, 10_000));
    let w = spec(1, LockType::Write, 0, 99);
    assert_eq!(set(&mut fs, f, a, w, None), SetOutcome::Granted);
    assert_eq!(set(&mut fs, f, b, w, None), SetOutcome::WouldBlock);
    // F_GETLK from b reports a's lock and pid.
    match fs.q(MetaQuery::TestLock {
        ino: f,
        session: b,
        spec: w,
    }) {
        Ok(MetaReply::LockConflict(Some(c))) => {
            assert_eq!((c.pid, c.lock_type), (101, LockType::Write));
            assert_eq!((c.range.start(), c.range.end()), (0, 99));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(set(&mut fs, f, b, w, Some(7)), SetOutcome::Queued);
    assert_eq!(wait_state(&fs, f, b, 7, w), WaitState::Queued);
    fs.check();
    fs.exec(MetaOp::Unlock {
        ino: f,
        session: a,
        kind: LockKind::Posix,
        owner: 1,
        range: LockRange::WHOLE,
    })
    .unwrap();
    assert_eq!(wait_state(&fs, f, b, 7, w), WaitState::Granted);
    assert_eq!(set(&mut fs, f, a, w, None), SetOutcome::WouldBlock);
    fs.check();
    match fs.q(MetaQuery::ListLocks {
        after: None,
        limit: 10,
    }) {
        Ok(MetaReply::Locks(files)) => {
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].ino, f);
            assert_eq!(files[0].holders.len(), 1);
            assert_eq!(files[0].holders[0].owner.session, b);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_session_loses_its_locks_and_its_writes_are_fenced() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let a = open(&mut fs, 1_000);
    let b = open(&mut fs, 60_000);
    let w = spec(1, LockType::Write, 0, u64::MAX);
    assert_eq!(set(&mut fs, f, a, w, None), SetOutcome::Granted);
    assert_eq!(set(&mut fs, f, b, w, Some(1)), SetOutcome::Queued);
    // The test clock ticks one second per op: a's one-second lease is long gone.
    fs.exec(MetaOp::ExpireSessions).unwrap();
    fs.check();
    assert_eq!(wait_state(&fs, f, b, 1, w), WaitState::Granted);
    assert_eq!(
        code(fs.exec(MetaOp::RenewSession { session: a })),
        ErrorCode::SessionExpired
    );
    let write = |session| MetaOp::Write {
        ino: f,
        extents: vec![ext(0, 10, 1)],
        under_replicated: Vec::new(),
        session: Some(session),
        inline: Vec::new(),
        mount_session: None,
    };
    assert_eq!(code(fs.exec(write(a))), ErrorCode::SessionExpired);
    assert_eq!(
        code(fs.exec(MetaOp::SetLock {
            ino: f,
            session: a,
            spec: w,
            wait: None,
            delegate: false,
        })),
        ErrorCode::SessionExpired
    );
    fs.exec(write(b)).unwrap();
    // b renews and keeps its lock.
    fs.exec(MetaOp::RenewSession { session: b }).unwrap();
    fs.exec(MetaOp::ExpireSessions).unwrap();
    assert_eq!(wait_state(&fs, f, b, 1, w), WaitState::Granted);
    match fs.q(MetaQuery::ListSessions) {
        Ok(MetaReply::Sessions(s)) => assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), [b]),
        other => panic!("{other:?}"),
    }
    fs.check();
}

#[test]
fn cancel_close_and_reap_leave_no_locks_or_waiters_behind() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let (a, b) = (open(&mut fs, 10_000), open(&mut fs, 10_000));
    let w = spec(1, LockType::Write, 10, 19);
    assert_eq!(set(&mut fs, f, a, w, None), SetOutcome::Granted);
    assert_eq!(set(&mut fs, f, b, w, Some(3)), SetOutcome::Queued);
    fs.exec(MetaOp::CancelLockWait {
        ino: f,
        session: b,
        seq: 3,
    })
    .unwrap();
    assert_eq!(wait_state(&fs, f, b, 3, w), WaitState::Gone);
    fs.check();
    // Close of a descriptor: the owner's POSIX locks go.
    fs.exec(MetaOp::ReleaseLockOwner {
        ino: f,
        session: a,
        kind: LockKind::Posix,
        owner: 1,
    })
    .unwrap();
    assert_eq!(set(&mut fs, f, b, w, None), SetOutcome::Granted);
    fs.exec(MetaOp::CloseSession { session: b }).unwrap();
    fs.check();
    assert_eq!(set(&mut fs, f, a, w, None), SetOutcome::Granted);
    // The file goes away with its locks.
    fs.unlink(root, "f").unwrap();
    fs.reap(f).unwrap();
    fs.check();
    assert_eq!(
        code(fs.exec(MetaOp::OpenSession {
            lease_ms: 10,
            client: String::new()
        })),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn inode_path_follows_the_latest_name() {
    let (mut fs, root) = Fs::with_volume();
    let d = fs.mkdir(root, "d");
    let f = fs.mkfile(d, "f");
    let path = |fs: &Fs, ino| match fs.q(MetaQuery::InodePath { ino }) {
        Ok(MetaReply::Path(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(path(&fs, f).as_deref(), Some(&b"/d/f"[..]));
    assert_eq!(path(&fs, root).as_deref(), Some(&b"/"[..]));
    fs.rename(d, "f", root, "g", plait_proto::meta::RenameMode::Replace)
        .unwrap();
    assert_eq!(path(&fs, f).as_deref(), Some(&b"/g"[..]));
    fs.unlink(root, "g").unwrap();
    assert_eq!(path(&fs, f), None);
}

fn ask(fs: &mut Fs, ino: u64, session: u64, s: LockSpec, delegate: bool) -> MetaReply {
    fs.exec(MetaOp::SetLock {
        ino,
        session,
        spec: s,
        wait: None,
        delegate,
    })
    .unwrap()
}

fn holder(fs: &Fs, ino: u64) -> Option<u64> {
    match fs.q(MetaQuery::Delegation { ino }) {
        Ok(MetaReply::Delegated(h)) => h,
        other => panic!("{other:?}"),
    }
}

fn recalls(fs: &Fs, session: u64) -> Vec<u64> {
    match fs.q(MetaQuery::Recalls { session }) {
        Ok(MetaReply::Recalls(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_delegation_is_recalled_by_another_session_and_its_locks_come_back() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let (a, b) = (open(&mut fs, 60_000), open(&mut fs, 60_000));
    let w = spec(1, LockType::Write, 0, 99);
    assert_eq!(ask(&mut fs, f, a, w, true), MetaReply::LockDelegated);
    assert_eq!(holder(&fs, f), Some(a));
    assert!(recalls(&fs, a).is_empty());

    // b asks: the delegation is recalled, b is told to come back; F_GETLK too.
    assert_eq!(ask(&mut fs, f, b, w, true), MetaReply::LockRecalling);
    assert_eq!(
        fs.q(MetaQuery::TestLock {
            ino: f,
            session: b,
            spec: w
        }),
        Ok(MetaReply::LockRecalling)
    );
    assert_eq!(recalls(&fs, a), vec![f]);
    assert_eq!(holder(&fs, f), Some(a));

    // a gives it back with the lock its owner took locally: it is a normal lock now.
    fs.exec(MetaOp::ReturnDelegation {
        ino: f,
        session: a,
        holders: vec![w],
    })
    .unwrap();
    fs.check();
    assert_eq!(holder(&fs, f), None);
    assert!(recalls(&fs, a).is_empty());
    assert_eq!(set(&mut fs, f, b, w, None), SetOutcome::WouldBlock);
    // Giving it back twice changes nothing.
    fs.exec(MetaOp::ReturnDelegation {
        ino: f,
        session: a,
        holders: vec![],
    })
    .unwrap();
    assert_eq!(set(&mut fs, f, b, w, None), SetOutcome::WouldBlock);

    // The file cools down: with its table empty again it is still not delegated...
    fs.exec(MetaOp::Unlock {
        ino: f,
        session: a,
        kind: LockKind::Posix,
        owner: 1,
        range: LockRange::WHOLE,
    })
    .unwrap();
    assert_eq!(
        ask(&mut fs, f, b, w, true),
        MetaReply::LockSet(SetOutcome::Granted)
    );
    fs.exec(MetaOp::Unlock {
        ino: f,
        session: b,
        kind: LockKind::Posix,
        owner: 1,
        range: LockRange::WHOLE,
    })
    .unwrap();
    // ... until the cool-down is over (the test clock ticks a second per op).
    for _ in 0..10 {
        fs.exec(MetaOp::RenewSession { session: b }).unwrap();
    }
    assert_eq!(ask(&mut fs, f, b, w, true), MetaReply::LockDelegated);
    fs.check();
}

#[test]
fn a_delegation_is_not_given_while_the_table_has_locks_and_goes_with_its_session() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let a = open(&mut fs, 1_000);
    let b = open(&mut fs, 60_000);
    let w = spec(1, LockType::Write, 0, 99);
    let r = spec(2, LockType::Read, 200, 299);
    assert_eq!(
        ask(&mut fs, f, b, r, false),
        MetaReply::LockSet(SetOutcome::Granted)
    );
    assert_eq!(
        ask(&mut fs, f, a, w, true),
        MetaReply::LockSet(SetOutcome::Granted),
        "b holds a lock: no delegation"
    );
    let g = fs.mkfile(root, "g");
    assert_eq!(ask(&mut fs, g, a, w, true), MetaReply::LockDelegated);
    assert_eq!(ask(&mut fs, g, b, w, false), MetaReply::LockRecalling);
    // a's lease runs out before it gives g back: the delegation goes with the session.
    fs.exec(MetaOp::ExpireSessions).unwrap();
    fs.check();
    assert_eq!(holder(&fs, g), None);
    assert!(recalls(&fs, a).is_empty());
    assert_eq!(
        ask(&mut fs, g, b, w, false),
        MetaReply::LockSet(SetOutcome::Granted)
    );
    // A return from the dead session changes nothing.
    fs.exec(MetaOp::ReturnDelegation {
        ino: g,
        session: a,
        holders: vec![w],
    })
    .unwrap();
    assert_eq!(
        fs.q(MetaQuery::TestLock {
            ino: g,
            session: a,
            spec: w
        })
        .map(|r| matches!(r, MetaReply::LockConflict(Some(c)) if c.owner.session == b)),
        Ok(true)
    );
}

#[test]
fn returned_locks_that_conflict_are_refused_whole() {
    let (mut fs, root) = Fs::with_volume();
    let f = fs.mkfile(root, "f");
    let a = open(&mut fs, 60_000);
    let w = spec(1, LockType::Write, 0, 99);
    assert_eq!(ask(&mut fs, f, a, w, true), MetaReply::LockDelegated);
    let clash = spec(2, LockType::Write, 50, 60);
    assert_eq!(
        code(fs.exec(MetaOp::ReturnDelegation {
            ino: f,
            session: a,
            holders: vec![w, clash],
        })),
        ErrorCode::InvalidArgument
    );
    assert_eq!(holder(&fs, f), Some(a));
}
