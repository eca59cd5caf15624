#!/bin/bash
# bench/delete-ab.sh - deletes in a run on Plait replica 3, one build against another: for
# each BIN_DIR given (a directory holding `plait` and `plaitd`), a fresh 3-node replica-3
# playground, then --dirs directories of --files files of 8 KiB created, `sync`, a pause
# of --idle-s seconds (long enough for the mount to give idle directories back, as the
# fsbench.py delete phase finds them), then every file unlinked in order and timed.
# Never pass/fail; run as root on an idle machine.
#
#   bench/delete-ab.sh /var/tmp/bin-before /var/cache/plait/target-rel/x86_64-unknown-linux-gnu/release
#   bench/delete-ab.sh --rounds 3 --dirs 40 --files 100 DIR_A DIR_B
#
# Prints one line per build and round: deletes per second.
# Environment: PLAIT_BENCH_BASE (default /var/tmp/plait-bench).
set -euo pipefail

BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
DIRS=20
FILES=100
IDLE_S=7
ROUNDS=1
BINS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dirs) DIRS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --idle-s) IDLE_S=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) BINS+=("$1"); shift ;;
  esac
done
log() { echo "delete-ab.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ ${#BINS[@]} -gt 0 ] || { log "give at least one BIN_DIR"; exit 2; }
for b in "${BINS[@]}"; do
  [ -x "$b/plait" ] && [ -x "$b/plaitd" ] || { log "no plait/plaitd in $b"; exit 1; }
done
PG="$BASE/pg-deleteab"
MNT="$BASE/deleteab-plait3"
down() { "$1/plait" playground down --dir "$PG" >/dev/null 2>&1 || true; rm -rf "$PG"; }
trap 'down "${BINS[0]}"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for b in "${BINS[@]}"; do
    down "$b"
    mkdir -p "$PG" "$MNT"
    "$b/plait" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$MNT" >"$BASE/deleteab-up.log" 2>&1 ||
      { cat "$BASE/deleteab-up.log" >&2; exit 1; }
    rate=$(python3 - "$MNT" "$DIRS" "$FILES" "$IDLE_S" <<'PY'
import os, sys, time
mnt, dirs, files, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
block = os.urandom(8192)
for d in range(dirs):
    os.mkdir(f"{mnt}/d{d}")
    for i in range(files):
        with open(f"{mnt}/d{d}/f{i}", "wb") as f:
            f.write(block)
os.sync()
time.sleep(idle)
t = time.monotonic()
for d in range(dirs):
    for i in range(files):
        os.unlink(f"{mnt}/d{d}/f{i}")
elapsed = time.monotonic() - t
left = sum(len(os.listdir(f"{mnt}/d{d}")) for d in range(dirs))
if left:
    sys.exit(f"{left} files still listed after their unlinks")
print(f"{dirs * files / elapsed:.0f}")
PY
)
    echo "round $round $b: delete $rate ops/s | load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
