#!/usr/bin/env bash
# tests/cron/run.sh DRIVER SOURCE_DIR NODE_DIR N SEED: installs croner (pinned by
# tests/cron/package-lock.json) into NODE_DIR (a folder of the build tree) on first use, then checks
# N random triples of tests/cron/cron_driver against croner with tests/cron/compare.js.
set -euo pipefail
driver=$1 src=$2 dir=$3 n=$4 seed=$5
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/cron/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
mkdir -p "$dir"
if ! cmp -s "$src/tests/cron/package-lock.json" "$dir/package-lock.json" \
   || [ ! -d "$dir/node_modules/croner" ]; then
  cp "$src/tests/cron/package.json" "$src/tests/cron/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
"$driver" "$n" "$seed" >"$dir/triples.txt"
NODE_PATH=$dir/node_modules node "$src/tests/cron/compare.js" <"$dir/triples.txt"
