#!/bin/bash
# bench/run.sh - run bench/fsbench.py against several targets side by side and
# print a Markdown comparison table.  Run as root on the benchmark machine.
#
#   bench/run.sh                       # local, bindfs, plait
#   bench/run.sh --gluster             # ... and GlusterFS replica 3 on loopback
#   bench/run.sh --targets plait3,gluster   # the replica-3 comparison
#   bench/run.sh --quick               # small sizes, for a smoke run
#   bench/run.sh --targets local,bindfs -- --files 1000 --large-mib 128
#
# Targets (all directories on the same disk, under $BASE=/var/tmp/plait-bench):
#   local    $BASE/local, the plain filesystem
#   bindfs   a bindfs FUSE passthrough of $BASE/bindfs-src mounted at $BASE/bindfs
#   plait    `plait playground up --dir $BASE/pg --nodes 1 --replicas 1 --mount $BASE/plait`
#   plait3   `plait playground up --dir $BASE/pg3 --nodes 3 --replicas 3 --mount $BASE/plait3`
#            (write quorum 2, the default for replica 3)
#   gluster  (with --gluster) bench/gluster-setup.sh's replica-3 volume at $BASE/gluster
#
# Every target also gets a second view of the same directory for the lock hand-off
# workloads (fsbench.py --peer): a second `plait playground mount` at $BASE/peer-plait
# (peer-plait3), a second GlusterFS FUSE mount at $BASE/peer-gluster, and the same
# directory again for local and bindfs.
#
# Raw JSON goes to bench/results/<timestamp>/, and bench/report.py turns it into
# the table (also saved there as report.md).  Benchmarks are never pass/fail.
#
# Environment:
#   PLAIT_BIN_DIR  where plait and plaitd are
#                  (default /var/cache/plait/target/x86_64-unknown-linux-gnu/release;
#                  build them with `cargo build --release --bins`)
#   PLAIT_BENCH_BASE  base directory (default /var/tmp/plait-bench)
#   BINDFS_OPTS    bindfs options (default "--multithreaded --enable-lock-forwarding")
#   PYTHON         python3 to use (default python3)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}
PLAIT_BIN_DIR=${PLAIT_BIN_DIR:-/var/cache/plait/target/x86_64-unknown-linux-gnu/release}
BINDFS_OPTS=${BINDFS_OPTS:---multithreaded --enable-lock-forwarding}
PYTHON=${PYTHON:-python3}

TARGETS=local,bindfs,plait
GLUSTER=0
KEEP_GLUSTER=0
REPEAT=1
TIMEOUT=1800
OUT=""
LATENCY=""
HANDOFF=1
FSBENCH_ARGS=()

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  cat <<EOF
Options:
  --targets LIST   comma-separated subset of local,bindfs,plait,plait3,gluster (default $TARGETS)
  --gluster        add the gluster target (sets it up, tears it down after)
  --keep-gluster   leave the gluster volume up afterwards (bench/gluster-setup.sh down undoes it)
  --repeat N       run each target N times; the report shows medians (default 1)
  --quick          small sizes: --files 400 --dirs 10 --large-mib 64 --lock-cycles 200
  --timeout SEC    give up on one fsbench run after SEC seconds (default $TIMEOUT)
  --out DIR        results directory (default bench/results/<timestamp>)
  --latency        add p50/p99 latency rows to the report
  --no-handoff     no second mount, no lock hand-off workloads
  -- ARGS          everything after -- goes to fsbench.py (e.g. --files 1000)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --targets) TARGETS=$2; shift 2 ;;
    --gluster) GLUSTER=1; shift ;;
    --keep-gluster) GLUSTER=1; KEEP_GLUSTER=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --quick) FSBENCH_ARGS=(--files 400 --dirs 10 --large-mib 64 --lock-cycles 200 "${FSBENCH_ARGS[@]}"); shift ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --latency) LATENCY=--latency; shift ;;
    --no-handoff) HANDOFF=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; FSBENCH_ARGS+=("$@"); break ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$GLUSTER" = 1 ] && [[ ",$TARGETS," != *,gluster,* ]]; then TARGETS="$TARGETS,gluster"; fi
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
  case "$t" in local|bindfs|plait|plait3|gluster) ;; *) echo "run.sh: unknown target '$t'" >&2; exit 2 ;; esac
done
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --repeat wants a positive number" >&2; exit 2; }

log() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
if [ "$(id -u)" != 0 ]; then
  if [ "$TARGETS" != local ]; then
    die "run as root: the bindfs, plait, plait3 and gluster targets mount filesystems, and cold-cache runs drop the kernel's caches (or use --targets local)"
  fi
  log "warning: not root, so caches cannot be dropped: \"cold\" results will be warm"
