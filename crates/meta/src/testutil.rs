//! Test harness: a filesystem over [`MemKv`] driven through the public `apply`/`query`,
//! and a checker of every invariant the state must keep.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use plait_proto::meta::{NewKind, RenameMode, SetAttr};
use plait_proto::{
    Attr, ChunkId, ErrorCode, Extent, FileKind, Ino, MetaOp, MetaQuery, MetaReply, RpcError,
    Timestamp,
};

use crate::keys;
use crate::records::{DentryRec, ExtentRec, InodeRec, VolumeRec, decode};
use crate::{Command, KvEntry, KvRead, MemKv, Mutation, StoreError};

/// A chunk id made of one repeated byte.
pub(crate) fn chunk(n: u8) -> ChunkId {
    ChunkId([n; 32])
}

/// An extent of `len` bytes at `file_offset` from the start of chunk `n`.
pub(crate) fn ext(file_offset: u64, len: u64, n: u8) -> Extent {
    ext_at(file_offset, len, n, 0)
}

/// An extent of `len` bytes at `file_offset` from `chunk_offset` in chunk `n`.
pub(crate) fn ext_at(file_offset: u64, len: u64, n: u8, chunk_offset: u64) -> Extent {
    Extent {
        file_offset,
        len,
        chunk: chunk(n),
        chunk_offset,
    }
}

/// The error code of a refused call; panics on success.
pub(crate) fn code(r: Result<MetaReply, RpcError>) -> ErrorCode {
    match r {
        Err(e) => e.code,
        Ok(reply) => panic!("expected an error, got {reply:?}"),
    }
}

/// A timestamp `sec` seconds after the epoch.
pub(crate) fn ts(sec: i64) -> Timestamp {
    Timestamp { sec, nsec: 0 }
}

/// A filesystem state and a clock that ticks one second per op.
#[derive(Clone, Default)]
pub(crate) struct Fs {
    pub kv: MemKv,
    pub clock: i64,
    /// The mutations of the last successful op.
    pub last: Vec<Mutation>,
}

impl Fs {
    /// An empty state with one volume `v`; returns it and the root inode.
    pub fn with_volume() -> (Self, Ino) {
        let mut fs = Fs::default();
        let root = fs.volume("v");
        (fs, root)
    }

    /// The time the next op will carry.
    pub fn next_now(&self) -> Timestamp {
        ts(self.clock + 1)
    }

    /// Applies `op` at the next tick; a refused op must write nothing.
    pub fn exec(&mut self, op: MetaOp) -> Result<MetaReply, RpcError> {
        self.clock += 1;
        let cmd = Command {
            now: ts(self.clock),
            op,
        };
        let (muts, reply) = crate::apply(&self.kv, &cmd).expect("store error");
        if reply.is_err() {
            assert!(muts.is_empty(), "refused op wrote {muts:?}");
        } else {
            self.kv.apply_mutations(&muts);
            self.last = muts;
        }
        reply
    }

    /// Answers a query.
    pub fn q(&self, q: MetaQuery) -> Result<MetaReply, RpcError> {
        crate::query(&self.kv, &q).expect("store error")
    }

    pub fn volume(&mut self, name: &str) -> Ino {
        match self.exec(MetaOp::CreateVolume {
            name: name.into(),
            replicas: 3,
            write_quorum: 2,
        }) {
            Ok(MetaReply::Volume(v)) => v.root,
            other => panic!("create volume: {other:?}"),
        }
    }

