#!/bin/sh
# examples/playbook.sh [VENDOR] [PROSPECT]: one account playbook through flowd's HTTP API.
#
# Registers workflows/playbook.json, starts a run for two domains, polls its progress (phase and
# percent) until it ends, then prints the summary and the email sequences as sequencer CSV.
# Needs only curl and a running `flowd serve` (scripts/run). Without provider credentials the LLM
# steps answer from the sandbox and the run still completes; with OPENAI_API_KEY set on the server
# the same script gets real answers. Sites that cannot be fetched (no network) are noted in the
# output's "sources" and do not stop the run.
#
#   FLOWD_URL      default http://127.0.0.1:8080
#   FLOWD_API_KEY  default: the key `flowd serve` wrote to flowd-data/api-key
#   SITE_PREFIX    fetch the sites from SITE_PREFIX + domain + "/" (default https://)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
url=${FLOWD_URL:-http://127.0.0.1:8080}
key=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$root/flowd-data}/api-key")}
vendor=${1:-acme.com}
prospect=${2:-globex.com}

api() { curl -sS --fail-with-body -H "Authorization: Bearer $key" "$@"; }
# the first "name": value of a JSON text (top-level fields of a run come before its steps)
field() { printf '%s' "$1" | grep -o "\"$2\": *\(\"[^\"]*\"\|[0-9]*\|null\|\[[^]]*\]\)" | head -n 1 | sed 's/^"[^"]*": *//; s/"//g'; }

printf 'registering playbook: '
api -X PUT -H 'Content-Type: application/json' --data-binary @"$root/workflows/playbook.json" \
    "$url/v1/workflows/playbook"
echo

extra=""
[ -n "${SITE_PREFIX:-}" ] && extra=", \"site_prefix\": \"$SITE_PREFIX\""
run=$(api -H 'Content-Type: application/json' \
    -d "{\"workflow\": \"playbook\", \"input\": {\"vendor\": \"$vendor\", \"prospect\": \"$prospect\"$extra}}" \
    "$url/v1/runs")
id=$(field "$run" id)
echo "run $id: playbook for $vendor -> $prospect"

last=""
while :; do
    run=$(api "$url/v1/runs/$id")
    state=$(field "$run" state)
    line="$state  phase=$(field "$run" phase)  $(field "$run" percent)% ($(field "$run" done)/$(field "$run" total))  running=$(field "$run" current_steps)"
    [ "$line" != "$last" ] && echo "$(date +%H:%M:%S)  $line"
    last=$line
    case $state in queued|running) sleep 0.5 ;; *) break ;; esac
done

if [ "$state" != succeeded ]; then
    echo "run $id ended $state: $(printf '%s' "$run" | grep -o '"error": {[^}]*}' | head -n 1)"
    echo "retry it with: curl -X POST -H 'Authorization: Bearer ...' $url/v1/runs/$id/retry"
    exit 1
fi
echo "summary: $(printf '%s' "$run" | grep -o '"summary": "[^"]*"' | head -n 1 | sed 's/^"summary": //')"
echo "sources: $(printf '%s' "$run" | grep -o '"sources": {[^}]*}[^}]*}}' | head -n 1 | sed 's/^"sources": //')"
echo "email sequences (GET /v1/runs/$id/sequencer.csv):"
api "$url/v1/runs/$id/sequencer.csv"
echo "full run: curl -H 'Authorization: Bearer ...' $url/v1/runs/$id"
