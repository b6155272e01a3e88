#!/usr/bin/env bash
# Runs the whole test suite on this machine: installs what is missing (Flink
# SQL 2.0 too, the reference of tests/flink_differential.rs), starts the local
# broker, runs fmt, clippy and every test, and stops the broker.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kaflowsql-target}
export KAFLOWSQL_TEST_BROKERS=${KAFLOWSQL_TEST_BROKERS:-127.0.0.1:${KAFLOWSQL_BROKER_PORT:-9092}}
deploy/local/deps.sh --flink
deploy/local/broker.sh start
trap 'deploy/local/broker.sh stop >/dev/null 2>&1 || true' EXIT
cargo fmt --all -- --check
# The test schema registry's own tests (Python standard library, ~4 s).
python3 deploy/local/test_schema_registry.py
# One profile (release) for lint, tests and benches: RocksDB, librdkafka and
# the crate are compiled once, and tests run the code that ships.
cargo clippy --release --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
set +e
cargo test --release --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
