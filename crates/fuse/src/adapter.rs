//! [`PlaitFuse`]: fuser's `Filesystem` over [`PlaitFs`].
//!
//! Every request that may wait on the network is served by a task spawned on the tokio
//! runtime, which sends the reply itself; the kernel-reading thread returns at once, so
//! one slow request never holds up the others. Requests answered from memory (readdir
//! from the handle's snapshot, access) are answered inline.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::Notifier;
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use plait_client::fs::{DirListing, DirSlot, FsError, LockCall, NewFile, OpenIntent, PlaitFs};
use plait_proto::lock::LockType;
use plait_proto::meta::{NewKind, SetAttr};
use plait_proto::{Attr, FileKind, Ino, NAME_MAX_BYTES};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::convert::{
    BLOCK_SIZE_BYTES, InoMap, XattrAnswer, dot_attr, file_attr, file_type, mknod_kind, new_perm,
    rename_mode, time_set, xattr_answer, xattr_list, xattr_mode,
};
use crate::sizes::ReportedSizes;

/// Largest write the kernel sends in one request, in bytes.
pub const MAX_WRITE_BYTES: u32 = 1024 * 1024;

/// Largest readahead the kernel asks for, in bytes.
pub const MAX_READAHEAD_BYTES: u32 = 1024 * 1024;

/// The kernel's generation number of every inode (inode numbers are never reused).
const GENERATION: Generation = Generation(0);

/// What every request task needs: the filesystem, the inode translation, the TTLs.
#[derive(Clone)]
struct Ctx {
    fs: Arc<PlaitFs>,
    inos: InoMap,
    attr_ttl: Duration,
    entry_ttl: Duration,
    notifier: SharedNotifier,
    /// Sizes the kernel was told within the attribute timeout.
    sizes: Arc<ReportedSizes>,
}

impl Ctx {
    /// The kernel's form of `attr`; a regular file's size is noted as told to the kernel
    /// (every caller replies with it; only files are opened and read).
    fn attr(&self, attr: &Attr) -> FileAttr {
        if attr.kind == FileKind::File {
            self.sizes.note(attr.ino, attr.size, Instant::now());
        }
        file_attr(attr, self.inos)
    }

    /// After an open of `ino` (the kernel's number `kernel_ino`) that found the file
    /// `size` bytes long: if the kernel may cache another size, drop its cached
    /// attributes, so that it reads up to the new end (close-to-open; see `sizes`).
    fn drop_stale_size(&self, kernel_ino: INodeNo, ino: Ino, size: u64) {
        if !self.sizes.may_differ(ino, size, Instant::now()) {
            return;
        }
        if let Some(n) = self.notifier.get() {
            // A negative offset: attributes only, the open drops the cached pages itself.
            if let Err(e) = n.inval_inode(kernel_ino, -1, 0) {
                debug!(ino, error = %e, "attribute invalidation at open failed");
            }
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, attr: &Attr) {
        reply.entry_with_ttls(
            &self.attr_ttl,
            &self.entry_ttl,
            &self.attr(attr),
            GENERATION,
        );
    }

    fn reply_attr(&self, reply: ReplyAttr, attr: &Attr) {
        reply.attr(&self.attr_ttl, &self.attr(attr));
    }
}

/// The errno for a failed request; failures that hint at a broken cluster are logged.
fn errno(op: &'static str, e: &FsError) -> Errno {
    let code = e.errno();
    if code == libc::EIO || code == libc::EPROTO || code == libc::EROFS {
        warn!(op, error = %e, "request failed");
    } else {
        debug!(op, error = %e, "request failed");
    }
    Errno::from_i32(code)
}

/// Answers an empty-reply request from the outcome of its filesystem call.
fn reply_empty(op: &'static str, reply: ReplyEmpty, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

/// The FUSE filesystem of one mounted volume.
pub(crate) struct PlaitFuse {
    ctx: Ctx,
    rt: Handle,
}

/// The kernel's handle for invalidating its caches, set once the session exists.
pub(crate) type SharedNotifier = Arc<OnceLock<Notifier>>;

/// F_RDLCK / F_WRLCK / F_UNLCK as the kernel sends them, to our lock types.
fn lock_type(typ: i32) -> Result<Option<LockType>, Errno> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockType::Read)),
        libc::F_WRLCK => Ok(Some(LockType::Write)),
        libc::F_UNLCK => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

