#!/usr/bin/env bash
# bench/run standby [--duration S] [--connections N] [--rounds N] [--runs N]: polls read from a
# streaming standby (flowd serve --read-database) against polls on the primary alone.
# A primary and a pg_basebackup standby (tests/support/pg_fixture.sh's options, fsync on), one
# `flowd serve --role api` at a time on the primary, alternately without and with
# --read-database naming the standby (--rounds of each, default 2). wrk polls GET /v1/runs/{id}
# over --runs runs (default 100, ids taken in turn) from --connections keep-alive connections
# (default 64) for --duration seconds (default 10). Prints one JSON object per setting: polls
# per second, the CPU time (user + system, from /proc) the primary's and the standby's server
# processes spent per poll, and where flowd_api_reads_total says the polls went. Everything
# shares this machine's cores, so the standby's CPU is taken from the same budget: the figure
# that carries over to two machines is the primary's CPU per poll.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/bench/lib_http.sh"

duration=10 conns=64 rounds=2 runs=100
while [ $# -gt 0 ]; do
  case "$1" in
  --duration) duration=${2:?}; shift 2 ;;
  --connections) conns=${2:?}; shift 2 ;;
  --rounds) rounds=${2:?}; shift 2 ;;
  --runs) runs=${2:?}; shift 2 ;;
  *) echo "usage: bench/run standby [--duration S] [--connections N] [--rounds N] [--runs N]" >&2
     exit 2 ;;
  esac
done
for v in "$duration" "$conns" "$rounds" "$runs"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench/run standby: options take positive integers" >&2; exit 2; }
done
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
flowd=$build/flowd
[ -x "$flowd" ] || { echo "bench/run standby: $flowd not found: build first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench/run standby: wrk not found (Debian package wrk)" >&2; exit 1; }
command -v psql >/dev/null || { echo "bench/run standby: psql is needed (postgresql-client)" >&2; exit 1; }

# the server's own programs (pg_basebackup of the same version as pg_ctl)
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -x "$bindir/pg_basebackup" ] || bindir=$(dirname "$(command -v pg_basebackup)")
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

work=$(mktemp -d /tmp/flowd-bench-standby.XXXXXX)
chmod 0755 "$work"
primary=$work/primary standby=$work/standby server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  "$root/tests/support/pg_fixture.sh" stop "$standby" >&2 || true
  "$root/tests/support/pg_fixture.sh" stop "$primary" >&2 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$root/tests/support/pg_fixture.sh" start "$primary" >&2
mkdir -p "$standby"
if [ "$(id -u)" = 0 ]; then chown postgres: "$standby"; fi
as_owner "$bindir/pg_basebackup" -h "$primary" -U postgres -D "$standby/data" -R -X stream -c fast
as_owner "$bindir/pg_ctl" -D "$standby/data" -l "$standby/server.log" -w -t 60 start \
  -o "-c listen_addresses='' -c unix_socket_directories='$standby' -c max_connections=300 -c shared_buffers=256MB" >/dev/null
