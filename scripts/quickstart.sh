#!/usr/bin/env bash
# Installs what Plait needs, builds it, and starts a one-node playground mounted at
# /mnt/plait (state under /var/tmp/plait-playground). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/var/tmp/plait-playground}
MNT=${MNT:-/mnt/plait}

bash scripts/install-deps.sh
cargo build --release --bins
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/x86_64-unknown-linux-gnu/release
if [ -f "$DIR/playground.toml" ]; then
  "$BIN/plait" playground down --dir "$DIR" || true
fi
mkdir -p "$DIR"
"$BIN/plait" playground up --dir "$DIR" --nodes 1 --replicas 1 --mount "$MNT"
echo
echo "Plait is mounted at $MNT. Try: echo hi > $MNT/hello && cat $MNT/hello"
echo "Stop it with: $BIN/plait playground down --dir $DIR"