fi
PLAIT="$PLAIT_BIN_DIR/plait"
has_plait() { has_target plait || has_target plait3; }
if has_plait; then
  for b in plait plaitd; do
    if [ ! -x "$PLAIT_BIN_DIR/$b" ]; then
      die "Plait binary $PLAIT_BIN_DIR/$b is missing.
  Build the release binaries first (from the repository root):  cargo build --release --bins
  or point PLAIT_BIN_DIR at the directory holding plait and plaitd,
  or leave Plait out:  bench/run.sh --targets local,bindfs"
    fi
  done
fi
if has_target bindfs && ! command -v bindfs >/dev/null; then
  log "installing bindfs"
  DEBIAN_FRONTEND=noninteractive apt-get install -y bindfs >/dev/null 2>&1 ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y bindfs >/dev/null; } ||
    die "could not install bindfs (apt-get install bindfs)"
fi
command -v timeout >/dev/null || die "timeout (coreutils) not found"

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$BENCH_DIR/results/$STAMP}
mkdir -p "$OUT" "$BASE"
log "results in $OUT"
# working directories an interrupted earlier run may have left in our own directories
rm -rf "$BASE"/local/fsbench-* "$BASE"/bindfs-src/fsbench-*

# ---------------------------------------------------------------- cleanup
BINDFS_PID=""
PG_DIRS=()     # playgrounds (by target label) this run started
GLUSTER_UP=0
unmount() {  # unmount a FUSE mountpoint if mounted
  if mountpoint -q "$1" 2>/dev/null; then
    fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1" || true
  fi
}
bindfs_down() {
  unmount "$BASE/bindfs"
  if [ -n "$BINDFS_PID" ]; then
    for _ in $(seq 1 50); do kill -0 "$BINDFS_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$BINDFS_PID" 2>/dev/null || true
    wait "$BINDFS_PID" 2>/dev/null || true
    BINDFS_PID=""
  fi
}
pg_dir() { if [ "$1" = plait ]; then echo "$BASE/pg"; else echo "$BASE/pg3"; fi; }
plait_down() {  # plait_down LABEL: the playground $BASE/pg (plait) or $BASE/pg3 (plait3)
  local label=$1 dir
  dir=$(pg_dir "$label")
  if [ -f "$dir/playground.toml" ]; then
    "$PLAIT" playground down --dir "$dir" >>"$OUT/$label-playground.log" 2>&1 ||
      log "warning: plait playground down failed (see $OUT/$label-playground.log)"
  fi
  unmount "$BASE/$label"
  unmount "$BASE/peer-$label"
}
gluster_down() {
  unmount "$BASE/peer-gluster"
  if [ "$GLUSTER_UP" = 1 ] && [ "$KEEP_GLUSTER" = 0 ]; then
    MNT="$BASE/gluster" "$BENCH_DIR/gluster-setup.sh" down >>"$OUT/gluster-setup.log" 2>&1 ||
      log "warning: gluster-setup.sh down failed (see $OUT/gluster-setup.log)"
    GLUSTER_UP=0
  fi
}
cleanup() {
  local rc=$?
  trap '' INT TERM
  bindfs_down
  local d
  for d in ${PG_DIRS[@]+"${PG_DIRS[@]}"}; do plait_down "$d"; done
  gluster_down
  find "$OUT" -maxdepth 1 -name '*.json' -empty -delete 2>/dev/null || true
  exit $rc
}
BENCH_PID=""
INTERRUPTED=0
on_signal() {
  # fsbench runs in `timeout`'s own process group, so Ctrl-C does not reach it: forward
  # a TERM, let it clean up and print what it measured, then stop (see bench()).
  INTERRUPTED=1
  if [ -n "$BENCH_PID" ]; then
    log "interrupted: stopping fsbench"
    kill -TERM "$BENCH_PID" 2>/dev/null || true
  else
    exit 130
  fi
}
trap cleanup EXIT
trap on_signal INT TERM

# ---------------------------------------------------------------- run metadata
PLAIT_VERSION=""
if has_plait; then PLAIT_VERSION=$("$PLAIT" --version 2>/dev/null | head -1 || true); fi
GIT_REV=$(git -C "$BENCH_DIR/.." rev-parse --short HEAD 2>/dev/null || echo none)
RUN_STAMP=$STAMP RUN_TARGETS=$TARGETS RUN_REPEAT=$REPEAT RUN_GIT=$GIT_REV RUN_BIN_DIR=$PLAIT_BIN_DIR \
RUN_PLAIT_VERSION=$PLAIT_VERSION RUN_BINDFS_OPTS=$BINDFS_OPTS \
  "$PYTHON" - "$OUT/run.json" ${FSBENCH_ARGS[@]+"${FSBENCH_ARGS[@]}"} <<'EOF'
