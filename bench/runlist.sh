#!/usr/bin/env bash
# bench/run runlist [--runs N]: how long GET /v1/runs takes over a tenant with N runs (default
# 1,000,000), each with search metadata (a unique lead id, one of 10 campaigns): the newest page,
# an exact metadata match (?meta.lead=), a metadata value shared by a tenth of the runs, free search
# (?q=, prefixes of metadata values), state and
# workflow filters, a failed step, a time range, the state counts, GET /v1/queue and /v1/workers,
# and (when the console's browser test tools are installed in the build tree: ctest -R
# console_browser once) the console's run list in headless chromium, from navigation to the rows
# shown. Prints one JSON object (milliseconds, median of 7 requests after one warm-up, as a client
# on this machine sees them).
# The runs are made by flowd_create_runs in batches of 10,000 (steps, event log and all), then
# marked finished (a tenth failed in their step) without a worker: seeding a million takes a few
# minutes. A throw-away cluster (tests/support/pg_fixture.sh) and a build (FLOWD_BUILD_DIR, else
# ./build, else <repo>/build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=1000000
while [ $# -gt 0 ]; do
  case "$1" in
  --runs) runs=${2:?}; shift 2 ;;
  *) echo "usage: bench/run runlist [--runs N]" >&2; exit 2 ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "bench/run runlist: --runs takes a positive integer" >&2; exit 2; }
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
[ -x "$build/flowd" ] || { echo "bench/run runlist: $build/flowd not found: build first" >&2; exit 1; }
command -v psql >/dev/null || { echo "bench/run runlist: psql is needed (postgresql-client)" >&2; exit 1; }
dir=$(mktemp -d /tmp/flowd-runlist.XXXXXX)
chmod 0755 "$dir" # the cluster below runs as postgres when this runs as root
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  "$root/tests/support/pg_fixture.sh" stop "$dir/pg" >&2 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$dir/pg" >&2
db="host=$dir/pg dbname=postgres user=postgres"
key=fd_runlist_bench_key_0123456789
FLOWD_API_KEY=$key "$build/flowd" --database "$db" serve --role api --listen 127.0.0.1:0 \
  >/dev/null 2>"$dir/serve.log" &
pid=$!
port=
for _ in $(seq 1 300); do
  port=$(sed -n 's/.*msg="api listening" address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/serve.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$dir/serve.log" >&2; echo "bench/run runlist: flowd did not start" >&2; exit 1; }
url=http://127.0.0.1:$port
auth="Authorization: Bearer $key"
curl -fsS -X PUT "$url/v1/workflows/lead" -H "$auth" -H 'Content-Type: application/json' \
  -d '{"search": {"lead": "{{input.lead.id}}", "campaign": "{{input.campaign}}"},
       "steps": [{"key": "touch", "kind": "transform", "input": {"text": "hi {{input.lead.id}}"}}]}' >/dev/null
psql_() { psql -X -A -t -q -v ON_ERROR_STOP=1 "$db" -c "$1"; }
tenant=$(psql_ "SELECT tenant_id FROM workflows WHERE name = 'lead'")
wf=$(psql_ "SELECT id FROM workflows WHERE name = 'lead'")
t0=$(date +%s.%N)
for ((b = 0; b < runs; b += 10000)); do
  n=$((runs - b < 10000 ? runs - b : 10000))
  psql_ "SELECT cardinality(flowd_create_runs($tenant, $wf,
           (SELECT jsonb_agg(jsonb_build_object('lead', jsonb_build_object('id', 100000 + i),
                                                'campaign', 'c' || (i % 10)))
              FROM generate_series($b + 1, $b + $n) i), 0, NULL, NULL, NULL, NULL))" >/dev/null
done
# finished without a worker: a tenth failed in their step, the rest succeeded, over 30 days
psql_ "UPDATE steps SET state = CASE WHEN run_id % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
                        attempts = 1, finished_at = now()
        WHERE tenant_id = $tenant" >/dev/null
psql_ "UPDATE runs SET state = CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
                       steps_done = 1, started_at = created_at,
                       created_at = now() - (($runs - id) * interval '30 days' / $runs),
                       finished_at = now() - (($runs - id) * interval '30 days' / $runs) + interval '1 second',
                       error = CASE WHEN id % 10 = 0 THEN jsonb_build_object('code', 'step_failed',
                                 'step', 'touch', 'message', 'step \"touch\" failed') END
        WHERE tenant_id = $tenant" >/dev/null
psql_ "VACUUM ANALYZE runs" >/dev/null
psql_ "VACUUM ANALYZE steps" >/dev/null
seed_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
lead=$(psql_ "SELECT meta->>'lead' FROM runs WHERE tenant_id = $tenant ORDER BY id LIMIT 1 OFFSET $((runs / 2))")
week=$(date -u -d '7 days ago' +%Y-%m-%dT%H:%M:%SZ)
six=$(date -u -d '6 days ago' +%Y-%m-%dT%H:%M:%SZ)