    pub fn create(
        &mut self,
        parent: Ino,
        name: &str,
        kind: NewKind,
    ) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Create {
            parent,
            name: name.as_bytes().to_vec(),
            kind,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
        })
    }

    fn created(&mut self, parent: Ino, name: &str, kind: NewKind) -> Ino {
        match self.create(parent, name, kind) {
            Ok(MetaReply::Attr(a)) => a.ino,
            other => panic!("create {name}: {other:?}"),
        }
    }

    pub fn mkdir(&mut self, parent: Ino, name: &str) -> Ino {
        self.created(parent, name, NewKind::Dir)
    }

    pub fn mkfile(&mut self, parent: Ino, name: &str) -> Ino {
        self.created(parent, name, NewKind::File)
    }

    pub fn unlink(&mut self, parent: Ino, name: &str) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Unlink {
            parent,
            name: name.as_bytes().to_vec(),
        })
    }

    pub fn rmdir(&mut self, parent: Ino, name: &str) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Rmdir {
            parent,
            name: name.as_bytes().to_vec(),
        })
    }

    pub fn link(
        &mut self,
        ino: Ino,
        new_parent: Ino,
        new_name: &str,
    ) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Link {
            ino,
            new_parent,
            new_name: new_name.as_bytes().to_vec(),
        })
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Rename {
            parent,
            name: name.as_bytes().to_vec(),
            new_parent,
            new_name: new_name.as_bytes().to_vec(),
            mode,
        })
    }

    pub fn write(&mut self, ino: Ino, extents: &[Extent]) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Write {
            ino,
            extents: extents.to_vec(),
            under_replicated: Vec::new(),
            session: None,
            inline: Vec::new(),
            mount_session: None,
        })
    }

    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::SetAttr {
            ino,
            set: SetAttr {
                size: Some(size),
                ..Default::default()
            },
            session: None,
        })
    }

    pub fn reap(&mut self, ino: Ino) -> Result<MetaReply, RpcError> {
        self.exec(MetaOp::Reap { ino })
    }

    pub fn attr(&self, ino: Ino) -> Attr {
        match self.q(MetaQuery::GetAttr { ino }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("getattr {ino}: {other:?}"),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Ino> {
        match self.q(MetaQuery::Lookup {
            parent,
            name: name.as_bytes().to_vec(),
            session: None,
        }) {
            Ok(MetaReply::Attr(a)) => Some(a.ino),
            Err(e) if e.code == ErrorCode::NotFound => None,
            other => panic!("lookup {name}: {other:?}"),
        }
    }

    pub fn exists(&self, ino: Ino) -> bool {
        self.kv.get(&keys::inode(ino)).unwrap().is_some()
    }

    /// All extents of `ino` as stored.
    pub fn extents(&self, ino: Ino) -> Vec<Extent> {
        let state = State::load(&self.kv);
        state.extents.get(&ino).cloned().unwrap_or_default()
    }

    pub fn refcount(&self, n: u8) -> u64 {
        crate::read::refcount(&self.kv, &chunk(n)).unwrap()
    }

    pub fn is_garbage(&self, n: u8) -> bool {
        self.kv.get(&keys::garbage(&chunk(n))).unwrap().is_some()
    }

    pub fn is_orphan(&self, ino: Ino) -> bool {
        self.kv.get(&keys::orphan(ino)).unwrap().is_some()
    }

    /// Changes an inode record directly, bypassing the ops (to craft edge cases).
    pub fn edit_inode(&mut self, ino: Ino, f: impl FnOnce(&mut InodeRec)) {
        let key = keys::inode(ino);
        let bytes = self.kv.get(&key).unwrap().expect("inode to edit");
        let mut rec: InodeRec = decode(&key, &bytes).unwrap();
        f(&mut rec);
        let bytes = crate::records::encode(&rec).unwrap();
        self.kv.apply_mutations(&[Mutation::Put(key, bytes)]);
    }

    pub fn check(&self) {
        check_invariants(&self.kv);
    }
}

/// A read view that counts what it is asked for: entries returned by `scan` and
/// `seek_prev`, and `seek_prev` calls.
pub(crate) struct Counting<'a> {
    inner: &'a MemKv,
    /// Entries returned by `scan` and `seek_prev`.
    pub entries: Cell<usize>,
    /// Calls to `seek_prev`.
    pub seek_prevs: Cell<usize>,
}

impl<'a> Counting<'a> {
    pub fn new(inner: &'a MemKv) -> Self {
        Self {
            inner,
            entries: Cell::new(0),
            seek_prevs: Cell::new(0),
        }
    }
}

impl KvRead for Counting<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let got = self.inner.scan(prefix, after, limit)?;
        self.entries.set(self.entries.get() + got.len());
        Ok(got)
    }

    fn seek_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        self.seek_prevs.set(self.seek_prevs.get() + 1);
        let got = self.inner.seek_prev(prefix, key)?;
        self.entries
            .set(self.entries.get() + usize::from(got.is_some()));
        Ok(got)
    }
}

