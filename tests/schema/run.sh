#!/usr/bin/env bash
# tests/schema/run.sh SOURCE_DIR NODE_DIR: installs ajv (pinned by tests/schema/package-lock.json)
# into NODE_DIR (a folder of the build tree) on first use, then runs tests/schema/check.js.
set -euo pipefail
src=$1 dir=$2
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/schema/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
mkdir -p "$dir"
if ! cmp -s "$src/tests/schema/package-lock.json" "$dir/package-lock.json" \
   || [ ! -d "$dir/node_modules/ajv" ]; then
  cp "$src/tests/schema/package.json" "$src/tests/schema/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
NODE_PATH=$dir/node_modules exec node "$src/tests/schema/check.js" "$src"