median_ms() { # GET path: median of 7 after a warm-up, in ms; fails on a non-200 answer
  local path=$1 i out=()
  curl -fsS -o /dev/null "$url$path" -H "$auth"
  for i in 1 2 3 4 5 6 7; do
    out+=("$(curl -fsS -o /dev/null -w '%{time_total}' "$url$path" -H "$auth")")
  done
  printf '%s\n' "${out[@]}" | sort -n | sed -n 4p | awk '{printf "%.1f", $1 * 1000}'
}
newest=$(median_ms '/v1/runs')
by_lead=$(median_ms "/v1/runs?meta.lead=$lead")
by_campaign=$(median_ms '/v1/runs?meta.campaign=c3')
by_lead_state=$(median_ms "/v1/runs?meta.lead=$lead&state=failed&workflow=lead")
failed=$(median_ms '/v1/runs?state=failed')
failed_step=$(median_ms '/v1/runs?failed_step=touch')
range=$(median_ms "/v1/runs?created_after=$week&created_before=$six")
counts=$(median_ms '/v1/runs/counts')
found=$(curl -fsS "$url/v1/runs?meta.lead=$lead" -H "$auth" | grep -o '"id": [0-9]*' | wc -l)
[ "$found" -eq 1 ] || { echo "bench/run runlist: ?meta.lead=$lead found $found runs, want 1" >&2; exit 1; }
# free search (?q=, a prefix of any metadata value): one lead's whole id, the 100 leads of a
# four-digit prefix, the 100 of them on the second page (their cursor), a prefix of every run (the
# campaigns c0..c9), a prefix of every run with a state none of them has (campaign c3's runs all
# succeeded: every run is looked at), no match, and the counts of the 100
q_one=$(median_ms "/v1/runs?q=$lead")
q_hundred=$(median_ms "/v1/runs?q=${lead:0:4}")
cur=$(curl -fsS "$url/v1/runs?q=${lead:0:4}" -H "$auth" | sed -n 's/.*"next_cursor": "\([0-9]*\)".*/\1/p')
[ -n "$cur" ] || { echo "bench/run runlist: ?q=${lead:0:4} has no second page" >&2; exit 1; }
q_page2=$(median_ms "/v1/runs?q=${lead:0:4}&cursor=$cur")
q_all=$(median_ms '/v1/runs?q=c')
q_all_none=$(median_ms '/v1/runs?q=c3&state=failed')
q_no_match=$(median_ms '/v1/runs?q=zz')
q_counts=$(median_ms "/v1/runs/counts?q=${lead:0:4}")
found=$(curl -fsS "$url/v1/runs?q=${lead:0:4}&limit=500" -H "$auth" | grep -o '"id": [0-9]*' | wc -l)
[ "$found" -eq 100 ] || { echo "bench/run runlist: ?q=${lead:0:4} found $found runs, want 100" >&2; exit 1; }
# the queue page's API: the runs of the last hour by minute (about 1,400 of the million), then
# again with a backlog of 10,000 due steps (runs created and left for workers this server lacks)
queue=$(median_ms '/v1/queue')
psql_ "SELECT cardinality(flowd_create_runs($tenant, $wf,
         (SELECT jsonb_agg(jsonb_build_object('lead', jsonb_build_object('id', i)))
            FROM generate_series(1, 10000) i), 0, NULL, NULL, NULL, NULL))" >/dev/null
psql_ "VACUUM ANALYZE steps" >/dev/null
queue_backlog=$(median_ms '/v1/queue')
due=$(curl -fsS "$url/v1/queue" -H "$auth" | grep -o '"due": [0-9]*' | head -1)
[ "$due" = '"due": 10000' ] || { echo "bench/run runlist: /v1/queue says $due, want 10000" >&2; exit 1; }
workers=$(median_ms '/v1/workers')
console=null
runner=$build/npm-console/node_modules/puppeteer-core
if [ -d "$runner" ] && command -v chromium >/dev/null; then
  console=$(NODE_PATH=$build/npm-console/node_modules node "$root/tests/console/first_show.js" "$url" "$key")
fi
cat <<EOF
{"runs": $runs, "seed_s": $seed_s,
 "list_ms": {"newest": $newest, "meta_lead": $by_lead, "meta_campaign_tenth": $by_campaign,
             "meta_lead_state_workflow": $by_lead_state, "state_failed": $failed,
             "failed_step": $failed_step, "created_one_day": $range, "counts": $counts},
 "search_ms": {"q_one_lead": $q_one, "q_prefix_100": $q_hundred, "q_prefix_100_page2": $q_page2,
               "q_prefix_all": $q_all, "q_prefix_all_state_none": $q_all_none,
               "q_no_match": $q_no_match, "q_prefix_100_counts": $q_counts},
 "queue_ms": {"hour_of_runs": $queue, "with_10000_due": $queue_backlog}, "workers_ms": $workers,
 "console_first_show_ms": $console}
EOF
