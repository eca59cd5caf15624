#!/usr/bin/env python3
"""procmem: record the memory of a target's processes as JSON (for bench/report.py).

    procmem.py --label plait --playground /var/tmp/plait-bench/pg/playground.toml --out mem-plait.json
    procmem.py --label bindfs --pid bindfs=12345 --out mem-bindfs.json

For every process it reads VmHWM (peak resident set size) and VmRSS (current) from
/proc/PID/status. With --playground it takes the PIDs of the [[nodes]] (role "plaitd ID")
and [[mounts]] (role "mount N") entries of a `plait playground` state file.
Python 3 standard library only.
"""

import argparse
import json
import re
import sys


def read_status(pid):
    out = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("Name", "VmHWM", "VmRSS"):
                    val = val.strip()
                    if val.endswith(" kB"):
                        out[key + "_kib"] = int(val[:-3])
                    else:
                        out[key.lower()] = val
    except OSError as e:
        out["error"] = f"/proc/{pid}/status: {e.strerror}"
    return out


def playground_pids(path):
    """[(role, pid)] from a playground.toml: [[nodes]] pid = N, [[mounts]] pid = N."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib  # Python 3.11+

        data = tomllib.loads(raw.decode())
        pids = [(f"plaitd {n.get('id', i + 1)}", n["pid"])
                for i, n in enumerate(data.get("nodes", [])) if n.get("pid")]
        pids += [(f"mount {i + 1}", m["pid"]) for i, m in enumerate(data.get("mounts", [])) if m.get("pid")]
        return pids
    except (ImportError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no tomllib (Python < 3.11) or an unexpected shape: use the line parser
    # minimal fallback: track the current [[table]] and pick its `pid = N` lines
    pids, section = [], None
    for line in raw.decode().splitlines():
        line = line.strip()
        m = re.match(r"^\[\[(\w+)\]\]$", line)
        if m:
            section = m.group(1)
            continue
        if line.startswith("[") and not line.startswith("[["):
            section = None
            continue
        m = re.match(r"^pid\s*=\s*(\d+)", line)
        if m and section in ("nodes", "mounts"):
            pids.append(("plaitd" if section == "nodes" else "mount", int(m.group(1))))
    return pids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="target label, as given to fsbench.py")
    p.add_argument("--playground", help="a plait playground.toml to take PIDs from")
    p.add_argument("--pid", action="append", default=[], metavar="ROLE=PID",
                   help="one more process, e.g. bindfs=1234")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    a = p.parse_args()
    pids = []
    if a.playground:
        pids += playground_pids(a.playground)
    for item in a.pid:
        role, _, pid = item.partition("=")
        if not pid.isdigit():
            p.error(f"--pid {item}: expected ROLE=PID")
        pids.append((role, int(pid)))
    procs = []
    for role, pid in pids:
        st = read_status(pid)
        st["role"] = role
        procs.append(st)
    out = {"tool": "procmem", "label": a.label, "processes": procs}
    text = json.dumps(out, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    missing = [p for p in procs if "VmHWM_kib" not in p]
    for m in missing:
        print(f"procmem: no memory figures for {m['role']} pid {m['pid']}: {m.get('error', 'no VmHWM')}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
