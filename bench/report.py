#!/usr/bin/env python3
"""report: turn one results directory of bench/fsbench.py JSON files into a Markdown table.

    python3 bench/report.py bench/results/20261125-210000
    python3 bench/report.py --latency --ratio plait3/gluster,plait3/plait DIR

One row per metric, one column per target (the JSON's "label"), then ratio columns
A/B: plait/bindfs, plait/local, plait/gluster and plait3/gluster for the targets present
(or --ratio). Every ratio is oriented so that above 1 means A was faster: for throughput
rows it is A's value / B's, for the hand-off latency rows (lower is better) B's / A's.
When a target was run several times (run.sh --repeat), the median is shown. With plait3
and gluster present a second table checks the replica-3 targets (TARGETS below).
procmem.py files in the same directory add a process-memory table.
Python 3 standard library only.
"""

import argparse
import glob
import json
import os
import statistics
import sys

METRICS = [
    ("small_create", "small-file create+write+close"),
    ("stat_cold", "stat, cold caches"),
    ("stat_warm", "stat, warm"),
    ("ls_l_cold", "ls -l (scandir+lstat), cold"),
    ("ls_l_warm", "ls -l (scandir+lstat), warm"),
    ("small_read_cold", "small-file read, cold"),
    ("rename", "rename in same dir"),
    ("delete", "delete"),
    ("large_write", "large seq. write + fsync"),
    ("large_read_cold", "large seq. read, cold"),
    ("lockf", "fcntl lock+unlock (lockf)"),
    ("flock", "flock lock+unlock"),
    ("lockf_handoff", "fcntl hand-off, 2 mounts, median"),
    ("lockf_handoff:p99_ms", "fcntl hand-off, 2 mounts, p99"),
    ("flock_handoff", "flock hand-off, 2 mounts, median"),
    ("flock_handoff:p99_ms", "flock hand-off, 2 mounts, p99"),
]
# rows where lower is better (their ratio columns are inverted: above 1× still means faster)
LOWER_IS_BETTER = {"lockf_handoff", "flock_handoff"}
# Replica-3 targets of the replication and lock issues: (metric, row label, kind, goal).
# kind "ratio": plait3's value / gluster's must be >= goal; "below": plait3's value < goal.
TARGETS = [
    ("small_create", "small-file create+write+close", "ratio", 5),
    ("stat_cold", "stat, cold", "ratio", 10),
    ("ls_l_cold", "ls -l, cold", "ratio", 3),
    ("small_read_cold", "small-file read, cold", "ratio", 3),
    ("large_write", "sequential write (+fsync)", "ratio", 1),
    ("large_read_cold", "sequential read, cold", "ratio", 1.5),
    ("lockf", "fcntl lock+unlock, uncontended", "ratio", 3),
    ("flock", "flock lock+unlock, uncontended", "ratio", 3),
    ("lockf_handoff", "fcntl hand-off median (ms)", "below", 2),
    ("flock_handoff", "flock hand-off median (ms)", "below", 2),
]
UNITS = {"small_create": "files/s", "stat_cold": "stats/s", "stat_warm": "stats/s",
         "ls_l_cold": "entries/s", "ls_l_warm": "entries/s", "small_read_cold": "files/s",
         "rename": "ops/s", "delete": "ops/s", "large_write": "MiB/s", "large_read_cold": "MiB/s",
         "lockf": "cycles/s", "flock": "cycles/s", "lockf_handoff": "ms", "flock_handoff": "ms"}
PREFERRED_ORDER = ["local", "bindfs", "plait", "plait3", "gluster"]
DEFAULT_RATIOS = ["plait/bindfs", "plait/local", "plait/gluster", "plait3/gluster"]


