#!/usr/bin/env python3
"""writer: a continuous small-file writer that records every operation, for bench/failover.sh.

    writer.py run DIR --seconds 40 --out ops.json        # write until the time is up
    writer.py summary ops.json --events events.txt       # longest stall, failures, ...
    writer.py fill DIR --files 13000 --size 2048 --dirs 13

`run` creates small files in DIR one after another: open(O_CREAT|O_EXCL), one write,
fsync, close. Every attempt is recorded with its start (wall clock, so it can be matched
with the fault injector's event times), its duration and its error, if any. A failed
attempt is followed by a 20 ms pause (so an unavailable mount is not hammered) and the
next attempt uses a new name. SIGTERM ends the run early; the record is still written.

`fill` creates exactly --files files of --size bytes spread over --dirs directories
(open, write, close; no fsync), with distinct contents, and prints the time it took (for
bench/heal.sh and bench/scale.py).

`summary` prints one JSON object: attempts, failures (by error), the longest single
operation, the longest time without a completed operation, and latency percentiles
before the fault. `--events` is a file of "NAME WALLCLOCK" lines (e.g. "fault 1764...").
Python 3 standard library only.
"""

import argparse
import errno
import json
import os
import signal
import sys
import time

FAIL_PAUSE_S = 0.02


class Stop(BaseException):
    pass


def on_term(_signum, _frame):
    raise Stop()


def run(a):
    os.makedirs(a.dir, exist_ok=True)
    payload = os.urandom(a.size)
    nonce = os.urandom(8).hex().encode()
    ops = []  # [start wall s, duration s, error or None]
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = time.monotonic() + a.seconds
    i = 0
    try:
        while time.monotonic() < deadline:
            path = os.path.join(a.dir, f"w{i:07d}")
            i += 1
            wall = time.time()
            t0 = time.perf_counter()
            fd = -1
            err = None
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                # distinct bytes per file (and run): no content-addressed store can share them
                data = (b"%s %09d " % (nonce, i) + payload)[:a.size]
                if os.write(fd, data) != len(data):
                    raise OSError(errno.EIO, "short write")
                os.fsync(fd)
                c, fd = fd, -1
                os.close(c)
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e)
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            ops.append([round(wall, 6), round(time.perf_counter() - t0, 6), err])
            if err:
                time.sleep(FAIL_PAUSE_S)
    except Stop:
        pass
    out = {"tool": "writer", "dir": a.dir, "size": a.size, "fsync": True, "ops": ops}
    with open(a.out, "w") as f:
        json.dump(out, f)
    ok = sum(1 for o in ops if o[2] is None)
    print(f"writer: {len(ops)} attempts, {ok} ok, {len(ops) - ok} failed", file=sys.stderr)


