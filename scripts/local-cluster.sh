#!/usr/bin/env bash
# A single-machine mube cluster: the API server on the embedded store and one
# mubelet registered as mube-node-1 (see configs/apiserver.yaml). Logs of both
# go to this terminal; Ctrl-C stops both cleanly. Stopping the agent alone
# (to see its node go NotReady) leaves the API server running.
#
# Loads .env.apiserver and .env.mubelet if present. Binaries come from
# target/debug, or $CARGO_TARGET_DIR/debug (run `cargo build --workspace --bins`
# first; `make run` does).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MUBE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}

load() { set -a; [ ! -f "$1" ] || . "./$1"; set +a; }

(load .env.apiserver; exec "$bin/mube-apiserver") &
apiserver=$!
stop() {
  trap - INT TERM
  kill -TERM "${mubelet:-}" "$apiserver" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM

# Wait for the API server before starting the agent.
server=${MUBE_API_SERVER:-http://127.0.0.1:8080}
for _ in $(seq 1 100); do
  if ! kill -0 "$apiserver" 2>/dev/null; then
    echo "mube-apiserver exited during start-up" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/${server##*:}") 2>/dev/null; then break; fi
  sleep 0.1
done

(load .env.mubelet; export MUBELET_NODE_NAME=${MUBELET_NODE_NAME:-mube-node-1}; exec "$bin/mubelet") &
mubelet=$!
echo "mube: API server at $server, mubelet as ${MUBELET_NODE_NAME:-mube-node-1}. In another terminal: target/debug/mubectl get nodes -w. Ctrl-C stops both." >&2

# The cluster lives as long as the API server. The agent may be stopped (to
# watch its node go NotReady) and started again by hand; that ends nothing.
while kill -0 "$apiserver" 2>/dev/null; do
  wait -n || true
  if [ -z "${noted:-}" ] && ! kill -0 "$mubelet" 2>/dev/null; then
    noted=1
    echo "mube: mubelet stopped; the API server keeps running (Ctrl-C stops it)." >&2
  fi
done
stop
