#!/usr/bin/env python3
"""scale: create many small files on a Plait mount and record the memory of its processes.

    scale.py --playground PG/playground.toml --files 1000000 --every 100000 MOUNT/dir

Creates --files files of --size bytes (default 2 KiB; open, write, close, no fsync, distinct
contents) spread round-robin over --dirs directories (default 1000), with --jobs threads
(default 8), each thread owning every jobs-th directory. Every --every files (default
100,000), and at the end, it reads VmHWM (peak resident set) and VmRSS of every plaitd and
mount process of the playground (bench/procmem.py) and the create rate of the last
interval. --max-minutes stops creating early (the files created so far are reported
honestly as the count reached). Prints a Markdown table on stderr as it goes and one JSON
object on stdout at the end. Files are left in place (the playground is thrown away).
Python 3 standard library only.
"""

import argparse
import errno
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procmem  # noqa: E402


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="directory on the mount to create the files in")
    p.add_argument("--playground", required=True, help="the playground's playground.toml")
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--every", type=int, default=100_000)
    p.add_argument("--max-minutes", type=float, default=0, help="stop creating after this long (0: never)")
    a = p.parse_args()

    pids = procmem.playground_pids(a.playground)
    dirs = [os.path.join(a.dir, f"d{d:04d}") for d in range(a.dirs)]
    t_mk = time.monotonic()
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    mkdir_s = time.monotonic() - t_mk
    payload = os.urandom(a.size)
    nonce = os.urandom(8).hex().encode()
    deadline = time.monotonic() + a.max_minutes * 60 if a.max_minutes > 0 else None

    lock = threading.Lock()
    state = {"done": 0, "errors": {}, "next_sample": a.every, "stop": False}
    samples = []
    t0 = time.monotonic()
    last = {"t": t0, "n": 0}

    def sample(n):
        now = time.monotonic()
        procs = []
        for role, pid in pids:
            st = procmem.read_status(pid)
            procs.append({"role": role, "pid": pid, "VmHWM_mib": mib(st.get("VmHWM_kib")),
                          "VmRSS_mib": mib(st.get("VmRSS_kib")), "error": st.get("error")})
        rate = (n - last["n"]) / max(1e-9, now - last["t"])
        last["t"], last["n"] = now, n
        s = {"files": n, "elapsed_s": round(now - t0, 1), "interval_files_per_s": round(rate, 1),
             "load1": round(os.getloadavg()[0], 2), "processes": procs}
        samples.append(s)
        cells = " | ".join(f"{x['VmHWM_mib']} / {x['VmRSS_mib']}" for x in procs)
        if len(samples) == 1:
            print("| files | elapsed (s) | files/s (interval) | load | "
                  + " | ".join(f"{r} HWM / RSS (MiB)" for r, _ in pids) + " |", file=sys.stderr)
            print("|---:|---:|---:|---:|" + "---:|" * len(pids), file=sys.stderr)
        print(f"| {n:,} | {s['elapsed_s']} | {s['interval_files_per_s']} | {s['load1']} | {cells} |",
              file=sys.stderr, flush=True)

    sample(0)

    def worker(j):
        i = j
        # thread j writes files j, j + jobs, ...; file i goes to directory i % dirs
        while i < a.files:
            if state["stop"]:
                return
            data = (b"%s %010d " % (nonce, i) + payload)[:a.size]
            try:
                fd = os.open(os.path.join(dirs[i % a.dirs], f"f{i:08d}"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                err = None
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
            with lock:
                state["done"] += 1
                if err:
                    state["errors"][err] = state["errors"].get(err, 0) + 1
                n = state["done"]
                take = n >= state["next_sample"]
                if take:
                    state["next_sample"] += a.every
                    sample(n)
                if deadline is not None and time.monotonic() > deadline:
                    state["stop"] = True
            i += a.jobs

    threads = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(a.jobs)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(1)
    except KeyboardInterrupt:
        state["stop"] = True
        for t in threads:
            t.join(60)
    with lock:
        if not samples or samples[-1]["files"] != state["done"]:
            sample(state["done"])
    total = time.monotonic() - t0
    failed = sum(state["errors"].values())
    out = {"tool": "scale", "dir": a.dir, "files_requested": a.files,
           "files_attempted": state["done"], "files_created": state["done"] - failed,
           "stopped_early": state["done"] < a.files, "dirs": a.dirs, "size": a.size, "jobs": a.jobs,
           "seconds": round(total, 1), "files_per_s": round(state["done"] / total, 1),
           "mkdir_s": round(mkdir_s, 1), "errors": state["errors"], "samples": samples}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
