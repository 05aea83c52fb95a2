#!/usr/bin/env bash
# Walk-through of workflows/inbound_reply.json against a running `flowd serve` (scripts/run).
# An inbound SMS normally arrives through the Twilio webhook (POST /v1/hooks/twilio?tenant=ID,
# signed with the account's auth token), which raises the event sms.received keyed by the sender's
# number; the workflow's trigger starts one run per message. Without a Twilio account this script
# raises the same event directly (POST /v1/events), three messages from one customer and two from
# another (the second asking to opt out), then polls the runs and prints the replies from the
# sandbox outbox and the suppression list, where an opt-out puts the customer's number.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }

echo "== register inbound_reply"
api -X PUT "$URL/v1/workflows/inbound_reply" --data-binary @"$here/../workflows/inbound_reply.json"; echo

before=$(api "$URL/v1/runs?workflow=inbound_reply&limit=1" | field id || true); before=${before:-0}
echo "== five inbound SMS (event sms.received, key = the sender's number)"
send() {
  api -X POST "$URL/v1/events" -d '{"name": "sms.received", "key": "'"$1"'",
    "data": {"from": "'"$1"'", "to": "+15555550100", "body": "'"$2"'"}}' >/dev/null; echo "  <- $1: $2"
}
send +15555550111 "Hi, do you install panels on flat roofs?"
send +15555550122 "I want to book a visit next week"
send +15555550111 "And how long does it take?"
send +15555550111 "Thanks!"
send +15555550122 "Actually please stop texting me"

echo "== runs (one per message; one customer's are handled one at a time, in order)"
for _ in $(seq 1 100); do
  list=$(api "$URL/v1/runs?workflow=inbound_reply&limit=20")
  ids=$(printf '%s' "$list" | grep -o '"id": [0-9]*' | sed 's/"id": //' | awk -v b="$before" '$1 > b' | sort -n)
  pending=$(printf '%s' "$list" | grep -c '"state": "\(queued\|running\)"' || true)
  echo "progress: $(printf '%s\n' $ids | wc -l) runs, $pending still working"
  [ "$pending" = 0 ] && break
  sleep 0.5
done
for id in $ids; do
  r=$(api "$URL/v1/runs/$id")
  state=$(printf '%s' "$r" | grep -o '"state": "[a-z]*", "steps"' | sed 's/"state": "//; s/",.*//')
  intent=$(printf '%s' "$r" | grep -o '"intent": "[a-z_]*"' | head -1 | sed 's/.*: //; s/"//g')
  echo "  run $id: $state, intent ${intent:-?} ($(printf '%s' "$r" | grep -o '"started_at": "[^"]*"' | head -1 | sed 's/.*: //; s/"//g') .. $(printf '%s' "$r" | grep -o '"finished_at": "[^"]*", "current_steps"' | sed 's/"finished_at": "//; s/".*//'))"
done

echo "== replies (sandbox outbox)"
for id in $ids; do
  api "$URL/v1/outbox?run=$id" | grep -o '"Body": "[^"]*", "From": "[^"]*"\|"to": "[^"]*", "step"' \
    | sed 's/"to": "\([^"]*\)", "step"/  run '"$id"' -> \1:/; s/"Body": "\([^"]*\)".*/     \1/'
done
echo "== is +15555550122 on the suppression list? (an opt_out reply puts it there)"
api "$URL/v1/suppressions?channel=sms&limit=1000" | grep -o '{[^}]*"+15555550122"[^}]*}' \
  || echo "  no: +15555550122 is not suppressed"
echo "(with no LLM key the sandbox classifies everything as a question and answers with a placeholder,"
echo " so nobody opts out; set OPENAI_API_KEY on the server for real answers: the last message is then"
echo " an opt_out, confirmed by SMS, then +15555550122 is suppressed with reason \"stop\" and every"
echo " later send to it is skipped until it replies START through the Twilio webhook)"
