//! An in-memory stand-in for a one-node cluster (tests only): just enough of the metadata
//! state machine and chunk store to drive [`crate::fs::PlaitFs`] end to end without a
//! network. Not a model of the real state machine's every rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use plait_net::NetError;
use plait_proto::meta::{NewKind, RenameMode};
use plait_proto::{
    Attr, ChunkId, DirEntry, ErrorCode, Extent, FileKind, FsStats, Ino, MetaOp, MetaQuery,
    MetaReply, Request, Response, RpcError, Timestamp, VolumeInfo,
};

use crate::{ClientConfig, ClusterClient};

/// Root inode of the fake volume "vol".
pub(crate) const ROOT: Ino = 7;

/// The one node's address.
pub(crate) fn node_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}

/// Knobs and state of the fake cluster.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) attrs: HashMap<Ino, Attr>,
    pub(crate) dentries: BTreeMap<(Ino, Vec<u8>), Ino>,
    pub(crate) parents: HashMap<Ino, Ino>,
    pub(crate) extents: HashMap<Ino, BTreeMap<u64, Extent>>,
    pub(crate) chunks: HashMap<ChunkId, Vec<u8>>,
    /// Chunks that came inline with a `Write` (also in `chunks`); `Extents` replies carry
    /// their bodies.
    pub(crate) inline: HashSet<ChunkId>,
    pub(crate) links: HashMap<Ino, Vec<u8>>,
    pub(crate) xattrs: HashMap<Ino, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub(crate) orphans: HashSet<Ino>,
    pub(crate) reaped: Vec<Ino>,
    pub(crate) next_ino: Ino,
    pub(crate) clock: i64,
    /// Most extents per `Extents` reply (paging).
    pub(crate) extents_page_max: usize,
    /// Fail chunk puts with this error while set.
    pub(crate) fail_puts: Option<ErrorCode>,
    /// Every `Write` op received: (ino, number of extents).
    pub(crate) writes: Vec<(Ino, usize)>,
    /// Number of `Extents` queries received.
    pub(crate) extent_queries: usize,
    /// Number of `ChunkGet` requests received.
    pub(crate) chunk_gets: usize,
    /// Number of chunk puts refused because of `fail_puts`.
    pub(crate) chunk_puts_failed: usize,
    /// Sessions opened (`OpenSession`), by id; the next id is one more than the count.
    pub(crate) sessions: usize,
    /// Directories delegated (`DelegateDir`) → the holding session.
    pub(crate) dir_holders: HashMap<Ino, u64>,
    /// Refusals the next `DirBatch`es get, in order (fault injection).
    pub(crate) fail_batches: std::collections::VecDeque<ErrorCode>,
    /// A `DirBatch` creating this name is refused with `InvalidArgument`.
    pub(crate) refuse_batch_name: Option<Vec<u8>>,
    /// Files per `DirBatch` received (refused ones included).
    pub(crate) batches: Vec<usize>,
}

/// A shared fake cluster.
pub(crate) type Fake = Arc<Mutex<FakeState>>;

/// A fake cluster with an empty root directory.
pub(crate) fn new_fake() -> Fake {
    let mut st = FakeState {
        next_ino: 100,
        extents_page_max: 4096,
        ..FakeState::default()
    };
    let root = st.new_attr(ROOT, FileKind::Dir, 0o755);
    st.attrs.insert(ROOT, root);
    st.parents.insert(ROOT, ROOT);
    Arc::new(Mutex::new(st))
}

/// A client whose requests the fake answers.
pub(crate) fn client(fake: &Fake) -> Arc<ClusterClient> {
    let fake = fake.clone();
    let config = ClientConfig {
        nodes: vec![node_addr()],
        rpc_timeout_ms: 1_000,
        op_timeout_ms: 2_000,
    };
    let handler = move |_addr: SocketAddr, req: &Request| -> Result<Response, NetError> {
        let mut st = fake.lock().unwrap_or_else(|p| p.into_inner());
        Ok(st.handle(req))
    };
    match ClusterClient::fake(config, Arc::new(handler)) {
        Ok(c) => Arc::new(c),
        Err(e) => panic!("fake client: {e}"),
    }
}

fn err(code: ErrorCode) -> RpcError {
    RpcError::new(code, format!("{code:?}"))
}

