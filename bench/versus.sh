#!/usr/bin/env bash
# bench/run versus [--rounds N] [--w1-runs N] [--w2-runs N] [--w3-steps N]: flowd and graphile-worker side by side
# on one PostgreSQL, alternating in each round (odd rounds start with graphile-worker, even ones
# with flowd), so that both meet the same load from the rest of the machine. Prints one line per
# figure on stderr and one JSON object with every round and the ratio flowd / graphile-worker.
#   W1  --w1-runs (20,000) single-step `transform` runs enqueued first, then worked by 2 worker
#       threads (bench_queue); graphile-worker: as many no-op jobs, batching on, the better of its
#       two best settings of `bench/run peer-graphile` (concurrency 16 with a local queue of 5,000,
#       and 8 with 2,000; completions unbatched)
#   W2  --w2-runs (500) enqueued one every 10 ms on an idle engine, enqueue to start (the claim's
#       time less the creation's, the database's clock): flowd_enqueue over SQL and 2 workers
#       (bench_queue's latency phase); graphile-worker: graphile_worker.add_job over SQL and a pool
#       of concurrency 2 (driver.js latency)
#   W3  --w3-steps (20,000) single-step `llm` runs, 2 workers x 1,000 in flight, a mock answering
#       in 200 ms (bench_inflight) over cleartext HTTP/1.1 and over TLS with ALPN h2 (nginx);
#       graphile-worker: as many jobs that each sleep 200 ms, 2,000 at once, batching on
# Each trial gets a fresh database on the same server: FLOWD_DATABASE_URL when set, else a
# throw-away cluster from tests/support/pg_fixture.sh (fsync on). Needs a build (FLOWD_BUILD_DIR,
# else ./build, else <repo>/build), node and npm (graphile-worker is installed from npm on first
# use, bench/peer_graphile/install.sh), and nginx for the h2 mock.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3 w1=20000 w2=500 w3=20000
while [ $# -gt 0 ]; do
  case "$1" in
  --rounds) rounds=${2:?}; shift 2 ;;
  --w1-runs) w1=${2:?}; shift 2 ;;
  --w2-runs) w2=${2:?}; shift 2 ;;
  --w3-steps) w3=${2:?}; shift 2 ;;
  *) echo "usage: bench/run versus [--rounds N] [--w1-runs N] [--w2-runs N] [--w3-steps N]" >&2; exit 2 ;;
  esac
done
for v in "$rounds" "$w1" "$w2" "$w3"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench/run versus: options take positive integers" >&2; exit 2; }
done
if [ -n "${FLOWD_BUILD_DIR:-}" ]; then build=$FLOWD_BUILD_DIR
elif [ -x ./build/bench/bench_queue ]; then build=./build
else build=$root/build; fi
[ -x "$build/bench/bench_queue" ] && [ -x "$build/bench/bench_inflight" ] \
  || { echo "bench/run versus: $build/bench/bench_queue or bench_inflight not found: build first" >&2; exit 1; }
"$root/bench/peer_graphile/install.sh"
driver=$root/bench/peer_graphile/driver.js

out=$(mktemp -d /tmp/flowd-versus.XXXXXX)
chmod 0777 "$out" # the cluster below is made here (as postgres, when run as root)
if [ -n "${FLOWD_DATABASE_URL:-}" ]; then
  db=$FLOWD_DATABASE_URL
  cleanup() { rm -rf "$out"; }
else
  cleanup() { "$root/tests/support/pg_fixture.sh" stop "$out/pg" >&2 || true; rm -rf "$out"; }
  "$root/tests/support/pg_fixture.sh" start "$out/pg" >&2
  db="host=$out/pg dbname=postgres user=postgres"
fi
trap cleanup EXIT

peer_w1() {
  local best=0 f
  for s in "16 5000" "8 2000"; do
    set -- $s
    node "$driver" trial --database "$db" --jobs "$w1" --concurrency "$1" --local-queue "$2" \
      --complete-delay 0 --fail-delay 0 >"$out/t.json"
    f=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs_per_s"])' "$out/t.json")
    best=$(python3 -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))' "$best" "$f")
  done
  echo "{\"jobs_per_s\": $best}" >"$out/r$round.w1.peer.json"
}
peer_w3() {
  node "$driver" trial --database "$db" --jobs "$w3" --concurrency 2000 --local-queue 2000 \
    --complete-delay 5 --fail-delay 5 --pool 10 --sleep-ms 200 >"$out/r$round.w3.peer.json"
}
flowd_w1() {
  "$build/bench/bench_queue" --database "$db" --runs "$w1" --latency-runs 1 >"$out/r$round.w1.flowd.json"
}
peer_w2() {
  node "$driver" latency --database "$db" --jobs "$w2" --interval-ms 10 --concurrency 2 \
    >"$out/r$round.w2.peer.json"
}
flowd_w2() {
  "$build/bench/bench_queue" --database "$db" --runs 100 --latency-runs "$w2" \
    --latency-interval-ms 10 >"$out/r$round.w2.flowd.json"
}
flowd_w3() {
  for mock in http1 h2tls; do
    "$build/bench/bench_inflight" --database "$db" --steps "$w3" --workers 2 --max-inflight 1000 \
      --mock "$mock" >"$out/r$round.w3.$mock.json"
  done
}

