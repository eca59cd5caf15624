#!/bin/bash
# bench/failover.sh - how long small-file writes stall, and how many fail, when one
# server hangs (SIGSTOP) or dies (SIGKILL): Plait replica 3 against GlusterFS replica 3.
# Run as root from the repository root.  Never pass/fail: it prints what it measured.
#
#   bench/failover.sh                          # plait3 and gluster, stop and kill
#   bench/failover.sh --targets plait3 --modes stop --hang 10
#
# For every target and fault a continuous writer (bench/writer.py: create, one 4 KiB
# write, fsync, close, one file after another, each attempt timed) runs on the mount.
# After --before seconds (default 5) one server is hit, and --hang seconds (default 20)
# later it comes back; the writer goes on for --after seconds (default 15).
#
#   plait3   `plait playground up --nodes 3 --replicas 3` (write quorum 2), a fresh
#            playground per fault; the victim is the metadata leader (LEADER column of
#            `plait playground status`).
#              stop: `plait playground pause-node K` ... `resume-node K` (SIGSTOP/SIGCONT)
#              kill: `plait playground stop-node K` (SIGKILL) ... `start-node K`
#   gluster  bench/gluster-setup.sh's volume; the victim is brick 1's glusterfsd.
#              stop: kill -STOP ... kill -CONT
#              kill: kill -KILL ... `gluster volume start plaitbench force`
#
# Results: bench/results/failover-<timestamp>/ (per run: the writer's record of every
# attempt, the fault times, a summary JSON; logs; failover.md, the table).
#
# Environment: PLAIT_BIN_DIR (default /var/cache/plait/target/x86_64-unknown-linux-gnu/release),
# PLAIT_BENCH_BASE (default /var/tmp/plait-bench), PYTHON (default python3).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
PLAIT_BIN_DIR=${PLAIT_BIN_DIR:-/var/cache/plait/target/x86_64-unknown-linux-gnu/release}
PYTHON=${PYTHON:-python3}
PLAIT="$PLAIT_BIN_DIR/plait"

TARGETS=plait3,gluster
MODES=stop,kill
BEFORE=5
HANG=20
AFTER=15
OUT=""

while [ $# -gt 0 ]; do
  case "$1" in
    --targets) TARGETS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
    --hang) HANG=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "failover.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