impl FakeState {
    fn now(&mut self) -> Timestamp {
        self.clock += 1;
        Timestamp {
            sec: self.clock,
            nsec: 0,
        }
    }

    fn new_attr(&mut self, ino: Ino, kind: FileKind, perm: u16) -> Attr {
        let now = self.now();
        Attr {
            ino,
            kind,
            perm,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            allocated_bytes: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        }
    }

    /// The committed bytes of a file (for assertions).
    pub(crate) fn file_bytes(&self, ino: Ino) -> Vec<u8> {
        let size = self.attrs.get(&ino).map_or(0, |a| a.size) as usize;
        let mut out = vec![0u8; size];
        for e in self.extents.get(&ino).into_iter().flat_map(|m| m.values()) {
            let chunk = &self.chunks[&e.chunk];
            let from = e.chunk_offset as usize;
            out[e.file_offset as usize..e.end() as usize]
                .copy_from_slice(&chunk[from..from + e.len as usize]);
        }
        out
    }

    fn handle(&mut self, req: &Request) -> Response {
        let result = match req {
            Request::Meta(op) => self.apply(op).map(Response::Meta),
            Request::Query(q) => self.query(q).map(Response::Meta),
            Request::ChunkPut { id, data } => self.put(*id, data),
            Request::Members => Ok(Response::Members(vec![(1, node_addr().to_string())])),
            Request::Nodes => Ok(Response::Nodes(vec![plait_proto::NodeInfo {
                id: 1,
                addr: node_addr().to_string(),
                role: plait_proto::NodeRole::Both,
                zone: None,
                voter: true,
                member: true,
            }])),
            Request::ChunkGet { id } => {
                self.chunk_gets += 1;
                self.chunks
                    .get(id)
                    .map(|d| Response::Chunk(d.clone()))
                    .ok_or_else(|| err(ErrorCode::NotFound))
            }
            _ => Err(err(ErrorCode::Protocol)),
        };
        result.unwrap_or_else(Response::Error)
    }

    fn put(&mut self, id: ChunkId, data: &[u8]) -> Result<Response, RpcError> {
        if let Some(code) = self.fail_puts {
            self.chunk_puts_failed += 1;
            return Err(err(code));
        }
        if ChunkId::of(data) != id {
            return Err(err(ErrorCode::InvalidArgument));
        }
        self.chunks.insert(id, data.to_vec());
        Ok(Response::ChunkStored)
    }

