#!/bin/bash
# bench/heal.sh - how long a replica that missed N small-file writes takes to catch up:
# Plait replica 3 against GlusterFS replica 3.  Run as root from the repository root.
# Never pass/fail: it prints what it measured.
#
#   bench/heal.sh                              # plait3 and gluster, 13,000 files of 2 KiB
#   bench/heal.sh --targets plait3 --files 2000
#
#   plait3   `plait playground up --nodes 3 --replicas 3`; `playground stop-node K` of a
#            node that is not the metadata leader (SIGKILL); N files written through the
#            mount (create, write, close, in --dirs directories); `start-node K`; then
#            `plait heal start`, and `plait heal info` polled until nothing is pending.
#            Reported: seconds from `start-node` to 0 pending (and to `heal start`'s end),
#            and to the node's metadata having caught up (its applied index reaching the
#            others'; files of at most 32 KiB live in the metadata, not in chunks).
#   gluster  bench/gluster-setup.sh's volume; brick 3's glusterfsd SIGKILLed; the same
#            files; `gluster volume start plaitbench force`; `gluster volume heal
#            plaitbench info` polled every 5 s until every brick reports 0 entries (the
#            self-heal daemon starts on its own when the brick comes back), at most --cap
#            seconds (default 900).
#
# Results: bench/results/heal-<timestamp>/ (heal.md, heal-<target>.json, logs).
# Environment: PLAIT_BIN_DIR, PLAIT_BENCH_BASE, PYTHON, as for run.sh.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
PLAIT_BIN_DIR=${PLAIT_BIN_DIR:-/var/cache/plait/target/x86_64-unknown-linux-gnu/release}
PYTHON=${PYTHON:-python3}
PLAIT="$PLAIT_BIN_DIR/plait"

TARGETS=plait3,gluster
FILES=13000
SIZE=2048
DIRS=13
CAP=900
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) TARGETS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --dirs) DIRS=$2; shift 2 ;;
    --cap) CAP=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "heal.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
log() { echo "heal.sh: $*" >&2; }
die() { echo "heal.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
OUT=${OUT:-$BENCH_DIR/results/heal-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$BASE"
log "results in $OUT"
PG="$BASE/pg-heal"
PMNT="$BASE/heal-plait3"
GMNT="$BASE/gluster"

GLUSTER_UP=0
plait_down() {
  if [ -f "$PG/playground.toml" ]; then
    "$PLAIT" playground down --dir "$PG" >>"$OUT/plait3.log" 2>&1 || log "warning: playground down failed"
  fi
  if mountpoint -q "$PMNT" 2>/dev/null; then fusermount3 -u "$PMNT" 2>/dev/null || umount -l "$PMNT" || true; fi
}
cleanup() {
  local rc=$?
  trap '' INT TERM
  plait_down
  if [ "$GLUSTER_UP" = 1 ]; then
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" down >>"$OUT/gluster-setup.log" 2>&1 || log "warning: gluster down failed"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { "$PYTHON" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$2"; }

# pending heal chunks (plait heal info --output json: one row per node)
plait_pending() {
  "$PLAIT" heal info --output json 2>>"$OUT/plait3.log" |
    "$PYTHON" -c 'import json,sys; print(sum(r["pending_chunks"] for r in json.load(sys.stdin)))'
}

# Prints 1 if node $1 has applied as far as every other node that answers (its metadata
# caught up: small files live in the metadata), else 0.
plait_caught_up() {
  "$PLAIT" status --output json 2>>"$OUT/plait3.log" | "$PYTHON" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r.get("up")]
mine = [r["last_applied"] for r in rows if r["node_id"] == int(sys.argv[1])]
rest = [r["last_applied"] for r in rows if r["node_id"] != int(sys.argv[1])]
print(1 if mine and rest and mine[0] >= max(rest) else 0)' "$1"
}

echo "loadavg_before $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/load.txt"
IFS=, read -r -a TL <<<"$TARGETS"
for t in "${TL[@]}"; do
  case "$t" in
  plait3)
    plait_down
    mkdir -p "$PG"
    rm -f "$PG"/mount-*.log  # `playground up` appends to an earlier playground's mount logs
    "$PLAIT" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$PMNT" >>"$OUT/plait3.log" 2>&1 ||
      die "playground up failed (see $OUT/plait3.log)"
    eval "$("$PLAIT" playground env --dir "$PG")"
    leader=$("$PLAIT" playground status --dir "$PG" | awk '$1 ~ /^[0-9]+$/ && $4 ~ /^[0-9]+$/ {print $4; exit}')
    victim=3; [ "$leader" = 3 ] && victim=2
    log "plait3: leader is node $leader; stopping node $victim (SIGKILL)"
    "$PLAIT" playground stop-node --dir "$PG" "$victim" >>"$OUT/plait3.log" 2>&1
    log "plait3: writing $FILES files of $SIZE B"
    "$PYTHON" "$BENCH_DIR/writer.py" fill "$PMNT/heal" --files "$FILES" --size "$SIZE" --dirs "$DIRS" \
      >"$OUT/plait3-fill.json" 2>>"$OUT/plait3.log"
    cat "$OUT/plait3-fill.json" >&2
    sync
    pending_before=$(plait_pending)
    "$PLAIT" heal info >>"$OUT/plait3.log" 2>&1 || true
    "$PLAIT" status >>"$OUT/plait3.log" 2>&1 || true
    log "plait3: $pending_before chunk copies pending; starting node $victim"
    t0=$(now)
    "$PLAIT" playground start-node --dir "$PG" "$victim" >>"$OUT/plait3.log" 2>&1
    t_started=$(now)
    until [ "$(plait_caught_up "$victim" || echo 0)" = 1 ] ||
      [ "$("$PYTHON" -c "import time,sys; print(int(time.time() - float(sys.argv[1])))" "$t0")" -ge "$CAP" ]; do
      sleep 0.1
    done
    t_meta=$(now)
    rc=0
    "$PLAIT" heal start --stall-timeout-s 300 >>"$OUT/plait3.log" 2>&1 || rc=$?
    t_heal=$(now)
    pending=$(plait_pending || echo unknown)
    while [ "$pending" != 0 ] && [ "$("$PYTHON" -c "import time,sys; print(int(time.time() - float(sys.argv[1])))" "$t0")" -lt "$CAP" ]; do
      sleep 1
      pending=$(plait_pending || echo unknown)
    done
    t_zero=$(now)
    "$PLAIT" heal info >>"$OUT/plait3.log" 2>&1 || true
    sleep 11  # NodeStatus recounts chunk files every 10 s
    "$PLAIT" status >>"$OUT/plait3.log" 2>&1 || true
    "$PLAIT" status --output json >"$OUT/plait3-status-after.json" 2>>"$OUT/plait3.log" || true
    cat >"$OUT/heal-plait3.json" <<EOF
{"tool": "heal", "label": "plait3", "files": $FILES, "size": $SIZE, "victim": "node $victim (not the leader)",
 "pending_before": $pending_before, "start_node_s": $(since "$t0" "$t_started"),
 "metadata_caught_up_s": $(since "$t0" "$t_meta"),
 "heal_start_exit": $rc, "to_heal_start_end_s": $(since "$t0" "$t_heal"),
 "to_zero_pending_s": $(since "$t0" "$t_zero"), "pending_at_end": "$pending"}
