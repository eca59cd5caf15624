#!/bin/bash
# gluster-setup.sh - single-host GlusterFS replica-3 volume on loopback, for the
# benchmark comparison in bench/run.sh.  Debian 12, run as root, no systemd needed.
# Adapted from /work/shared/anchors/gluster-setup.sh; this copy can also undo itself.
#
#   bench/gluster-setup.sh up      # idempotent: packages, glusterd, volume, FUSE mount
#   bench/gluster-setup.sh down    # undo everything `up` did (see below)
#   bench/gluster-setup.sh status
#
#   volume $VOL (default plaitbench) = replica 3 of $BRICKHOST:$BRICKROOT/b1,b2,b3
#   FUSE mount: 127.0.0.1:/$VOL on $MNT
#
# glusterd and all bricks bind to 127.0.0.1 only.  The CLI refuses the literal
# 127.0.0.1/localhost as a brick host, so bricks are named by the machine's hostname,
# which must resolve to a 127.x address (/etc/hosts has "127.0.0.1 vm" here).
# Nothing is ever sent to a non-loopback address: `up` refuses to run otherwise.
#
# `down` unmounts $MNT, stops and deletes $VOL, kills its brick and self-heal
# processes (by the PIDs `gluster volume status` reports), stops glusterd and
# restores /etc/glusterfs/glusterd.vol only if `up` started/patched them (recorded
# in $STATE) and no other volume exists, and removes $BRICKROOT.  The Debian
# packages stay installed.
set -euo pipefail

VOL=${VOL:-plaitbench}
BRICKHOST=${BRICKHOST:-$(hostname)}
BRICKROOT=${BRICKROOT:-/var/tmp/plait-bench/gluster-bricks}
MNT=${MNT:-/var/tmp/plait-bench/gluster}
STATE=${STATE:-/var/tmp/plait-bench/gluster-setup.state}
VOLFILE=/etc/glusterfs/glusterd.vol
PIDFILE=/run/glusterd.pid

note_state() { mkdir -p "$(dirname "$STATE")"; grep -qx "$1" "$STATE" 2>/dev/null || echo "$1" >>"$STATE"; }
has_state() { grep -qx "$1" "$STATE" 2>/dev/null; }
glusterd_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
g() { gluster --mode=script "$@"; }

up() {
  # 0. packages
  if ! command -v glusterd >/dev/null || ! command -v mount.glusterfs >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y glusterfs-server glusterfs-client
  fi

  # 1. brick host must be loopback
  local addr
  addr=$(getent ahostsv4 "$BRICKHOST" | awk 'NR==1{print $1}')
  case "$addr" in
    127.*) ;;
    *) echo "ERROR: $BRICKHOST resolves to '$addr', not loopback; set BRICKHOST to a name that maps to 127.0.0.1 in /etc/hosts" >&2; exit 1 ;;
  esac

  # 2. glusterd listens on loopback only
  if ! grep -q 'transport.socket.bind-address 127.0.0.1' "$VOLFILE"; then
    if glusterd_running; then
      echo "ERROR: glusterd is already running without 'bind-address 127.0.0.1' in $VOLFILE; not touching it" >&2
      exit 1
    fi
    [ -f "$VOLFILE.orig" ] || cp "$VOLFILE" "$VOLFILE.orig"
    sed -i 's/^\(\s*option transport.socket.listen-port 24007\)$/\1\n    option transport.socket.bind-address 127.0.0.1/' "$VOLFILE"
    grep -q 'transport.socket.bind-address 127.0.0.1' "$VOLFILE" || {
      echo "ERROR: could not add bind-address 127.0.0.1 to $VOLFILE" >&2; exit 1; }
    note_state patched-volfile
  fi

  # 3. start glusterd (no systemd)
  if ! glusterd_running; then
    /usr/sbin/glusterd -p "$PIDFILE"
    note_state started-glusterd
  fi
  local i
  for i in $(seq 1 30); do gluster volume list >/dev/null 2>&1 && break; sleep 1; done

  # 4. volume
  mkdir -p "$BRICKROOT/b1" "$BRICKROOT/b2" "$BRICKROOT/b3"
  if ! gluster volume info "$VOL" >/dev/null 2>&1; then
    g volume create "$VOL" replica 3 \
      "$BRICKHOST:$BRICKROOT/b1" "$BRICKHOST:$BRICKROOT/b2" "$BRICKHOST:$BRICKROOT/b3" force
    note_state "created-volume $VOL"
  fi
  if ! gluster volume info "$VOL" | grep -q '^Status: Started'; then
    g volume start "$VOL"
  fi
  # (re)start any brick that is down ("detail" has one "Online : Y|N" line per brick;
  # the plain table wraps long brick paths onto two lines)
  if gluster volume status "$VOL" detail | awk -F: '/^Online/{gsub(/ /, "", $2); print $2}' | grep -q N; then
    g volume start "$VOL" force
  fi

  # 5. FUSE mount
  mkdir -p "$MNT"
  if ! mountpoint -q "$MNT"; then
    mount -t glusterfs 127.0.0.1:/"$VOL" "$MNT"
  fi
  gluster volume status "$VOL"
  findmnt "$MNT"
}