import datetime, json, os, sys
e = os.environ
targets = e["RUN_TARGETS"].split(",")
def mtime(p):
    try:
        return datetime.datetime.fromtimestamp(os.path.getmtime(p)).isoformat(timespec="seconds")
    except OSError:
        return None
meta = {
    "tool": "run.sh",
    "started": e["RUN_STAMP"],
    "targets": e["RUN_TARGETS"],
    "repeat": int(e["RUN_REPEAT"]),
    "git": e["RUN_GIT"],
    "plait_version": (e["RUN_PLAIT_VERSION"] or "unknown version")
                     if {"plait", "plait3"} & set(targets) else None,
    "plait_built": mtime(os.path.join(e["RUN_BIN_DIR"], "plaitd"))
                   if {"plait", "plait3"} & set(targets) else None,
    "plait_bin_dir": e["RUN_BIN_DIR"] if {"plait", "plait3"} & set(targets) else None,
    "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    "bindfs_opts": e["RUN_BINDFS_OPTS"] if "bindfs" in targets else None,
    "fsbench_args": " ".join(sys.argv[2:]) or "defaults",
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF

# ---------------------------------------------------------------- one fsbench run
FAILED=()
PEER=""        # the second view of the target's directory, for the hand-off workloads
bench() {  # bench LABEL DIR NOTE...
  local label=$1 dir=$2; shift 2
  local notes=() n i rc peer=()
  for n in "$@"; do notes+=(--note "$n"); done
  if [ "$HANDOFF" = 1 ] && [ -n "$PEER" ]; then peer=(--peer "$PEER"); fi
  for i in $(seq 1 "$REPEAT"); do
    log "== $label ($i/$REPEAT): $dir"
    timeout --kill-after=30 "$TIMEOUT" "$PYTHON" "$BENCH_DIR/fsbench.py" --label "$label" \
      "${notes[@]}" ${peer[@]+"${peer[@]}"} ${FSBENCH_ARGS[@]+"${FSBENCH_ARGS[@]}"} "$dir" >"$OUT/$label-$i.json" \
      2> >(trap '' INT TERM; exec tee "$OUT/$label-$i.log" >&2) &
    BENCH_PID=$!
    while :; do  # a trapped signal interrupts `wait`; wait again until fsbench is gone
      rc=0
      wait "$BENCH_PID" || rc=$?
      kill -0 "$BENCH_PID" 2>/dev/null || break
    done
    BENCH_PID=""
    if [ "$rc" != 0 ]; then
      log "warning: fsbench on $label exited with $rc (log: $OUT/$label-$i.log)"
      FAILED+=("$label")
      [ -s "$OUT/$label-$i.json" ] || rm -f "$OUT/$label-$i.json"
    fi
    if [ "$INTERRUPTED" = 1 ]; then
      "$PYTHON" "$BENCH_DIR/report.py" "$OUT" --out "$OUT/report.md" >/dev/null 2>&1 || true
      log "interrupted; partial results in $OUT"
      exit 130
    fi
  done
}

# ---------------------------------------------------------------- targets
for t in "${TARGET_LIST[@]}"; do
  PEER=""
  case "$t" in
  local)
    mkdir -p "$BASE/local"
    PEER="$BASE/local"
    bench local "$BASE/local" "plain directory on the same disk"
    ;;
  bindfs)
    unmount "$BASE/bindfs"
    mkdir -p "$BASE/bindfs-src" "$BASE/bindfs"
    # shellcheck disable=SC2086
    # INT ignored: Ctrl-C stops fsbench, and cleanup() unmounts bindfs afterwards
    (trap '' INT; exec bindfs -f $BINDFS_OPTS "$BASE/bindfs-src" "$BASE/bindfs") >"$OUT/bindfs.log" 2>&1 &
    BINDFS_PID=$!
    for _ in $(seq 1 100); do mountpoint -q "$BASE/bindfs" && break; sleep 0.1; done
    if ! mountpoint -q "$BASE/bindfs"; then
      log "warning: bindfs did not mount (see $OUT/bindfs.log); skipping bindfs"
      FAILED+=(bindfs)
      bindfs_down
      continue
    fi
    PEER="$BASE/bindfs"
    bench bindfs "$BASE/bindfs" "bindfs $(bindfs --version 2>/dev/null | head -1 | awk '{print $2}') $BINDFS_OPTS"
    "$PYTHON" "$BENCH_DIR/procmem.py" --label bindfs --pid "bindfs=$BINDFS_PID" --out "$OUT/mem-bindfs.json" || true
    bindfs_down
    ;;
  plait|plait3)
    dir=$(pg_dir "$t")
    if [ "$t" = plait ]; then nodes=1; else nodes=3; fi
    if [ -f "$dir/playground.toml" ]; then
      log "a previous playground is in $dir; taking it down first"
      plait_down "$t"
    fi
    unmount "$BASE/$t"
    unmount "$BASE/peer-$t"
    mkdir -p "$dir"
    rm -f "$dir"/mount-*.log  # `playground up` appends to an earlier playground's mount logs
    log "starting the Plait playground: $nodes node(s), replica $nodes"
    PG_DIRS+=("$t")
    if ! "$PLAIT" playground up --dir "$dir" --nodes "$nodes" --replicas "$nodes" --mount "$BASE/$t" \
        >"$OUT/$t-playground.log" 2>&1; then
      cat "$OUT/$t-playground.log" >&2
      log "warning: plait playground up failed (log: $OUT/$t-playground.log; node logs under $dir); skipping $t"
      FAILED+=("$t")
      plait_down "$t"
      continue
    fi
    if [ "$HANDOFF" = 1 ]; then
      if "$PLAIT" playground mount --dir "$dir" "$BASE/peer-$t" >>"$OUT/$t-playground.log" 2>&1; then
        PEER="$BASE/peer-$t"
      else
        log "warning: second mount failed (see $OUT/$t-playground.log): no hand-off rows for $t"
      fi
    fi
    cat "$OUT/$t-playground.log" >&2
    "$PLAIT" playground status --dir "$dir" >>"$OUT/$t-playground.log" 2>&1 || true
    note="plait playground: $nodes node(s), replica $nodes"
    if [ "$nodes" = 3 ]; then note="$note, write quorum 2"; fi
    bench "$t" "$BASE/$t" "$note${PLAIT_VERSION:+, $PLAIT_VERSION}"
    "$PYTHON" "$BENCH_DIR/procmem.py" --label "$t" --playground "$dir/playground.toml" \
      --out "$OUT/mem-$t.json" || true
    # keep this run's node and mount logs with its results
    mkdir -p "$OUT/logs-$t"
    for f in "$dir"/mount-*.log "$dir"/node*/plaitd.log; do
      if [ -f "$f" ]; then cp "$f" "$OUT/logs-$t/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
    done
    plait_down "$t"
    ;;
  gluster)
    log "setting up GlusterFS (bench/gluster-setup.sh up)"
    GLUSTER_UP=1
    if ! MNT="$BASE/gluster" "$BENCH_DIR/gluster-setup.sh" up >"$OUT/gluster-setup.log" 2>&1; then
      tail -20 "$OUT/gluster-setup.log" >&2
      log "warning: gluster setup failed (log: $OUT/gluster-setup.log); skipping gluster"
      FAILED+=(gluster)
      gluster_down
      continue
    fi
    if [ "$HANDOFF" = 1 ]; then
      mkdir -p "$BASE/peer-gluster"
      if mount -t glusterfs 127.0.0.1:/plaitbench "$BASE/peer-gluster" >>"$OUT/gluster-setup.log" 2>&1; then
        PEER="$BASE/peer-gluster"
      else
        log "warning: second GlusterFS mount failed (see $OUT/gluster-setup.log): no hand-off rows for gluster"
      fi
    fi
    bench gluster "$BASE/gluster" "GlusterFS $(glusterfs --version 2>/dev/null | head -1 | awk '{print $2}') replica 3 on loopback, one host"
    pids=()
    for p in $(MNT="$BASE/gluster" "$BENCH_DIR/gluster-setup.sh" client-pid 2>/dev/null); do pids+=(--pid "client=$p"); done
    for p in $(MNT="$BASE/peer-gluster" "$BENCH_DIR/gluster-setup.sh" client-pid 2>/dev/null); do pids+=(--pid "client-2=$p"); done
    for p in $(MNT="$BASE/gluster" "$BENCH_DIR/gluster-setup.sh" volume-pids 2>/dev/null); do
      if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "--volfile-id shd/"; then pids+=(--pid "self-heal=$p"); else pids+=(--pid "brick=$p"); fi
    done
    [ ${#pids[@]} -eq 0 ] || "$PYTHON" "$BENCH_DIR/procmem.py" --label gluster "${pids[@]}" --out "$OUT/mem-gluster.json" || true
    gluster_down
    ;;
  esac
done

# ---------------------------------------------------------------- report
echo
"$PYTHON" "$BENCH_DIR/report.py" $LATENCY "$OUT" --out "$OUT/report.md"
echo
log "raw results and report.md in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "note: some targets did not complete: ${FAILED[*]} (benchmarks are not pass/fail; see the logs)"
fi
