//! A seeded simulation of lock delegations: several mounts (sessions) lock, unlock and
//! close on a few files, taking delegations and serving recalls the way the mount does
//! (`crates/client/src/fs/locks.rs`), with the same lock manager for their local
//! tables. After every step no two owners may hold conflicting locks anywhere — in the
//! group's tables or in any mount's delegated table — and a mount may only manage a file
//! the group says it delegated to it.

use std::collections::BTreeMap;

use plait_locks::{FileLocks, HeldLock, LockRequest, Owner, SetOutcome, WaitMode};
use plait_proto::lock::{LockKind, LockRange, LockSpec, LockType};
use plait_proto::{Ino, MetaOp, MetaQuery, MetaReply};
use proptest::prelude::*;

use crate::testutil::{Fs, check_invariants};

const MOUNTS: usize = 3;
const FILES: usize = 2;
const OWNERS: u64 = 3;

#[derive(Debug, Clone)]
enum Step {
    Lock {
        mount: usize,
        file: usize,
        owner: u64,
        write: bool,
        start: u64,
        len: u64,
    },
    Unlock {
        mount: usize,
        file: usize,
        owner: u64,
        start: u64,
        len: u64,
    },
    Close {
        mount: usize,
        file: usize,
        owner: u64,
    },
    /// The mount's recall task runs once.
    ServeRecalls { mount: usize },
    /// The mount's session ends (lease lost); it opens a new one.
    LoseSession { mount: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let m = 0..MOUNTS;
    let f = 0..FILES;
    let o = 1..=OWNERS;
    prop_oneof![
        6 => (m.clone(), f.clone(), o.clone(), any::<bool>(), 0u64..40, 1u64..20)
            .prop_map(|(mount, file, owner, write, start, len)| Step::Lock { mount, file, owner, write, start, len }),
        3 => (m.clone(), f.clone(), o.clone(), 0u64..40, 1u64..30)
            .prop_map(|(mount, file, owner, start, len)| Step::Unlock { mount, file, owner, start, len }),
        2 => (m.clone(), f, o).prop_map(|(mount, file, owner)| Step::Close { mount, file, owner }),
        3 => m.clone().prop_map(|mount| Step::ServeRecalls { mount }),
        1 => m.prop_map(|mount| Step::LoseSession { mount }),
    ]
}

/// One mount: its session and the tables of the files delegated to it.
struct Mount {
    session: u64,
    local: BTreeMap<Ino, FileLocks>,
}

struct Sim {
    fs: Fs,
    files: Vec<Ino>,
    mounts: Vec<Mount>,
}

fn open_session(fs: &mut Fs) -> u64 {
    match fs.exec(MetaOp::OpenSession {
        lease_ms: 600_000,
        client: "sim".into(),
    }) {
        Ok(MetaReply::Session(s)) => s.id,
        other => panic!("{other:?}"),
    }
}

fn range(start: u64, len: u64) -> LockRange {
    LockRange::new(start, start + len - 1).unwrap()
}

impl Sim {
    fn new() -> Self {
        let (mut fs, root) = Fs::with_volume();
        let files = (0..FILES)
            .map(|i| fs.mkfile(root, &format!("f{i}")))
            .collect();
        let mounts = (0..MOUNTS)
            .map(|_| Mount {
                session: open_session(&mut fs),
                local: BTreeMap::new(),
            })
            .collect();
        Sim { fs, files, mounts }
    }

