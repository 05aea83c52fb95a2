#!/usr/bin/env bash
# bench/run idle [--seconds N]: what an idle `flowd serve` (API and 2 workers, nothing enqueued)
# costs: transactions its database commits per second, WAL bytes per second, and the CPU of the
# flowd process and of the PostgreSQL cluster serving it, over N seconds (default 10) after a
# settling pause. Prints one JSON object. A throw-away cluster (tests/support/pg_fixture.sh) and a
# build (FLOWD_BUILD_DIR, else ./build, else <repo>/build). The benchmark's own two statements
# between the samples are not counted. FLOWD_IDLE_SHOW=1 prints what each connection last ran.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
  --seconds) seconds=${2:?}; shift 2 ;;
  *) echo "usage: bench/run idle [--seconds N]" >&2; exit 2 ;;
  esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "bench/run idle: --seconds takes a positive integer" >&2; exit 2; }
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
[ -x "$build/flowd" ] || { echo "bench/run idle: $build/flowd not found: build first" >&2; exit 1; }
dir=$(mktemp -d /tmp/flowd-idle.XXXXXX)
chmod 0755 "$dir" # the cluster below runs as postgres when this runs as root
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  "$root/tests/support/pg_fixture.sh" stop "$dir/pg" >&2 || true
  [ -n "${FLOWD_IDLE_SHOW:-}" ] && cat "$dir/activity" >&2; rm -rf "$dir"
}
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$dir/pg" >&2
db="host=$dir/pg dbname=postgres user=postgres"
FLOWD_LOG_LEVEL=warn "$build/flowd" --database "$db" serve --listen 127.0.0.1:0 --workers 2 \
  >/dev/null 2>"$dir/serve.log" &
pid=$!
sleep 3 # start-up: migrations, tenant, the shipped workflows
psql_() { psql -X -A -t -q "$db" -c "$1"; }
command -v psql >/dev/null || { echo "bench/run idle: psql is needed (postgresql-client)" >&2; exit 1; }
pg_pids() { # the postmaster and its children
  local pm
  pm=$(head -1 "$dir/pg/data/postmaster.pid")
  echo "$pm $(pgrep -d ' ' -P "$pm" || true)"
}
cpu_ticks() { # utime + stime of the given processes, in clock ticks
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
sample() {
  psql_ "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_database
          WHERE datname = current_database()"
}
read -r c0 w0 < <(sample | tr '|' ' ')
f0=$(cpu_ticks "$pid"); p0=$(cpu_ticks $(pg_pids))
sleep "$seconds"
psql_ "SELECT application_name, left(query, 60), state FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()" >"$dir/activity"
read -r c1 w1 < <(sample | tr '|' ' ')
f1=$(cpu_ticks "$pid"); p1=$(cpu_ticks $(pg_pids))
hz=$(getconf CLK_TCK)
awk -v c="$((c1 - c0 - 2))" -v w="$((w1 - w0))" -v f="$((f1 - f0))" -v p="$((p1 - p0))" \
    -v s="$seconds" -v hz="$hz" 'BEGIN {
  printf "{\"benchmark\": \"idle\", \"seconds\": %d, \"commits_per_s\": %.2f, \"wal_bytes_per_s\": %.0f, ", s, c / s, w / s
  printf "\"flowd_cpu_percent\": %.2f, \"postgres_cpu_percent\": %.2f}\n", 100 * f / hz / s, 100 * p / hz / s }'
