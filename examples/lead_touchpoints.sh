#!/usr/bin/env bash
# Walk-through of workflows/lead_touchpoints.json against a running `flowd serve` (scripts/run).
# Registers the definition (same JSON: same version), starts a run for a new lead, shows the
# first touch and the schedule, then stops the sequence with a lead.replied event.
# With FLOWD_TEST_CLOCK=1 on the server it first moves the engine clock through the month, so the
# sequence plays out in seconds (pass STOP_AFTER_DAYS=N to send the reply on day N instead).
# Only curl and the shell; with no provider keys the messages land in the sandbox outbox.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
LEAD_ID=${LEAD_ID:-lead-$RANDOM}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }

echo "== register lead_touchpoints"
api -X PUT "$URL/v1/workflows/lead_touchpoints" --data-binary @"$here/../workflows/lead_touchpoints.json"; echo

echo "== start a run for lead $LEAD_ID"
run=$(api -X POST "$URL/v1/runs" -d '{"workflow": "lead_touchpoints", "input": {
  "lead": {"id": "'"$LEAD_ID"'", "name": "Ada Lovelace", "email": "ada@example.com",
           "phone": "+15555550123", "tz": "America/New_York", "service": "solar panels"},
  "sender": {"name": "Sunny Roofs", "email": "team@sunny.example", "phone": "+15555550100"}}}')
id=$(printf '%s' "$run" | field id)
echo "run $id"

progress() {
  local r; r=$(api "$URL/v1/runs/$id")
  local done total state phase
  state=$(printf '%s' "$r" | grep -o '"state": "[a-z]*", "steps"' | sed 's/"state": "//; s/",.*//')
  done=$(printf '%s' "$r" | grep -o '"progress": {[^}]*}' | field done)
  total=$(printf '%s' "$r" | grep -o '"progress": {[^}]*}' | field total)
  phase=$(printf '%s' "$r" | grep -o '"phase": [^,]*, "state": "[a-z]*", "steps"' | sed 's/"phase": //; s/, "state".*//; s/"//g')
  echo "progress: run $id $state, $done/$total steps done, phase: $phase"
}

# the first touch: the llm writes it, then it waits for 09:00-18:00 on a weekday in New York
sleep 1
progress
echo "== schedule: each touch and when it will next run (UTC; empty once it ran)"
r=$(api "$URL/v1/runs/$id")
paste <(printf '%s' "$r" | grep -o '"key": "[a-z0-9_]*"' | sed 's/"key": //; s/"//g') \
      <(printf '%s' "$r" | grep -o '"state": "[a-z]*", "output"' | sed 's/"state": "//; s/", "output"//') \
      <(printf '%s' "$r" | grep -o '"run_at": [^,]*' | sed 's/"run_at": //; s/"//g') | sed 's/^/  /'

stop_day=${STOP_AFTER_DAYS:-6}
if clock=$(api -X POST "$URL/v1/test/clock" -d '{"advance": "0s"}') && printf '%s' "$clock" | grep -q offset_ms; then
  echo "== test clock on: advancing the engine clock to each next due touch until day $stop_day"
  offset=$(printf '%s' "$clock" | field offset_ms)
  created=$(date -d "$(api "$URL/v1/runs/$id" | grep -o '"created_at": "[^"]*"' | sed 's/.*: //; s/"//g')" +%s%3N)
  until_ms=$((created + stop_day * 86400000))
  while :; do
    r=$(api "$URL/v1/runs/$id")
    now=$(( $(date +%s%3N) + offset ))
    if printf '%s' "$r" | grep -q '"state": "running", "output"'; then sleep 0.1; continue; fi
    next=$(printf '%s' "$r" | grep -o '"run_at": "[^"]*"' | sed 's/.*: //; s/"//g' \
           | while read -r t; do date -d "$t" +%s%3N; done | sort -n | head -1)
    [ -n "$next" ] || break
    if [ "$next" -le "$now" ]; then sleep 0.1; continue; fi
    if [ "$next" -gt "$until_ms" ]; then
      [ "$until_ms" -gt "$now" ] && api -X POST "$URL/v1/test/clock" -d "{\"advance\": \"$((until_ms - now))ms\"}" >/dev/null
      break
    fi
    offset=$(api -X POST "$URL/v1/test/clock" -d "{\"advance\": \"$((next - now + 1))ms\"}" | field offset_ms)
    sleep 0.3
    echo "  engine clock now $(date -u -d @$(( (next + 1) / 1000 )) +%FT%TZ) (day $(( (next - created) / 86400000 )))"
    progress
  done
  progress
else
  echo "== no test clock (start flowd with FLOWD_TEST_CLOCK=1 to play the month in seconds)"
fi

echo "== the lead replies: POST /v1/events lead.replied $LEAD_ID"
api -X POST "$URL/v1/events" -d '{"name": "lead.replied", "key": "'"$LEAD_ID"'", "data": {"text": "Can you call me tomorrow?"}}'; echo
progress

echo "== what was sent (sandbox outbox of run $id; engine-clock times, UTC)"
outbox() {
  local o; o=$(api "$URL/v1/outbox?run=$1")
  paste <(printf '%s' "$o" | grep -o '"to": "[^"]*", "step": "[^"]*"' | sed 's/"to": "\([^"]*\)", "step": "\([^"]*\)"/\2 -> \1/') \
        <(printf '%s' "$o" | grep -o '"created_at": "[^"]*"' | sed 's/"created_at": //; s/"//g') | sed 's/^/  /'
}
outbox "$id"
