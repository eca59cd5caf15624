#!/usr/bin/env bash
# The project's test command: lint, unit tests, multi-process tests on real FUSE mounts,
# and the third-party conformance suites (pjdfstest, fsx) against a playground mount.
set -euo pipefail
# cargo-installed tools (pjdfstest, fsx) live here; CI may start without it on PATH.
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace --bins
BIN_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/x86_64-unknown-linux-gnu/debug
export PLAIT_BIN_DIR="$BIN_DIR"

echo "== unit and multi-process tests"
cargo test --workspace -- --test-threads=2

echo "== conformance: pjdfstest and fsx"
bash scripts/conformance.sh