log() { echo "failover.sh: $*" >&2; }
die() { echo "failover.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mounts, signals to servers)"
if [[ ",$TARGETS," == *,plait3,* ]]; then
  [ -x "$PLAIT" ] && [ -x "$PLAIT_BIN_DIR/plaitd" ] || die "no plait/plaitd in $PLAIT_BIN_DIR (cargo build --release --bins)"
fi

OUT=${OUT:-$BENCH_DIR/results/failover-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$BASE"
log "results in $OUT"
PG="$BASE/pg-failover"
PMNT="$BASE/failover-plait3"
GMNT="$BASE/gluster"

# ---------------------------------------------------------------- cleanup
STOPPED_PID=""     # a process we SIGSTOPped and have not resumed yet
PAUSED_NODE=""     # a playground node we paused
WRITER_PID=""
GLUSTER_UP=0
cleanup() {
  local rc=$?
  trap '' INT TERM
  if [ -n "$WRITER_PID" ]; then kill "$WRITER_PID" 2>/dev/null || true; wait "$WRITER_PID" 2>/dev/null || true; fi
  if [ -n "$STOPPED_PID" ]; then kill -CONT "$STOPPED_PID" 2>/dev/null || true; fi
  if [ -n "$PAUSED_NODE" ]; then "$PLAIT" playground resume-node --dir "$PG" "$PAUSED_NODE" >/dev/null 2>&1 || true; fi
  plait_down
  if [ "$GLUSTER_UP" = 1 ]; then
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" down >>"$OUT/gluster-setup.log" 2>&1 ||
      log "warning: gluster-setup.sh down failed (see $OUT/gluster-setup.log)"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

plait_down() {
  if [ -f "$PG/playground.toml" ]; then
    "$PLAIT" playground down --dir "$PG" >>"$OUT/plait3-playground.log" 2>&1 ||
      log "warning: playground down failed (see $OUT/plait3-playground.log)"
  fi
  if mountpoint -q "$PMNT" 2>/dev/null; then fusermount3 -u "$PMNT" 2>/dev/null || umount -l "$PMNT" || true; fi
}

now() { date +%s.%N; }

# the metadata leader's node number, as the running nodes see it
plait_leader() {
  "$PLAIT" playground status --dir "$PG" 2>/dev/null |
    awk '$1 ~ /^[0-9]+$/ && $3 == "running" && $4 ~ /^[0-9]+$/ {print $4}' | sort | uniq -c | sort -rn |
    awk 'NR==1{print $2}'
}

# ---------------------------------------------------------------- one run
# run_one TARGET MODE MOUNT: writer on MOUNT, fault at +BEFORE, recovery at +BEFORE+HANG
run_one() {
  local t=$1 mode=$2 mnt=$3 d ev victim pid rc
  local name="$t-$mode"
  d="$mnt/failover-$mode-$$"
  ev="$OUT/$name.events"
  : >"$ev"
  mkdir -p "$d"
  log "== $name: writer on $d for $((BEFORE + HANG + AFTER)) s"
  timeout --kill-after=10 $((BEFORE + HANG + AFTER + 300)) \
    "$PYTHON" "$BENCH_DIR/writer.py" run "$d" --seconds $((BEFORE + HANG + AFTER)) \
    --out "$OUT/$name.ops.json" 2>>"$OUT/$name.log" &
  WRITER_PID=$!
  sleep "$BEFORE"
  case "$t" in
  plait3)
    victim=$(plait_leader)
    [ -n "$victim" ] || { log "warning: no leader found"; victim=1; }
    pid=$(awk -v k="$victim" '/^\[\[nodes\]\]/{n++} n==k && /^pid/{print $3; exit}' "$PG/playground.toml")
    echo "victim node $victim (plaitd pid $pid), the metadata leader" >>"$OUT/$name.log"
    "$PLAIT" playground status --dir "$PG" >>"$OUT/$name.log" 2>&1 || true
    echo "fault $(now)" >>"$ev"
    if [ "$mode" = stop ]; then
      PAUSED_NODE=$victim
      "$PLAIT" playground pause-node --dir "$PG" "$victim" >>"$OUT/$name.log" 2>&1
    else
      "$PLAIT" playground stop-node --dir "$PG" "$victim" >>"$OUT/$name.log" 2>&1
    fi
    sleep "$HANG"
    echo "recover $(now)" >>"$ev"
    if [ "$mode" = stop ]; then
      "$PLAIT" playground resume-node --dir "$PG" "$victim" >>"$OUT/$name.log" 2>&1
      PAUSED_NODE=""
    else
      "$PLAIT" playground start-node --dir "$PG" "$victim" >>"$OUT/$name.log" 2>&1 ||
        log "warning: start-node $victim failed (see $OUT/$name.log)"
    fi
    echo "recovered $(now)" >>"$ev"
    ;;
  gluster)
    victim=1
    pid=$(MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" brick-pid 1)
    [ -n "$pid" ] || die "no PID for brick 1"
    echo "victim brick 1 (glusterfsd pid $pid)" >>"$OUT/$name.log"
    echo "fault $(now)" >>"$ev"
    if [ "$mode" = stop ]; then
      STOPPED_PID=$pid
      kill -STOP "$pid"
    else
      kill -KILL "$pid"
    fi
    sleep "$HANG"
    echo "recover $(now)" >>"$ev"
    if [ "$mode" = stop ]; then
      kill -CONT "$pid"
      STOPPED_PID=""
    else
      gluster --mode=script volume start plaitbench force >>"$OUT/$name.log" 2>&1 ||
        log "warning: gluster volume start force failed (see $OUT/$name.log)"
    fi
    echo "recovered $(now)" >>"$ev"
    ;;
  esac
  rc=0
  wait "$WRITER_PID" || rc=$?
  WRITER_PID=""
  [ "$rc" = 0 ] || log "warning: the writer exited with $rc (see $OUT/$name.log)"
  if [ -s "$OUT/$name.ops.json" ]; then
    "$PYTHON" "$BENCH_DIR/writer.py" summary "$OUT/$name.ops.json" --events "$ev" \
      --label "$t" --fault "$mode" --victim "$victim" >"$OUT/$name.json"
    "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("failover.sh: %s: %d attempts, %d failed, longest op %.2f s, longest gap %.2f s" % (sys.argv[2], d["attempts"], d["failed"], d.get("longest_op_s", 0), d["longest_gap_without_success_s"]), file=sys.stderr)' "$OUT/$name.json" "$name"
  fi
  rm -rf "$d" 2>/dev/null || log "warning: could not remove $d"
}

# ---------------------------------------------------------------- targets
IFS=, read -r -a TL <<<"$TARGETS"
IFS=, read -r -a ML <<<"$MODES"
echo "loadavg_before $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/load.txt"
for t in "${TL[@]}"; do
  case "$t" in
  plait3)
    for mode in "${ML[@]}"; do
      plait_down
      mkdir -p "$PG"
      rm -f "$PG"/mount-*.log  # `playground up` appends to an earlier playground's mount logs
      "$PLAIT" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$PMNT" \
        >>"$OUT/plait3-playground.log" 2>&1 || die "playground up failed (see $OUT/plait3-playground.log)"
      run_one plait3 "$mode" "$PMNT"
      "$PLAIT" playground status --dir "$PG" >>"$OUT/plait3-$mode.log" 2>&1 || true
      mkdir -p "$OUT/logs-plait3-$mode"
      for f in "$PG"/mount-*.log "$PG"/node*/plaitd.log; do
        if [ -f "$f" ]; then cp "$f" "$OUT/logs-plait3-$mode/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
      done
      plait_down
    done
    ;;
  gluster)
    GLUSTER_UP=1
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" up >>"$OUT/gluster-setup.log" 2>&1 ||
      die "gluster setup failed (see $OUT/gluster-setup.log)"
    for mode in "${ML[@]}"; do
      # start from a healthy volume: every brick up, nothing left to heal
      MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" up >>"$OUT/gluster-setup.log" 2>&1 || true
      for _ in $(seq 1 120); do
        n=$(gluster volume heal plaitbench info 2>/dev/null | awk '/^Number of entries:/{s+=$4} END{print s+0}')
        [ "$n" = 0 ] && break
        sleep 1
      done
      run_one gluster "$mode" "$GMNT"
    done
    mkdir -p "$OUT/logs-gluster"
    cp /var/log/glusterfs/*plait-bench-gluster*.log /var/log/glusterfs/bricks/*plait-bench-gluster-bricks*.log \
      "$OUT/logs-gluster/" 2>/dev/null || true
    MNT="$GMNT" "$BENCH_DIR/gluster-setup.sh" down >>"$OUT/gluster-setup.log" 2>&1 || true
    GLUSTER_UP=0
    ;;
  *) die "unknown target $t" ;;
  esac
done
echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"

"$PYTHON" "$BENCH_DIR/writer.py" table "$OUT" | tee "$OUT/failover.md"
log "results in $OUT"
