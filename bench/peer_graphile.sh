#!/usr/bin/env bash
# bench/run peer-graphile [--repeat N] [--jobs N]: the peer baseline the queue benchmark's bar refers
# to: graphile-worker (pinned in bench/peer_graphile/package-lock.json, installed from npm on first use)
# working no-op jobs with its batching on (local queue, batched completions), over a grid of settings,
# and enqueuing through its own client (enqueue_single_per_s: addJob, 64 in flight; enqueue_batch_per_s:
# addJobs of 1,000, 8 in flight), the peer figures for `bench/run http`. Prints one JSON object, the
# best trial. PostgreSQL: FLOWD_DATABASE_URL when set (each trial creates
# and drops its own database there), else a throw-away cluster from tests/support/pg_fixture.sh, the
# same fsync-on settings `bench/run queue` gets.
# 0.17.3 is the newest graphile-worker that runs on this machine's Node 20 (0.18.0 wants Node >= 22.18);
# it has the batching options the performance page names (localQueue.size, completeJobBatchDelay,
# failJobBatchDelay).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/bench/peer_graphile

"$dir/install.sh"

if [ -n "${FLOWD_DATABASE_URL:-}" ]; then
  exec node "$dir/driver.js" sweep --database "$FLOWD_DATABASE_URL" "$@"
fi
pgdir=$(mktemp -d /tmp/flowd-bench-pg.XXXXXX)
cleanup() { "$root/tests/support/pg_fixture.sh" stop "$pgdir" >&2 || true; rm -rf "$pgdir"; }
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$pgdir" >&2
node "$dir/driver.js" sweep --database "host=$pgdir dbname=postgres user=postgres" "$@"
