#!/usr/bin/env bash
# Starts, stops or checks the local Tansu broker on 127.0.0.1 (in-memory storage).
#   deploy/local/broker.sh start|stop|restart|status
# Port: KAFLOWSQL_BROKER_PORT (default 9092). Log and pid under .deps/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
deps="$root/.deps"
port=${KAFLOWSQL_BROKER_PORT:-9092}
pidfile="$deps/broker-$port.pid"
log="$deps/broker-$port.log"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && answers; then
    echo "broker: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    return 0
  fi
  [ -x "$deps/venv/bin/tansu" ] || "$root/deploy/local/deps.sh"
  nohup "$deps/venv/bin/tansu" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answers; then
      echo "broker: Tansu listening on 127.0.0.1:$port (pid $(cat "$pidfile"), log $log)"
      return 0
    fi
    sleep 0.1
  done
  echo "broker: Tansu did not answer on 127.0.0.1:$port within 10 s; see $log" >&2
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
    echo "broker: stopped"
  else
    echo "broker: not running"
  fi
}

case "${1:-status}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if answers; then echo "broker: up on 127.0.0.1:$port"; else echo "broker: down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
