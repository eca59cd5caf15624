#!/bin/bash
# bench/scale.sh - memory of Plait's processes as the file count grows: a replica-3
# playground, then bench/scale.py creates small files on its mount and records VmHWM and
# VmRSS of every plaitd and of the mount every --every files.  Run as root.
#
#   bench/scale.sh                              # 1,000,000 files of 2 KiB in 1000 dirs
#   bench/scale.sh --files 200000 --max-minutes 25
#   bench/scale.sh -- --jobs 4 --size 4096      # anything after -- goes to scale.py
#
# Results: bench/results/scale-<timestamp>/ (scale.json, scale.md, logs, data sizes).
# Environment: PLAIT_BIN_DIR, PLAIT_BENCH_BASE, PYTHON, as for run.sh.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
PLAIT_BIN_DIR=${PLAIT_BIN_DIR:-/var/cache/plait/target/x86_64-unknown-linux-gnu/release}
PYTHON=${PYTHON:-python3}
PLAIT="$PLAIT_BIN_DIR/plait"
FILES=1000000
EVERY=100000
MAXMIN=0
OUT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --every) EVERY=$2; shift 2 ;;
    --max-minutes) MAXMIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) echo "scale.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
log() { echo "scale.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ -x "$PLAIT" ] || { log "no $PLAIT (cargo build --release --bins)"; exit 1; }
OUT=${OUT:-$BENCH_DIR/results/scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$BASE"
PG="$BASE/pg-scale"
MNT="$BASE/scale-plait3"

down() {
  if [ -f "$PG/playground.toml" ]; then
    "$PLAIT" playground down --dir "$PG" >>"$OUT/playground.log" 2>&1 || log "warning: playground down failed"
  fi
  if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
  rm -rf "$PG"/node* "$PG"/mount-*.log  # the chunk files and metadata of a million files
}
trap 'rc=$?; trap "" INT TERM; down; exit $rc' EXIT
trap 'exit 130' INT TERM

down
mkdir -p "$PG"
"$PLAIT" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$MNT" >>"$OUT/playground.log" 2>&1 ||
  { cat "$OUT/playground.log" >&2; exit 1; }
echo "loadavg_before $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/load.txt"
log "creating up to $FILES files on $MNT (table on stderr, JSON in $OUT/scale.json)"
"$PYTHON" "$BENCH_DIR/scale.py" "$MNT/scale" --playground "$PG/playground.toml" --files "$FILES" \
  --every "$EVERY" --max-minutes "$MAXMIN" ${EXTRA[@]+"${EXTRA[@]}"} >"$OUT/scale.json" \
  2> >(tee "$OUT/scale.md" >&2)
echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
sleep 1
{
  eval "$("$PLAIT" playground env --dir "$PG")"
  "$PLAIT" status || true
  "$PLAIT" heal info || true
  du -sh "$PG"/node*/data/* 2>/dev/null || true
} >"$OUT/after.txt" 2>&1
cat "$OUT/after.txt" >&2
mkdir -p "$OUT/logs"
for f in "$PG"/mount-*.log "$PG"/node*/plaitd.log; do
  if [ -f "$f" ]; then cp "$f" "$OUT/logs/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
done
log "results in $OUT"
