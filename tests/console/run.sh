#!/usr/bin/env bash
# tests/console/run.sh SOURCE_DIR NODE_DIR FLOWD_BIN SHOTS_DIR: the console's browser test.
# Installs puppeteer-core (pinned by tests/console/package-lock.json) into NODE_DIR, a folder of the
# build tree, on first use; then browser.mjs starts a flowd serve on a fresh database of the
# fixture cluster (FLOWD_TEST_PGDIR) and drives the console in Debian's headless chromium
# (scripts/deps installs it), saving screenshots in SHOTS_DIR.
set -euo pipefail
src=$1 dir=$2 flowd=$3 shots=$4
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/console/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
command -v chromium >/dev/null \
  || { echo "tests/console/run.sh: chromium is needed (scripts/deps installs it)" >&2; exit 1; }
mkdir -p "$dir" "$shots"
if ! cmp -s "$src/tests/console/package-lock.json" "$dir/package-lock.json" \
   || [ ! -d "$dir/node_modules/puppeteer-core" ]; then
  cp "$src/tests/console/package.json" "$src/tests/console/package-lock.json" "$dir/"
  (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >&2
fi
NODE_PATH=$dir/node_modules exec node "$src/tests/console/browser.mjs" "$src" "$dir" "$flowd" "$shots"