chmod 0777 "$standby"
db_p="host=$primary dbname=postgres user=postgres"
db_s="host=$standby dbname=postgres user=postgres"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
token=fd_bench_metrics_$$_$RANDOM
start_server() { # extra serve options...
  env -u FLOWD_API_KEY FLOWD_METRICS_TOKEN="$token" "$flowd" --database "$db_p" serve --role api \
    --listen "127.0.0.1:$port" "$@" >"$work/serve.out" 2>>"$work/serve.err" &
  server=$!
  bench_wait_healthy "$base" "$server" "$work/serve.err"
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

start_server
key=$(bench_tenant "$db_p" bench-standby)
auth="Authorization: Bearer $key"
curl -fsS -X PUT -H "$auth" -H 'Content-Type: application/json' "$base/v1/workflows/bench_standby" \
  -d '{"steps": [{"key": "a", "kind": "transform", "input": {"n": "{{input.n}}"}}]}' >/dev/null
inputs=$(python3 -c "import json; print(json.dumps([{'n': i} for i in range($runs)]))")
ids=$(curl -fsS -X POST -H "$auth" -H 'Content-Type: application/json' "$base/v1/batches" \
  -d "{\"workflow\": \"bench_standby\", \"inputs\": $inputs}" >/dev/null &&
  psql -X -A -t -q -d "$db_p" -c "SELECT string_agg(id::text, ',' ORDER BY id) FROM runs")
stop_server

cat >"$work/get.lua" <<LUA
local ids = {$ids}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/runs/" .. ids[n % #ids + 1], {["Authorization"] = "Bearer $key"})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "seconds": %.3f, "non2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA

# CPU seconds (user + system) of a cluster's postmaster and its children, from /proc.
cluster_cpu() {
  python3 - "$1/data/postmaster.pid" <<'PY'
import os, sys
pm = int(open(sys.argv[1]).readline())
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
total = cpu(pm)
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pm:
                total += cpu(p)
        except (OSError, IndexError, ValueError):
            pass
print(f"{total:.3f}")
PY
}
reads_json() {
  curl -fsS -H "Authorization: Bearer $token" "$base/metrics" | python3 -c '
import json, re, sys
out = {}
for line in sys.stdin:
    m = re.match(r"flowd_api_reads_total\{server=\"(\w+)\",reason=\"(\w+)\"\} (\d+)", line)
    if m: out[m[1] + "_" + m[2]] = int(m[3])
print(json.dumps(out))'
}

results=()
for ((r = 0; r < rounds; r++)); do
  for mode in primary standby; do
    if [ "$mode" = standby ]; then start_server --read-database "$db_s"; else start_server; fi
    # warm-up: connections, prepared statements, the run cache
    wrk -t 2 -c "$conns" -d 2s -s "$work/get.lua" "$base" >/dev/null
    p0=$(cluster_cpu "$primary") s0=$(cluster_cpu "$standby")
    out=$(wrk -t 2 -c "$conns" -d "${duration}s" --latency -s "$work/get.lua" "$base" | sed -n 's/^WRKJSON //p')
    p1=$(cluster_cpu "$primary") s1=$(cluster_cpu "$standby")
    reads=$(reads_json)
    stop_server
    results+=("{\"mode\": \"$mode\", \"round\": $r, \"wrk\": $out, \"primary_cpu_s\": $(python3 -c "print(round($p1 - $p0, 3))"), \"standby_cpu_s\": $(python3 -c "print(round($s1 - $s0, 3))"), \"reads\": $reads}")
  done
done

python3 - "$duration" "$conns" "$runs" "${results[@]}" <<'PY'
import json, os, sys, statistics
duration, conns, runs = (int(a) for a in sys.argv[1:4])
rows = [json.loads(a) for a in sys.argv[4:]]
def summary(mode):
    rs = [r for r in rows if r["mode"] == mode]
    ok = [r["wrk"]["requests"] - r["wrk"]["non2xx"] for r in rs]
    rps = [o / r["wrk"]["seconds"] for o, r in zip(ok, rs)]
    pcpu = [r["primary_cpu_s"] * 1e6 / o for o, r in zip(ok, rs)]
    scpu = [r["standby_cpu_s"] * 1e6 / o for o, r in zip(ok, rs)]
    return {"poll_rps": [round(x) for x in rps],
            "primary_cpu_us_per_poll": [round(x, 2) for x in pcpu],
            "standby_cpu_us_per_poll": [round(x, 2) for x in scpu],
            "primary_cpu_s": [r["primary_cpu_s"] for r in rs],
            "standby_cpu_s": [r["standby_cpu_s"] for r in rs],
            "p50_ms": [r["wrk"]["p50_ms"] for r in rs], "p99_ms": [r["wrk"]["p99_ms"] for r in rs],
            "non2xx": sum(r["wrk"]["non2xx"] for r in rs), "reads": [r["reads"] for r in rs]}
a, b = summary("primary"), summary("standby")
print(json.dumps({
    "primary_only": a, "with_standby": b,
    "primary_cpu_per_poll_ratio": round(statistics.median(b["primary_cpu_us_per_poll"]) /
                                        statistics.median(a["primary_cpu_us_per_poll"]), 4),
    "poll_rps_ratio": round(statistics.median(b["poll_rps"]) / statistics.median(a["poll_rps"]), 3),
    "duration_s": duration, "connections": conns, "runs": runs, "cores": os.cpu_count(),
    "server": "flowd serve --role api (2 API threads, 4 connections each to the primary, and to the standby with --read-database)",
}))
PY
