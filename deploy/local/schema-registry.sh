#!/usr/bin/env bash
# Starts, stops or checks the local test schema registry (deploy/local/schema-registry.py,
# in-memory, Confluent REST API, AVRO only) on 127.0.0.1.
#   deploy/local/schema-registry.sh start [SERVER ARGS...]|stop|restart [SERVER ARGS...]|status
# SERVER ARGS go to the server, e.g. --basic-auth USER:PASS, --tls-cert FILE --tls-key FILE.
# Port: KAFLOWSQL_REGISTRY_PORT (default 8081). Log and pid under .deps/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
deps="$root/.deps"
port=${KAFLOWSQL_REGISTRY_PORT:-8081}
pidfile="$deps/schema-registry-$port.pid"
log="$deps/schema-registry-$port.log"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  if running && answers; then
    echo "schema-registry: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    return 0
  fi
  if answers; then
    echo "schema-registry: something else already listens on 127.0.0.1:$port" >&2
    return 1
  fi
  mkdir -p "$deps"
  scheme=http
  for arg in "$@"; do [ "$arg" = --tls-cert ] && scheme=https; done
  nohup python3 "$root/deploy/local/schema-registry.py" --host 127.0.0.1 --port "$port" "$@" \
    >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answers; then
      echo "schema-registry: listening on $scheme://127.0.0.1:$port" \
        "(pid $(cat "$pidfile"), log $log)"
      return 0
    fi
    running || break
    sleep 0.1
  done
  echo "schema-registry: did not answer on 127.0.0.1:$port within 10 s; see $log" >&2
  tail -n 20 "$log" >&2 || true
  return 1
}

stop() {
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "schema-registry: stopped"
  else
    echo "schema-registry: not running"
  fi
}

case "${1:-status}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  restart) shift; stop; start "$@" ;;
  status)
    if answers; then echo "schema-registry: up on 127.0.0.1:$port"; else
      echo "schema-registry: down"; exit 1; fi ;;
  *) echo "usage: $0 start [ARGS...]|stop|restart [ARGS...]|status" >&2; exit 2 ;;
esac
