#!/usr/bin/env bash
# Walk-through: a shop's signed "new order" webhook starts the lead's touchpoint sequence, through an
# inbound custom hook (docs/webhooks.md, "Inbound: custom hooks"). Drives a running `flowd serve`
# (scripts/run) that has a key to seal the hook's secret with:
#     FLOWD_SECRET_KEY=$(openssl rand -hex 32) scripts/run
# Registers lead_touchpoints and crm_new_order, configures the hook `shop` from
# examples/crm_order_hook.json (SHOP_SECRET replaces its demo secret), then posts as the shop would:
#   a signed order (HMAC-SHA256 of the raw body, computed with openssl)  -> 200, a sequence starts
#   the same delivery again (the shop retries)                           -> 200 duplicate, nothing new
#   a body changed after it was signed                                   -> 401, nothing starts
# and shows the crm_new_order run and the lead_touchpoints run it started. Only curl, openssl and
# the shell; FLOWD_TENANT is the tenant id in the hook's URL (1: the default tenant).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=${FLOWD_URL:-http://127.0.0.1:8080}
KEY=${FLOWD_API_KEY:-$(cat "${FLOWD_DATA:-$here/../flowd-data}/api-key")}
TENANT=${FLOWD_TENANT:-1}
SHOP_SECRET=${SHOP_SECRET:-shop-demo-secret-change-me}
ORDER_ID=${ORDER_ID:-$((RANDOM * 100 + RANDOM % 100))}
api() { curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { grep -o "\"$1\": *[^,}]*" | head -1 | sed 's/^[^:]*: *//; s/"//g'; }

echo "== register lead_touchpoints and crm_new_order (its trigger: the crm.order event)"
api -X PUT "$URL/v1/workflows/lead_touchpoints" --data-binary @"$here/../workflows/lead_touchpoints.json"; echo
api -X PUT "$URL/v1/workflows/crm_new_order" --data-binary @"$here/../workflows/crm_new_order.json"; echo

echo "== the hook 'shop': verify X-Shop-Signature, become crm.order keyed by the order id"
sed "s|shop-demo-secret-change-me|$SHOP_SECRET|" "$here/crm_order_hook.json" \
  | api -X PUT "$URL/v1/hooks/custom/shop" --data-binary @-; echo

body='{"order_id": '"$ORDER_ID"', "created_at": "2026-12-07T10:00:00Z",
  "customer": {"id": "cus_'"$ORDER_ID"'", "first_name": "Ada", "last_name": "Lovelace",
               "email": "ada@example.com", "phone": "+15555550123", "timezone": "America/New_York"},
  "line_items": [{"title": "solar panels", "quantity": 1, "price": "12500.00"}]}'
# what the shop does: HMAC-SHA256 of the exact bytes it sends, keyed with the shared secret, in hex
sign() { printf '%s' "$1" | openssl dgst -sha256 -hmac "$SHOP_SECRET" | sed 's/^.*= //'; }
deliver() { # signature, delivery id, body
  curl -sS -w ' -> HTTP %{http_code}\n' -X POST "$URL/v1/hooks/custom/shop?tenant=$TENANT" \
       -H 'Content-Type: application/json' -H "X-Shop-Signature: sha256=$1" \
       -H "X-Shop-Delivery-Id: $2" --data-binary "$3"
}
sig=$(sign "$body")

echo "== the shop posts order $ORDER_ID (X-Shop-Signature: sha256=$sig)"
deliver "$sig" "dlv-$ORDER_ID" "$body"
echo "== the shop retries the same delivery: recognised by X-Shop-Delivery-Id"
deliver "$sig" "dlv-$ORDER_ID" "$body"
echo "== a body changed after it was signed: refused, nothing starts"
deliver "$sig" "dlv-$ORDER_ID-forged" "${body/12500.00/1.00}"

echo "== the run the order started (GET /v1/runs?meta.order_id=$ORDER_ID)"
for _ in $(seq 50); do
  order=$(api "$URL/v1/runs?workflow=crm_new_order&meta.order_id=$ORDER_ID" | field id)
  [ -n "$order" ] && break
  sleep 0.1
done
echo "crm_new_order run $order"
for _ in $(seq 50); do
  touch=$(api "$URL/v1/runs?workflow=lead_touchpoints&parent=$order" | field id)
  [ -n "$touch" ] && break
  sleep 0.1
done
r=$(api "$URL/v1/runs/$touch")
echo "lead_touchpoints run $touch for $(printf '%s' "$r" | grep -o '"email": "[^"]*"' | head -1), state $(printf '%s' "$r" | grep -o '"state": "[a-z]*", "steps"' | sed 's/"state": "//; s/",.*//')"
echo "(examples/lead_touchpoints.sh plays such a sequence through the month; the lead's reply,"
echo " POST /v1/events {\"name\": \"lead.replied\", \"key\": \"cus_$ORDER_ID\"}, stops it)"
