#!/usr/bin/env bash
# The whole natter stack on this machine, in the foreground:
# NATS (JetStream), the MongoDB server (SecantusDB), the S3 server (s3s-fs),
# the topology, one edge and the workers. Installs what is missing first.
# Data lives under .dev/ (ignored by git) and survives restarts.
# Ctrl-C stops everything this script started, and nothing else.
#
# Ports (override with the variables): NATS_PORT 4222, MONGO_PORT 27017,
# S3_PORT 9000, EDGE_PORT 8080. A busy port is replaced by a free one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEV="$ROOT/.dev"
mkdir -p "$DEV/nats" "$DEV/mongo" "$DEV/s3" "$DEV/logs"

./infra/install.sh --s3 --node
S3S_FS=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")

echo "dev: building (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet
BIN="$ROOT/target/debug"

# A previous run that was killed without cleaning up may have left its
# servers running (they hold the data directories): stop those, and only
# those (recorded in .dev/pids and still running from this project).
if [ -f "$DEV/stack.pid" ] && kill -0 "$(cat "$DEV/stack.pid")" 2>/dev/null; then
  echo "dev: a stack is already running (pid $(cat "$DEV/stack.pid")); its settings are in .dev/env" >&2
  echo "dev: stop it with Ctrl-C in its terminal (or kill $(cat "$DEV/stack.pid")) first" >&2
  exit 1
fi
if [ -f "$DEV/pids" ]; then
  while read -r pid; do
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$ROOT"; then
      echo "dev: stopping leftover process $pid from an earlier run"
      kill "$pid" 2>/dev/null || true
    fi
  done <"$DEV/pids"
  sleep 1
fi
: >"$DEV/pids"
echo $$ >"$DEV/stack.pid"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local want=$1
  if port_free "$want"; then echo "$want"; return; fi
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 300); do
    if ! port_free "$port"; then return 0; fi
    sleep 0.1
  done
  echo "dev: $name did not start on port $port; see .dev/logs/$name.log" >&2
  exit 1
}

PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "dev: stopping"
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$DEV/stack.pid" "$DEV/pids"
}
trap cleanup INT TERM EXIT

start() {
  local name=$1; shift
  "$@" >"$DEV/logs/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >>"$DEV/pids"
}

NATS_PORT=$(pick_port "${NATS_PORT:-4222}")
MONGO_PORT=$(pick_port "${MONGO_PORT:-27017}")
S3_PORT=$(pick_port "${S3_PORT:-9000}")
EDGE_PORT=$(pick_port "${EDGE_PORT:-8080}")

if [ ! -s "$DEV/jwt_secret" ]; then
  .venv/bin/python -c 'import secrets; print(secrets.token_hex(32))' >"$DEV/jwt_secret"
fi
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT/natter"
export JWT_SECRET; JWT_SECRET=$(cat "$DEV/jwt_secret")
export FRONTEND_URL="${FRONTEND_URL:-http://localhost:3000}"
export S3_ENDPOINT="http://127.0.0.1:$S3_PORT" S3_BUCKET=natter S3_ACCESS_KEY=natter S3_SECRET_KEY=natter-dev-secret
export LISTEN_ADDR="127.0.0.1:$EDGE_PORT"
# The web client at / signs in with development tokens, and downloads
# attachments through the edge.
export WEB_DIR="$ROOT/web" DEV_TOKENS=true ATTACHMENT_DOWNLOAD=proxy
mkdir -p "$DEV/s3/$S3_BUCKET"

start nats "$ROOT/.venv/bin/nats-server" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DEV/nats"
start mongo "$ROOT/.venv/bin/secantusd-py" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$DEV/mongo" --log-level WARNING
start s3 "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$DEV/s3"
wait_port "$NATS_PORT" nats
wait_port "$MONGO_PORT" mongo
wait_port "$S3_PORT" s3

"$BIN/natterctl" topology apply
METRICS_MESSAGES=$(pick_port "${METRICS_MESSAGES_PORT:-9101}")
METRICS_ATTACHMENTS=$(pick_port "${METRICS_ATTACHMENTS_PORT:-9102}")
METRICS_AUDIT=$(pick_port "${METRICS_AUDIT_PORT:-9103}")
METRICS_ADDR="127.0.0.1:$METRICS_MESSAGES" start worker-messages "$BIN/natter-worker-messages"
METRICS_ADDR="127.0.0.1:$METRICS_ATTACHMENTS" start worker-attachments "$BIN/natter-worker-attachments"
METRICS_ADDR="127.0.0.1:$METRICS_AUDIT" start worker-audit "$BIN/natter-worker-audit"
start edge "$BIN/natter-edge"
wait_port "$EDGE_PORT" edge

cat >"$DEV/env" <<ENV
export NATS_URL="$NATS_URL"
export MONGODB_URI="$MONGODB_URI"
export JWT_SECRET="$JWT_SECRET"
export S3_ENDPOINT="$S3_ENDPOINT" S3_BUCKET="$S3_BUCKET" S3_ACCESS_KEY="$S3_ACCESS_KEY" S3_SECRET_KEY="$S3_SECRET_KEY"
export NATTER_URL="http://127.0.0.1:$EDGE_PORT"
ENV

cat <<INFO

natter is running
  web client  http://127.0.0.1:$EDGE_PORT/   open it in two browser tabs, sign in as two users, chat
  edge        http://127.0.0.1:$EDGE_PORT   (WebSocket: ws://127.0.0.1:$EDGE_PORT/ws, Socket.IO: /socket.io/, REST: /api/chat/...)
  metrics     http://127.0.0.1:$EDGE_PORT/metrics, workers: http://127.0.0.1:$METRICS_MESSAGES/metrics (messages) :$METRICS_ATTACHMENTS (attachments) :$METRICS_AUDIT (audit)
  NATS        $NATS_URL
  MongoDB     $MONGODB_URI
  S3          $S3_ENDPOINT (bucket $S3_BUCKET)
  logs        .dev/logs/

Get a token (the settings are in .dev/env):
  source .dev/env && target/debug/natterctl token --roles Admin --json
Connect with it:
  ws://127.0.0.1:$EDGE_PORT/ws?token=<token>      or the header  Authorization: Bearer <token>
  io("http://127.0.0.1:$EDGE_PORT", { auth: { token } })   a socket.io-client v4 front end (docs/socketio.md)
Two users chatting, end to end:
  .venv/bin/python infra/demo.py

Ctrl-C stops everything started here.
INFO

# Stay in the foreground while the stack runs; if a part dies, say so.
while true; do
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "dev: process $pid exited; see .dev/logs/" >&2
      exit 1
    fi
  done
  sleep 2
done