def fmt_num(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(r):
    if r is None:
        return "–"
    if r >= 100:
        return f"{r:.0f}×"
    return f"{r:.3g}×"


def load(dirpath):
    runs, mems, meta = {}, [], None
    for path in sorted(glob.glob(os.path.join(dirpath, "*.json"))):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            print(f"report: skipping {path}: {e}", file=sys.stderr)
            continue
        if not isinstance(d, dict):
            continue
        tool = d.get("tool")
        if tool == "fsbench":
            runs.setdefault(d.get("label", os.path.basename(path)), []).append(d)
        elif tool == "procmem":
            mems.append(d)
        elif tool == "run.sh":
            meta = d
    return runs, mems, meta


def order_targets(labels):
    known = [t for t in PREFERRED_ORDER if t in labels]
    return known + sorted(t for t in labels if t not in known)


def split_metric(metric):
    """"lockf_handoff:p99_ms" -> ("lockf_handoff", "p99_ms"): a field of the result."""
    m, _, field = metric.partition(":")
    return m, field or None


def median_value(runs, metric, key=None):
    """(median, n, cold_ok) of a metric over a target's runs; key picks a latency field."""
    vals, cold_ok = [], True
    metric, field = split_metric(metric)
    for r in runs:
        res = r.get("results", {}).get(metric)
        if not res:
            continue
        if key:
            v = (res.get("latency") or {}).get(key)
        elif field:
            v = res.get(field)
        else:
            v = res.get("value")
        if v is None:
            continue
        vals.append(v)
        if res.get("cold") is False:
            cold_ok = False
    if not vals:
        return None, 0, cold_ok
    return statistics.median(vals), len(vals), cold_ok


def first_error(runs, metric):
    metric, _ = split_metric(metric)
    for r in runs:
        e = r.get("errors", {}).get(metric)
        if e:
            return e
    return None


def ratio(metric, a, b, key=None):
    """a relative to b, oriented so that above 1 means a was faster."""
    if a is None or b is None or a == 0 or b == 0:
        return None
    if key or split_metric(metric)[0] in LOWER_IS_BETTER:
        return b / a
    return a / b


def render(dirpath, ratios=None, latency=False):
    runs, mems, meta = load(dirpath)
    out = []
    name = os.path.basename(os.path.normpath(dirpath))
    out.append(f"## Plait benchmark {name}")
    out.append("")
    if not runs:
        out.append("No fsbench results in this directory.")
        return "\n".join(out) + "\n"
    targets = order_targets(runs)
    pairs = []
    for rs in ratios or DEFAULT_RATIOS:
        a, _, b = rs.partition("/")
        if a in runs and b in runs and a != b:
            pairs.append((a, b))

    any_run = runs[targets[0]][0]
    params = any_run.get("params", {})
    host = any_run.get("host", {})
    out.append(
        f"{params.get('files')} files × {params.get('file_size')} B in {params.get('dirs')} dirs"
        f"{' (fsync each)' if params.get('fsync_small') else ''}; "
        f"large file {params.get('large_mib')} MiB; {params.get('lock_cycles')} lock cycles. "
        f"Host {host.get('hostname')}, kernel {host.get('kernel')}, {host.get('cpus')} CPUs."
    )
    if meta:
        bits = [f"{k} {v}" for k, v in meta.items() if k not in ("tool",) and v not in (None, "")]
        out.append("Run: " + "; ".join(bits) + ".")
    for t in targets:
        for r in runs[t]:
            if r.get("params") != params:
                out.append(f"**Warning:** target {t} ran with different parameters: {r.get('params')}")
                break
    out.append("")

    header = ["metric", "unit"] + targets + [f"{a}/{b}" for a, b in pairs]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    notes = []
    rows = [(m, label, None) for m, label in METRICS]
    if latency:
        for m, label in METRICS:
            if ":" in m:
                continue
            rows.append((m, f"{label}: p50 latency", "p50_us"))
            rows.append((m, f"{label}: p99 latency", "p99_us"))
    seen = {split_metric(m)[0] for m, _ in METRICS}
    extra = []
    for t in targets:
        for r in runs[t]:
            for m in r.get("results", {}):
                if m not in seen:
                    seen.add(m)
                    extra.append((m, m, None))
    rows += extra

    for metric, label, key in rows:
        unit = None
        vals = {}
        cells = []
        for t in targets:
            v, n, cold_ok = median_value(runs[t], metric, key)
            if unit is None:
                for r in runs[t]:
                    res = r.get("results", {}).get(split_metric(metric)[0])
                    if res:
                        unit = "µs (lower is better)" if key else res.get("unit")
                        if not key and res.get("lower_is_better"):
                            unit += " (lower is better)"
                        break
            vals[t] = v
            if v is None:
                err = first_error(runs[t], metric)
                if err:
                    notes.append(f"{t} {metric}: {err}")
                    cells.append("error")
                else:
                    cells.append("–")
            else:
                mark = "" if cold_ok or key else "*"
                cells.append(fmt_num(v) + mark)
        if all(v is None for v in vals.values()) and (key or split_metric(metric)[0] in LOWER_IS_BETTER):
            continue  # latency rows and hand-off rows nobody measured
        ratio_cells = [fmt_ratio(ratio(metric, vals.get(a), vals.get(b), key)) for a, b in pairs]
        if unit is None:
            unit = "µs (lower is better)" if key else UNITS.get(metric, "")
        out.append("| " + " | ".join([label, unit] + cells + ratio_cells) + " |")

    out.append("")
    counts = {t: len(runs[t]) for t in targets}
    if any(c > 1 for c in counts.values()):
        out.append("Values are medians over " +
                   ", ".join(f"{t}: {c} runs" for t, c in counts.items()) + ".")
    if pairs:
        out.append("Ratios A/B are oriented so that above 1× means A was faster: A's value divided "
                   "by B's on throughput rows, B's divided by A's on the (lower-is-better) "
                   "hand-off and latency rows.")
    loads = []
    for t in targets:
        la = [r.get("host", {}).get("loadavg_after", [None])[0] for r in runs[t]]
        la = [x for x in la if x is not None]
        if la:
            loads.append(f"{t} {max(la):.1f}")
    if loads:
        out.append(f"1-minute load average after each target (on {host.get('cpus')} CPUs; high values "
                   "mean other work competed with the benchmark): " + ", ".join(loads) + ".")
    not_dropped = sorted({f"{t} ({r['drop_caches'].get('why_not')})" for t in targets for r in runs[t]
                          if r.get("drop_caches", {}).get("why_not")})
    if not_dropped:
        out.append("\\* caches were not dropped, so \"cold\" rows are warm for: " + ", ".join(not_dropped) + ".")
    for t in targets:
        for r in runs[t]:
            mnt = r.get("mount") or {}
            for n in r.get("notes", []):
                out.append(f"- {t}: {n}")
            if mnt:
                out.append(f"- {t}: `{r.get('path')}` on {mnt.get('fstype')} ({mnt.get('source')})")
            for k, e in r.get("errors", {}).items():
                if k not in dict(METRICS) and f"{t} {k}: {e}" not in notes:
                    notes.append(f"{t} {k}: {e}")
            break
    if notes:
        out.append("")
        out.append("Errors:")
        for n in dict.fromkeys(notes):
            out.append(f"- {n}")

    if "plait3" in runs and "gluster" in runs:
        out.append("")
        out.append("Replica-3 targets (plait3 = Plait, 3 nodes, replica 3, write quorum 2; "
                   "gluster = GlusterFS replica 3), from the replication and lock issues:")
        out.append("")
        out.append("| target | plait3 | gluster | plait3/gluster | goal | met |")
        out.append("|---|---:|---:|---:|---|---|")
        for metric, label, kind, goal in TARGETS:
            p3, _, _ = median_value(runs["plait3"], metric)
            gl, _, _ = median_value(runs["gluster"], metric)
            r = ratio(metric, p3, gl)
            if kind == "ratio":
                goal_s = f"≥ {goal:g}×"
                met = None if r is None else r >= goal
            else:
                goal_s = f"< {goal:g} ms"
                met = None if p3 is None else p3 < goal
            out.append(f"| {label} | {fmt_num(p3)} | {fmt_num(gl)} | {fmt_ratio(r)} | {goal_s} | "
                       f"{'–' if met is None else ('yes' if met else '**no**')} |")

    if mems:
        out.append("")
        out.append("Process memory after the run (VmHWM is the peak resident set size):")
        out.append("")
        out.append("| target | process | pid | peak RSS (MiB) | RSS now (MiB) |")
        out.append("|---|---|---:|---:|---:|")
        rank = {t: i for i, t in enumerate(PREFERRED_ORDER)}
        for m in sorted(mems, key=lambda m: (rank.get(m.get("label"), 99), str(m.get("label")))):
            for p in m.get("processes", []):
                hwm, rss = p.get("VmHWM_kib"), p.get("VmRSS_kib")
                out.append(
                    f"| {m.get('label')} | {p.get('role')} ({p.get('name', '?')}) | {p.get('pid')} | "
                    f"{fmt_num(hwm / 1024) if hwm is not None else p.get('error', '–')} | "
                    f"{fmt_num(rss / 1024) if rss is not None else '–'} |"
                )
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a results directory (bench/results/<timestamp>)")
    p.add_argument("--ratio", type=lambda v: [x for x in v.split(",") if x], default=None,
                   help="comma-separated ratio columns A/B (default: " + ",".join(DEFAULT_RATIOS)
                        + ", those whose targets are present)")
    p.add_argument("--latency", action="store_true", help="add p50/p99 per-operation latency rows")
    p.add_argument("--out", help="also write the Markdown here")
    a = p.parse_args()
    if not os.path.isdir(a.dir):
        p.error(f"{a.dir} is not a directory")
    text = render(a.dir, a.ratio, a.latency)
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
