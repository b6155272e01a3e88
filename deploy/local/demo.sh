#!/usr/bin/env bash
# The main job end to end on this machine: starts the Tansu broker, creates the
# user-events topics, runs kaflowsql with pipelines/user_events.yaml, feeds it
# with fakegen for DEMO_SECONDS (default 20), prints enriched events and the
# metrics, and stops cleanly (also on Ctrl-C).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kaflowsql-target}
seconds=${DEMO_SECONDS:-20}
rate=${DEMO_RATE:-2000}

deploy/local/deps.sh
echo "demo: building kaflowsql and fakegen (the first build takes several minutes)"
cargo build --release --locked --workspace --bins
bin="$CARGO_TARGET_DIR/release"
deploy/local/broker.sh start

"$bin/fakegen" --brokers 127.0.0.1:9092 --scenario user-events --create-topics --count 0 --keys 1000 --hit-rate 0.95
"$bin/kaflowsql" validate pipelines/user_events.yaml

# The broker starts empty (Tansu keeps topics in memory), so state from an
# earlier demo would point at offsets that no longer exist: start afresh.
export KAFLOWSQL_STATE_ROCKSDB_PATH="$root/.deps/demo-state"
rm -rf "$KAFLOWSQL_STATE_ROCKSDB_PATH"
"$bin/kaflowsql" run --config deploy/local/kaflowsql.yaml pipelines/user_events.yaml &
kpid=$!
cleanup() {
  kill -TERM "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null || true
  deploy/local/broker.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "demo: kaflowsql is ready; metrics at http://127.0.0.1:8080/metrics"
"$bin/fakegen" --brokers 127.0.0.1:9092 --scenario user-events --rate "$rate" --duration "${seconds}s" --keys 1000 --hit-rate 0.95 --no-dimensions
sleep 2

echo
echo "demo: a few enriched events from topic enriched_user_events:"
"$bin/kaflowsql" peek --brokers 127.0.0.1:9092 --topic enriched_user_events --count 5
echo
echo "demo: metrics (curl http://127.0.0.1:8080/metrics):"
curl -s http://127.0.0.1:8080/metrics | grep -E '^kaflowsql_(events_processed_total|output_records_total|join_hit_rate|dlq_records_total|smart_held_events|state_entries_total|memory_usage_bytes)' || true
