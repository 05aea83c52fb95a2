#!/usr/bin/env bash
# bench/run metrics [--finished N,N,...]: what a /metrics scrape costs PostgreSQL as finished runs
# pile up (they stay until retention). For each count (default 1000 and 1000000) a throw-away
# cluster (fsync on), migrated by the build's flowd, gets that many finished one-step runs plus
# the same unfinished work each time (200 queued runs with a due step over 5 workflows, 50 running,
# 100 waiting), then the scrape's statement (api/routes_ops.c, copied below) is timed, best of 10
# on one connection, next to the statement the gauges used before (every run and step counted by
# state). Prints one JSON object.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
counts=1000,1000000
while [ $# -gt 0 ]; do
  case "$1" in
  --finished) counts=${2:?}; shift 2 ;;
  *) echo "usage: bench/run metrics [--finished N,N,...]" >&2; exit 2 ;;
  esac
done
[[ $counts =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || { echo "bench/run metrics: --finished takes positive integers, comma-separated" >&2; exit 2; }
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
[ -x "$build/flowd" ] || { echo "bench/run metrics: $build/flowd not found: build first" >&2; exit 1; }
dir=$(mktemp -d /tmp/flowd-metrics.XXXXXX)
chmod 0777 "$dir"
cleanup() { "$root/tests/support/pg_fixture.sh" stop "$dir/pg" >&2 || true; rm -rf "$dir"; }
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$dir/pg" >&2
psql() { command psql -X -q -t -A -h "$dir/pg" -U postgres -v ON_ERROR_STOP=1 "$@"; }

# the scrape's statement, as api/routes_ops.c sends it
scrape=$(python3 - "$root/api/routes_ops.c" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
body = src[src.index("static const char ops_metrics_sql[] ="):]
body = body[:body.index('")";') + 3]
body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)  # comments between the pieces
sql = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))
limit = re.search(r"#define OPS_QUEUE_WORKFLOWS (\d+)", src).group(1)
print(sql.replace("LIMIT )", "LIMIT " + limit + ")"))
PY
)
before="SELECT 'runs', state, count(*) FROM runs GROUP BY state UNION ALL SELECT 'steps', state, count(*) FROM steps GROUP BY state"
best() { # best of 10 (ms) on one connection
  local db=$1 sql=$2
  for _ in $(seq 10); do echo "EXPLAIN (ANALYZE, FORMAT JSON) $sql;"; done | psql -d "$db" | python3 -c '
import json, sys
text, dec, i, t = sys.stdin.read(), json.JSONDecoder(), 0, []
while (j := text.find("[", i)) >= 0:
    plan, i = dec.raw_decode(text, j)
    t.append(plan[0]["Execution Time"])
print(min(t))'
}
out="{"
first=1
IFS=, read -ra ns <<<"$counts"
for n in "${ns[@]}"; do
  db="m$n"
  psql -d postgres -c "CREATE DATABASE $db" >/dev/null
  FLOWD_LOG_LEVEL=warn "$build/flowd" --database "host=$dir/pg dbname=$db user=postgres" migrate >/dev/null
  psql -d "$db" >/dev/null <<SQL
INSERT INTO workflows (tenant_id, name, version, digest, source, def)
SELECT 1, 'wf' || g, 1, 'd' || g, '{}', '{}' FROM generate_series(1, 5) g;
INSERT INTO runs (tenant_id, workflow_id, state, steps_total, steps_done, input, finished_at)
SELECT 1, (SELECT min(id) FROM workflows) + g % 5, 'succeeded', 1, 1, '{}', now()
  FROM generate_series(1, $n) g;
INSERT INTO steps (run_id, tenant_id, idx, max_attempts, needs_left, state, key, kind, finished_at)
SELECT id, 1, 0, 1, 0, 'succeeded', 's', 'transform', now() FROM runs;
WITH q AS (
    INSERT INTO runs (tenant_id, workflow_id, state, steps_total, input)
    SELECT 1, (SELECT min(id) FROM workflows) + g % 5, CASE WHEN g <= 200 THEN 'queued' ELSE 'running' END,
           1, '{}' FROM generate_series(1, 350) g RETURNING id, state)
INSERT INTO steps (run_id, tenant_id, idx, max_attempts, needs_left, state, key, kind, run_at)
SELECT q.id, 1, 0, 1, 0,
       CASE WHEN q.state = 'queued' THEN 'ready'
            WHEN row_number() OVER (ORDER BY q.id) <= 250 THEN 'running' ELSE 'waiting' END,
       's', 'transform', now() - interval '5 seconds'
  FROM q;
VACUUM ANALYZE;
SQL
  now=$(best "$db" "$scrape")
  old=$(best "$db" "$before")
  [ $first -eq 1 ] || out+=", "
  first=0
  out+="\"$n\": {\"scrape_ms\": $now, \"counting_every_row_ms\": $old}"
done
echo "{\"finished_runs\": $out}}"
