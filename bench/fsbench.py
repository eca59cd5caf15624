#!/usr/bin/env python3
"""fsbench: a small filesystem benchmark for Plait and its comparison targets.

Runs a fixed sequence of workloads in a fresh sub-directory of TARGET and prints
one JSON object with the results on stdout (progress goes to stderr).

    python3 bench/fsbench.py --label local /var/tmp/plait-bench/local
    python3 bench/fsbench.py --label plait --files 400 --large-mib 64 /mnt/plait

Workloads, in the order they run (see bench/README.md for what each one means):

    small_create     N files of F bytes in D directories, open+write+close   files/s
    stat_cold        stat() of every file after dropping kernel caches       stats/s
    stat_warm        stat() of every file again                              stats/s
    ls_l_cold        scandir + lstat of every entry, caches dropped          entries/s
    ls_l_warm        the same again                                          entries/s
    small_read_cold  open+read whole+close of every file, caches dropped     files/s
    rename           rename of every file within its directory               ops/s
    delete           unlink of every file                                    ops/s
    large_write      one S MiB file in 1 MiB writes, then fsync              MiB/s
    large_read_cold  that file read in 1 MiB reads, caches dropped           MiB/s
    lockf            fcntl.lockf LOCK_EX + LOCK_UN cycles on one file        cycles/s
    flock            fcntl.flock LOCK_EX + LOCK_UN cycles on one file        cycles/s
    lockf_handoff    (with --peer) fcntl lock hand-off between two mounts    ms, median
    flock_handoff    (with --peer) flock hand-off between two mounts         ms, median

The hand-off workloads need --peer DIR: the same directory as TARGET seen through a
second mount of the same volume (or TARGET itself for a local directory). Two
processes, one per mount, ping-pong an exclusive lock on one file: the holder tells
the other to lock (it blocks in F_SETLKW / flock), waits --handoff-settle-ms so the
request is queued, reads CLOCK_MONOTONIC and unlocks; the other reads the clock as
soon as its lock call returns. The difference is one hand-off.

"Dropping caches" is `sync; echo 3 > /proc/sys/vm/drop_caches`, done only when
running as root (the JSON records whether it happened). It empties the kernel's
page, dentry and inode caches, which for a FUSE mount also makes the kernel
forget the daemon's inodes; caches *inside* a FUSE daemon are not touched.

Benchmarks are never pass/fail: the exit status is 0 whenever a JSON object was
printed, even if some workloads recorded an error.

Python 3 standard library only.
"""

import argparse
import datetime
import errno
import fcntl
import json
import os
import platform
import select
import signal
import shutil
import socket
import statistics
import struct
import sys
import time

VERSION = 1
MIB = 1024 * 1024
DROP_CACHES = "/proc/sys/vm/drop_caches"


class Interrupted(BaseException):
    """SIGTERM/SIGINT: stop the workloads, clean up, still print what was measured."""


_first_signal = None


def on_signal(signum, _frame):
    global _first_signal
    if _first_signal is None:
        _first_signal = time.monotonic()
        raise Interrupted(signal.Signals(signum).name)
    # Ctrl-C reaches both us and `timeout` (which forwards it): ignore repeats for a
    # moment so the cleanup can finish; a later signal ends the process.
    if time.monotonic() - _first_signal < 3:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def log(msg):
    try:
        print(f"fsbench: {msg}", file=sys.stderr, flush=True)
    except OSError:  # stderr gone (e.g. a tee killed by Ctrl-C): the JSON still matters
        pass


def now_ns():
    return time.perf_counter_ns()


# ---------------------------------------------------------------------------
# environment


def mount_of(path):
    """(fstype, source, mountpoint, options) of the mount holding path, from mountinfo."""
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                rfields = right.split()
                if len(fields) < 5 or len(rfields) < 2:
                    continue
                mnt = fields[4].replace("\\040", " ")
                if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
                    if best is None or len(mnt) >= len(best[2]):
                        best = (rfields[0], rfields[1], mnt, fields[5])
    except OSError:
        pass
    if best is None:
        return {}
    return {"fstype": best[0], "source": best[1], "mountpoint": best[2], "options": best[3]}


