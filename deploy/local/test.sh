#!/usr/bin/env bash
# Runs the whole test suite on this machine: installs what is missing, starts
# the local broker, runs fmt, clippy and every test, and stops the broker.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kaflowsql-target}
export KAFLOWSQL_TEST_BROKERS=${KAFLOWSQL_TEST_BROKERS:-127.0.0.1:${KAFLOWSQL_BROKER_PORT:-9092}}
deploy/local/deps.sh
deploy/local/broker.sh start
trap 'deploy/local/broker.sh stop >/dev/null 2>&1 || true' EXIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
