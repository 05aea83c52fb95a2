#!/usr/bin/env bash
# Walk-through of workflows/campaign.json against a running `flowd serve` (scripts/run): one SMS to
# N contacts (default 25), paced (at most 10 at once, each child waiting INTERVAL, default 200ms,
# before it sends). Polls the run, then prints per-contact results and a message from the outbox.
# A recipient who replied STOP (through the signed Twilio webhook) or whose address bounced is on
# the suppression list: their send step ends skipped and their result has no send_sms.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
N=${N:-25}
INTERVAL=${INTERVAL:-200ms}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }

echo "== register campaign"
api -X PUT "$URL/v1/workflows/campaign" --data-binary @"$here/../workflows/campaign.json"; echo

stamp=$(date +%s)
contacts=""
for i in $(seq 1 "$N"); do
  contacts="$contacts${contacts:+, }{\"name\": \"Contact $i\", \"phone\": \"+1555$(printf '%03d' $((stamp % 1000)))$(printf '%04d' "$i")\"}"
done
echo "== start: $N contacts, interval $INTERVAL"
run=$(api -X POST "$URL/v1/runs" -d '{"workflow": "campaign", "input": {
  "message": "our spring offer is live: 20% off installation until Friday. Reply STOP to opt out.",
  "from": {"phone": "+15555550100"}, "interval": "'"$INTERVAL"'", "contacts": ['"$contacts"']}}')
id=$(printf '%s' "$run" | field id)
echo "run $id"
while :; do
  r=$(api "$URL/v1/runs/$id")
  state=$(printf '%s' "$r" | grep -o '"state": "[a-z]*", "steps"' | sed 's/"state": "//; s/",.*//')
  kids=$(api "$URL/v1/runs?workflow=campaign&state=succeeded&limit=500" | grep -o '"id": [0-9]*' | sed 's/"id": //' | awk -v r="$id" '$1 > r' | wc -l)
  echo "progress: run $id $state, $kids of $N contacts done"
  case $state in queued|running) sleep 1 ;; *) break ;; esac
done
echo "== per-contact results (first 5)"
api "$URL/v1/runs/$id" | grep -o '{"send_sms": {[^}]*}, "recipient": {[^}]*}}\|{"recipient": {[^}]*}}' | head -5 || true
echo "== one of the SMS in the sandbox outbox"
api "$URL/v1/outbox?limit=500" | grep -o '"step": "send_sms", "run_id": [0-9]*, "channel": "sms", "message": {[^}]*}' | tail -1 || true
