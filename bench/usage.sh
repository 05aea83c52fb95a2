#!/usr/bin/env bash
# bench/run usage [--records N] [--batch N]: a busy month of usage, written as workers write it
# (flowd_usage_add, --batch records a call: default 500), then GET /v1/usage's statement timed for
# the month by day, workflow, model and run (the 100 that cost most), best of 5 each, and the same
# sums taken from the raw records for comparison. Prints one JSON object.
#
# The month: --records records (default 1,000,000) over 30 days of the engine clock, one tenant,
# 20 workflows, 50,000 runs (each run's records on one day, as most runs take minutes), 6 models
# and SMS; a throw-away cluster (fsync on) migrated by the build's flowd. Takes about a minute per 500,000 records on a 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
records=1000000 batch=500
while [ $# -gt 0 ]; do
  case "$1" in
  --records) records=${2:?}; shift 2 ;;
  --batch) batch=${2:?}; shift 2 ;;
  *) echo "usage: bench/run usage [--records N] [--batch N]" >&2; exit 2 ;;
  esac
done
[[ $records =~ ^[1-9][0-9]*$ && $batch =~ ^[1-9][0-9]*$ ]] \
  || { echo "bench/run usage: --records and --batch take positive integers" >&2; exit 2; }
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
[ -x "$build/flowd" ] || { echo "bench/run usage: $build/flowd not found: build first" >&2; exit 1; }
dir=$(mktemp -d /tmp/flowd-usage.XXXXXX)
chmod 0777 "$dir"
cleanup() { "$root/tests/support/pg_fixture.sh" stop "$dir/pg" >&2 || true; rm -rf "$dir"; }
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$dir/pg" >&2
db="host=$dir/pg dbname=postgres user=postgres"
FLOWD_LOG_LEVEL=warn "$build/flowd" --database "$db" migrate >/dev/null
psql() { command psql -X -q -t -A -h "$dir/pg" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

# Each call: one day's share of the month, rows spread over workflows, runs, models and SMS.
calls=$(( (records + batch - 1) / batch ))
t0=$(date +%s.%N)
psql <<SQL >/dev/null
INSERT INTO workflows (tenant_id, name, version, digest, source, def)
SELECT 1, 'wf' || g, 1, 'd' || g, '{}', '{}' FROM generate_series(1, 20) g;
INSERT INTO runs (tenant_id, workflow_id, state, steps_total, input)
SELECT 1, (SELECT min(id) FROM workflows) + g % 20, 'succeeded', 1, '{}'
  FROM generate_series(1, 50000) g;
DO \$\$
DECLARE
    v_day integer := -1;
BEGIN
    FOR c IN 0 .. $calls - 1 LOOP
        IF c * 30 / $calls <> v_day THEN
            v_day := c * 30 / $calls;
            UPDATE flowd_clock SET offset_ms = (v_day - 30) * 86400000::bigint;
        END IF;
        PERFORM flowd_usage_add((
            SELECT jsonb_agg(jsonb_build_object(
                       'tenant', 1, 'run', (SELECT min(id) FROM runs) + (i * 50000 / $records) % 50000, 'step', 's' || (i % 8),
                       'kind', CASE WHEN i % 10 = 0 THEN 'send' ELSE 'llm' END,
                       'provider', CASE WHEN i % 10 = 0 THEN 'twilio'
                                        ELSE (ARRAY['openai', 'openai', 'openai', 'anthropic',
                                                    'anthropic', 'openai'])[1 + i % 6] END,
                       'model', CASE WHEN i % 10 = 0 THEN 'sms'
                                     ELSE (ARRAY['gpt-4o-mini', 'gpt-4o', 'gpt-4.1',
                                                 'claude-sonnet-4-5', 'claude-3-5-haiku-latest',
                                                 'gpt-4.1-mini'])[1 + i % 6] END,
                       'input_tokens', 200 + (i * 7919) % 3000,
                       'output_tokens', 50 + (i * 104729) % 900,
                       'cached_tokens', (i * 31) % 150, 'segments', 1 + i % 2))
              FROM generate_series(c::bigint * $batch, c::bigint * $batch + $batch - 1) i));
        COMMIT;
    END LOOP;
END \$\$;
SQL
t1=$(date +%s.%N)
psql >/dev/null <<'SQL'
UPDATE flowd_clock SET offset_ms = 0;
VACUUM ANALYZE;
SQL
best() { # the best of 5 timings (ms) of one statement, on one connection as the API's are
  local sql=$1
  for _ in 1 2 3 4 5; do echo "EXPLAIN (ANALYZE, FORMAT JSON) $sql;"; done | psql | python3 -c '
import json, sys
text = sys.stdin.read()
dec, i, times = json.JSONDecoder(), 0, []
while True:
    j = text.find("[", i)
    if j < 0:
        break
    plan, i = dec.raw_decode(text, j)
    times.append(plan[0]["Execution Time"])
print(min(times))'
}
range="(now() AT TIME ZONE 'UTC')::date - 31, (now() AT TIME ZONE 'UTC')::date"
day=$(best "SELECT flowd_usage_report(1, $range, 'day', 100)")
workflow=$(best "SELECT flowd_usage_report(1, $range, 'workflow', 100)")
model=$(best "SELECT flowd_usage_report(1, $range, 'model', 100)")
run=$(best "SELECT flowd_usage_report(1, $range, 'run', 100)")
raw=$(best "SELECT model, sum(input_tokens), sum(output_tokens), sum(cost_usd) FROM usage_records WHERE tenant_id = 1 AND at >= now() - interval '31 days' GROUP BY model")
n=$(psql -c "SELECT count(*) FROM usage_records")
rollup_rows=$(psql -c "SELECT count(*) FROM usage_daily")
run_rows=$(psql -c "SELECT count(*) FROM run_usage")
python3 - "$n" "$rollup_rows" "$run_rows" "$t0" "$t1" "$day" "$workflow" "$model" "$run" "$raw" <<'PY'
import json, sys
n, rows, run_rows, t0, t1, day, wf, model, run, raw = sys.argv[1:]
print(json.dumps({
    "records": int(n), "usage_daily_rows": int(rows), "run_usage_rows": int(run_rows),
    "write_records_per_s": round(int(n) / (float(t1) - float(t0))),
    "report_ms": {"day": float(day), "workflow": float(wf), "model": float(model),
                  "run_top100": float(run)},
    "raw_scan_by_model_ms": float(raw)}))
PY
