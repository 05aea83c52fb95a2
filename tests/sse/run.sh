#!/usr/bin/env bash
# tests/sse/run.sh SOURCE_DIR NODE_DIR ARGS...: installs the npm eventsource client (pinned by
# tests/sse/package-lock.json) into NODE_DIR (a folder of the build tree) on first use, then runs
# tests/sse/client.js ARGS... (test_sse_eventsource drives it).
set -euo pipefail
src=$1 dir=$2
shift 2
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/sse/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
mkdir -p "$dir"
if ! cmp -s "$src/tests/sse/package-lock.json" "$dir/package-lock.json" \
   || [ ! -d "$dir/node_modules/eventsource" ]; then
  cp "$src/tests/sse/package.json" "$src/tests/sse/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
NODE_PATH=$dir/node_modules exec node "$src/tests/sse/client.js" "$@"
