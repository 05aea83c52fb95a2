#!/usr/bin/env bash
# tests/webhooks/run.sh SOURCE_DIR NODE_DIR [SCRIPT ARGS...]: installs standardwebhooks (pinned by
# tests/webhooks/package-lock.json) into NODE_DIR, a folder of the build tree, on first use, then
# runs the receiver (tests/webhooks/receiver.js), which prints its port and runs until its stdin
# closes, or SCRIPT of tests/webhooks/ with ARGS (sign.js signs a payload). The webhook tests start
# them through this script.
set -euo pipefail
src=$1 dir=$2 script=${3:-receiver.js}
shift $(( $# < 3 ? $# : 3 ))
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tests/webhooks/run.sh: node and npm are needed (scripts/deps installs them)" >&2; exit 1; }
mkdir -p "$dir"
(
  flock 9
  if ! cmp -s "$src/tests/webhooks/package-lock.json" "$dir/package-lock.json" \
     || [ ! -d "$dir/node_modules/standardwebhooks" ]; then
    cp "$src/tests/webhooks/package.json" "$src/tests/webhooks/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
  fi
) 9>"$dir.lock"
NODE_PATH=$dir/node_modules exec node "$src/tests/webhooks/$script" "$@"
