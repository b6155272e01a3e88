#!/usr/bin/env bash
# Keeps the shared build cache ($CARGO_TARGET_DIR) from filling the disk:
# every code change links new test and bench executables (about 500 MB each
# with the statically linked RocksDB), and the old ones are never used again.
# Removes all but the newest executable of each test/bench name, and the dev
# profile's directory (lint, tests and benches all use the release profile).
set -euo pipefail
target=${CARGO_TARGET_DIR:-$HOME/.cache/kaflowsql-target}
[ -d "$target" ] || exit 0
rm -rf "$target/debug"
deps="$target/release/deps"
[ -d "$deps" ] || exit 0
python3 - "$deps" <<'PY'
import collections, os, re, sys
deps = sys.argv[1]
groups = collections.defaultdict(list)
for f in os.listdir(deps):
    path = os.path.join(deps, f)
    m = re.fullmatch(r'(.+)-[0-9a-f]{16}', f)
    if m and os.path.isfile(path) and os.access(path, os.X_OK):
        groups[m.group(1)].append(path)
freed = 0
for paths in groups.values():
    paths.sort(key=os.path.getmtime, reverse=True)
    for old in paths[1:]:
        freed += os.path.getsize(old)
        os.remove(old)
print(f"prune-cache: removed {freed / 1e9:.1f} GB of stale executables from {deps}")
PY
