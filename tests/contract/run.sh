#!/usr/bin/env bash
# tests/contract/run.sh SOURCE_DIR NODE_DIR FLOWD_BIN: the API contract test. Installs its npm
# packages (pinned by tests/contract/package-lock.json: ajv, openapi-typescript, openapi-fetch,
# typescript) into NODE_DIR, a folder of the build tree, on first use; then contract.mjs starts a
# flowd serve on a fresh database of the fixture cluster (FLOWD_TEST_PGDIR), checks every route's
# real answers against api/openapi.json, and runs a client generated from the document.
set -euo pipefail
src=$1 dir=$2 flowd=$3
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/contract/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
mkdir -p "$dir"
if ! cmp -s "$src/tests/contract/package-lock.json" "$dir/package-lock.json" \
   || [ ! -d "$dir/node_modules/ajv" ]; then
  cp "$src/tests/contract/package.json" "$src/tests/contract/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
exec node "$src/tests/contract/contract.mjs" "$src" "$dir" "$flowd"
