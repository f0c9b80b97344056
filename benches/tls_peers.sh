#!/usr/bin/env bash
# TLS termination: cohort against nginx with the same certificate, same backend, same core.
#
#   cargo build --release && benches/tls_peers.sh [seconds]
#
# Needs nginx, wrk and openssl (apt-get install -y nginx-light wrk openssl). Each proxy is
# pinned to the last CPU; the clients and the backend share the others. Figures:
#   handshakes/s  `openssl s_time -new` (a full TLS 1.3 handshake per connection, one client)
#   req/s, p99    wrk, 64 kept-alive TLS connections, random x-user-id keys
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. benches/lib.sh
bench_init tls

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.local" -addext "subjectAltName=DNS:bench.local" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

write_backend_conf "$work" 18301 18302
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream agent { server 127.0.0.1:18301; keepalive 128; }
  server {
    listen 127.0.0.1:18311 ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://agent; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
cat > "$work/cohort.yaml" <<YAML
listeners:
  - name: tls
    address: 127.0.0.1:18310
    tls:
      certificates: [{cert: $work/cert.pem, key: $work/key.pem}]
admin: {address: "127.0.0.1:18319"}
upstreams:
  agent: {endpoints: ["127.0.0.1:18301"]}
routes:
  - name: agent
    cohort_key: [{header: x-user-id}]
    split:
      - {cohort: stable, upstream: agent, percent: 95}
      - {cohort: canary, upstream: agent, percent: 5}
YAML
write_wrk_users_lua "$work/users.lua"

start_backend "$work" 18301
taskset -c "$last" nginx -c "$work/nginx.conf" -e "$work/nginx.err" &
taskset -c "$last" "$cohort_bin" run --config "$work/cohort.yaml" 2> "$work/cohort.log" &
sleep 1

printf "%-8s %14s %10s %9s\n" proxy handshakes/s req/s "p99 ms"
for pair in cohort:18310 nginx:18311; do
  name=${pair%%:*}; port=${pair##*:}
  hs=$(taskset -c "$rest" openssl s_time -connect 127.0.0.1:$port -new -time "$secs" 2>/dev/null \
        | awk '/connections in .* real seconds/ {printf "%.0f", $1 / $4}')
  out=$(wrk_users "$secs" "https://127.0.0.1:$port/v1/chat")
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  printf "%-8s %14s %10s %9s\n" "$name" "$hs" "$rps" "$p99"
done