# PIDs of the volume's brick processes ("Pid : N" lines of the detail view) and of the
# self-heal daemon (last column of its line in the plain table)
volume_pids() {
  {
    gluster volume status "$VOL" detail 2>/dev/null |
      awk -F: '/^Pid/{gsub(/ /, "", $2); if ($2 ~ /^[0-9]+$/ && $2 != 0) print $2}'
    gluster volume status "$VOL" 2>/dev/null |
      awk '/^Self-heal Daemon/ && $NF ~ /^[0-9]+$/ {print $NF}'
  } | sort -un
}

# PID of brick N (1..3): the "Pid" line after "Brick : ...$BRICKROOT/bN" in the detail view
brick_pid() {
  gluster volume status "$VOL" detail 2>/dev/null |
    awk -F: -v b="$BRICKROOT/b$1" '/^Brick /{gsub(/ /, "", $0); cur=$0} /^Pid/{gsub(/ /, "", $2); if (cur ~ b"$" && $2 ~ /^[0-9]+$/ && $2 != 0) print $2}'
}

# PID of the FUSE client process serving $MNT
client_pid() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "^/usr/sbin/glusterfs .*--volfile-id=/\?$VOL .*$MNT"; then
      basename "$p"
    fi
  done
}

down() {
  local pids="" p
  if mountpoint -q "$MNT" 2>/dev/null; then
    umount "$MNT" || umount -l "$MNT"
  fi
  if command -v gluster >/dev/null && glusterd_running; then
    pids=$(volume_pids || true)
    if gluster volume info "$VOL" >/dev/null 2>&1; then
      g volume stop "$VOL" force || true
      g volume delete "$VOL" || true
    fi
  fi
  # glusterd itself: only if we started it and no other volume remains
  if has_state started-glusterd && glusterd_running; then
    if [ -z "$(gluster volume list 2>/dev/null | grep -v '^No volumes present' || true)" ]; then
      p=$(cat "$PIDFILE")
      kill "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      # the self-heal daemon is shared by all volumes; it exits with its last volume
      for p in $pids; do kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null || true; done
      rm -f "$PIDFILE"
    else
      echo "gluster-setup: other volumes exist; leaving glusterd running" >&2
    fi
  fi
  # brick processes that survived `volume stop`
  for p in $pids; do
    if kill -0 "$p" 2>/dev/null && grep -q "$BRICKROOT" "/proc/$p/cmdline" 2>/dev/null; then
      kill "$p" 2>/dev/null || true
    fi
  done
  if has_state patched-volfile && ! glusterd_running && [ -f "$VOLFILE.orig" ]; then
    mv "$VOLFILE.orig" "$VOLFILE"
  fi
  rm -rf "$BRICKROOT"
  rmdir "$MNT" 2>/dev/null || true
  rm -f "$STATE"
  echo "gluster-setup: down"
}

status() {
  findmnt "$MNT" || echo "$MNT: not mounted"
  if command -v gluster >/dev/null && glusterd_running; then
    gluster volume status "$VOL" || true
  else
    echo "glusterd: not running"
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  client-pid) client_pid ;;
  volume-pids) volume_pids ;;
  brick-pid) brick_pid "${2:?brick number 1..3}" ;;
  *) echo "usage: $0 up|down|status|client-pid|volume-pids|brick-pid N" >&2; exit 2 ;;
esac
