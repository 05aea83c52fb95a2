#!/usr/bin/env bash
# Walk-through of workflows/campaign.json against a running `flowd serve` (scripts/run): one SMS to
# N contacts (default 60) under the named rate limit "campaign" (RATE requests per second, default
# 20), which the script creates first. Two of the contacts are put on the suppression list
# beforehand, as a STOP reply or a bounce would: their send steps end skipped. Polls the run's
# progress, then prints per-contact results and a summary of what the sandbox outbox recorded
# (with Twilio credentials on the server the same messages go to Twilio, at the same pace).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
N=${N:-60}
RATE=${RATE:-20}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }

echo "== register campaign"
api -X PUT "$URL/v1/workflows/campaign" --data-binary @"$here/../workflows/campaign.json"; echo

echo "== rate limit \"campaign\": $RATE requests/s, burst 1"
api -X PUT "$URL/v1/rate-limits/campaign" -d '{"requests_per_s": '"$RATE"', "burst_requests": 1}'; echo

stamp=$(date +%s)
prefix="+1555$(printf '%03d' $((stamp % 1000)))"
phone() { printf '%s%04d' "$prefix" "$1"; }
echo "== suppress contacts 3 and 7 (as a STOP reply would)"
for i in 3 7; do
  # any spelling works: the API stores the +E.164 form the send ledger compares
  api -X POST "$URL/v1/suppressions" -d '{"channel": "sms", "address": "'"${prefix:0:2} (${prefix:2:3}) ${prefix:5:3}-$(printf '%04d' "$i")"'", "reason": "asked not to be contacted"}'; echo
done

contacts=""
for i in $(seq 1 "$N"); do
  contacts="$contacts${contacts:+, }{\"name\": \"Contact $i\", \"phone\": \"$(phone "$i")\"}"
done
echo "== start: $N contacts"
run=$(api -X POST "$URL/v1/runs" -d '{"workflow": "campaign", "input": {
  "message": "our spring offer is live: 20% off installation until Friday. Reply STOP to opt out.",
  "from": {"phone": "+15555550100"}, "contacts": ['"$contacts"']}}')
id=$(printf '%s' "$run" | field id)
echo "run $id"
while :; do
  r=$(api "$URL/v1/runs/$id")
  state=$(printf '%s' "$r" | grep -o '"state": "[a-z]*", "steps"' | sed 's/"state": "//; s/",.*//')
  done_n=$(printf '%s' "$r" | grep -o '"items": {[^}]*}' | field done)
  echo "progress: run $id $state, ${done_n:-0} of $N contacts done"
  case $state in queued|running) sleep 1 ;; *) break ;; esac
done

echo "== per-contact results (contacts 1 to 8)"
api "$URL/v1/runs/$id" | grep -o '{"send_sms": {[^}]*}, "recipient": {[^}]*}}\|{"recipient": {[^}]*}}' \
  | sed -n 1,8p | sed 's/"from": "[^"]*", //; s/"sandbox": true, //'

echo "== outbox summary"
# the campaign's messages are the outbox rows to its numbers (all pages, oldest first);
# created_at is when each was sent
outbox() {
  local after="" page
  while :; do
    page=$(api "$URL/v1/outbox?limit=1000${after:+&after=$after}")
    after=$(printf '%s' "$page" | grep -o '"id": [0-9]*' | tail -1 | sed 's/"id": //' || true)
    [ -n "$after" ] || break
    printf '%s\n' "$page"
  done
}
outbox | grep -o '"to": "'"$prefix"'[0-9]*", "step": "send_sms", [^{]*{[^}]*}, "provider": "[a-z]*", "send_key": "[^"]*", "created_at": "[^"]*"' \
  | sed 's/.*"created_at": "\([^"]*\)"/\1/' | sort | awk -v n="$N" -v rate="$RATE" '
    function ms(t,  d, h, m, s) { split(substr(t, 12, 12), d, ":"); return ((d[1] * 60 + d[2]) * 60 + d[3]) * 1000 }
    { c++; if (c == 1) { first = $0; f = ms($0) } last = $0; l = ms($0) }
    END {
      printf "%d messages for %d contacts (%d not sent), first %s, last %s\n", c, n, n - c, first, last
      if (c > 1) printf "%.1f messages/s over %.2f s (limit %s/s)\n", (c - 1) * 1000 / (l - f), (l - f) / 1000, rate
    }'