/// The whole state decoded, for invariant checks.
#[derive(Default)]
pub(crate) struct State {
    pub inodes: BTreeMap<Ino, InodeRec>,
    pub dentries: Vec<(Ino, Vec<u8>, DentryRec)>,
    pub extents: BTreeMap<Ino, Vec<Extent>>,
    pub xattrs: BTreeSet<Ino>,
    pub refs: BTreeMap<ChunkId, u64>,
    pub garbage: BTreeSet<ChunkId>,
    /// Chunks kept inline (their reference counts are in `refs` too).
    pub inline: BTreeSet<ChunkId>,
    pub volumes: BTreeMap<String, VolumeRec>,
    pub orphans: BTreeSet<Ino>,
    pub counters: BTreeMap<Vec<u8>, u64>,
    pub locks: BTreeMap<Ino, plait_locks::FileLocks>,
    pub sessions: BTreeSet<u64>,
    /// (session, ino) pairs of the session-file index.
    pub session_files: BTreeSet<(u64, Ino)>,
    pub delegations: BTreeMap<Ino, crate::apply::delegation::DelegationRec>,
    /// (session, ino) pairs of the recall index.
    pub recalls: BTreeSet<(u64, Ino)>,
    pub dir_delegations: BTreeMap<Ino, crate::apply::dir_delegation::DirDelegationRec>,
    /// (session, dir) pairs of the session-directory index.
    pub session_dirs: BTreeSet<(u64, Ino)>,
}

fn ino_of(key: &[u8]) -> Ino {
    u64::from_be_bytes(key[1..9].try_into().unwrap())
}

impl State {
    pub fn load(kv: &MemKv) -> Self {
        let mut s = State::default();
        for (k, v) in kv.iter() {
            match k[0] {
                keys::INODE => {
                    s.inodes.insert(ino_of(k), decode(k, v).unwrap());
                }
                keys::DENTRY => {
                    s.dentries
                        .push((ino_of(k), k[9..].to_vec(), decode(k, v).unwrap()))
                }
                keys::EXTENT => {
                    let e: ExtentRec = decode(k, v).unwrap();
                    let end = keys::extent_end(k).unwrap();
                    assert!(
                        e.len > 0 && e.len <= end,
                        "extent of {} bytes keyed at end {end}",
                        e.len
                    );
                    s.extents.entry(ino_of(k)).or_default().push(Extent {
                        file_offset: end - e.len,
                        len: e.len,
                        chunk: e.chunk,
                        chunk_offset: e.chunk_offset,
                    });
                }
                keys::XATTR => {
                    s.xattrs.insert(ino_of(k));
                }
                keys::CHUNK_REF => {
                    let id = keys::chunk_of(k).unwrap();
                    assert!(
                        s.refs.insert(id, decode(k, v).unwrap()).is_none(),
                        "chunk {id:?} both inline and on data nodes"
                    );
                }
                keys::INLINE_CHUNK => {
                    let rec: crate::records::InlineChunkRec = decode(k, v).unwrap();
                    let id = keys::chunk_of(k).unwrap();
                    assert!(rec.refs > 0, "inline chunk {id:?} kept with no references");
                    assert!(
                        !rec.body.is_empty()
                            && rec.body.len() <= plait_proto::INLINE_CHUNK_MAX_BYTES,
                        "inline chunk {id:?} of {} bytes",
                        rec.body.len()
                    );
                    assert_eq!(
                        ChunkId::of(&rec.body),
                        id,
                        "inline chunk body does not hash to its key"
                    );
                    s.inline.insert(id);
                    assert!(
                        s.refs.insert(id, rec.refs).is_none(),
                        "chunk {id:?} both inline and on data nodes"
                    );
                }
                keys::GARBAGE => {
                    let _: Timestamp = decode(k, v).unwrap();
                    s.garbage.insert(keys::chunk_of(k).unwrap());
                }
                keys::VOLUME => {
                    s.volumes
                        .insert(keys::volume_name(k).unwrap(), decode(k, v).unwrap());
                }
                keys::ORPHAN => {
                    s.orphans.insert(ino_of(k));
                }
                keys::LOCKS => {
                    let locks: plait_locks::FileLocks = decode(k, v).unwrap();
                    locks.check_invariants().unwrap();
                    s.locks.insert(ino_of(k), locks);
                }
                keys::SESSION => {
                    let rec: plait_proto::lock::SessionInfo = decode(k, v).unwrap();
                    s.sessions.insert(rec.id);
                }
                keys::SESSION_FILE => {
                    assert!(v.is_empty());
                    s.session_files
                        .insert((ino_of(k), keys::trailing_u64(k).unwrap()));
                }
                keys::DELEGATION => {
                    s.delegations.insert(ino_of(k), decode(k, v).unwrap());
                }
                keys::RECALL => {
                    assert!(v.is_empty());
                    s.recalls
                        .insert((ino_of(k), keys::trailing_u64(k).unwrap()));
                }
                keys::DIR_DELEGATION => {
                    s.dir_delegations.insert(ino_of(k), decode(k, v).unwrap());
                }
                keys::SESSION_DIR => {
                    assert!(v.is_empty());
                    s.session_dirs
                        .insert((ino_of(k), keys::trailing_u64(k).unwrap()));
                }
                keys::HEAL => {
                    let _: crate::records::HealRec = decode(k, v).unwrap();
                    keys::heal_of(k).unwrap();
                }
                keys::COUNTER => {
                    s.counters.insert(k[1..].to_vec(), decode(k, v).unwrap());
                }
                keys::MEMBER => {
                    let rec: plait_proto::NodeRecord = decode(k, v).unwrap();
                    assert_eq!(rec.id, keys::trailing_u64(k).unwrap());
                }
                keys::TOKEN => {
                    let _: crate::apply::members::TokenRec = decode(k, v).unwrap();
                }
                other => panic!("unknown key prefix {other}"),
            }
        }
        s
    }
}