    fn step(&mut self, s: &Step) {
        match *s {
            Step::Lock {
                mount,
                file,
                owner,
                write,
                start,
                len,
            } => {
                let ino = self.files[file];
                let session = self.mounts[mount].session;
                let spec = LockSpec {
                    kind: LockKind::Posix,
                    owner,
                    lock_type: if write {
                        LockType::Write
                    } else {
                        LockType::Read
                    },
                    range: range(start, len),
                    pid: 1,
                };
                if !self.mounts[mount].local.contains_key(&ino) {
                    let reply = self.fs.exec(MetaOp::SetLock {
                        ino,
                        session,
                        spec,
                        wait: None,
                        delegate: true,
                    });
                    match reply {
                        Ok(MetaReply::LockDelegated) => {
                            self.mounts[mount].local.insert(ino, FileLocks::new());
                        }
                        Ok(MetaReply::LockSet(_) | MetaReply::LockRecalling) => return,
                        other => panic!("{other:?}"),
                    }
                }
                let table = self.mounts[mount].local.get_mut(&ino).unwrap();
                let request = LockRequest {
                    kind: LockKind::Posix,
                    owner: Owner::new(session, owner),
                    lock_type: spec.lock_type,
                    range: spec.range,
                    pid: 1,
                };
                let reply = table.set(request, WaitMode::NoWait, 0).unwrap();
                assert_ne!(reply.outcome, SetOutcome::Queued);
            }
            Step::Unlock {
                mount,
                file,
                owner,
                start,
                len,
            } => {
                let ino = self.files[file];
                let session = self.mounts[mount].session;
                match self.mounts[mount].local.get_mut(&ino) {
                    Some(table) => {
                        table
                            .unlock(
                                LockKind::Posix,
                                Owner::new(session, owner),
                                range(start, len),
                                0,
                            )
                            .unwrap();
                    }
                    None => {
                        self.fs
                            .exec(MetaOp::Unlock {
                                ino,
                                session,
                                kind: LockKind::Posix,
                                owner,
                                range: range(start, len),
                            })
                            .unwrap();
                    }
                }
            }
            Step::Close { mount, file, owner } => {
                let ino = self.files[file];
                let session = self.mounts[mount].session;
                match self.mounts[mount].local.get_mut(&ino) {
                    Some(table) => {
                        table.release_owner(LockKind::Posix, Owner::new(session, owner), 0);
                    }
                    None => {
                        self.fs
                            .exec(MetaOp::ReleaseLockOwner {
                                ino,
                                session,
                                kind: LockKind::Posix,
                                owner,
                            })
                            .unwrap();
                    }
                }
            }
            Step::ServeRecalls { mount } => {
                let session = self.mounts[mount].session;
                let recalled = match self.fs.q(MetaQuery::Recalls { session }) {
                    Ok(MetaReply::Recalls(r)) => r,
                    other => panic!("{other:?}"),
                };
                for ino in recalled {
                    let holders = self.mounts[mount]
                        .local
                        .remove(&ino)
                        .map(|t| t.holders().map(spec_of).collect())
                        .unwrap_or_default();
                    self.fs
                        .exec(MetaOp::ReturnDelegation {
                            ino,
                            session,
                            holders,
                        })
                        .unwrap();
                }
            }
            Step::LoseSession { mount } => {
                let session = self.mounts[mount].session;
                self.fs.exec(MetaOp::CloseSession { session }).unwrap();
                self.mounts[mount].local.clear();
                self.mounts[mount].session = open_session(&mut self.fs);
            }
        }
        self.check();
    }

    /// No conflicting holders anywhere; local tables only under held delegations.
    fn check(&self) {
        check_invariants(&self.fs.kv);
        for &ino in &self.files {
            let mut held: Vec<HeldLock> = match self.fs.q(MetaQuery::ListLocks {
                after: ino.checked_sub(1),
                limit: 1,
            }) {
                Ok(MetaReply::Locks(files)) => files
                    .into_iter()
                    .filter(|f| f.ino == ino)
                    .flat_map(|f| f.holders)
                    .collect(),
                other => panic!("{other:?}"),
            };
            let delegated_to = match self.fs.q(MetaQuery::Delegation { ino }) {
                Ok(MetaReply::Delegated(d)) => d,
                other => panic!("{other:?}"),
            };
            for m in &self.mounts {
                if let Some(table) = m.local.get(&ino) {
                    assert_eq!(
                        delegated_to,
                        Some(m.session),
                        "mount of session {} manages inode {ino} without its delegation",
                        m.session
                    );
                    held.extend(table.holders().copied());
                }
            }
            for (i, a) in held.iter().enumerate() {
                for b in &held[i + 1..] {
                    let conflict = a.owner != b.owner
                        && a.range.overlaps(b.range)
                        && (a.lock_type == LockType::Write || b.lock_type == LockType::Write);
                    assert!(
                        !conflict,
                        "conflicting holders on inode {ino}: {a:?} and {b:?}"
                    );
                }
            }
        }
    }
}

fn spec_of(h: &HeldLock) -> LockSpec {
    LockSpec {
        kind: h.kind,
        owner: h.owner.owner,
        lock_type: h.lock_type,
        range: h.range,
        pid: h.pid,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Delegations never let two owners hold conflicting locks, whatever the order of
    /// locks, unlocks, closes, recalls served late and sessions lost.
    #[test]
    fn delegations_never_allow_conflicting_holders(steps in proptest::collection::vec(step(), 1..80)) {
        let mut sim = Sim::new();
        for s in &steps {
            sim.step(s);
        }
    }
}
