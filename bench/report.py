#!/usr/bin/env python3
"""report: turn one results directory of bench/fsbench.py JSON files into a Markdown table.

    python3 bench/report.py bench/results/20261125-210000
    python3 bench/report.py --latency --subject plait DIR

One row per metric, one column per target (the JSON's "label"), then ratio columns
SUBJECT/OTHER for every other target present (plait/bindfs, plait/local, plait/gluster).
All throughput metrics are "higher is better", so a ratio above 1 means the subject
was faster. When a target was run several times (run.sh --repeat), the median is shown.
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
]
UNITS = {"small_create": "files/s", "stat_cold": "stats/s", "stat_warm": "stats/s",
         "ls_l_cold": "entries/s", "ls_l_warm": "entries/s", "small_read_cold": "files/s",
         "rename": "ops/s", "delete": "ops/s", "large_write": "MiB/s", "large_read_cold": "MiB/s",
         "lockf": "cycles/s", "flock": "cycles/s"}
PREFERRED_ORDER = ["local", "bindfs", "plait", "gluster"]


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


def median_value(runs, metric, key=None):
    """(median, n, cold_ok) of a metric over a target's runs; key picks a latency field."""
    vals, cold_ok = [], True
    for r in runs:
        res = r.get("results", {}).get(metric)
        if not res:
            continue
        if key:
            v = (res.get("latency") or {}).get(key)
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
    for r in runs:
        e = r.get("errors", {}).get(metric)
        if e:
            return e
    return None


def render(dirpath, subject="plait", latency=False):
    runs, mems, meta = load(dirpath)
    out = []
    name = os.path.basename(os.path.normpath(dirpath))
    out.append(f"## Plait benchmark {name}")
    out.append("")
    if not runs:
        out.append("No fsbench results in this directory.")
        return "\n".join(out) + "\n"
    targets = order_targets(runs)
    others = [t for t in targets if t != subject] if subject in runs else []
    # ratio columns in the order the brief asks for: bindfs, local, gluster, then the rest
    ratio_order = [t for t in ("bindfs", "local", "gluster") if t in others]
    ratio_order += [t for t in others if t not in ratio_order]

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

    header = ["metric", "unit"] + targets + [f"{subject}/{o}" for o in ratio_order]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    notes = []
    rows = [(m, label, None) for m, label in METRICS]
    if latency:
        for m, label in METRICS:
            rows.append((m, f"{label}: p50 latency", "p50_us"))
            rows.append((m, f"{label}: p99 latency", "p99_us"))
    seen = {m for m, _ in METRICS}
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
                    res = r.get("results", {}).get(metric)
                    if res:
                        unit = "µs (lower is better)" if key else res.get("unit")
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
        if all(v is None for v in vals.values()) and key:
            continue
        ratios = []
        for o in ratio_order:
            s, b = vals.get(subject), vals.get(o)
            ratios.append(fmt_ratio(s / b) if s is not None and b not in (None, 0) else "–")
        if unit is None:
            unit = "µs (lower is better)" if key else UNITS.get(metric, "")
        out.append("| " + " | ".join([label, unit] + cells + ratios) + " |")

    out.append("")
    counts = {t: len(runs[t]) for t in targets}
    if any(c > 1 for c in counts.values()):
        out.append("Values are medians over " +
                   ", ".join(f"{t}: {c} runs" for t, c in counts.items()) + ".")
    if ratio_order:
        out.append(f"Ratios are {subject}'s value divided by the other target's; every row "
                   f"except latency rows is higher-is-better, so above 1× means {subject} was faster.")
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
    p.add_argument("--subject", default="plait", help="target the ratio columns compare")
    p.add_argument("--latency", action="store_true", help="add p50/p99 per-operation latency rows")
    p.add_argument("--out", help="also write the Markdown here")
    a = p.parse_args()
    if not os.path.isdir(a.dir):
        p.error(f"{a.dir} is not a directory")
    text = render(a.dir, a.subject, a.latency)
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