/// Panics unless every invariant of the state holds.
pub(crate) fn check_invariants(kv: &MemKv) {
    let s = State::load(kv);
    check_counters(&s);
    check_links(&s);
    check_extents(&s);
    check_locks(&s);
    check_dir_delegations(&s);
    for ino in &s.xattrs {
        assert!(s.inodes.contains_key(ino), "xattrs of missing inode {ino}");
    }
}

fn check_counters(s: &State) {
    let count = s.counters.get(keys::INODE_COUNT).copied().unwrap_or(0);
    assert_eq!(count, s.inodes.len() as u64, "inode count");
    let next = s.counters.get(keys::NEXT_INO).copied().unwrap_or(1);
    if let Some(max) = s.inodes.keys().max() {
        assert!(next > *max, "next ino {next} <= existing {max}");
    }
}

fn check_links(s: &State) {
    let mut names: BTreeMap<Ino, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
    for (parent, name, d) in &s.dentries {
        let p = s.inodes.get(parent).expect("entry in missing dir");
        assert_eq!(p.kind, FileKind::Dir, "entry in non-directory {parent}");
        let child = s.inodes.get(&d.ino).expect("entry names missing inode");
        assert_eq!(child.kind, d.kind, "entry kind of {name:?}");
        *names.entry(d.ino).or_default() += 1;
        if d.is_dir() {
            *subdirs.entry(*parent).or_default() += 1;
            assert_eq!(child.parent, *parent, "parent pointer of dir {}", d.ino);
        }
    }
    let roots: BTreeSet<Ino> = s.volumes.values().map(|v| v.root).collect();
    for (ino, rec) in &s.inodes {
        let n = names.get(ino).copied().unwrap_or(0);
        if rec.is_dir() {
            let expected = 2 + subdirs.get(ino).copied().unwrap_or(0);
            assert_eq!(rec.nlink, expected, "nlink of dir {ino}");
            assert_eq!(rec.volume_root, roots.contains(ino), "root flag of {ino}");
            assert_eq!(n, u32::from(!rec.volume_root), "names of dir {ino}");
            assert!(!s.orphans.contains(ino), "orphan dir {ino}");
        } else {
            assert_eq!(rec.nlink, n, "nlink of {ino}");
            if rec.parent != crate::records::NO_PARENT {
                assert!(
                    s.dentries
                        .iter()
                        .any(|(p, _, d)| *p == rec.parent && d.ino == *ino),
                    "parent {} of {ino} names it nowhere",
                    rec.parent
                );
            }
            assert_eq!(s.orphans.contains(ino), n == 0, "orphan marker of {ino}");
        }
    }
    for ino in &s.orphans {
        assert!(
            s.inodes.contains_key(ino),
            "orphan marker of missing inode {ino}"
        );
    }
}

