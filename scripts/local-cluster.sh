#!/usr/bin/env bash
# A single-machine mube cluster: containerd (when installed), the API server
# on the embedded store, the scheduler, the controller manager, and one mubelet as mube-node-1 (see
# configs/apiserver.yaml). Logs go to this terminal; Ctrl-C stops them
# cleanly. Stopping the agent alone (to see
# its node go NotReady) leaves the API server running.
#
# Secure by default, with no questions: the API server makes its CA, its
# serving certificate and an admin kubeconfig under its data directory; this
# script creates a one-hour join token with that kubeconfig and starts the
# mubelet with it and the CA, and the mubelet exchanges it for its own node
# certificate (kept under <dataDir>/mubelet). With `tls: {enabled: false}`
# in the config, the mubelet is started without credentials.
#
# Loads .env.apiserver and .env.mubelet if present. Binaries come from
# target/debug, or $CARGO_TARGET_DIR/debug (run `cargo build --workspace --bins`
# first; `make run` does).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MUBE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}

load() { set -a; [ ! -f "$1" ] || . "./$1"; set +a; }

# Pods run on containerd when it is installed: started (or reused) with
# mube's config and the local images (scripts/containerd.sh). It keeps
# running after this script ends, with the pods' containers; the next
# mubelet of the same name adopts them.
if command -v containerd >/dev/null 2>&1; then
  ./scripts/containerd.sh || echo "mube: containerd did not start; nodes will report ContainerRuntimeUnhealthy" >&2
else
  echo "mube: containerd is not installed (Debian: apt-get install containerd runc containernetworking-plugins busybox-static); pods will wait with ContainerRuntimeUnhealthy" >&2
fi

(load .env.apiserver; exec "$bin/mube-apiserver") &
apiserver=$!
stop() {
  trap - INT TERM
  kill -TERM "${mubelet:-}" "${scheduler:-}" "${controllers:-}" "$apiserver" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM

# Where the API server keeps its data, as it decides it.
data_dir=$(load .env.apiserver
  config=${MUBE_APISERVER_CONFIG:-configs/apiserver.yaml}
  dir=${MUBE_APISERVER_DATA_DIR:-$(sed -n 's/^dataDir:[[:space:]]*//p' "$config" | tr -d '"'"'"'')}
  echo "${dir:-data}")
case $data_dir in /*) ;; *) data_dir=$PWD/$data_dir ;; esac
kubeconfig=$data_dir/kubeconfig

# Wait until the API server answers through the kubeconfig it writes.
for _ in $(seq 1 200); do
  if ! kill -0 "$apiserver" 2>/dev/null; then
    echo "mube-apiserver exited during start-up" >&2
    exit 1
  fi
  if [ -f "$kubeconfig" ] && "$bin/mubectl" --kubeconfig "$kubeconfig" get nodes >/dev/null 2>&1; then break; fi
  sleep 0.1
done
server=$(sed -n 's/^[[:space:]]*server:[[:space:]]*//p' "$kubeconfig" | head -n 1)

agent_env=(MUBE_API_SERVER="$server" MUBELET_STATE_DIR="$data_dir/mubelet")
if [[ $server == https://* ]]; then
  agent_env+=(MUBELET_CA_FILE="$data_dir/pki/ca.crt")
  if [ ! -f "$data_dir/mubelet/client.pem" ]; then
    token=$("$bin/mubectl" --kubeconfig "$kubeconfig" token create --ttl 1h --description "make run: the local mubelet")
    agent_env+=(MUBELET_TOKEN="$token")
  fi
fi

# The scheduler, an API client like any other, with the admin kubeconfig.
"$bin/mube-scheduler" --kubeconfig "$kubeconfig" &
scheduler=$!

# The controller manager (Deployments, ReplicaSets, garbage collection,
# eviction), an API client too; it elects itself leader through a Lease.
"$bin/mube-controller-manager" --kubeconfig "$kubeconfig" &
controllers=$!

(load .env.mubelet; export MUBELET_NODE_NAME=${MUBELET_NODE_NAME:-mube-node-1}; exec env "${agent_env[@]}" "$bin/mubelet") &
mubelet=$!
cat >&2 <<NOTE
mube: API server at $server, mube-scheduler, mube-controller-manager, mubelet as ${MUBELET_NODE_NAME:-mube-node-1}. Ctrl-C stops them.
mube: in another terminal:
  export KUBECONFIG=$kubeconfig
  kubectl get nodes -w              # or: target/debug/mubectl get nodes -w
  kubectl run hello --image=mube.local/busybox --restart=Never -- sh -c 'echo hello from mube'
  kubectl logs hello
  target/debug/mubectl token create # a join token for another mubelet
NOTE

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
