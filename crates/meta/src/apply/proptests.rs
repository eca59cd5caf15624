//! Property tests: random op sequences must keep every invariant after every step, agree
//! with a byte-level model of file contents, and be deterministic.

use std::collections::{BTreeMap, BTreeSet};

use plait_proto::meta::{NewKind, RenameMode, SetAttr, XattrMode};
use plait_proto::{ChunkId, Extent, Ino, MetaOp, MetaQuery, MetaReply};
use proptest::prelude::*;

use crate::testutil::{Fs, check_invariants, chunk};
use crate::{KvRead, keys};

// ---- data ops against a byte model --------------------------------------------------

/// Files in the data test.
const FILES: usize = 3;
/// Names each file may have (`f{file}_{k}`).
const NAMES_PER_FILE: usize = 2;

#[derive(Debug, Clone)]
enum DataOp {
    /// Extents built from (gap before, len, chunk, chunk offset), laid end to end.
    Write(usize, Vec<(u64, u64, u8, u64)>),
    Truncate(usize, u64),
    Unlink(usize, usize),
    Link(usize, usize),
    Reap(usize),
    /// An `Extents` query over (offset, len); changes nothing.
    Query(usize, u64, u64),
}

fn data_op() -> impl Strategy<Value = DataOp> {
    let file = 0..FILES;
    let name = 0..NAMES_PER_FILE;
    let piece = (0u64..24, 1u64..24, 0u8..6, 0u64..16);
    prop_oneof![
        5 => (file.clone(), proptest::collection::vec(piece, 1..5)).prop_map(|(f, p)| DataOp::Write(f, p)),
        2 => (file.clone(), 0u64..160).prop_map(|(f, s)| DataOp::Truncate(f, s)),
        1 => (file.clone(), name.clone()).prop_map(|(f, n)| DataOp::Unlink(f, n)),
        1 => (file.clone(), name).prop_map(|(f, n)| DataOp::Link(f, n)),
        1 => file.clone().prop_map(DataOp::Reap),
        2 => (file, 0u64..200, prop_oneof![3 => 0u64..80, 1 => Just(u64::MAX)])
            .prop_map(|(f, o, l)| DataOp::Query(f, o, l)),
    ]
}

/// Chunk numbers from this one on are inline chunks (their bytes travel with the write).
const FIRST_INLINE: u8 = 3;

/// The bytes of inline chunk `c` (long enough for every piece: offset < 16, len < 24).
fn inline_body(c: u8) -> Vec<u8> {
    vec![c; 40]
}

/// The id of chunk number `c` in the data test.
fn data_chunk(c: u8) -> ChunkId {
    if c >= FIRST_INLINE {
        ChunkId::of(&inline_body(c))
    } else {
        chunk(c)
    }
}

/// The inline bodies a write of `pieces` carries (each inline chunk once).
fn inline_of(pieces: &[(u64, u64, u8, u64)]) -> Vec<Vec<u8>> {
    let cs: BTreeSet<u8> = pieces
        .iter()
        .map(|p| p.2)
        .filter(|c| *c >= FIRST_INLINE)
        .collect();
    cs.into_iter().map(inline_body).collect()
}

fn extents_of(pieces: &[(u64, u64, u8, u64)]) -> Vec<Extent> {
    let mut at = 0;
    pieces
        .iter()
        .map(|&(gap, len, c, chunk_offset)| {
            let e = Extent {
                file_offset: at + gap,
                len,
                chunk: data_chunk(c),
                chunk_offset,
            };
            at = e.end();
            e
        })
        .collect()
}

/// What each byte of a file maps to: (chunk, offset in chunk), or a hole.
type Bytes = Vec<Option<(ChunkId, u64)>>;

fn model_write(bytes: &mut Bytes, extents: &[Extent]) {
    for e in extents {
        let end = e.end() as usize;
        if bytes.len() < end {
            bytes.resize(end, None);
        }
        for i in 0..e.len {
            bytes[(e.file_offset + i) as usize] = Some((e.chunk, e.chunk_offset + i));
        }
    }
}

fn stored_bytes(fs: &Fs, ino: Ino) -> Bytes {
    let size = fs.attr(ino).size as usize;
    let mut bytes = vec![None; size];
    for e in fs.extents(ino) {
        for i in 0..e.len {
            bytes[(e.file_offset + i) as usize] = Some((e.chunk, e.chunk_offset + i));
        }
    }
    bytes
}

