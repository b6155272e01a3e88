#!/usr/bin/env bash
# A secured Kafka endpoint for the tests, on 127.0.0.1 only: Tansu behind a
# TLS-terminating socat (Tansu 0.6.0's own --cert cannot be used with --key).
#   deploy/local/secured-broker.sh start|stop [BASE_PORT]
# BASE_PORT (default $KAFLOWSQL_SECURED_PORT or 9492):
#   BASE     Tansu, plaintext, no authentication (for the test's own producer and reader)
#   BASE+1   TLS (socat) in front of BASE; Tansu advertises this address, so clients stay on TLS
#   BASE+2   Tansu with --authentication (SASL SCRAM required), plaintext
#   BASE+3   TLS (socat) in front of BASE+2 (SASL_SSL)
# TLS material in .deps/tls-BASE/: ca.pem (the test CA), server.pem/server.key
# (for 127.0.0.1 and localhost, signed by ca.pem), and other-ca.pem (a CA that
# signed nothing, for the wrong-CA case). Needs socat and openssl (deps.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
deps="$root/.deps"
base=${2:-${KAFLOWSQL_SECURED_PORT:-9492}}
dir="$deps/tls-$base"
tansu="$deps/venv/bin/tansu"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

certificates() {
  [ -f "$dir/server.pem" ] && return 0
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 \
      -subj "/CN=kaflowsql test CA" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 30 \
      -subj "/CN=another CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out server.pem -days 30 -extfile ext.cnf 2>/dev/null
  )
}

spawn() { # name, command...
  local name=$1
  shift
  nohup "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

wait_for() { # port
  for _ in $(seq 1 100); do
    if answers "$1"; then return 0; fi
    sleep 0.1
  done
  echo "secured-broker: nothing answers on 127.0.0.1:$1; see $dir/*.log" >&2
  return 1
}

start() {
  if answers "$((base + 1))" && answers "$((base + 3))"; then
    echo "secured-broker: already running (TLS on $((base + 1)), SASL_SSL on $((base + 3)))"
    return 0
  fi
  [ -x "$tansu" ] || "$root/deploy/local/deps.sh"
  command -v socat >/dev/null || { echo "secured-broker: socat is missing; run deploy/local/deps.sh" >&2; exit 1; }
  certificates
  spawn tansu-tls "$tansu" broker --listener-url "tcp://127.0.0.1:$base" \
    --advertised-listener-url "tcp://127.0.0.1:$((base + 1))" --storage-engine memory://tansu/
  spawn tansu-sasl "$tansu" broker --listener-url "tcp://127.0.0.1:$((base + 2))" \
    --advertised-listener-url "tcp://127.0.0.1:$((base + 3))" --storage-engine memory://tansu/ --authentication
  for pair in "$((base + 1)):$base" "$((base + 3)):$((base + 2))"; do
    spawn "socat-${pair%%:*}" socat \
      "OPENSSL-LISTEN:${pair%%:*},bind=127.0.0.1,reuseaddr,fork,cert=$dir/server.pem,key=$dir/server.key,verify=0" \
      "TCP:127.0.0.1:${pair##*:}"
  done
  for port in "$base" "$((base + 1))" "$((base + 2))" "$((base + 3))"; do wait_for "$port"; done
  echo "secured-broker: TLS on 127.0.0.1:$((base + 1)), SASL_SSL on 127.0.0.1:$((base + 3)), CA $dir/ca.pem"
}

stop() {
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  echo "secured-broker: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop [BASE_PORT]" >&2; exit 2 ;;
esac
