# bench/lib_http.sh: what the HTTP benchmarks (run_http.sh, standby.sh) share; sourced, not run.

# Waits until the flowd at $1 (a base URL) answers /healthz; fails with the server's stderr ($3)
# when its process ($2) has ended, or after 30 s.
bench_wait_healthy() {
  local base=$1 pid=$2 errfile=$3
  for _ in $(seq 1 300); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$errfile" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: flowd at $base did not start" >&2
  exit 1
}

# Makes a tenant of the benchmark's own in database $1, named after $2, with a rate limit the
# benchmark cannot reach (the default tenant's key is not ours to know, and its default limit of
# 1000/s would be measured instead of the server), and prints its member key.
bench_tenant() {
  local db=$1 key=fd_benchkey_$$_$RANDOM tenant=$2-$$-$RANDOM
  psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<SQL
INSERT INTO tenants (name, rate_per_s, rate_burst) VALUES ('$tenant', 1e9, 1000000000);
INSERT INTO api_keys (tenant_id, key_hash, prefix, role)
SELECT id, sha256(convert_to('$key', 'UTF8')), left('$key', 8), 'member' FROM tenants WHERE name = '$tenant';
SQL
  echo "$key"
}
