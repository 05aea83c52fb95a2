#!/bin/sh
# examples/prospect_batch.sh [VENDOR] [PROSPECT...]: one vendor against many prospects.
#
# Registers workflows/playbook.json and workflows/prospect_batch.json, starts one prospect_batch run
# (a map running one playbook per prospect, 10 at once), polls it until it ends, then downloads the
# sequencer-ready CSV (one row per persona: email 1-4 day, subject, body) to
# prospect_batch-<run>.csv and prints it. Needs only curl and a running `flowd serve`; works
# without provider credentials (sandbox answers).
#
#   FLOWD_URL      default http://127.0.0.1:8080
#   FLOWD_API_KEY  default: the key `flowd serve` wrote to flowd-data/api-key
#   SITE_PREFIX    fetch the sites from SITE_PREFIX + domain + "/" (default https://)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
url=${FLOWD_URL:-http://127.0.0.1:8080}
key=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$root/flowd-data}/api-key")}
vendor=${1:-acme.com}
[ $# -gt 0 ] && shift
[ $# -eq 0 ] && set -- globex.com initech.com umbrella.com hooli.com stark.com

api() { curl -sS --fail-with-body -H "Authorization: Bearer $key" "$@"; }
field() { printf '%s' "$1" | grep -o "\"$2\": *\(\"[^\"]*\"\|[0-9]*\|null\|\[[^]]*\]\)" | head -n 1 | sed 's/^"[^"]*": *//; s/"//g'; }

for wf in playbook prospect_batch; do
    printf 'registering %s: ' "$wf"
    api -X PUT -H 'Content-Type: application/json' --data-binary @"$root/workflows/$wf.json" \
        "$url/v1/workflows/$wf"
    echo
done

list=""
for p in "$@"; do list="$list${list:+, }\"$p\""; done
extra=""
[ -n "${SITE_PREFIX:-}" ] && extra=", \"site_prefix\": \"$SITE_PREFIX\""
run=$(api -H 'Content-Type: application/json' \
    -d "{\"workflow\": \"prospect_batch\", \"input\": {\"vendor\": \"$vendor\", \"prospects\": [$list]$extra}}" \
    "$url/v1/runs")
id=$(field "$run" id)
echo "run $id: prospect_batch for $vendor, $# prospects"

start=$(date +%s)
last=""
while :; do
    run=$(api "$url/v1/runs/$id")
    state=$(field "$run" state)
    line="$state  phase=$(field "$run" phase)  $(field "$run" percent)%"
    [ "$line" != "$last" ] && echo "$(date +%H:%M:%S)  $line  (+$(( $(date +%s) - start ))s)"
    last=$line
    case $state in queued|running) sleep 0.5 ;; *) break ;; esac
done
[ "$state" = succeeded ] || { echo "run $id ended $state"; exit 1; }

failed=$(printf '%s' "$run" | grep -o '"error": {"code"' | wc -l)
echo "prospects: $#, playbooks failed: $failed (their results hold the error and the child run id)"
out="prospect_batch-$id.csv"
api -o "$out" "$url/v1/runs/$id/sequencer.csv"
echo "sequencer CSV (one row per persona) saved to $out:"
cat "$out"
