#!/usr/bin/env bash
# Small-file creates on a 3-node replica-3 playground: the default mount (close-behind)
# against a `--close-durable` mount of the same volume, alternating rounds, plus the CPU
# seconds each plaitd and the default mount spent per file in one long round, and the
# files per batch commit (from the mount's debug log). Prints numbers; never pass/fail.
#
#   bench/create-ab.sh [--rounds N] [--files N] [--size BYTES]
#
# Uses the release binaries in $PLAIT_BIN_DIR (default: the release target directory).
set -euo pipefail
ROUNDS=3 FILES=400 SIZE=8192
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${PLAIT_BIN_DIR:-/var/cache/plait/target-rel/x86_64-unknown-linux-gnu/release}
BASE=${PLAIT_BENCH_BASE:-/var/tmp/plait-bench}/create-ab
PG=$BASE/pg M1=$BASE/behind M2=$BASE/durable
cleanup() {
  "$BIN/plait" playground down --dir "$PG" >/dev/null 2>&1 || true
  fusermount3 -uz "$M1" 2>/dev/null || true
  fusermount3 -uz "$M2" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$BASE" && mkdir -p "$BASE"
RUST_LOG=plait_client::fs::dir_delegation=debug \
  "$BIN/plait" playground up --dir "$PG" --nodes 3 --replicas 3 --mount "$M1" >/dev/null
"$BIN/plait" playground mount --dir "$PG" --close-durable "$M2" >/dev/null

# CPU seconds (utime + stime) of every plaitd and plait process, by pid.
cpu() {
  for p in /proc/[0-9]*; do
    c=$(timeout 1 cat "$p/comm" 2>/dev/null || true)
    case "$c" in plaitd|plait) echo "${p#/proc/} $c $(timeout 1 awk '{print $14+$15}' "$p/stat")" ;; esac
  done | sort
}

python3 - "$M1" "$M2" "$ROUNDS" "$FILES" "$SIZE" <<'PY'
import os, sys, time
m1, m2, rounds, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def run(root, tag):
    d = os.path.join(root, tag); os.mkdir(d)
    data = os.urandom(size)
    t = time.perf_counter()
    for i in range(n):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(data)
    return n / (time.perf_counter() - t)
print(f"| round | close-behind | --close-durable | ratio |\n|---:|---:|---:|---:|")
for r in range(rounds):
    a, b = run(m1, f"behind{r}"), run(m2, f"durable{r}")
    print(f"| {r} | {a:,.0f} files/s | {b:,.0f} files/s | {a/b:.2f}x |", flush=True)
# Close-to-open: every file closed on the close-behind mount reads back whole on the other.
bad = sum(1 for r in range(rounds) for i in range(n)
          if len(open(os.path.join(m2, f"behind{r}", f"f{i}"), "rb").read()) != size)
print(f"cross-mount reads of {rounds * n} files closed behind: {bad} short or missing")
PY

cpu > "$BASE/cpu-before"
python3 - "$M1" "$SIZE" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "long"); os.mkdir(d)
data = os.urandom(int(sys.argv[2])); n = 2000
t = time.perf_counter()
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(data)
el = time.perf_counter() - t
print(f"one round of {n} files: {n/el:,.0f} files/s")
PY
cpu > "$BASE/cpu-after"
echo "CPU per file in that round (the two mounts are the plait processes; the idle one spent ~0):"
join "$BASE/cpu-before" "$BASE/cpu-after" | awk '{printf "  pid %s %s: %.3f ms\n", $1, $2, ($5-$3)*10/2000}'
MLOG=$(ls "$PG"/mount-1.log)
sed 's/\x1b\[[0-9;]*m//g' "$MLOG" | grep "directory batch" | awk '
  { for (i = 1; i <= NF; i++) { if ($i ~ /^files=/) { split($i, a, "="); f += a[2]; n++ }
                                 if ($i ~ /^took_us=/) { split($i, b, "="); t += b[2] } } }
  END { if (n) printf "batch commits (whole run, default mount): %d, %.1f files each, %.1f ms each\n", n, f / n, t / n / 1000 }'
