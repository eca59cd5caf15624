#!/usr/bin/env bash
# Installs (idempotently) everything Plait's build and tests need on Debian 12:
# Debian packages for FUSE, the RocksDB library and bindgen, the tools the tests drive
# (iproute2: `tc` for the partition test; php-cli, sqlite3, python3 and util-linux's
# flock for the lock tests),
# and the third-party conformance suites from crates.io.
set -euo pipefail
# cargo-installed tools (pjdfstest, fsx) live here; CI may start without it on PATH.
export PATH="$HOME/.cargo/bin:$PATH"

PKGS=(fuse3 libclang-dev clang librocksdb-dev pkg-config bindfs attr sqlite3 php-cli iproute2
  python3 util-linux)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

# Third-party conformance suites.
command -v pjdfstest >/dev/null || cargo install --locked pjdfstest --version 0.2.2
command -v fsx >/dev/null || cargo install --locked fsx --version 0.3.2

mkdir -p /var/cache/plait