fn fcntl_type(t: LockType) -> i32 {
    match t {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
    }
}

impl PlaitFuse {
    /// Serves `fs`, running its calls on `rt`.
    pub(crate) fn new(fs: Arc<PlaitFs>, rt: Handle, notifier: SharedNotifier) -> Self {
        let inos = InoMap::new(fs.root());
        let ctx = Ctx {
            attr_ttl: fs.config().attr_ttl(),
            entry_ttl: fs.config().entry_ttl(),
            sizes: Arc::new(ReportedSizes::new(fs.config().attr_ttl())),
            inos,
            fs,
            notifier,
        };
        Self { ctx, rt }
    }

    /// Runs `f` (given a copy of the context) on the runtime; `f` sends the reply.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.ctx.clone()));
    }

    fn vol(&self, ino: INodeNo) -> u64 {
        self.ctx.inos.to_volume(ino)
    }

    /// Creates a node of `kind` under `parent` and answers with its entry.
    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: NewKind,
        perm: u16,
        reply: ReplyEntry,
    ) {
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(move |ctx| async move {
            match ctx
                .fs
                .create_node(parent, &name, kind, perm, uid, gid)
                .await
            {
                Ok(attr) => ctx.reply_entry(reply, &attr),
                Err(e) => reply.error(errno("create_node", &e)),
            }
        });
    }

    /// Fills a READDIR reply from position `offset` of `listing`.
    fn fill_dir(&self, listing: &DirListing, offset: u64, reply: &mut ReplyDirectory) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for pos in start..listing.len() {
            let Some(slot) = listing.slot(pos) else { break };
            let (ino, kind, name): (u64, FileKind, &[u8]) = match slot {
                DirSlot::Dot(ino) => (ino, FileKind::Dir, b"."),
                DirSlot::DotDot(ino) => (ino, FileKind::Dir, b".."),
                DirSlot::Entry(e) => (e.attr.ino, e.attr.kind, &e.name),
            };
            let next = (pos + 1) as u64;
            let full = reply.add(
                self.ctx.inos.to_fuse(ino),
                next,
                file_type(kind),
                OsStr::from_bytes(name),
            );
            if full {
                break;
            }
        }
    }

    /// Fills a READDIRPLUS reply from position `offset` of `listing`.
    fn fill_dir_plus(&self, listing: &DirListing, offset: u64, reply: &mut ReplyDirectoryPlus) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for pos in start..listing.len() {
            let Some(slot) = listing.slot(pos) else { break };
            let (name, attr): (&[u8], FileAttr) = match slot {
                DirSlot::Dot(ino) => (b".", dot_attr(self.ctx.inos.to_fuse(ino))),
                DirSlot::DotDot(ino) => (b"..", dot_attr(self.ctx.inos.to_fuse(ino))),
                DirSlot::Entry(e) => (&e.name, self.ctx.attr(&e.attr)),
            };
            let next = (pos + 1) as u64;
            let full = reply.add(
                attr.ino,
                next,
                OsStr::from_bytes(name),
                &self.ctx.entry_ttl,
                &attr,
                GENERATION,
            );
            if full {
                break;
            }
        }
    }
}

/// Asks the kernel for `flag`, logging (not failing) if it does not support it.
fn request_capability(config: &mut KernelConfig, flag: InitFlags, name: &str) {
    if config.add_capabilities(flag).is_err() {
        info!(
            capability = name,
            "kernel does not support this FUSE capability"
        );
    }
}

