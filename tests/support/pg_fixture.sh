#!/usr/bin/env bash
# Starts or stops the throw-away PostgreSQL cluster the integration tests run against.
#   pg_fixture.sh start DIR   -> initdb in DIR (fresh), listen only on the unix socket DIR
#   pg_fixture.sh stop DIR    -> immediate shutdown (no shutdown checkpoint: the cluster is thrown
#                                away; on a busy machine writing it out took over a minute), remove DIR
#   pg_fixture.sh single DIR [WRAPPER...] -> fast shutdown keeping the cluster, then its single-user
#                                server (statements on stdin, each ended by ";" and an empty line),
#                                run under WRAPPER (valgrind, say) when given
#   pg_fixture.sh watch DIR PID -> in the background, stop DIR as above once process PID is gone, so
#                                a test that dies without its teardown (a crash, an abort, a kill)
#                                leaves no cluster running
# PostgreSQL refuses to run as root, so as root the server runs as the unprivileged "postgres" user.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?data dir}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if command -v initdb >/dev/null 2>&1; then bindir=$(dirname "$(command -v initdb)"); fi
[ -x "$bindir/initdb" ] || { echo "pg_fixture: initdb not found (install postgresql)" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  if [ -f "$dir/data/postmaster.pid" ]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  # fsync stays on: the benchmarks and crash tests must see real commit costs.
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c max_connections=300 -c shared_buffers=256MB" >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  chmod 0777 "$dir"
  echo "pg_fixture: started in $dir"
  ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null; fi
  rm -rf "$dir"
  ;;
single)
  shift 2
  if [ -f "$dir/data/postmaster.pid" ]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; fi
  as_owner "$@" "$bindir/postgres" --single -j -D "$dir/data" postgres
  ;;
watch)
  pid=${3:?owner pid}
  self=$(readlink -f "$0")
  setsid sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; [ ! -d "$2" ] || "$3" stop "$2"' \
    watch "$pid" "$dir" "$self" </dev/null >/dev/null 2>&1 &
  ;;
*) echo "usage: $0 start|stop|single|watch DIR [PID]" >&2; exit 2 ;;
esac
