#!/bin/bash
# bench/recall-write.sh - what a write from another mount pays when the file's directory
# is held by a mount that reads it (local opens, docs/architecture.md): a fresh 3-node
# replica-3 playground with two mounts A and B; A creates --files files of 8 KiB in a
# new directory (a run: A holds it) and reads each back (its opens keep their windows);
# B then overwrites one of them (open O_TRUNC, 8 KiB, close: the group recalls A's
# directory first), then 20 more in the same directory (given back, cooling down), then
# 20 overwrites of a file in a directory nobody holds (control). Each overwrite timed.
# --rounds rounds, --pause-s seconds apart (past the directory's 10 s cool-down).
# Never pass/fail; run as root on an idle machine.
#
#   PLAIT_BIN_DIR=/var/cache/plait/target-rel/x86_64-unknown-linux-gnu/release bench/recall-write.sh
#
# Prints one line per round: B's first overwrite (with the recall), the median of the next
# 20, the median of the control overwrites, in milliseconds.
# Environment: PLAIT_BIN_DIR (plait and plaitd; default: the release build),
# PLAIT_BENCH_BASE (default /var/tmp/plait-bench).
set -euo pipefail
ROUNDS=3
FILES=200
PAUSE_S=11
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --pause-s) PAUSE_S=$2; shift 2 ;;
    *) echo "recall-write.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${PLAIT_BIN_DIR:-/var/cache/plait/target-rel/x86_64-unknown-linux-gnu/release}
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
log() { echo "recall-write.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ -x "$BIN/plait" ] && [ -x "$BIN/plaitd" ] || { log "no plait/plaitd in $BIN"; exit 1; }
PG="$BASE/pg-recall"
A="$BASE/recall-a"
B="$BASE/recall-b"
down() { "$BIN/plait" playground down --dir "$PG" >/dev/null 2>&1 || true; rm -rf "$PG"; }
trap down EXIT
down
mkdir -p "$PG" "$A" "$B"
"$BIN/plait" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$A" >"$BASE/recall-up.log" 2>&1 ||
  { cat "$BASE/recall-up.log" >&2; exit 1; }
"$BIN/plait" playground mount --dir "$PG" "$B" >>"$BASE/recall-up.log" 2>&1 ||
  { cat "$BASE/recall-up.log" >&2; exit 1; }
for round in $(seq 1 "$ROUNDS"); do
  python3 - "$A" "$B" "$FILES" "$round" <<'PY'
import os, sys, time
a, b, files, round_ = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
d = f"r{round_}-{os.getpid()}"
os.mkdir(f"{a}/{d}")
for i in range(files):
    with open(f"{a}/{d}/f{i}", "wb") as f:
        f.write(os.urandom(8192))
for i in range(files):
    with open(f"{a}/{d}/f{i}", "rb") as f:
        f.read()
def overwrite(path):
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(b"x" * 8192)
    return (time.perf_counter() - t) * 1000
first = overwrite(f"{b}/{d}/f7")
rest = sorted(overwrite(f"{b}/{d}/f{i}") for i in range(8, 28))
os.mkdir(f"{b}/{d}-control")
with open(f"{b}/{d}-control/g", "wb") as f:
    f.write(b"y")
control = sorted(overwrite(f"{b}/{d}-control/g") for _ in range(20))
with open(f"{a}/{d}/f7", "rb") as f:
    if f.read() != b"x" * 8192:
        sys.exit("the holder's open did not see the other mount's overwrite")
load = os.getloadavg()[0]
print(f"round {round_}: first overwrite in the held directory {first:.1f} ms | next 20 median "
      f"{rest[len(rest) // 2]:.1f} ms | control median {control[len(control) // 2]:.1f} ms | load {load:.2f}")
PY
  [ "$round" = "$ROUNDS" ] || sleep "$PAUSE_S"
done