    fn attr(&self, ino: Ino) -> Result<Attr, RpcError> {
        self.attrs
            .get(&ino)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound))
    }

    fn query(&mut self, q: &MetaQuery) -> Result<MetaReply, RpcError> {
        match q {
            MetaQuery::Volume { name } if name == "vol" => Ok(MetaReply::Volume(VolumeInfo {
                name: name.clone(),
                root: ROOT,
                replicas: 1,
                write_quorum: 1,
            })),
            MetaQuery::Volume { .. } => Err(err(ErrorCode::NotFound)),
            MetaQuery::Lookup { parent, name, .. } => {
                let ino = self
                    .dentries
                    .get(&(*parent, name.clone()))
                    .ok_or_else(|| err(ErrorCode::NotFound))?;
                Ok(MetaReply::Attr(self.attr(*ino)?))
            }
            MetaQuery::GetAttr { ino } => Ok(MetaReply::Attr(self.attr(*ino)?)),
            MetaQuery::ReadDir {
                ino, after, limit, ..
            } => self.readdir(*ino, after.as_deref(), *limit),
            MetaQuery::ReadLink { ino } => self
                .links
                .get(ino)
                .map(|t| MetaReply::Link(t.clone()))
                .ok_or_else(|| err(ErrorCode::InvalidArgument)),
            MetaQuery::Extents { ino, offset, len } => {
                self.extent_queries += 1;
                let attr = self.attr(*ino)?;
                let end = offset.saturating_add(*len);
                let extents: Vec<Extent> = self
                    .extents
                    .get(ino)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter(|e| e.file_offset < end && e.end() > *offset)
                    .take(self.extents_page_max)
                    .copied()
                    .collect();
                let mut ids: Vec<ChunkId> = extents
                    .iter()
                    .map(|e| e.chunk)
                    .filter(|c| self.inline.contains(c))
                    .collect();
                ids.sort();
                ids.dedup();
                let inline = ids
                    .iter()
                    .filter_map(|c| self.chunks.get(c).cloned())
                    .collect();
                // A directory naming the file (the group keeps one; any does here).
                let guard_dir = if attr.kind == FileKind::File {
                    self.dentries
                        .iter()
                        .find(|(_, child)| **child == *ino)
                        .map(|((dir, _), _)| *dir)
                } else {
                    None
                };
                Ok(MetaReply::Extents {
                    attr,
                    extents,
                    inline,
                    guard_dir,
                })
            }
            MetaQuery::GetXattr { ino, name } => self
                .xattrs
                .get(ino)
                .and_then(|x| x.get(name))
                .map(|v| MetaReply::Xattr(v.clone()))
                .ok_or_else(|| err(ErrorCode::NoAttr)),
            MetaQuery::ListXattr { ino } => Ok(MetaReply::XattrNames(
                self.xattrs
                    .get(ino)
                    .map(|x| x.keys().cloned().collect())
                    .unwrap_or_default(),
            )),
            MetaQuery::FsStats => Ok(MetaReply::FsStats(FsStats {
                total_bytes: 1 << 30,
                free_bytes: 1 << 29,
                files: self.attrs.len() as u64,
                files_free: 1000,
            })),
            _ => Err(err(ErrorCode::InvalidArgument)),
        }
    }

    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: u32) -> Result<MetaReply, RpcError> {
        let parent = *self
            .parents
            .get(&ino)
            .ok_or_else(|| err(ErrorCode::NotFound))?;
        let limit = (limit as usize).min(1024);
        let entries = self
            .dentries
            .range((ino, Vec::new())..)
            .take_while(|((p, _), _)| *p == ino)
            .filter(|((_, name), _)| after.is_none_or(|a| name.as_slice() > a))
            .take(limit)
            .map(|((_, name), child)| DirEntry {
                name: name.clone(),
                attr: self.attrs[child].clone(),
            })
            .collect();
        Ok(MetaReply::Entries { parent, entries })
    }

    fn apply(&mut self, op: &MetaOp) -> Result<MetaReply, RpcError> {
        match op {
            MetaOp::Create {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
            } => self.create(*parent, name, kind, *perm, *uid, *gid),
            MetaOp::Unlink { parent, name } | MetaOp::Rmdir { parent, name } => {
                self.unlink(*parent, name)
            }
            MetaOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => self.rename(*parent, name, *new_parent, new_name, *mode),
            MetaOp::SetAttr { ino, set, session } => {
                if set.size.is_some()
                    && let Some(dir) = self.guard_refuses(*ino, *session)
                {
                    return Ok(MetaReply::DirRecalling { dir });
                }
                if let Some(size) = set.size {
                    self.truncate(*ino, size);
                }
                let now = self.now();
                let attr = self
                    .attrs
                    .get_mut(ino)
                    .ok_or_else(|| err(ErrorCode::NotFound))?;
                if let Some(size) = set.size {
                    attr.size = size;
                    attr.mtime = now;
                }
                if let Some(perm) = set.perm {
                    attr.perm = perm;
                }
                attr.ctime = now;
                Ok(MetaReply::Attr(attr.clone()))
            }
            MetaOp::Write {
                ino,
                extents,
                inline,
                mount_session,
                ..
            } => match self.guard_refuses(*ino, *mount_session) {
                Some(dir) => Ok(MetaReply::DirRecalling { dir }),
                None => self.write(*ino, extents, inline),
            },
            MetaOp::Reap { ino } => {
                if !self.orphans.remove(ino) {
                    return Err(err(ErrorCode::InvalidArgument));
                }
                self.attrs.remove(ino);
                self.extents.remove(ino);
                self.reaped.push(*ino);
                Ok(MetaReply::Empty)
            }
            MetaOp::SetXattr {
                ino, name, value, ..
            } => {
                self.xattrs
                    .entry(*ino)
                    .or_default()
                    .insert(name.clone(), value.clone());
                Ok(MetaReply::Empty)
            }
            MetaOp::OpenSession { lease_ms, client } => {
                self.sessions += 1;
                let now = self.now();
                Ok(MetaReply::Session(plait_proto::lock::SessionInfo {
                    id: self.sessions as u64,
                    lease_ms: *lease_ms,
                    client: client.clone(),
                    opened: now,
                    expires: now,
                }))
            }
            MetaOp::DelegateDir { dir, session } => {
                if self.dir_holders.get(dir).is_some_and(|h| h != session) {
                    return Ok(MetaReply::DirBusy);
                }
                self.dir_holders.insert(*dir, *session);
                let first_ino = self.next_ino;
                self.next_ino += plait_proto::meta::DIR_INO_RANGE;
                Ok(MetaReply::DirDelegated {
                    first_ino,
                    count: plait_proto::meta::DIR_INO_RANGE,
                })
            }
            MetaOp::ReturnDirDelegation { dir, session } => {
                if self.dir_holders.get(dir) == Some(session) {
                    self.dir_holders.remove(dir);
                }
                Ok(MetaReply::Empty)
            }
            MetaOp::DirBatch { dir, session, ops } => self.dir_batch(*dir, *session, ops),
            MetaOp::RemoveXattr { ino, name } => self
                .xattrs
                .get_mut(ino)
                .and_then(|x| x.remove(name))
                .map(|_| MetaReply::Empty)
                .ok_or_else(|| err(ErrorCode::NoAttr)),
            _ => Err(err(ErrorCode::NotPermitted)),
        }
    }

    /// The directory whose holder is not `session`, if one names file `ino` (the group's
    /// content guard; the fake takes any directory naming the file).
    fn guard_refuses(&self, ino: Ino, session: Option<u64>) -> Option<Ino> {
        let dir = self
            .dentries
            .iter()
            .find(|(_, child)| **child == ino)
            .map(|((dir, _), _)| *dir)?;
        match self.dir_holders.get(&dir) {
            Some(holder) if Some(*holder) != session => Some(dir),
            _ => None,
        }
    }

    fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: &NewKind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<MetaReply, RpcError> {
        if self.dentries.contains_key(&(parent, name.to_vec())) {
            return Err(err(ErrorCode::Exists));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let file_kind = match kind {
            NewKind::File => FileKind::File,
            NewKind::Dir => FileKind::Dir,
            NewKind::Symlink { target } => {
                self.links.insert(ino, target.clone());
                FileKind::Symlink
            }
            _ => FileKind::Fifo,
        };
        let mut attr = self.new_attr(ino, file_kind, perm);
        attr.uid = uid;
        attr.gid = gid;
        if file_kind == FileKind::Dir {
            self.parents.insert(ino, parent);
        }
        self.attrs.insert(ino, attr.clone());
        self.dentries.insert((parent, name.to_vec()), ino);
        Ok(MetaReply::Attr(attr))
    }

    /// `DirBatch`, all or nothing: a fault injected first, then each op in order.
    fn dir_batch(
        &mut self,
        dir: Ino,
        session: u64,
        ops: &[plait_proto::meta::DirBatchOp],
    ) -> Result<MetaReply, RpcError> {
        use plait_proto::meta::DirBatchOp;
        let files = ops
            .iter()
            .filter(|op| matches!(op, DirBatchOp::CreateFile { .. }))
            .count();
        self.batches.push(files);
        if let Some(code) = self.fail_batches.pop_front() {
            return Err(err(code));
        }
        if self.dir_holders.get(&dir) != Some(&session) {
            return Err(err(ErrorCode::Stale));
        }
        let refused = ops.iter().any(|op| {
            matches!(op, DirBatchOp::CreateFile { name, .. }
                if self.refuse_batch_name.as_deref() == Some(name.as_slice()))
        });
        if refused {
            return Err(err(ErrorCode::InvalidArgument));
        }
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            replies.push(match op {
                DirBatchOp::CreateFile {
                    name,
                    ino,
                    perm,
                    uid,
                    gid,
                } => {
                    let mut attr = self.new_attr(*ino, FileKind::File, *perm);
                    attr.uid = *uid;
                    attr.gid = *gid;
                    self.attrs.insert(*ino, attr.clone());
                    self.dentries.insert((dir, name.clone()), *ino);
                    MetaReply::Attr(attr)
                }
                DirBatchOp::Write {
                    ino,
                    extents,
                    inline,
                    ..
                } => self.write(*ino, extents, inline)?,
                DirBatchOp::Unlink { name, ino, reap } => {
                    if self.dentries.get(&(dir, name.clone())) != Some(ino) {
                        MetaReply::Removed { orphan: None }
                    } else {
                        match self.unlink(dir, name)? {
                            MetaReply::Removed { orphan: Some(o) } if *reap => {
                                self.apply(&MetaOp::Reap { ino: o })?;
                                MetaReply::Removed { orphan: None }
                            }
                            other => other,
                        }
                    }
                }
            });
        }
        Ok(MetaReply::Batch(replies))
    }

    fn unlink(&mut self, parent: Ino, name: &[u8]) -> Result<MetaReply, RpcError> {
        let ino = self
            .dentries
            .remove(&(parent, name.to_vec()))
            .ok_or_else(|| err(ErrorCode::NotFound))?;
        Ok(MetaReply::Removed {
            orphan: self.drop_link(ino),
        })
    }

    fn drop_link(&mut self, ino: Ino) -> Option<Ino> {
        let attr = self.attrs.get_mut(&ino)?;
        attr.nlink = attr.nlink.saturating_sub(1);
        if attr.nlink == 0 || attr.kind == FileKind::Dir {
            self.orphans.insert(ino);
            return Some(ino);
        }
        None
    }

    fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<MetaReply, RpcError> {
        let ino = self
            .dentries
            .remove(&(parent, name.to_vec()))
            .ok_or_else(|| err(ErrorCode::NotFound))?;
        let replaced = self.dentries.insert((new_parent, new_name.to_vec()), ino);
        if mode != RenameMode::Replace && replaced.is_some() {
            return Err(err(ErrorCode::InvalidArgument));
        }
        Ok(MetaReply::Removed {
            orphan: replaced.and_then(|old| self.drop_link(old)),
        })
    }

    /// Drops extent bytes at or past `size`.
    fn truncate(&mut self, ino: Ino, size: u64) {
        self.punch(ino, size, u64::MAX);
    }

    /// Removes the mapping of `[from, to)`, splitting extents that straddle its ends.
    fn punch(&mut self, ino: Ino, from: u64, to: u64) {
        let map = self.extents.entry(ino).or_default();
        let hit: Vec<Extent> = map
            .values()
            .filter(|e| e.file_offset < to && e.end() > from)
            .copied()
            .collect();
        for e in hit {
            map.remove(&e.file_offset);
            if e.file_offset < from {
                let left = Extent {
                    len: from - e.file_offset,
                    ..e
                };
                map.insert(left.file_offset, left);
            }
            if e.end() > to {
                let cut = to - e.file_offset;
                let right = Extent {
                    file_offset: to,
                    len: e.len - cut,
                    chunk: e.chunk,
                    chunk_offset: e.chunk_offset + cut,
                };
                map.insert(right.file_offset, right);
            }
        }
    }

    fn write(
        &mut self,
        ino: Ino,
        extents: &[Extent],
        inline: &[Vec<u8>],
    ) -> Result<MetaReply, RpcError> {
        if !self.attrs.contains_key(&ino) {
            return Err(err(ErrorCode::NotFound));
        }
        for body in inline {
            let id = ChunkId::of(body);
            if !self.chunks.contains_key(&id) {
                self.inline.insert(id);
            }
            self.chunks.insert(id, body.clone());
        }
        for e in extents {
            if !self.chunks.contains_key(&e.chunk) {
                return Err(err(ErrorCode::Io));
            }
        }
        self.writes.push((ino, extents.len()));
        for e in extents {
            self.punch(ino, e.file_offset, e.end());
            self.extents
                .entry(ino)
                .or_default()
                .insert(e.file_offset, *e);
        }
        let end = extents.iter().map(Extent::end).max().unwrap_or(0);
        let now = self.now();
        let allocated = self.extents[&ino].values().map(|e| e.len).sum();
        let attr = self
            .attrs
            .get_mut(&ino)
            .ok_or_else(|| err(ErrorCode::NotFound))?;
        attr.size = attr.size.max(end);
        attr.allocated_bytes = allocated;
        attr.mtime = now;
        Ok(MetaReply::Attr(attr.clone()))
    }
}