class Cache:
    """Drops the kernel's caches when allowed, and remembers what happened."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.done = 0
        self.failed = None
        if not enabled:
            self.failed = "disabled by --no-drop-caches"
        elif os.geteuid() != 0:
            self.enabled = False
            self.failed = "not running as root"
        elif not os.access(DROP_CACHES, os.W_OK):
            self.enabled = False
            self.failed = f"{DROP_CACHES} not writable"

    def drop(self):
        """sync, then drop caches. Returns True if the caches were dropped."""
        os.sync()
        if not self.enabled:
            return False
        try:
            with open(DROP_CACHES, "w") as f:
                f.write("3\n")
            self.done += 1
            return True
        except OSError as e:
            self.enabled = False
            self.failed = f"writing {DROP_CACHES}: {e}"
            return False

    def summary(self):
        return {"available": self.failed is None, "times": self.done, "why_not": self.failed}


# ---------------------------------------------------------------------------
# results


def lat_summary(samples_ns):
    """Per-operation latency summary in microseconds."""
    if not samples_ns:
        return None
    s = sorted(samples_ns)

    def pct(p):
        return round(s[min(len(s) - 1, int(p * len(s)))] / 1000.0, 1)

    return {"p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": round(s[-1] / 1000.0, 1),
            "mean_us": round(statistics.fmean(s) / 1000.0, 1)}


def result(value, unit, seconds, count, desc, lat=None, **extra):
    r = {"value": round(value, 3), "unit": unit, "seconds": round(seconds, 4), "count": count,
         "desc": desc}
    if lat is not None:
        r["latency"] = lat_summary(lat)
    r.update(extra)
    return r


def rate(count, ns):
    return count / (ns / 1e9) if ns > 0 else 0.0


# ---------------------------------------------------------------------------
# contended lock hand-off (two processes, two mounts)

HANDOFF_TIMEOUT_S = 30  # one hand-off slower than this is a failure, not a figure


def mono_ns():
    """CLOCK_MONOTONIC: one clock for every process on the host."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _alarm(_signum, _frame):
    raise TimeoutError(f"no lock grant within {HANDOFF_TIMEOUT_S} s")


def _read_exact(fd, n):
    buf = b""
    deadline = time.monotonic() + HANDOFF_TIMEOUT_S
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the other process did not answer within {HANDOFF_TIMEOUT_S} s")
        if not select.select([fd], [], [], left)[0]:
            continue
        b = os.read(fd, n - len(buf))
        if not b:
            raise EOFError("the other process closed its pipe")
        buf += b
    return buf


def _pingpong(kind, path, rfd, wfd, holds_first, rounds, settle_s):
    """One side of the ping-pong. Returns [(round, hand-off ns, unlock call ns)] for the
    hand-offs this side gave (it held the lock and released it to the other side)."""
    fd = os.open(path, os.O_RDWR)
    if kind == "lockf":
        def lock():
            fcntl.lockf(fd, fcntl.LOCK_EX)  # F_SETLKW

        def unlock():
            fcntl.lockf(fd, fcntl.LOCK_UN)
    else:
        def lock():
            fcntl.flock(fd, fcntl.LOCK_EX)

        def unlock():
            fcntl.flock(fd, fcntl.LOCK_UN)
    old = signal.signal(signal.SIGALRM, _alarm)
    out = []
    try:
        holding = holds_first
        if holding:
            lock()
        for k in range(rounds):
            if holding:
                os.write(wfd, b"g")  # "lock now": the other side blocks in its lock call
                time.sleep(settle_s)  # ... long enough for its request to be queued
                t0 = mono_ns()
                unlock()
                t1 = mono_ns()
                (granted,) = struct.unpack("<q", _read_exact(rfd, 8))
                out.append((k, granted - t0, t1 - t0))
            else:
                _read_exact(rfd, 1)
                signal.setitimer(signal.ITIMER_REAL, HANDOFF_TIMEOUT_S)
                try:
                    lock()
                    granted = mono_ns()
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                os.write(wfd, struct.pack("<q", granted))
            holding = not holding
        if holding:
            unlock()
    finally:
        signal.signal(signal.SIGALRM, old)
        os.close(fd)
    return out


