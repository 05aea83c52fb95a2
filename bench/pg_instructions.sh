#!/usr/bin/env bash
# bench/run instructions [--runs N] [--batch N] [--setup SQL] [--pure KINDS]: the instructions PostgreSQL executes
# per one-step run worked through flowd_work(), counted by callgrind; prints one JSON object. Unlike
# CPU time on a shared VM, the count repeats to within a fraction of a percent, so it shows changes
# of a few percent in the server's work per step that throughput figures cannot.
#
# A throw-away cluster gets the migrations of the build (flowd migrate), one single-step transform
# workflow and N runs of it (default 4,000). The server is then stopped and started again in
# single-user mode under valgrind, where a DO block works every run the way a worker does: each
# flowd_work() call reports the outcomes of the steps the previous call claimed and claims up to
# --batch more (default 500), those of the kinds in --pure (a text[] literal, default '{transform}'
# as the worker asks) only locked and finished in the claim's transaction (flowd_finish_pure);
# --pure '{}' works them the way every other step goes (claimed running, then reported). Only the
# DO block is counted (--toggle-collect=ExecuteDoStmt).
# --setup runs SQL on the database after the migrations, before the runs are made: what a part of
# the schema costs is the difference it makes when dropped (--setup 'DROP INDEX runs_active').
# Reported: ir_per_step. Needs valgrind (apt-get install valgrind) and a build (FLOWD_BUILD_DIR,
# else ./build, else <repo>/build). Takes about a minute.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=4000 batch=500 setup= pure='{transform}'
while [ $# -gt 0 ]; do
  case "$1" in
  --runs) runs=${2:?}; shift 2 ;;
  --batch) batch=${2:?}; shift 2 ;;
  --setup) setup=${2:?}; shift 2 ;;
  --pure) pure=${2:?}; shift 2 ;;
  *) echo "usage: bench/run instructions [--runs N] [--batch N] [--setup SQL] [--pure KINDS]" >&2; exit 2 ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ && $batch =~ ^[1-9][0-9]*$ ]] \
  || { echo "bench/run instructions: --runs and --batch take positive integers" >&2; exit 2; }
[[ $pure =~ ^\{[a-z_,]*\}$ ]] || { echo "bench/run instructions: --pure takes a list like '{transform}'" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "bench/run instructions: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
[ -x "$build/flowd" ] || { echo "bench/run instructions: $build/flowd not found: build first" >&2; exit 1; }
dir=$(mktemp -d /tmp/flowd-instr.XXXXXX)
chmod 0777 "$dir" # the server (as postgres, when run as root) writes the count here
cleanup() { "$root/tests/support/pg_fixture.sh" stop "$dir/pg" >&2 || true; rm -rf "$dir"; }
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$dir/pg" >&2
db="host=$dir/pg dbname=postgres user=postgres"
cat >"$dir/one.json" <<'EOF'
{"name": "instructions", "steps": [{"key": "t", "kind": "transform", "input": {"n": "{{input.n}}"}}]}
EOF
FLOWD_LOG_LEVEL=warn "$build/flowd" --database "$db" migrate >/dev/null
FLOWD_LOG_LEVEL=warn "$build/flowd" --database "$db" enqueue --workflow "$dir/one.json" --input '{"n": 0}' >/dev/null
[ -z "$setup" ] || psql "$db" -q -v ON_ERROR_STOP=1 -c "$setup" >/dev/null
psql "$db" -q -v ON_ERROR_STOP=1 -v runs="$runs" >/dev/null <<'EOF'
SET client_min_messages = warning;
TRUNCATE runs, steps, run_events CASCADE;
SELECT count(*) FROM flowd_enqueue((SELECT id FROM tenants WHERE name = 'default'),
       (SELECT id FROM workflows WHERE name = 'instructions'),
       (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, :runs) g), 0, NULL, NULL);
VACUUM ANALYZE;
EOF
version=$(psql "$db" -Atc "SHOW server_version" | awk '{print $1}')

cat >"$dir/work.sql" <<EOF
DO \$\$
DECLARE v_results jsonb; v_pure jsonb; v_n integer;
BEGIN
  LOOP
    SELECT jsonb_agg(jsonb_build_object('id', c.id, 'r', c.run_id, 's', 'ok', 'o', c.input))
             FILTER (WHERE NOT c.pure),
           jsonb_agg(jsonb_build_object('id', c.id, 'r', c.run_id, 's', 'ok', 'o', c.input))
             FILTER (WHERE c.pure),
           count(*)
      INTO v_results, v_pure, v_n FROM flowd_work('instructions', v_results, $batch, 60000, '$pure') c;
    PERFORM flowd_finish_pure('instructions', v_pure);
    COMMIT;
    EXIT WHEN v_n = 0;
  END LOOP;
END \$\$;

SELECT count(*) FILTER (WHERE state <> 'succeeded') AS not_succeeded FROM runs;

EOF
"$root/tests/support/pg_fixture.sh" single "$dir/pg" valgrind --tool=callgrind \
  --toggle-collect=ExecuteDoStmt --callgrind-out-file="$dir/callgrind.out" \
  <"$dir/work.sql" >"$dir/single.log" 2>&1 || { cat "$dir/single.log" >&2; exit 1; }
grep -q 'not_succeeded = "0"' "$dir/single.log" || { echo "bench/run instructions: not every run succeeded" >&2; cat "$dir/single.log" >&2; exit 1; }
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out")
printf '{"benchmark":"instructions","runs":%d,"batch":%d,"pure":"%s","ir_per_step":%d,"postgres_version":"%s","setup":%s}\n' \
  "$runs" "$batch" "$pure" $((ir / runs)) "$version" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1] or None))' "$setup")"
