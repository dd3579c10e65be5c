#!/usr/bin/env bash
# Starts containerd with mube's configuration (scripts/containerd/config.toml)
# and imports mube's local images (scripts/images.py), then waits until it
# answers. Used by `make run`, the tests' CI and by hand:
#
#   scripts/containerd.sh            # containerd in the background; prints its pid
#
# Environment (all optional):
#   CONTAINERD_ADDRESS  socket (default /run/containerd/containerd.sock)
#   CONTAINERD_ROOT     persistent data (default /var/lib/mube-containerd)
#   CONTAINERD_STATE    runtime state (default /run/mube-containerd)
#   CNI_CONF_DIR        where mubelet writes the CNI config (default /etc/cni/net.d)
#   CONTAINERD_LOG      containerd's log file (default $CONTAINERD_STATE/containerd.log)
#
# If something already answers on the socket, it is used as it is, with the
# images imported into it: a containerd configured by its owner is theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
address=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
root=${CONTAINERD_ROOT:-/var/lib/mube-containerd}
state=${CONTAINERD_STATE:-/run/mube-containerd}
cni=${CNI_CONF_DIR:-/etc/cni/net.d}
log=${CONTAINERD_LOG:-$state/containerd.log}

for tool in containerd ctr runc; do
  command -v "$tool" >/dev/null || { echo "containerd.sh: $tool not found (Debian: apt-get install containerd runc containernetworking-plugins busybox-static)" >&2; exit 1; }
done

if ctr --address "$address" version >/dev/null 2>&1; then
  echo "containerd.sh: containerd already answers on $address; using it" >&2
else
  mkdir -p "$root" "$state" "$cni" "$(dirname "$address")"
  sed -e "s|@ROOT@|$root|" -e "s|@STATE@|$state|" -e "s|@ADDRESS@|$address|" \
      -e "s|@CNI_CONF_DIR@|$cni|" scripts/containerd/config.toml > "$state/config.toml"
  nohup containerd --config "$state/config.toml" >>"$log" 2>&1 &
  echo $! > "$state/containerd.pid"
  for _ in $(seq 1 100); do
    ctr --address "$address" version >/dev/null 2>&1 && break
    kill -0 "$(cat "$state/containerd.pid")" 2>/dev/null || { echo "containerd.sh: containerd exited; see $log" >&2; tail -n 20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  ctr --address "$address" version >/dev/null || { echo "containerd.sh: containerd does not answer on $address; see $log" >&2; exit 1; }
  echo "containerd.sh: containerd started (pid $(cat "$state/containerd.pid"), socket $address, log $log)" >&2
fi
python3 scripts/images.py --address "$address" >&2
