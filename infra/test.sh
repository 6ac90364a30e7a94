#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (infra/install.sh), checks formatting and lints, builds the binaries the
# integration tests start, and runs every test. The integration tests start
# their own nats-server and MongoDB server on free ports; set NATS_URL and
# MONGODB_URI to run them against existing servers instead.
set -euo pipefail
cd "$(dirname "$0")/.."

./infra/install.sh --s3 --node --browser --deploy
cargo fmt --all -- --check
cargo build --workspace --bins --tests --quiet
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace "$@"
