#!/usr/bin/env bash
# A three-node NATS cluster with JetStream on this machine, in the foreground:
# n1, n2, n3 (n<i>.conf beside this script), clients on 4222-4224, routes on
# 6222-6224, monitoring on 8222-8224, data under .dev/nats-cluster/<node>
# (kept across runs). Installs nats-server first if it is missing.
# Ctrl-C stops the three nodes, and nothing else.
#
# Point edges, workers and natterctl at it with the NATS_URL this prints and
# NATS_REPLICAS=3 (or `natterctl topology apply --replicas 3`) for R3 streams.
# To try a failover, `kill -9` one node's pid (printed below) and start it
# again by hand from the project root (that one is yours to stop):
#   .venv/bin/nats-server -c infra/nats-cluster/n<i>.conf
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DIR="$ROOT/.dev/nats-cluster"
NODES=(n1 n2 n3)
CLIENT_PORTS=(4222 4223 4224)
OTHER_PORTS=(6222 6223 6224 8222 8223 8224)

./infra/install.sh
NATS_SERVER="$ROOT/.venv/bin/nats-server"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${CLIENT_PORTS[@]}" "${OTHER_PORTS[@]}"; do
  if ! port_free "$port"; then
    echo "nats-cluster: port $port is in use (another cluster or ./infra/dev.sh?); stop it first" >&2
    exit 1
  fi
done

PIDS=()
cleanup() {
  local rc=${1:-$?}
  trap - INT TERM EXIT
  echo
  echo "nats-cluster: stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit "$rc"
}
trap 'cleanup 130' INT
trap 'cleanup 143' TERM
trap cleanup EXIT

for node in "${NODES[@]}"; do
  mkdir -p "$DIR/$node"
  "$NATS_SERVER" -c "infra/nats-cluster/$node.conf" >"$DIR/$node.log" 2>&1 &
  PIDS+=($!)
done

# Ready once every node answers its JetStream health check, which needs a
# meta leader elected by the cluster.
for i in "${!NODES[@]}"; do
  url="http://127.0.0.1:$((8222 + i))/healthz?js-enabled-only=true"
  for _ in $(seq 1 300); do
    if curl -fsS "$url" >/dev/null 2>&1; then continue 2; fi
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      echo "nats-cluster: ${NODES[i]} exited; see .dev/nats-cluster/${NODES[i]}.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "nats-cluster: ${NODES[i]} not healthy after 30 s; see .dev/nats-cluster/${NODES[i]}.log" >&2
  exit 1
done

NATS_URL=$(printf 'nats://127.0.0.1:%s,' "${CLIENT_PORTS[@]}")
NATS_URL=${NATS_URL%,}
cat <<INFO

NATS cluster running (JetStream, cluster natter-local)
  n1  pid ${PIDS[0]}  client 4222  route 6222  monitor http://127.0.0.1:8222
  n2  pid ${PIDS[1]}  client 4223  route 6223  monitor http://127.0.0.1:8223
  n3  pid ${PIDS[2]}  client 4224  route 6224  monitor http://127.0.0.1:8224
  data and logs  .dev/nats-cluster/

Use it with:
  export NATS_URL="$NATS_URL" NATS_REPLICAS=3

Ctrl-C stops the three nodes.
INFO

# Stay in the foreground; a node that dies is reported, the others keep
# running (a cluster of three survives one).
declare -A reported=()
while true; do
  for i in "${!PIDS[@]}"; do
    if [ -z "${reported[$i]:-}" ] && ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      echo "nats-cluster: ${NODES[i]} (pid ${PIDS[i]}) exited; see .dev/nats-cluster/${NODES[i]}.log" >&2
      reported[$i]=1
    fi
  done
  sleep 2
done