for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    peer_w1; flowd_w1; peer_w2; flowd_w2; peer_w3; flowd_w3
  else
    flowd_w1; peer_w1; flowd_w2; peer_w2; flowd_w3; peer_w3
  fi
  echo "bench/run versus: round $round done" >&2
done

python3 - "$out" "$rounds" "$w1" "$w2" "$w3" <<'EOF'
import json, sys
out, rounds, w1, w2, w3 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
load = lambda n: json.load(open(f"{out}/{n}"))
res = {"benchmark": "versus", "w1_runs": w1, "w2_runs": w2, "w3_steps": w3, "rounds": []}
for r in range(1, rounds + 1):
    p1, f1 = load(f"r{r}.w1.peer.json"), load(f"r{r}.w1.flowd.json")
    p2, f2 = load(f"r{r}.w2.peer.json"), load(f"r{r}.w2.flowd.json")
    p3, h1, h2 = load(f"r{r}.w3.peer.json"), load(f"r{r}.w3.http1.json"), load(f"r{r}.w3.h2tls.json")
    row = {
        "first": "graphile-worker" if r % 2 else "flowd",
        "w1_graphile_jobs_per_s": p1["jobs_per_s"], "w1_flowd_steps_per_s": f1["steps_per_s"],
        "w1_ratio": round(f1["steps_per_s"] / p1["jobs_per_s"], 2),
        "w1_flowd_postgres_cpu_us_per_step": f1.get("postgres_cpu_us_per_step"),
        "w1_flowd_engine_cpu_us_per_step": f1.get("engine_cpu_us_per_step"),
        # latency: graphile-worker's over flowd's, so above 1 means flowd starts sooner
        "w2_graphile_p50_ms": p2["latency_p50_ms"], "w2_flowd_p50_ms": round(f2["latency_p50_ms"], 3),
        "w2_graphile_p99_ms": p2["latency_p99_ms"], "w2_flowd_p99_ms": round(f2["latency_p99_ms"], 3),
        "w2_p50_ratio": round(p2["latency_p50_ms"] / f2["latency_p50_ms"], 2),
        "w2_p99_ratio": round(p2["latency_p99_ms"] / f2["latency_p99_ms"], 2),
        "w3_graphile_jobs_per_s": p3["jobs_per_s"],
        "w3_flowd_http1_steps_per_s": h1["steps_per_s"], "w3_flowd_h2tls_steps_per_s": h2["steps_per_s"],
        "w3_http1_ratio": round(h1["steps_per_s"] / p3["jobs_per_s"], 2),
        "w3_h2tls_ratio": round(h2["steps_per_s"] / p3["jobs_per_s"], 2),
        "w3_http1_flowd_cpu_us_per_call": h1.get("flowd_cpu_us_per_call"),
        "w3_h2tls_flowd_cpu_us_per_call": h2.get("flowd_cpu_us_per_call"),
        "w3_http1_postgres_cpu_us_per_step": round(h1["postgres_cpu_s"] * 1e6 / w3, 1),
        "w3_h2tls_postgres_cpu_us_per_step": round(h2["postgres_cpu_s"] * 1e6 / w3, 1),
        "w3_h2tls_calls_per_connection": h2.get("calls_per_connection"),
    }
    res["rounds"].append(row)
    print(f"round {r}: W1 graphile {row['w1_graphile_jobs_per_s']} jobs/s, flowd "
          f"{row['w1_flowd_steps_per_s']} steps/s ({row['w1_ratio']}x); W2 p50/p99 graphile "
          f"{row['w2_graphile_p50_ms']}/{row['w2_graphile_p99_ms']} ms, flowd "
          f"{row['w2_flowd_p50_ms']}/{row['w2_flowd_p99_ms']} ms; W3 graphile "
          f"{row['w3_graphile_jobs_per_s']} jobs/s, flowd http1 {row['w3_flowd_http1_steps_per_s']} "
          f"({row['w3_http1_ratio']}x), h2tls {row['w3_flowd_h2tls_steps_per_s']} "
          f"({row['w3_h2tls_ratio']}x)", file=sys.stderr)
print(json.dumps(res))
EOF