EOF
    cat "$OUT/heal-plait3.json" >&2
    mkdir -p "$OUT/logs-plait3"
    for f in "$PG"/mount-*.log "$PG"/node*/plaitd.log; do
      if [ -f "$f" ]; then cp "$f" "$OUT/logs-plait3/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
    done
    plait_down
    ;;
  gluster)
    GLUSTER_UP=1
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" up >>"$OUT/gluster-setup.log" 2>&1 || die "gluster setup failed"
    rm -rf "$GMNT/heal"
    pid=$(MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" brick-pid 3)
    [ -n "$pid" ] || die "no PID for brick 3"
    log "gluster: killing brick 3 (pid $pid)"
    kill -KILL "$pid"
    sleep 1
    log "gluster: writing $FILES files of $SIZE B"
    "$PYTHON" "$BENCH_DIR/writer.py" fill "$GMNT/heal" --files "$FILES" --size "$SIZE" --dirs "$DIRS" \
      >"$OUT/gluster-fill.json" 2>>"$OUT/gluster.log"
    cat "$OUT/gluster-fill.json" >&2
    t0=$(now)
    gluster --mode=script volume start plaitbench force >>"$OUT/gluster.log" 2>&1
    log "gluster: brick 3 restarted; polling heal info every 5 s (cap $CAP s)"
    first=""
    while :; do
      info=$(gluster volume heal plaitbench info 2>&1 || true)
      n=$(awk '/^Number of entries:/{ if ($4 ~ /^[0-9]+$/) s+=$4; else bad=1 } END{ if (bad) print "unknown"; else print s+0 }' <<<"$info")
      el=$("$PYTHON" -c "import time,sys; print(round(time.time() - float(sys.argv[1]), 1))" "$t0")
      echo "$el s: $n entries" >>"$OUT/gluster.log"
      [ -n "$first" ] || first=$n
      [ "$n" = 0 ] && break
      if [ "${el%.*}" -ge "$CAP" ]; then log "gluster: cap of $CAP s reached with $n entries"; break; fi
      sleep 5
    done
    t_zero=$(now)
    cat >"$OUT/heal-gluster.json" <<EOF
{"tool": "heal", "label": "gluster", "files": $FILES, "size": $SIZE, "victim": "brick 3 (SIGKILL)",
 "pending_before": "$first", "to_zero_pending_s": $(since "$t0" "$t_zero"), "pending_at_end": "$n",
 "capped": $([ "$n" = 0 ] && echo false || echo true)}
EOF
    cat "$OUT/heal-gluster.json" >&2
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" down >>"$OUT/gluster-setup.log" 2>&1 || true
    GLUSTER_UP=0
    ;;
  *) die "unknown target $t" ;;
  esac
done
echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
cat "$OUT/load.txt"
