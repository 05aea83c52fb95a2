#!/usr/bin/env bash
# bench/run http [--duration S] [--connections N] [--threads N] [--batch-size N] [--batch-connections N]:
# HTTP API throughput with wrk over loopback and keep-alive. Prints one JSON object:
#   enqueue_rps               POST /v1/runs (a one-step workflow, a new run per request)
#   poll_rps                  GET /v1/runs/{id}
#   batch_enqueue_runs_per_s  POST /v1/batches with --batch-size inputs (default 1000) from
#                             --batch-connections connections (default 8, the server's database
#                             connections; more only queue, past wrk's 2 s timeout): runs created per
#                             second (requests per second times the batch size)
# The peer figures these compare with (graphile-worker's addJob one job per call, and addJobs in
# batches, through its own client library) come from `bench/run peer-graphile`.
# The server is `flowd serve --role api` (no workers, so the figures are the API's and the
# database's, not the step runner's) on a free loopback port, started without FLOWD_API_KEY (a key
# given for a database whose default tenant exists must be one of its keys). Requests use
# a tenant created for the benchmark with a rate limit far above what it can reach.
# PostgreSQL: FLOWD_DATABASE_URL when set, else a throw-away cluster from tests/support/pg_fixture.sh
# (fsync on). Build dir: FLOWD_BUILD_DIR, else ./build, else <repo>/build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/bench/lib_http.sh"

duration=10 conns=64 threads=2 batch=1000 batch_conns=8
while [ $# -gt 0 ]; do
  case "$1" in
  --duration) duration=$2; shift 2 ;;
  --connections) conns=$2; shift 2 ;;
  --threads) threads=$2; shift 2 ;;
  --batch-size) batch=$2; shift 2 ;;
  --batch-connections) batch_conns=$2; shift 2 ;;
  *) echo "usage: bench/run http [--duration S] [--connections N] [--threads N] [--batch-size N]" \
          "[--batch-connections N]" >&2; exit 2 ;;
  esac
done

if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/flowd ]; then build=./build
else build=$root/build; fi
flowd=$build/flowd
[ -x "$flowd" ] || { echo "bench/run http: $flowd not found: build first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench/run http: wrk not found (Debian package wrk)" >&2; exit 1; }

work=$(mktemp -d /tmp/flowd-bench-http.XXXXXX)
pgdir="" server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$pgdir" ]; then "$root/tests/support/pg_fixture.sh" stop "$pgdir" >&2 || true; rm -rf "$pgdir"; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${FLOWD_DATABASE_URL:-}" ]; then
  db=$FLOWD_DATABASE_URL
else
  pgdir=$(mktemp -d /tmp/flowd-bench-pg.XXXXXX)
  "$root/tests/support/pg_fixture.sh" start "$pgdir" >&2
  db="host=$pgdir dbname=postgres user=postgres"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
env -u FLOWD_API_KEY "$flowd" --database "$db" serve --role api --listen "127.0.0.1:$port" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
bench_wait_healthy "$base" "$server" "$work/serve.err"
key=$(bench_tenant "$db" bench-http)
auth="Authorization: Bearer $key"
curl -fsS -X PUT -H "$auth" -H 'Content-Type: application/json' "$base/v1/workflows/bench_http" \
  -d '{"steps": [{"key": "a", "kind": "transform", "input": {"n": "{{input.n}}"}}]}' >/dev/null
run=$(curl -fsS -X POST -H "$auth" -H 'Content-Type: application/json' "$base/v1/runs" \
  -d '{"workflow": "bench_http", "input": {"n": 1}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

# wrk's done() prints one JSON line with what we need; errors.status counts non-2xx answers.
cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "seconds": %.3f, "non2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
cat "$work/report.lua" >"$work/post.lua"
cat >>"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"workflow": "bench_http", "input": {"n": 1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
cat "$work/report.lua" >"$work/batch.lua"
cat >>"$work/batch.lua" <<LUA
local inputs = {}
for i = 1, $batch do inputs[i] = '{"n": ' .. i .. '}' end
wrk.method = "POST"
wrk.body = '{"workflow": "bench_http", "inputs": [' .. table.concat(inputs, ', ') .. ']}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
cat "$work/report.lua" >"$work/get.lua"
cat >>"$work/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $key"
LUA

bench() { # script path, URL, connections -> the WRKJSON object
  wrk -t "$threads" -c "$3" -d "${duration}s" --latency -s "$1" "$2" | sed -n 's/^WRKJSON //p'
}
enq=$(bench "$work/post.lua" "$base/v1/runs" "$conns")
poll=$(bench "$work/get.lua" "$base/v1/runs/$run" "$conns")
batches=$(bench "$work/batch.lua" "$base/v1/batches" "$batch_conns")

python3 - "$enq" "$poll" "$batches" "$batch" "$conns" "$threads" "$duration" "$batch_conns" <<'PY'
import json, os, sys
enq, poll, batches = (json.loads(a) for a in sys.argv[1:4])
size = int(sys.argv[4])
rps = lambda r: round((r["requests"] - r["non2xx"]) / r["seconds"], 1)
print(json.dumps({
    "enqueue_rps": rps(enq), "poll_rps": rps(poll),
    "batch_enqueue_runs_per_s": round(rps(batches) * size), "batch_size": size,
    "batch_connections": int(sys.argv[8]),
    "enqueue": enq, "poll": poll, "batches": batches,
    "connections": int(sys.argv[5]), "wrk_threads": int(sys.argv[6]), "duration_s": int(sys.argv[7]),
    "server": "flowd serve --role api (2 API threads, 4 PostgreSQL connections each)",
    "cores": os.cpu_count(),
}))
PY
