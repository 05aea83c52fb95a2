#!/usr/bin/env bash
# tests/support/nginx_mock.sh start DIR [LATENCY_MS] | stop DIR
#
# A mock OpenAI Chat Completions provider speaking TLS with ALPN h2 (and http/1.1), as real
# providers do: nginx with the echo module answers POST /v1/chat/completions after LATENCY_MS
# (default 200) with a documented success body and the x-ratelimit-* headers. A throw-away
# self-signed certificate for 127.0.0.1 is made in DIR at start (DIR/cert.pem: give it to flowd as
# FLOWD_CA_BUNDLE). One nginx worker process, so that its CPU is comparable to the in-process mock.
#
# start prints two lines: the provider's base URL (https://127.0.0.1:PORT/v1) and the URL of a
# cleartext stub_status page on another port, whose "accepts" and "requests" counters tell the
# connections accepted and the requests served (each read of the page itself adds one of each).
# Both are also written to DIR/base_url and DIR/status_url. stop ends nginx (by its pid file).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR [LATENCY_MS] | stop DIR" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
  latency_ms=${3:-200}
  mkdir -p "$dir/tmp"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  secs=$(awk -v ms="$latency_ms" 'BEGIN { printf "%.3f", ms / 1000 }')
  body='{"id":"chatcmpl-MOCK01","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":2,"total_tokens":16},"system_fingerprint":"fp_mock01"}'
  for attempt in 1 2 3 4 5; do
    port=$(free_port); sport=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
events { worker_connections 32768; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 100000;
  keepalive_timeout 120s;
  http2_max_requests 100000;
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    location = /v1/chat/completions {
      default_type application/json;
      add_header x-request-id req_mock01;
      add_header x-ratelimit-limit-requests 500;
      add_header x-ratelimit-limit-tokens 200000;
      add_header x-ratelimit-remaining-requests 499;
      add_header x-ratelimit-remaining-tokens 199000;
      add_header x-ratelimit-reset-requests 1.5s;
      add_header x-ratelimit-reset-tokens 12ms;
      echo_sleep $secs;
      echo '$body';
    }
  }
  server {
    listen 127.0.0.1:$sport;
    location = /status { stub_status; }
  }
}
EOF
    if (ulimit -n "$(ulimit -Hn)"; exec nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/start.err"); then
      for _ in $(seq 1 100); do
        [ -s "$dir/nginx.pid" ] && curl -fsS "http://127.0.0.1:$sport/status" >/dev/null 2>&1 && break
        sleep 0.05
      done
      echo "https://127.0.0.1:$port/v1" >"$dir/base_url"
      echo "http://127.0.0.1:$sport/status" >"$dir/status_url"
      cat "$dir/base_url" "$dir/status_url"
      exit 0
    fi
    # Most likely a port taken between choosing and binding it: choose again.
    grep -q "Address already in use" "$dir/start.err" || { cat "$dir/start.err" >&2; exit 1; }
  done
  echo "nginx_mock.sh: nginx did not start" >&2; exit 1 ;;
stop)
  [ -s "$dir/nginx.pid" ] || exit 0
  pid=$(cat "$dir/nginx.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true ;;
*) echo "usage: $0 start DIR [LATENCY_MS] | stop DIR" >&2; exit 2 ;;
esac
