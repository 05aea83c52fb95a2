#!/usr/bin/env bash
# tests/support/netns.sh: network namespaces for tests that run flowd processes as if on other
# hosts (root only).
#   up TAG N NET PGDIR  namespaces TAG-1 .. TAG-N, each with its loopback up and two veth links to
#                       the caller's namespace (TAG at most 11 characters; NET the first three
#                       octets of a /24 nobody else uses, e.g. 10.123.45):
#                         database link  caller NET.(8i+1)/30 <-> namespace NET.(8i+2) (caller end TAGd<i>)
#                         provider link  caller NET.(8i+5)/30 <-> namespace NET.(8i+6) (caller end TAGp<i>)
#                       then restarts the private cluster in PGDIR (tests/support/pg_fixture.sh) so
#                       that it also listens on the database links' caller addresses, port 5432,
#                       trusting NET.0/24.
#   cut TAG I / heal TAG I   take namespace I's database link down / up: the processes in it lose
#                       the database and keep their provider link.
#   down TAG N          removes the namespaces (and with them the links).
set -euo pipefail
cmd=${1:?up|cut|heal|down}; tag=${2:?tag}

case "$cmd" in
up)
  n=${3:?n}; net=${4:?net}; pgdir=${5:?pgdir}
  addrs=
  for i in $(seq 1 "$n"); do
    ns=$tag-$i; b=$((8 * i))
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "${tag}d$i" type veth peer name db0 netns "$ns"
    ip link add "${tag}p$i" type veth peer name prov0 netns "$ns"
    ip addr add "$net.$((b + 1))/30" dev "${tag}d$i"
    ip addr add "$net.$((b + 5))/30" dev "${tag}p$i"
    ip link set "${tag}d$i" up
    ip link set "${tag}p$i" up
    ip -n "$ns" addr add "$net.$((b + 2))/30" dev db0
    ip -n "$ns" addr add "$net.$((b + 6))/30" dev prov0
    ip -n "$ns" link set db0 up
    ip -n "$ns" link set prov0 up
    addrs=${addrs:+$addrs,}$net.$((b + 1))
  done
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if command -v pg_ctl >/dev/null 2>&1; then bindir=$(dirname "$(command -v pg_ctl)"); fi
  echo "host all all $net.0/24 trust" >>"$pgdir/data/pg_hba.conf"
  runuser -u postgres -- "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 60 -m fast \
    restart -o "-c listen_addresses='$addrs' -c unix_socket_directories='$pgdir' -c max_connections=300 -c shared_buffers=256MB" >/dev/null
  ;;
cut) ip link set "${tag}d${3:?i}" down ;;
heal) ip link set "${tag}d${3:?i}" up ;;
down)
  n=${3:?n}
  for i in $(seq 1 "$n"); do ip netns del "$tag-$i" 2>/dev/null || true; done
  ;;
*) echo "usage: $0 up|cut|heal|down TAG ..." >&2; exit 2 ;;
esac
