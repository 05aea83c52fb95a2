#!/usr/bin/env bash
# Installs graphile-worker for the peer benchmarks (bench/run peer-graphile, bench/run versus):
# npm ci (exactly the lock file) unless the pinned version is already installed.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "bench: node and npm are needed for graphile-worker (apt-get install nodejs npm)" >&2; exit 1; }
want=$(node -p 'require(process.argv[1]).dependencies["graphile-worker"]' "$dir/package.json")
have=$(node -p 'require(process.argv[1]).version' "$dir/node_modules/graphile-worker/package.json" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