fn check_extents(s: &State) {
    let mut counted: BTreeMap<ChunkId, u64> = BTreeMap::new();
    for (ino, list) in &s.extents {
        let rec = s.inodes.get(ino).expect("extents of missing inode");
        assert_eq!(rec.kind, FileKind::File, "extents of non-file {ino}");
        let mut prev_end = 0;
        let mut total = 0;
        for e in list {
            assert!(e.len > 0, "empty extent of {ino}");
            assert!(
                e.file_offset >= prev_end,
                "overlapping extents of {ino}: {list:?}"
            );
            assert!(
                e.end() <= rec.size,
                "extent past size {} of {ino}: {e:?}",
                rec.size
            );
            assert!(e.chunk_offset + e.len <= plait_proto::CHUNK_MAX_BYTES as u64);
            prev_end = e.end();
            total += e.len;
            *counted.entry(e.chunk).or_default() += 1;
        }
        assert_eq!(rec.allocated_bytes, total, "allocated bytes of {ino}");
    }
    for (ino, rec) in &s.inodes {
        if !s.extents.contains_key(ino) {
            assert_eq!(
                rec.allocated_bytes, 0,
                "allocated bytes of {ino} without extents"
            );
        }
    }
    assert_eq!(s.refs, counted, "reference counts");
    for c in &s.garbage {
        assert!(
            !s.refs.contains_key(c),
            "chunk {c:?} both referenced and garbage"
        );
    }
}

/// Every lock table is non-empty, names only open sessions on existing inodes, and the
/// session-file index lists exactly the (session, file) pairs the tables name.
fn check_locks(s: &State) {
    let mut named = BTreeSet::new();
    for (ino, locks) in &s.locks {
        assert!(!locks.is_empty(), "empty lock table stored for inode {ino}");
        assert!(s.inodes.contains_key(ino), "locks on missing inode {ino}");
        for session in locks
            .holders()
            .map(|h| h.owner.session)
            .chain(locks.waiters().map(|w| w.owner.session))
        {
            assert!(
                s.sessions.contains(&session),
                "locks of closed session {session}"
            );
            named.insert((session, *ino));
        }
    }
    let mut recalled = BTreeSet::new();
    for (ino, rec) in &s.delegations {
        use crate::apply::delegation::DelegationRec;
        if let DelegationRec::Held {
            session,
            recalled: r,
            ..
        } = rec
        {
            assert!(
                s.inodes.contains_key(ino),
                "delegation of missing inode {ino}"
            );
            assert!(
                s.sessions.contains(session),
                "delegation to closed session {session}"
            );
            assert!(
                !s.locks.contains_key(ino),
                "delegated inode {ino} has a lock table"
            );
            named.insert((*session, *ino));
            if r.is_some() {
                recalled.insert((*session, *ino));
            }
        }
    }
    assert_eq!(named, s.session_files, "session-file index out of step");
    assert_eq!(recalled, s.recalls, "recall index out of step");
}

/// Every held directory delegation is of an existing directory, held by an open session,
/// listed in that session's index (and the index lists nothing else); its inode ranges
/// lie below the inode counter.
fn check_dir_delegations(s: &State) {
    use crate::apply::dir_delegation::DirDelegationRec;
    let next_ino = s.counters.get(keys::NEXT_INO).copied().unwrap_or(0);
    let mut held = BTreeSet::new();
    for (dir, rec) in &s.dir_delegations {
        if let DirDelegationRec::Held {
            session, ranges, ..
        } = rec
        {
            assert!(
                s.inodes.get(dir).is_some_and(|r| r.is_dir()),
                "delegation of {dir}, not a directory"
            );
            assert!(
                s.sessions.contains(session),
                "directory {dir} delegated to closed session {session}"
            );
            for (start, end) in ranges {
                assert!(
                    start < end && *end <= next_ino,
                    "range {start}..{end} of {dir} past the counter {next_ino}"
                );
            }
            held.insert((*session, *dir));
        }
    }
    assert_eq!(held, s.session_dirs, "session-directory index out of step");
}