def fill(a):
    payload = os.urandom(a.size)
    nonce = os.urandom(8).hex().encode()
    dirs = [os.path.join(a.dir, f"d{d:04d}") for d in range(a.dirs)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    errors = {}
    t0 = time.perf_counter()
    for i in range(a.files):
        data = (b"%s %09d " % (nonce, i) + payload)[:a.size]
        try:
            fd = os.open(os.path.join(dirs[i % a.dirs], f"f{i:08d}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e.errno))
            errors[k] = errors.get(k, 0) + 1
    t = time.perf_counter() - t0
    print(json.dumps({"tool": "writer-fill", "files": a.files, "size": a.size, "dirs": a.dirs,
                      "seconds": round(t, 2), "files_per_s": round(a.files / t, 1),
                      "errors": errors}))


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(p * len(sorted_vals)))]


def summary(a):
    with open(a.ops) as f:
        d = json.load(f)
    ops = d["ops"]
    events = {}
    if a.events:
        with open(a.events) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    events.setdefault(parts[0], float(parts[1]))
    t_start = ops[0][0] if ops else 0.0
    fault = events.get("fault")
    out = {"tool": "writer-summary", "label": a.label, "fault": a.fault, "victim": a.victim,
           "attempts": len(ops), "failed": 0, "errors": {}}
    longest = None
    for o in ops:
        if o[2] is not None:
            out["failed"] += 1
            out["errors"][o[2]] = out["errors"].get(o[2], 0) + 1
        if longest is None or o[1] > longest[1]:
            longest = o
    if longest:
        out["longest_op_s"] = round(longest[1], 3)
        out["longest_op_started_s_after_fault"] = (round(longest[0] - fault, 3)
                                                   if fault is not None else None)
        out["longest_op_error"] = longest[2]
    # the longest time during which no operation completed successfully
    ends = [o[0] + o[1] for o in ops if o[2] is None]
    gap, gap_at, prev = 0.0, None, t_start
    for e in ends:
        if e - prev > gap:
            gap, gap_at = e - prev, prev
        prev = e
    out["longest_gap_without_success_s"] = round(gap, 3)
    if fault is not None and gap_at is not None:
        out["gap_started_s_after_fault"] = round(gap_at - fault, 3)
    before = sorted(o[1] for o in ops if o[2] is None and (fault is None or o[0] + o[1] < fault))
    if before:
        out["before_fault"] = {"ops": len(before),
                               "p50_ms": round(pct(before, 0.5) * 1000, 2),
                               "p99_ms": round(pct(before, 0.99) * 1000, 2),
                               "ops_per_s": round(len(before) / max(1e-9, sum(before)), 1)}
    if fault is not None:
        after = [o for o in ops if o[0] >= fault]
        out["failed_after_fault"] = sum(1 for o in after if o[2] is not None)
        slow = [o for o in ops if o[1] >= 1.0]
        out["ops_over_1s"] = [{"started_s_after_fault": round(o[0] - fault, 3),
                               "duration_s": round(o[1], 3), "error": o[2]} for o in slow][:20]
        rec = events.get("recover")
        if rec is not None:
            # first successful completion after the fault that started after the fault
            firsts = [o[0] + o[1] for o in ops if o[2] is None and o[0] >= fault]
            out["first_success_after_fault_s"] = round(min(firsts) - fault, 3) if firsts else None
            later = [o[0] + o[1] for o in ops if o[2] is None and o[0] >= rec]
            out["first_success_after_recover_s"] = round(min(later) - rec, 3) if later else None
    out["events"] = {k: round(v - t_start, 3) for k, v in events.items()}
    print(json.dumps(out, indent=2))


def table(a):
    import glob
    rows = []
    for path in sorted(glob.glob(os.path.join(a.dir, "*.json"))):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("tool") == "writer-summary":
            rows.append(d)
    what = {"stop": "SIGSTOP", "kill": "SIGKILL"}
    print("| target | fault | victim | attempts | failed | longest op (s) | longest time without "
          "a completed write (s) | first write completed after the fault (s) | after recovery (s) "
          "| before the fault: ops/s, p99 (ms) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for d in rows:
        b = d.get("before_fault") or {}
        errs = ", ".join(f"{k} {v}" for k, v in d.get("errors", {}).items())

        def f(v):
            return "–" if v is None else f"{v:.2f}"
        print(f"| {d.get('label')} | {what.get(d.get('fault'), d.get('fault'))} | {d.get('victim')} | "
              f"{d['attempts']} | {d['failed']}{f' ({errs})' if errs else ''} | "
              f"{f(d.get('longest_op_s'))} | {f(d.get('longest_gap_without_success_s'))} | "
              f"{f(d.get('first_success_after_fault_s'))} | {f(d.get('first_success_after_recover_s'))} | "
              f"{b.get('ops_per_s', '–')}, {b.get('p99_ms', '–')} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="write small files until --seconds have passed")
    r.add_argument("dir")
    r.add_argument("--seconds", type=float, default=40)
    r.add_argument("--size", type=int, default=4096, help="bytes per file")
    r.add_argument("--out", required=True, help="JSON record of every attempt")
    s = sub.add_parser("summary", help="summarise a run's record")
    s.add_argument("ops")
    s.add_argument("--events", help='file of "NAME WALLCLOCK" lines (fault, recover)')
    s.add_argument("--label", help="target name, stored in the JSON")
    s.add_argument("--fault", help="what was done (stop, kill), stored in the JSON")
    s.add_argument("--victim", help="which server, stored in the JSON")
    fl = sub.add_parser("fill", help="create exactly --files small files, no fsync")
    fl.add_argument("dir")
    fl.add_argument("--files", type=int, default=13000)
    fl.add_argument("--size", type=int, default=2048)
    fl.add_argument("--dirs", type=int, default=13)
    t = sub.add_parser("table", help="Markdown table of the summaries (*.json) in a directory")
    t.add_argument("dir")
    a = p.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "summary":
        summary(a)
    elif a.cmd == "fill":
        fill(a)
    else:
        table(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