/// Chunks with a `G` key.
fn garbage_set(fs: &Fs) -> BTreeSet<ChunkId> {
    crate::garbage(&fs.kv, None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

struct DataRun {
    fs: Fs,
    root: Ino,
    inos: Vec<Ino>,
    model: BTreeMap<Ino, Bytes>,
    ever_referenced: BTreeSet<ChunkId>,
}

impl DataRun {
    fn new() -> Self {
        let (mut fs, root) = Fs::with_volume();
        let mut inos = Vec::new();
        let mut model = BTreeMap::new();
        for i in 0..FILES {
            let ino = fs.mkfile(root, &format!("f{i}_0"));
            inos.push(ino);
            model.insert(ino, Vec::new());
        }
        Self {
            fs,
            root,
            inos,
            model,
            ever_referenced: BTreeSet::new(),
        }
    }

    fn step(&mut self, op: &DataOp) {
        match op {
            DataOp::Write(f, pieces) => {
                let ino = self.inos[*f];
                let extents = extents_of(pieces);
                let write = MetaOp::Write {
                    ino,
                    extents: extents.clone(),
                    under_replicated: Vec::new(),
                    session: None,
                    mount_session: None,
                    inline: inline_of(pieces),
                };
                if self.fs.exec(write).is_ok() {
                    model_write(self.model.get_mut(&ino).unwrap(), &extents);
                }
            }
            DataOp::Truncate(f, size) => {
                let ino = self.inos[*f];
                if self.fs.truncate(ino, *size).is_ok() {
                    self.model
                        .get_mut(&ino)
                        .unwrap()
                        .resize(*size as usize, None);
                }
            }
            DataOp::Unlink(f, n) => {
                let _ = self.fs.unlink(self.root, &format!("f{f}_{n}"));
            }
            DataOp::Link(f, n) => {
                let _ = self.fs.link(self.inos[*f], self.root, &format!("f{f}_{n}"));
            }
            DataOp::Reap(f) => {
                let ino = self.inos[*f];
                if self.fs.reap(ino).is_ok() && !self.fs.exists(ino) {
                    self.model.remove(&ino);
                }
            }
            DataOp::Query(f, offset, len) => {
                let ino = self.inos[*f];
                let reply = self.fs.q(MetaQuery::Extents {
                    ino,
                    offset: *offset,
                    len: *len,
                });
                if !self.model.contains_key(&ino) {
                    assert!(reply.is_err(), "extents of reaped {ino}: {reply:?}");
                    return;
                }
                let Ok(MetaReply::Extents {
                    extents, inline, ..
                }) = reply
                else {
                    panic!("extents of {ino}: {reply:?}")
                };
                // Every inline chunk the reply's extents use comes with it, once, and
                // nothing else does.
                let sent: Vec<ChunkId> = inline.iter().map(|b| ChunkId::of(b)).collect();
                let sent_set: BTreeSet<ChunkId> = sent.iter().copied().collect();
                assert_eq!(sent.len(), sent_set.len(), "an inline body sent twice");
                let used: BTreeSet<ChunkId> = extents
                    .iter()
                    .map(|e| e.chunk)
                    .filter(|c| (FIRST_INLINE..6).any(|n| data_chunk(n) == *c))
                    .collect();
                assert_eq!(sent_set, used, "inline bodies of extents of {ino}");
                let end = offset.saturating_add(*len);
                let want: Vec<_> = self
                    .fs
                    .extents(ino)
                    .into_iter()
                    .filter(|e| *len > 0 && e.file_offset < end && e.end() > *offset)
                    .collect();
                assert_eq!(extents, want, "extents of {ino} over [{offset}, +{len})");
            }
        }
    }

    fn check(&mut self) {
        check_invariants(&self.fs.kv);
        for (ino, bytes) in &self.model {
            assert_eq!(&stored_bytes(&self.fs, *ino), bytes, "contents of {ino}");
        }
        for (c, _) in crate::referenced_chunks(&self.fs.kv, None, usize::MAX).unwrap() {
            self.ever_referenced.insert(c);
        }
        let garbage = garbage_set(&self.fs);
        for c in &self.ever_referenced {
            let referenced = self.fs.kv.get(&keys::chunk_ref(c)).unwrap().is_some();
            assert!(
                referenced || garbage.contains(c),
                "unreferenced {c:?} not in garbage"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Writes, truncates, unlinks, links and reaps keep extents disjoint and below the
    /// size, reference counts exact, released chunks in the garbage set, and file
    /// contents equal to a byte-level model.
    #[test]
    fn data_ops_keep_invariants(ops in proptest::collection::vec(data_op(), 1..40)) {
        let mut run = DataRun::new();
        for op in &ops {
            run.step(op);
            run.check();
        }
    }
}

// ---- namespace ops: no panic, invariants hold -------------------------------------------

/// Inode numbers the fuzzer aims at (1 and 2 are the roots of two volumes).
const INOS: u64 = 14;
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn ino() -> impl Strategy<Value = Ino> {
    1..=INOS
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(&NAMES[..]).prop_map(|n| n.as_bytes().to_vec())
}

fn mode() -> impl Strategy<Value = RenameMode> {
    prop_oneof![
        Just(RenameMode::Replace),
        Just(RenameMode::NoReplace),
        Just(RenameMode::Exchange)
    ]
}

fn kind() -> impl Strategy<Value = NewKind> {
    prop_oneof![
        3 => Just(NewKind::File),
        3 => Just(NewKind::Dir),
        1 => Just(NewKind::Symlink { target: b"t".to_vec() }),
        1 => Just(NewKind::Fifo),
    ]
}

fn any_op() -> impl Strategy<Value = MetaOp> {
    prop_oneof![
        4 => (ino(), name(), kind()).prop_map(|(parent, name, kind)| MetaOp::Create {
            parent, name, kind, perm: 0o755, uid: 1, gid: 1
        }),
        2 => (ino(), name()).prop_map(|(parent, name)| MetaOp::Unlink { parent, name }),
        2 => (ino(), name()).prop_map(|(parent, name)| MetaOp::Rmdir { parent, name }),
        4 => (ino(), name(), ino(), name(), mode()).prop_map(|(parent, name, new_parent, new_name, mode)| {
            MetaOp::Rename { parent, name, new_parent, new_name, mode }
        }),
        2 => (ino(), ino(), name()).prop_map(|(ino, new_parent, new_name)| MetaOp::Link {
            ino, new_parent, new_name
        }),
        2 => (ino(), 0u64..64, 1u64..32, 0u8..4).prop_map(|(ino, off, len, c)| MetaOp::Write {
            ino,
            extents: vec![Extent { file_offset: off, len, chunk: chunk(c), chunk_offset: 0 }],
            under_replicated: vec![plait_proto::MissingCopy { chunk: chunk(c), node: 2, size_bytes: len }],
            session: None,
            mount_session: None,
            inline: Vec::new(),
        }),
        1 => (ino(), 0u64..80).prop_map(|(ino, size)| MetaOp::SetAttr {
            ino, set: SetAttr { size: Some(size), ..SetAttr::default() }, session: None
        }),
        2 => ino().prop_map(|ino| MetaOp::Reap { ino }),
        1 => (ino(), name()).prop_map(|(ino, name)| MetaOp::SetXattr {
            ino, name, value: b"v".to_vec(), mode: XattrMode::Upsert
        }),
        1 => (ino(), name()).prop_map(|(ino, name)| MetaOp::RemoveXattr { ino, name }),
    ]
}

fn two_volumes() -> Fs {
    let mut fs = Fs::default();
    fs.volume("v");
    fs.volume("w");
    fs
}

/// An op whose targets are picked, when it runs, among what exists then: indices wrap
/// around the current directories, entries, inodes and orphans. Most such ops succeed,
/// which raw random inode numbers would not.
#[derive(Debug, Clone)]
enum PickedOp {
    Create(usize, usize, NewKind),
    Unlink(usize, usize),
    Rmdir(usize, usize),
    /// Source dir, source entry, target dir, target name (an existing entry when >= 4).
    Rename(usize, usize, usize, usize, RenameMode),
    Link(usize, usize, usize),
    Write(usize, u64, u64, u8),
    Truncate(usize, u64),
    Reap(usize),
    SetXattr(usize, usize),
    RemoveXattr(usize, usize),
    /// Raw random op, for the error paths.
    Raw(MetaOp),
}

fn picked_op() -> impl Strategy<Value = PickedOp> {
    let i = || 0usize..64;
    prop_oneof![
        5 => (i(), i(), kind()).prop_map(|(d, n, k)| PickedOp::Create(d, n, k)),
        2 => (i(), i()).prop_map(|(d, e)| PickedOp::Unlink(d, e)),
        2 => (i(), i()).prop_map(|(d, e)| PickedOp::Rmdir(d, e)),
        5 => (i(), i(), i(), 0usize..8, mode()).prop_map(|(d, e, nd, nn, m)| PickedOp::Rename(d, e, nd, nn, m)),
        2 => (i(), i(), i()).prop_map(|(x, d, n)| PickedOp::Link(x, d, n)),
        3 => (i(), 0u64..64, 1u64..32, 0u8..4).prop_map(|(x, o, l, c)| PickedOp::Write(x, o, l, c)),
        1 => (i(), 0u64..80).prop_map(|(x, s)| PickedOp::Truncate(x, s)),
        2 => i().prop_map(PickedOp::Reap),
        1 => (i(), i()).prop_map(|(x, n)| PickedOp::SetXattr(x, n)),
        1 => (i(), i()).prop_map(|(x, n)| PickedOp::RemoveXattr(x, n)),
        2 => any_op().prop_map(PickedOp::Raw),
    ]
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}

/// Resolves a picked op against the current state; `None` when there is nothing to pick.
fn resolve(fs: &Fs, op: &PickedOp) -> Option<MetaOp> {
    let s = crate::testutil::State::load(&fs.kv);
    let dirs: Vec<Ino> = s
        .inodes
        .iter()
        .filter(|(_, r)| r.is_dir())
        .map(|(i, _)| *i)
        .collect();
    let inos: Vec<Ino> = s.inodes.keys().copied().collect();
    let files: Vec<Ino> = s
        .inodes
        .iter()
        .filter(|(_, r)| !r.is_dir())
        .map(|(i, _)| *i)
        .collect();
    let orphans: Vec<Ino> = s.orphans.iter().copied().collect();
    let entries = |dir: Ino| -> Vec<Vec<u8>> {
        s.dentries
            .iter()
            .filter(|(p, _, _)| *p == dir)
            .map(|(_, n, _)| n.clone())
            .collect()
    };
    let entry = |dir: Ino, i: usize| {
        let list = entries(dir);
        (!list.is_empty()).then(|| list[i % list.len()].clone())
    };
    let fresh = |i: usize| NAMES[i % NAMES.len()].as_bytes().to_vec();
    Some(match op.clone() {
        PickedOp::Create(d, n, kind) => MetaOp::Create {
            parent: pick(&dirs, d)?,
            name: fresh(n),
            kind,
            perm: 0o2755,
            uid: 1,
            gid: 1,
        },
        PickedOp::Unlink(d, e) => {
            let parent = pick(&dirs, d)?;
            MetaOp::Unlink {
                parent,
                name: entry(parent, e)?,
            }
        }
        PickedOp::Rmdir(d, e) => {
            let parent = pick(&dirs, d)?;
            MetaOp::Rmdir {
                parent,
                name: entry(parent, e)?,
            }
        }
        PickedOp::Rename(d, e, nd, nn, mode) => {
            let parent = pick(&dirs, d)?;
            let new_parent = pick(&dirs, nd)?;
            let new_name = if nn >= 4 {
                entry(new_parent, nn).unwrap_or_else(|| fresh(nn))
            } else {
                fresh(nn)
            };
            MetaOp::Rename {
                parent,
                name: entry(parent, e)?,
                new_parent,
                new_name,
                mode,
            }
        }
        PickedOp::Link(x, d, n) => MetaOp::Link {
            ino: pick(&inos, x)?,
            new_parent: pick(&dirs, d)?,
            new_name: fresh(n),
        },
        PickedOp::Write(x, off, len, c) => MetaOp::Write {
            ino: pick(&files, x).or_else(|| pick(&inos, x))?,
            extents: vec![Extent {
                file_offset: off,
                len,
                chunk: chunk(c),
                chunk_offset: 0,
            }],
            under_replicated: Vec::new(),
            session: None,
            mount_session: None,
            inline: Vec::new(),
        },
        PickedOp::Truncate(x, size) => MetaOp::SetAttr {
            ino: pick(&files, x).or_else(|| pick(&inos, x))?,
            set: SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
            session: None,
        },
        PickedOp::Reap(x) => MetaOp::Reap {
            ino: pick(&orphans, x).or_else(|| pick(&inos, x))?,
        },
        PickedOp::SetXattr(x, n) => MetaOp::SetXattr {
            ino: pick(&inos, x)?,
            name: fresh(n),
            value: b"v".to_vec(),
            mode: XattrMode::Upsert,
        },
        PickedOp::RemoveXattr(x, n) => MetaOp::RemoveXattr {
            ino: pick(&inos, x)?,
            name: fresh(n),
        },
        PickedOp::Raw(op) => op,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any sequence of ops on a consistent state keeps it consistent: no panic, no store
    /// error, every invariant (links, orphans, parents, extents, counts) after each step.
    #[test]
    fn namespace_ops_keep_invariants(ops in proptest::collection::vec(picked_op(), 1..60)) {
        let mut fs = two_volumes();
        for op in &ops {
            if let Some(op) = resolve(&fs, op) {
                let _ = fs.exec(op);
                check_invariants(&fs.kv);
            }
        }
    }

    /// The same commands on two separate states give the same mutations, replies and
    /// final state.
    #[test]
    fn apply_is_deterministic(ops in proptest::collection::vec(picked_op(), 1..40)) {
        let mut a = two_volumes();
        let mut b = two_volumes();
        for op in &ops {
            let Some(op) = resolve(&a, op) else { continue };
            let ra = a.exec(op.clone());
            let rb = b.exec(op);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(&a.last, &b.last);
        }
        prop_assert_eq!(&a.kv, &b.kv);
        let rebuilt: crate::MemKv = a.kv.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(&rebuilt, &a.kv);
    }
}