def lock_handoff(kind, path, peer_path, rounds, warmup, settle_ms):
    """Hand-offs of an exclusive lock between this process (opening `path`) and a child
    (opening `peer_path`, the same file through another mount)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    total = rounds + warmup
    settle_s = settle_ms / 1000.0
    a2b_r, a2b_w = os.pipe()
    b2a_r, b2a_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other mount's process: never returns
        code = 1
        try:
            os.close(a2b_w)
            os.close(b2a_r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                res = {"ok": _pingpong(kind, peer_path, a2b_r, b2a_w, False, total, settle_s)}
            except Exception as e:
                res = {"error": f"{type(e).__name__}: {e} (process on the second mount)"}
            data = json.dumps(res).encode()
            os.write(b2a_w, struct.pack("<q", len(data)) + data)
            code = 0
        finally:
            os._exit(code)
    os.close(a2b_r)
    os.close(b2a_w)
    try:
        t0 = now_ns()
        mine = _pingpong(kind, path, b2a_r, a2b_w, True, total, settle_s)
        t = now_ns() - t0
        (n,) = struct.unpack("<q", _read_exact(b2a_r, 8))
        theirs = json.loads(_read_exact(b2a_r, n))
        if "error" in theirs:
            raise OSError(errno.EIO, theirs["error"])
        os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        for f in (b2a_r, a2b_w):
            os.close(f)
        os.unlink(path)
    rows = sorted([tuple(r) for r in theirs["ok"]] + mine)
    rows = [r for r in rows if r[0] >= warmup]
    early = sum(1 for r in rows if r[1] < 0)
    if early:
        # the waiter's lock call returned before the holder unlocked: the two sides do not
        # exclude each other (e.g. bindfs forwards every client's fcntl locks as its own)
        raise OSError(errno.ENOLCK, f"the lock does not exclude across the two views: in {early} of "
                                    f"{len(rows)} hand-offs the waiter was granted before the holder unlocked")
    hand = sorted(r[1] for r in rows)
    unl = sorted(r[2] for r in rows)

    def ms(v):
        return round(v / 1e6, 3)

    def pct(s, p):
        return s[min(len(s) - 1, int(p * len(s)))]

    api = "fcntl.lockf (F_SETLKW)" if kind == "lockf" else "fcntl.flock"
    same = os.path.realpath(os.path.dirname(path)) == os.path.realpath(os.path.dirname(peer_path))
    return result(hand[len(hand) // 2] / 1e6, "ms", t / 1e9, len(hand),
                  f"{api} hand-off: holder's unlock call to the waiter's grant, "
                  + ("same directory, two processes" if same else "two mounts, one process each"),
                  hand, p50_ms=ms(pct(hand, 0.50)), p99_ms=ms(pct(hand, 0.99)),
                  max_ms=ms(hand[-1]), min_ms=ms(hand[0]), mean_ms=ms(statistics.fmean(hand)),
                  unlock_call_p50_ms=ms(pct(unl, 0.50)), settle_ms=settle_ms, warmup=warmup,
                  lower_is_better=True)


# ---------------------------------------------------------------------------
# workloads


class Bench:
    def __init__(self, args, root):
        self.a = args
        self.root = root  # fresh working directory inside the target
        self.cache = Cache(not args.no_drop_caches)
        self.results = {}
        self.errors = {}
        self.nonce = os.urandom(8)  # makes every run's data unique (no cross-run dedup)
        self.dirs = [os.path.join(root, f"d{d:03d}") for d in range(args.dirs)]
        # file i lives in directory i % D; iterate directory by directory
        self.files = []  # (dir, name)
        for d in range(args.dirs):
            for i in range(d, args.files, args.dirs):
                self.files.append((self.dirs[d], f"f{i:06d}"))
        self.renamed = False
        self.peer_root = (os.path.join(os.path.abspath(args.peer), os.path.basename(root))
                          if args.peer else None)

    # -- helpers --

    def payload(self, i, size):
        """size bytes, distinct for every file and run, so no two files share a chunk."""
        head = b"fsbench %s %012d " % (self.nonce.hex().encode(), i)
        body = self.small_block[: max(0, size - len(head))]
        return (head + body)[:size]

    def path(self, k):
        d, name = self.files[k]
        return os.path.join(d, ("r" + name[1:]) if self.renamed else name)

    def run(self, name, fn, needs=()):
        if self.a.only and name not in self.a.only:
            return
        for dep in needs:
            if dep not in self.results:
                self.errors[name] = f"skipped: {dep} did not complete"
                log(f"{name}: skipped ({dep} did not complete)")
                return
        log(f"{name} ...")
        try:
            r = fn()
        except Exception as e:  # record and go on: benchmarks are not pass/fail
            msg = f"{type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno is not None:
                msg += f" [{errno.errorcode.get(e.errno, e.errno)}]"
            self.errors[name] = msg
            log(f"{name}: ERROR {msg}")
            return
        self.results[name] = r
        log(f"{name}: {r['value']:.1f} {r['unit']} ({r['seconds']:.2f} s)")

    # -- small files --

    def small_create(self):
        a = self.a
        self.small_block = os.urandom(a.file_size)
        for d in self.dirs:
            os.mkdir(d)
        # warm-up: a few files in a separate directory, not timed
        wdir = os.path.join(self.root, "warmup")
        os.mkdir(wdir)
        for i in range(a.warmup):
            fd = os.open(os.path.join(wdir, f"w{i:04d}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, self.payload(10**9 + i, a.file_size))
            os.close(fd)
        flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
        lat = []
        t0 = now_ns()
        for k, (d, name) in enumerate(self.files):
            s = now_ns()
            fd = os.open(os.path.join(d, name), flags, 0o644)
            data = self.payload(k, a.file_size)
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write {n}/{len(data)}")
            if a.fsync_small:
                os.fsync(fd)
            os.close(fd)
            lat.append(now_ns() - s)
        t = now_ns() - t0
        s = now_ns()
        os.sync()
        sync_s = (now_ns() - s) / 1e9
        return result(rate(len(self.files), t), "files/s", t / 1e9, len(self.files),
                      f"create+write {a.file_size} B+close, {a.dirs} dirs"
                      + (", fsync each" if a.fsync_small else ""),
                      lat, sync_after_s=round(sync_s, 4))

    def stat_pass(self, cold):
        dropped = self.cache.drop() if cold else False
        lat = []
        t0 = now_ns()
        for k in range(len(self.files)):
            s = now_ns()
            st = os.stat(self.path(k))
            lat.append(now_ns() - s)
            if st.st_size != self.a.file_size:
                raise OSError(errno.EIO, f"{self.path(k)}: size {st.st_size}, wrote {self.a.file_size}")
        t = now_ns() - t0
        return result(rate(len(self.files), t), "stats/s", t / 1e9, len(self.files),
                      "stat() by path" + (", caches dropped" if cold else ", right after"),
                      lat, **({"cold": dropped} if cold else {}))

    def ls_pass(self, cold):
        dropped = self.cache.drop() if cold else False
        n = 0
        lat = []  # per directory
        t0 = now_ns()
        for d in self.dirs:
            s = now_ns()
            with os.scandir(d) as it:
                for e in it:
                    e.stat(follow_symlinks=False)  # lstat
                    n += 1
            lat.append(now_ns() - s)
        t = now_ns() - t0
        if n != len(self.files):
            raise OSError(errno.EIO, f"listed {n} entries, expected {len(self.files)}")
        return result(rate(n, t), "entries/s", t / 1e9, n,
                      "scandir+lstat of every entry" + (", caches dropped" if cold else ", right after"),
                      None, dir_latency=lat_summary(lat), **({"cold": dropped} if cold else {}))

    def small_read(self):
        dropped = self.cache.drop()
        size = self.a.file_size
        bufsize = max(size + 1, 65536)
        lat = []
        total = 0
        t0 = now_ns()
        for k in range(len(self.files)):
            s = now_ns()
            fd = os.open(self.path(k), os.O_RDONLY)
            got = 0
            while True:
                b = os.read(fd, bufsize)
                if not b:
                    break
                got += len(b)
            os.close(fd)
            lat.append(now_ns() - s)
            if got != size:
                raise OSError(errno.EIO, f"{self.path(k)}: read {got} bytes, wrote {size}")
            total += got
        t = now_ns() - t0
        return result(rate(len(self.files), t), "files/s", t / 1e9, len(self.files),
                      "open+read whole+close, caches dropped", lat, cold=dropped,
                      mib_per_s=round(total / MIB / (t / 1e9), 2))

    def check_content(self):
        """Spot-check a few files' bytes (not timed); a fast wrong filesystem is no result."""
        step = max(1, len(self.files) // 16)
        for k in range(0, len(self.files), step):
            with open(self.path(k), "rb") as f:
                if f.read() != self.payload(k, self.a.file_size):
                    raise OSError(errno.EIO, f"{self.path(k)}: content differs from what was written")

    def rename(self):
        lat = []
        t0 = now_ns()
        for d, name in self.files:
            s = now_ns()
            os.rename(os.path.join(d, name), os.path.join(d, "r" + name[1:]))
            lat.append(now_ns() - s)
        t = now_ns() - t0
        self.renamed = True
        return result(rate(len(self.files), t), "ops/s", t / 1e9, len(self.files),
                      "rename within the same directory", lat)

    def delete(self):
        lat = []
        t0 = now_ns()
        for k in range(len(self.files)):
            s = now_ns()
            os.unlink(self.path(k))
            lat.append(now_ns() - s)
        t = now_ns() - t0
        for d in self.dirs:
            os.rmdir(d)
        return result(rate(len(self.files), t), "ops/s", t / 1e9, len(self.files),
                      "unlink", lat)

    # -- large file --

    def large_write(self):
        mib = self.a.large_mib
        self.large_path = os.path.join(self.root, "large.bin")
        buf = bytearray(os.urandom(MIB))
        fd = os.open(self.large_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            lat = []
            t0 = now_ns()
            for i in range(mib):
                # a distinct header per MiB keeps every block (and every chunk) unique
                buf[0:32] = b"%16s%016d" % (self.nonce.hex().encode(), i)
                s = now_ns()
                n = os.write(fd, buf)
                lat.append(now_ns() - s)
                if n != MIB:
                    raise OSError(errno.EIO, f"short write {n}/{MIB}")
            t1 = now_ns()
            os.fsync(fd)
            t2 = now_ns()
        finally:
            os.close(fd)
        t = t2 - t0
        return result(mib / (t / 1e9), "MiB/s", t / 1e9, mib,
                      "1 MiB writes then fsync (fsync included)", lat,
                      fsync_s=round((t2 - t1) / 1e9, 4))

    def large_read(self):
        dropped = self.cache.drop()
        mib = self.a.large_mib
        fd = os.open(self.large_path, os.O_RDONLY)
        got = 0
        first_ok = False
        try:
            t0 = now_ns()
            while True:
                b = os.read(fd, MIB)
                if not b:
                    break
                if got == 0:
                    first_ok = b[16:32] == b"%016d" % 0
                got += len(b)
            t = now_ns() - t0
        finally:
            os.close(fd)
        if got != mib * MIB:
            raise OSError(errno.EIO, f"read {got} bytes, wrote {mib * MIB}")
        if not first_ok:
            raise OSError(errno.EIO, "first block's header differs from what was written")
        os.unlink(self.large_path)
        return result(mib / (t / 1e9), "MiB/s", t / 1e9, mib, "1 MiB reads, caches dropped",
                      None, cold=dropped)

    # -- locks --

    def lock_cycles(self, kind):
        path = os.path.join(self.root, f"lock-{kind}")
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"x")
            if kind == "lockf":
                def lock():
                    fcntl.lockf(fd, fcntl.LOCK_EX)

                def unlock():
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            else:
                def lock():
                    fcntl.flock(fd, fcntl.LOCK_EX)

                def unlock():
                    fcntl.flock(fd, fcntl.LOCK_UN)
            for _ in range(min(self.a.warmup, self.a.lock_cycles)):
                lock()
                unlock()
            n = self.a.lock_cycles
            lat = []
            t0 = now_ns()
            for _ in range(n):
                s = now_ns()
                lock()
                unlock()
                lat.append(now_ns() - s)
            t = now_ns() - t0
        finally:
            os.close(fd)
            os.unlink(path)
        api = "fcntl.lockf (F_SETLKW)" if kind == "lockf" else "fcntl.flock"
        return result(rate(n, t), "cycles/s", t / 1e9, n, f"{api} LOCK_EX then LOCK_UN, one fd", lat)

    # -- contended lock hand-off between two mounts --

    def lock_handoff(self, kind):
        return lock_handoff(kind, os.path.join(self.root, f"handoff-{kind}"),
                            os.path.join(self.peer_root, f"handoff-{kind}"),
                            self.a.handoffs, self.a.warmup_handoffs, self.a.handoff_settle_ms)

    # -- all --

    def run_all(self):
        self.small_block = b""
        self.run("small_create", self.small_create)
        self.run("stat_cold", lambda: self.stat_pass(True), needs=["small_create"])
        self.run("stat_warm", lambda: self.stat_pass(False), needs=["small_create"])
        self.run("ls_l_cold", lambda: self.ls_pass(True), needs=["small_create"])
        self.run("ls_l_warm", lambda: self.ls_pass(False), needs=["small_create"])
        self.run("small_read_cold", self.small_read, needs=["small_create"])
        if "small_create" in self.results:
            try:
                self.check_content()
            except Exception as e:
                self.errors["content_check"] = f"{type(e).__name__}: {e}"
                log(f"content check: ERROR {e}")
        self.run("rename", self.rename, needs=["small_create"])
        self.run("delete", self.delete, needs=["small_create"])
        if self.a.large_mib > 0:
            self.run("large_write", self.large_write)
            self.run("large_read_cold", self.large_read, needs=["large_write"])
        if self.a.lock_cycles > 0:
            self.run("lockf", lambda: self.lock_cycles("lockf"))
            self.run("flock", lambda: self.lock_cycles("flock"))
        if self.peer_root and self.a.handoffs > 0:
            self.run("lockf_handoff", lambda: self.lock_handoff("lockf"))
            self.run("flock_handoff", lambda: self.lock_handoff("flock"))


def close_fds_under(root):
    """Close descriptors an interrupted workload left open on files under root: on a FUSE
    mount an unlinked open file becomes .fuse_hidden*, and its directory cannot be removed."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in fds:
        try:
            fd = int(fd)
            if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith(root + "/"):
                os.close(fd)
        except (OSError, ValueError):
            pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("target", help="directory to benchmark in (a fresh sub-directory is used and removed)")
    p.add_argument("--label", help="name of this target in reports (default: the directory's base name)")
    p.add_argument("--files", type=int, default=4000, help="number of small files")
    p.add_argument("--dirs", type=int, default=40, help="directories the small files are spread over")
    p.add_argument("--file-size", type=int, default=8192, help="bytes per small file")
    p.add_argument("--fsync-small", action="store_true", help="fsync each small file before close")
    p.add_argument("--large-mib", type=int, default=512, help="size of the large file in MiB (0 skips)")
    p.add_argument("--lock-cycles", type=int, default=2000, help="lock+unlock cycles per lock kind (0 skips)")
    p.add_argument("--warmup", type=int, default=40, help="untimed warm-up files / lock cycles")
    p.add_argument("--peer", metavar="DIR",
                   help="TARGET seen through a second mount of the same volume: adds the lock "
                        "hand-off workloads (use TARGET itself for a local directory)")
    p.add_argument("--handoffs", type=int, default=200, help="timed lock hand-offs per lock kind")
    p.add_argument("--warmup-handoffs", type=int, default=10, help="untimed hand-offs first")
    p.add_argument("--handoff-settle-ms", type=float, default=25,
                   help="how long the holder waits after telling the other side to lock")
    p.add_argument("--only", type=lambda v: [x for x in v.split(",") if x], default=[],
                   help="comma-separated workloads to run (e.g. lockf_handoff,flock_handoff); "
                        "workloads that need small_create need it listed too")
    p.add_argument("--no-drop-caches", action="store_true", help="never drop the kernel's caches")
    p.add_argument("--keep", action="store_true", help="keep the working directory (for debugging)")
    p.add_argument("--note", action="append", default=[], help="free-form note stored in the JSON")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args()
    if a.files < 1 or a.dirs < 1 or a.file_size < 64:
        p.error("--files and --dirs must be >= 1 and --file-size >= 64")
    a.dirs = min(a.dirs, a.files)

    target = os.path.abspath(a.target)
    if not os.path.isdir(target):
        p.error(f"{target} is not a directory")
    label = a.label or os.path.basename(target.rstrip("/")) or target

    need = a.files * a.file_size + a.large_mib * MIB
    try:
        sv = os.statvfs(target)
        free = sv.f_bavail * sv.f_frsize
        if 0 < free < need * 1.1:
            log(f"warning: {target} reports {free // MIB} MiB free, the run needs about {need // MIB} MiB")
    except OSError:
        pass

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = os.path.join(target, f"fsbench-{stamp}-{os.getpid()}")
    os.mkdir(root)
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"target {label}: {target} (working in {root})")
    b = Bench(a, root)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    try:
        b.run_all()
    except Interrupted as e:
        b.errors["interrupted"] = f"stopped by {e} (results so far are kept)"
        log(f"interrupted by {e}; cleaning up")
    finally:
        if not a.keep:
            close_fds_under(root)
            for attempt in range(3):
                try:
                    shutil.rmtree(root)
                    break
                except OSError as e:
                    # after an interrupted create a FUSE daemon may still be finishing it
                    if attempt < 2:
                        time.sleep(1)
                        continue
                    b.errors["cleanup"] = f"removing {root}: {e}"
                    log(f"warning: could not remove {root}: {e}")
    wall = time.monotonic() - t0

    out = {
        "tool": "fsbench",
        "version": VERSION,
        "label": label,
        "path": target,
        "mount": mount_of(target),
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 2),
        "host": {"hostname": socket.gethostname(), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_after": os.getloadavg()},
        "params": {"files": a.files, "dirs": a.dirs, "file_size": a.file_size,
                   "fsync_small": a.fsync_small, "large_mib": a.large_mib,
                   "lock_cycles": a.lock_cycles, "warmup": a.warmup,
                   "handoffs": a.handoffs if a.peer else 0},
        "drop_caches": b.cache.summary(),
        "notes": a.note,
        "peer": os.path.abspath(a.peer) if a.peer else None,
        "peer_mount": mount_of(a.peer) if a.peer else None,
        "only": a.only or None,
        "results": b.results,
        "errors": b.errors,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 1 if "interrupted" in b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