impl Filesystem for PlaitFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // POSIX and flock locks go to the cluster's lock service (without these flags the
        // kernel would lock only on this node). No writeback cache: the mount's own write
        // buffer is the only one, so close, fsync and unlock mean what they say.
        let wanted = [
            (InitFlags::FUSE_ASYNC_READ, "ASYNC_READ"),
            (InitFlags::FUSE_BIG_WRITES, "BIG_WRITES"),
            (InitFlags::FUSE_MAX_PAGES, "MAX_PAGES"),
            (InitFlags::FUSE_DO_READDIRPLUS, "DO_READDIRPLUS"),
            (InitFlags::FUSE_PARALLEL_DIROPS, "PARALLEL_DIROPS"),
            (InitFlags::FUSE_ATOMIC_O_TRUNC, "ATOMIC_O_TRUNC"),
            (InitFlags::FUSE_EXPORT_SUPPORT, "EXPORT_SUPPORT"),
            (InitFlags::FUSE_POSIX_LOCKS, "POSIX_LOCKS"),
            (InitFlags::FUSE_FLOCK_LOCKS, "FLOCK_LOCKS"),
        ];
        for (flag, name) in wanted {
            request_capability(config, flag, name);
        }
        if let Err(nearest) = config.set_max_write(MAX_WRITE_BYTES) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_READAHEAD_BYTES) {
            let _ = config.set_max_readahead(nearest);
        }
        info!(root = self.ctx.fs.root(), "FUSE session initialized");
        Ok(())
    }

    fn destroy(&mut self) {
        // Runs on the session thread, outside the runtime: blocking on it is allowed.
        if let Err(e) = self.rt.block_on(self.ctx.fs.flush_all()) {
            warn!(error = %e, "unmounting with buffered bytes that could not be committed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        // A held directory or a fresh directory snapshot answers here, without a task hop.
        match self.ctx.fs.lookup_local(parent, &name) {
            Some(Ok(attr)) => return self.ctx.reply_entry(reply, &attr),
            Some(Err(e)) => return reply.error(errno("lookup", &e)),
            None => {}
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.lookup(parent, &name).await {
                Ok(attr) => ctx.reply_entry(reply, &attr),
                Err(e) => reply.error(errno("lookup", &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = self.vol(ino);
        if let Some(attr) = self.ctx.fs.getattr_local(ino) {
            return self.ctx.reply_attr(reply, &attr);
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.getattr(ino).await {
                Ok(attr) => ctx.reply_attr(reply, &attr),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = self.vol(ino);
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        self.spawn(move |ctx| async move {
            match ctx.fs.setattr(ino, set).await {
                Ok(attr) => ctx.reply_attr(reply, &attr),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = self.vol(ino);
        self.spawn(move |ctx| async move {
            match ctx.fs.readlink(ino).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match mknod_kind(mode, rdev) {
            Ok(kind) => self.make_node(req, parent, name, kind, new_perm(mode, umask), reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make_node(
            req,
            parent,
            name,
            NewKind::Dir,
            new_perm(mode, umask),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        self.spawn(move |ctx| async move {
            reply_empty("unlink", reply, ctx.fs.unlink(parent, &name).await);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        self.spawn(move |ctx| async move {
            reply_empty("rmdir", reply, ctx.fs.rmdir(parent, &name).await);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let kind = NewKind::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        };
        self.make_node(req, parent, link_name, kind, 0o777, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = match rename_mode(flags) {
            Ok(mode) => mode,
            Err(e) => return reply.error(e),
        };
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        let (newparent, newname) = (self.vol(newparent), newname.as_bytes().to_vec());
        self.spawn(move |ctx| async move {
            let result = ctx
                .fs
                .rename(parent, &name, newparent, &newname, mode)
                .await;
            reply_empty("rename", reply, result);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (ino, newparent) = (self.vol(ino), self.vol(newparent));
        let newname = newname.as_bytes().to_vec();
        self.spawn(move |ctx| async move {
            match ctx.fs.link(ino, newparent, &newname).await {
                Ok(attr) => ctx.reply_entry(reply, &attr),
                Err(e) => reply.error(errno("link", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let kernel_ino = ino;
        let ino = self.vol(ino);
        let truncate = OpenIntent::from_flags(flags.0).truncate;
        // A file whose first window this mount keeps under a held directory: no request.
        if let Some(fh) = self.ctx.fs.open_local(ino, truncate) {
            if let Some(size) = self.ctx.fs.cached_size(ino) {
                self.ctx.drop_stale_size(kernel_ino, ino, size);
            }
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.open(ino, truncate).await {
                Ok(fh) => {
                    if let Some(size) = ctx.fs.cached_size(ino) {
                        ctx.drop_stale_size(kernel_ino, ino, size);
                    }
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = self.vol(ino);
        // Bytes that came inline with the cached extents: answered here, no task hop.
        if let Some(bytes) = self.ctx.fs.read_local(ino, fh.0, offset, size) {
            return reply.data(&bytes);
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.read(ino, fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = self.vol(ino);
        let append = flags.0 & libc::O_APPEND != 0;
        if !append {
            match self.ctx.fs.write_local(ino, fh.0, offset, data) {
                Some(Ok(written)) => return reply.written(written),
                Some(Err(e)) => return reply.error(errno("write", &e)),
                None => {}
            }
        }
        let data = data.to_vec();
        self.spawn(move |ctx| async move {
            let result = if append {
                ctx.fs.write_append(ino, fh.0, &data).await
            } else {
                ctx.fs.write(ino, fh.0, offset, &data).await
            };
            match result {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let ino = self.vol(ino);
        // Nothing buffered, no lock of this owner: answered here, without a task hop.
        // A file created here: queued for its directory's next batch, also here.
        if self.ctx.fs.flush_is_noop(ino, lock_owner.0)
            || self.ctx.fs.flush_local(ino, lock_owner.0)
        {
            return reply.ok();
        }
        self.spawn(move |ctx| async move {
            // Closing any descriptor drops the process's POSIX locks on the file.
            let result = match ctx.fs.flush(ino).await {
                Ok(()) => ctx.fs.release_lock_owner(ino, lock_owner.0, None).await,
                Err(e) => Err(e),
            };
            reply_empty("flush", reply, result);
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.vol(ino);
        if self
            .ctx
            .fs
            .release_local(ino, fh.0, lock_owner.map(|o| o.0))
        {
            return reply.ok();
        }
        self.spawn(move |ctx| async move {
            // The last close of a flock'ed file drops its flock lock.
            if let Some(owner) = lock_owner
                && let Err(e) = ctx.fs.release_lock_owner(ino, owner.0, Some(fh.0)).await
            {
                warn!(ino, error = %e, "releasing flock locks at close failed");
            }
            reply_empty("release", reply, ctx.fs.release(ino, fh.0).await);
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let lock_type = match lock_type(typ) {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        let call = LockCall {
            ino: self.vol(ino),
            fh: fh.0,
            owner: lock_owner.0,
            start,
            end,
            lock_type,
            pid,
        };
        self.spawn(move |ctx| async move {
            match ctx.fs.getlk(call).await {
                Ok(Some(c)) => reply.locked(
                    c.range.start(),
                    c.range.fuse_end(),
                    fcntl_type(c.lock_type),
                    c.pid,
                ),
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno("getlk", &e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock_type = match lock_type(typ) {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        let call = LockCall {
            ino: self.vol(ino),
            fh: fh.0,
            owner: lock_owner.0,
            start,
            end,
            lock_type,
            pid,
        };
        // The thread blocked in the kernel, whose signals end a wait.
        let tid = req.pid();
        self.spawn(move |ctx| async move {
            let interrupted = move || crate::signals::signal_pending(tid);
            let result = ctx.fs.setlk(call, sleep, interrupted).await;
            if let Ok(true) = result
                && let Some(n) = ctx.notifier.get()
            {
                // The new holder must read what the last one wrote: drop the kernel's
                // cached pages and attributes of the file before answering.
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    debug!(ino = call.ino, error = %e, "cache invalidation after lock grant failed");
                }
            }
            reply_empty("setlk", reply, result.map(|_| ()));
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.vol(ino);
        self.spawn(move |ctx| async move {
            reply_empty("fsync", reply, ctx.fs.fsync(ino).await);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.vol(ino);
        self.spawn(move |ctx| async move {
            match ctx.fs.opendir(ino).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.ctx.fs.dir_listing(fh.0) {
            Ok(listing) => {
                self.fill_dir(&listing, offset, &mut reply);
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.ctx.fs.dir_listing(fh.0) {
            Ok(listing) => {
                self.fill_dir_plus(&listing, offset, &mut reply);
                reply.ok();
            }
            Err(e) => reply.error(errno("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty("releasedir", reply, self.ctx.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is committed by a majority before it returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |ctx| async move {
            match ctx.fs.statfs().await {
                Ok(s) => {
                    let block = u64::from(BLOCK_SIZE_BYTES);
                    let free = s.free_bytes / block;
                    reply.statfs(
                        s.total_bytes / block,
                        free,
                        free,
                        s.files.saturating_add(s.files_free),
                        s.files_free,
                        BLOCK_SIZE_BYTES,
                        NAME_MAX_BYTES as u32,
                        BLOCK_SIZE_BYTES,
                    );
                }
                Err(e) => reply.error(errno("statfs", &e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match xattr_mode(flags) {
            Ok(mode) if position == 0 => mode,
            Ok(_) => return reply.error(Errno::EINVAL),
            Err(e) => return reply.error(e),
        };
        let (ino, name, value) = (self.vol(ino), name.as_bytes().to_vec(), value.to_vec());
        self.spawn(move |ctx| async move {
            reply_empty(
                "setxattr",
                reply,
                ctx.fs.setxattr(ino, &name, &value, mode).await,
            );
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (ino, name) = (self.vol(ino), name.as_bytes().to_vec());
        if let Some(e) = self.ctx.fs.getxattr_local(ino, &name) {
            return reply.error(errno("getxattr", &e));
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.getxattr(ino, &name).await {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno("getxattr", &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = self.vol(ino);
        self.spawn(move |ctx| async move {
            match ctx.fs.listxattr(ino).await {
                Ok(names) => reply_xattr(reply, size, &xattr_list(&names)),
                Err(e) => reply.error(errno("listxattr", &e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (ino, name) = (self.vol(ino), name.as_bytes().to_vec());
        self.spawn(move |ctx| async move {
            reply_empty("removexattr", reply, ctx.fs.removexattr(ino, &name).await);
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks access itself from our attributes.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EINVAL);
        }
        let (parent, name) = (self.vol(parent), name.as_bytes().to_vec());
        let (perm, uid, gid) = (new_perm(mode, umask), req.uid(), req.gid());
        let intent = OpenIntent::from_flags(flags);
        // In a directory this mount holds: created here, without a task hop.
        let new = NewFile {
            parent,
            name: &name,
            perm,
            uid,
            gid,
            intent,
        };
        match self.ctx.fs.create_local(&new) {
            Some(Ok((attr, fh))) => {
                return reply.created(
                    &self.ctx.entry_ttl,
                    &self.ctx.attr(&attr),
                    GENERATION,
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
            Some(Err(e)) => return reply.error(errno("create", &e)),
            None => {}
        }
        self.spawn(move |ctx| async move {
            match ctx.fs.create(parent, &name, perm, uid, gid, intent).await {
                Ok((attr, fh)) => reply.created(
                    &ctx.entry_ttl,
                    &ctx.attr(&attr),
                    GENERATION,
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let ino = self.vol(ino);
        self.spawn(move |ctx| async move {
            reply_empty(
                "fallocate",
                reply,
                ctx.fs.fallocate(ino, offset, length).await,
            );
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls (isatty() probes with TCGETS land here): "inappropriate ioctl".
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // ENOSYS makes the kernel fall back to its generic lseek (SEEK_DATA finds data
        // everywhere, SEEK_HOLE the end of the file) and stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS: the kernel falls back to read and write (and stops asking).
        reply.error(Errno::ENOSYS);
    }
}

/// Answers a getxattr/listxattr with `value`, honouring size probes.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match xattr_answer(size, value.len()) {
        XattrAnswer::Size(len) => reply.size(len),
        XattrAnswer::Data => reply.data(value),
        XattrAnswer::TooSmall => reply.error(Errno::ERANGE),
    }
}
