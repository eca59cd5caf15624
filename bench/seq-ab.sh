#!/bin/bash
# bench/seq-ab.sh - sequential write and cold read of Plait replica 3, one build against
# another, side by side: for each BIN_DIR given (a directory holding `plait` and `plaitd`),
# a fresh 3-node replica-3 playground, then --files files of --mib MiB each written with
# dd (1 MiB blocks, conv=fsync) and read back with dd after dropping the kernel's caches.
# Every file has its own random contents (the same bytes would deduplicate into chunks
# the nodes already hold). Never pass/fail; run as root on an idle machine.
#
#   bench/seq-ab.sh /var/tmp/bin-before /var/cache/plait/target-rel/x86_64-unknown-linux-gnu/release
#   bench/seq-ab.sh --rounds 2 --mib 512 DIR_A DIR_B
#
# Prints one line per build and round: write MB/s of each file | read MB/s of each file.
# Environment: PLAIT_BENCH_BASE (default /var/tmp/plait-bench).
set -euo pipefail

BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
FILES=3
MIB=256
ROUNDS=1
BINS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) BINS+=("$1"); shift ;;
  esac
done
log() { echo "seq-ab.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ ${#BINS[@]} -gt 0 ] || { log "give at least one BIN_DIR"; exit 2; }
for b in "${BINS[@]}"; do
  [ -x "$b/plait" ] && [ -x "$b/plaitd" ] || { log "no plait/plaitd in $b"; exit 1; }
done
PG="$BASE/pg-seqab"
MNT="$BASE/seqab-plait3"
SRC="$BASE/seqab-src"
mkdir -p "$SRC"
for i in $(seq 1 "$FILES"); do
  [ "$(stat -c %s "$SRC/f$i" 2>/dev/null || echo 0)" = $((MIB * 1048576)) ] ||
    dd if=/dev/urandom of="$SRC/f$i" bs=1M count="$MIB" status=none
done
rate() { tail -1 | awk '{print $(NF-1), $NF}'; }
down() { "$1/plait" playground down --dir "$PG" >/dev/null 2>&1 || true; rm -rf "$PG"; }
trap 'down "${BINS[0]}"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for b in "${BINS[@]}"; do
    down "$b"
    mkdir -p "$PG"
    "$b/plait" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$MNT" >"$BASE/seqab-up.log" 2>&1 ||
      { cat "$BASE/seqab-up.log" >&2; exit 1; }
    w=""; r=""
    for i in $(seq 1 "$FILES"); do
      w="$w $(dd if="$SRC/f$i" of="$MNT/f$i" bs=1M conv=fsync 2>&1 | rate)"
    done
    for i in $(seq 1 "$FILES"); do
      sync; echo 3 >/proc/sys/vm/drop_caches
      r="$r $(dd if="$MNT/f$i" of=/dev/null bs=1M 2>&1 | rate)"
    done
    cmp -s "$SRC/f$FILES" "$MNT/f$FILES" && ok="read back ok" || ok="READ BACK DIFFERS"
    echo "round $round $b: write$w | read$r | $ok | load $(cut -d' ' -f1 /proc/loadavg)"
    down "$b"
  done
done
