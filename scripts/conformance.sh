#!/usr/bin/env bash
# Runs the third-party conformance suites against a real playground mount:
#   pjdfstest (POSIX semantics; failures must be listed in pjdfstest-expected-failures.txt,
#              each justified in docs/conformance.md), and
#   fsx       (random read/write/truncate/mmap/fsync with verification; FSX_OPS ops on each
#              of the FSX_SEEDS seeds).
# Needs PLAIT_BIN_DIR (directory of the built plait and plaitd), root, fuse3.
set -euo pipefail
# cargo-installed tools (pjdfstest, fsx) live here; CI may start without it on PATH.
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
BIN_DIR=${PLAIT_BIN_DIR:?set PLAIT_BIN_DIR to the directory of the built binaries}
FSX_OPS=${FSX_OPS:-100000}
FSX_SEEDS=${FSX_SEEDS:-"1 2 3"}
WORK=$(mktemp -d /tmp/plait-conformance.XXXXXX)
# pjdfstest switches to unprivileged users, who must be able to reach the mount.
chmod 755 "$WORK"
MNT=$WORK/mnt
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"

# The playground's data (GiBs of fsx chunks) never outlives the run; the rest of $WORK
# (logs, results) is kept only if the run failed, for a look at what went wrong.
cleanup() {
  local rc=$?
  "$BIN_DIR/plait" playground down --dir "$WORK/pg" >/dev/null 2>&1 || true
  if [ "$rc" = 0 ]; then
    rm -rf "$WORK"
  else
    rm -rf "$WORK"/pg/node*/data "$WORK"/pg/node*/chunks 2>/dev/null || true
    echo "conformance: failed (exit $rc); logs kept in $WORK" >&2
  fi
}
trap cleanup EXIT

# pjdfstest switches to these users; Debian has nobody/nogroup, we add `tests`.
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null || useradd -g tests -M -s /usr/sbin/nologin tests

mkdir -p "$WORK/pg"
"$BIN_DIR/plait" playground up --dir "$WORK/pg" --nodes 1 --replicas 1 --mount "$MNT" >/dev/null

echo "== pjdfstest"
cat > "$WORK/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML
mkdir -p "$MNT/pjd" "$WORK/secondary"
set +e
(cd "$MNT/pjd" && pjdfstest -c "$WORK/pjdfstest.toml" -p "$MNT/pjd" -s "$WORK/secondary") > "$RESULTS/pjdfstest.log" 2>&1
set -e
sed -i 's/\x1b\[[0-9;]*m//g' "$RESULTS/pjdfstest.log"
grep -E '\s(ok|FAILED|skipped|expected failure|unexpected pass)\s*$' "$RESULTS/pjdfstest.log" | awk '{print $NF=="ok" ? "ok" : $NF}' | sort | uniq -c || true
{ grep -E 'FAILED\s*$' "$RESULTS/pjdfstest.log" || true; } | awk '{print $1}' | sort -u > "$RESULTS/pjdfstest-failed.txt"
{ grep -vE '^\s*(#|$)' scripts/pjdfstest-expected-failures.txt || true; } | awk '{print $1}' | sort -u > "$WORK/expected.txt"
unexpected=$(comm -23 "$RESULTS/pjdfstest-failed.txt" "$WORK/expected.txt")
fixed=$(comm -13 "$RESULTS/pjdfstest-failed.txt" "$WORK/expected.txt")
passed=$(grep -cE '\sok\s*$' "$RESULTS/pjdfstest.log" || true)
failed=$(wc -l < "$RESULTS/pjdfstest-failed.txt")
echo "pjdfstest: $passed ok, $failed failed ($(wc -l < "$WORK/expected.txt") expected failures listed)"
if [ -n "$fixed" ]; then
  echo "expected failures that now pass (remove them from the list):"; echo "$fixed"
fi
if [ -n "$unexpected" ]; then
  # A failure that passes when run again alone is reported as flaky (visible in the log
  # and in docs/conformance.md), not hidden; one that fails twice fails the run.
  grep -A6 -E 'FAILED\s*$' "$RESULTS/pjdfstest.log" | head -100
  still_failing=""
  for t in $unexpected; do
    if (cd "$MNT/pjd" && pjdfstest -c "$WORK/pjdfstest.toml" -p "$MNT/pjd" -s "$WORK/secondary" -e "$t") \
        > "$RESULTS/pjdfstest-retry-$t.log" 2>&1; then
      echo "FLAKY pjdfstest test (failed, then passed alone): $t"
      failed=$((failed - 1)); passed=$((passed + 1))
    else
      still_failing="$still_failing $t"
    fi
  done
  if [ -n "$still_failing" ]; then
    echo "UNEXPECTED pjdfstest failures:$still_failing"
    echo "conformance: $passed passed, $failed failed"
    exit 1
  fi
fi
rm -rf "$MNT/pjd"

echo "== fsx ($FSX_OPS ops per seed, seeds: $FSX_SEEDS)"
cat > "$WORK/fsx.toml" <<'TOML'
flen = 4194304
[opsize]
max = 262144
[weights]
close_open = 2
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 0
TOML
# Seeds run side by side on separate files: fsx waits on round trips far more than it
# computes, so this keeps the wall time of CI down without weakening the test.
pids=()
for seed in $FSX_SEEDS; do
  mkdir -p "$WORK/fsx-$seed"
  fsx -f "$WORK/fsx.toml" -N "$FSX_OPS" -S "$seed" -P "$WORK/fsx-$seed" "$MNT/fsx-$seed.bin" \
    > "$RESULTS/fsx-$seed.log" 2>&1 &
  pids+=("$!:$seed")
done
fsx_failed=0
for entry in "${pids[@]}"; do
  pid=${entry%%:*}; seed=${entry#*:}
  if wait "$pid"; then
    echo "fsx seed $seed: $FSX_OPS ops ok"
  else
    echo "fsx seed $seed FAILED"; tail -40 "$RESULTS/fsx-$seed.log"; fsx_failed=1
  fi
done
if [ "$fsx_failed" != 0 ]; then
  echo "conformance: $passed passed, $((failed + 1)) failed"
  exit 1
fi
seeds=$(echo $FSX_SEEDS | wc -w)
echo "conformance: $((passed + seeds)) passed, $failed failed"
