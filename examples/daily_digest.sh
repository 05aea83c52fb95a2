#!/usr/bin/env bash
# Walk-through of workflows/daily_digest.json driven by a schedule, against a running `flowd serve`:
# creates the schedule "daily-digest" (08:00 every day in Europe/Berlin), shows its next ticks in
# UTC and in Berlin time (note the hour that moves at the end of March and of October), fires it
# once now with POST .../trigger, follows that run and prints the digest the sandbox outbox
# recorded. With FLOWD_TEST_CLOCK=1 on the server it then moves the engine clock to the next tick,
# where the schedule fires by itself, and shows that run's window: from the previous tick to its
# own.
#
# The digest asks an activity endpoint for its figures (STATS_URL, GET ?since=&until=); without
# one, the script serves a small JSON file on 127.0.0.1 (python3), which the server calls only when
# it allows private targets: start it with FLOWD_ALLOW_PRIVATE_TARGETS=1 (scripts/run passes the
# environment on).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }
# pj EXPR: evaluates the Python expression EXPR over the JSON document on stdin (as j)
pj() { python3 -c 'import json, sys; j = json.load(sys.stdin); r = eval(sys.argv[1]); print(r if r is not None else "")' "$1"; }

if [ -z "${STATS_URL:-}" ]; then
  dir=$(mktemp -d)
  echo '{"sent": 120, "replied": 9, "booked": 2, "opted_out": 1}' > "$dir/activity"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >/dev/null 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
  STATS_URL=http://127.0.0.1:$port/activity
  sleep 0.5
fi

echo "== register daily_digest"
api -X PUT "$URL/v1/workflows/daily_digest" --data-binary @"$here/../workflows/daily_digest.json"; echo

echo "== schedule daily-digest: 08:00 every day, Europe/Berlin"
api -X PUT "$URL/v1/schedules/daily-digest" -d '{
  "workflow": "daily_digest", "cron": "0 8 * * *", "tz": "Europe/Berlin",
  "overlap": "skip", "catchup": "latest",
  "input": {"since": "{{schedule.previous_fire_time}}", "until": "{{schedule.fire_time}}",
            "to": "team@example.com", "stats_url": "'"$STATS_URL"'"}}' >/dev/null
echo "next ticks (UTC, Berlin):"
api "$URL/v1/schedules/daily-digest" | pj '"\n".join("  %s  %s" % (t["utc"], t["local"]) for t in j["next_fires"])'

follow() {
  local id=$1 state
  while :; do
    state=$(api "$URL/v1/runs/$id" | pj 'j["state"]')
    case $state in scheduled|queued|running) sleep 0.3 ;; *) break ;; esac
  done
  echo "run $id $state"
  api "$URL/v1/outbox?run=$id" | pj '"\n".join("  to %s: %s\n  %s" % (m["to"], m["message"]["subject"], m["message"]["content"][0]["value"].strip()) for m in j["messages"])'
}

echo "== trigger: one digest now"
id=$(api -X POST "$URL/v1/schedules/daily-digest/trigger" | pj 'j["id"]')
follow "$id"

if clock=$(api -X POST "$URL/v1/test/clock" -d '{"advance": "0s"}') && printf '%s' "$clock" | grep -q offset_ms; then
  next=$(api "$URL/v1/schedules/daily-digest" | pj 'j["next_fire"]')
  now=$(( $(date +%s%3N) + $(printf '%s' "$clock" | field offset_ms) ))
  echo "== test clock on: the engine clock to the next tick, $next"
  api -X POST "$URL/v1/test/clock" -d "{\"advance\": \"$(( $(date -d "$next" +%s%3N) - now + 500 ))ms\"}" >/dev/null
  run=$id
  for _ in $(seq 1 50); do
    run=$(api "$URL/v1/schedules/daily-digest" | pj 'j["last_run"]["id"]')
    [ "$run" != "$id" ] && break
    sleep 0.2
  done
  follow "$run"
  api "$URL/v1/runs/$run" | pj '"  input: " + json.dumps(j["input"])'
else
  echo "== no test clock (start flowd with FLOWD_TEST_CLOCK=1 to see the next tick fire by itself)"
fi
