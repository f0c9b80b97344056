#!/usr/bin/env bash
# Request latency with and without 10 config reloads per second.
#
#   cargo build --release && benches/reload_p99.sh [seconds]
#
# Needs nginx (the backend) and wrk: apt-get install -y nginx-light wrk. The proxy is pinned to
# the last CPU, wrk and the backend to the others, as in ../shared/bench/peers.py. Each phase
# runs wrk for the given seconds (default 10) with 64 connections and random x-user-id keys;
# the reload phase rewrites the split (5% <-> 10%) and POSTs /reload every 100 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
work=$(mktemp -d /tmp/cohort-reload-p99.XXXX)
last=$(( $(nproc) - 1 )); rest="0-$(( last > 0 ? last - 1 : 0 ))"
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3' EXIT

cat > "$work/backend.conf" <<NGX
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18201; location / { return 200 "stable\n"; } }
  server { listen 127.0.0.1:18202; location / { return 200 "canary\n"; } } }
NGX
config() {
  cat <<YAML
listeners: [{name: public, address: "127.0.0.1:18210"}]
admin: {address: "127.0.0.1:18219"}
upstreams:
  stable: {endpoints: ["127.0.0.1:18201"]}
  canary: {endpoints: ["127.0.0.1:18202"]}
routes:
  - name: agent
    cohort_key: [{header: x-user-id}]
    split:
      - {cohort: stable, upstream: stable, percent: $((100 - $1))}
      - {cohort: canary, upstream: canary, percent: $1}
YAML
}
cat > "$work/users.lua" <<'LUA'
request = function()
  return wrk.format("GET", "/v1/chat", {["x-user-id"] = "user-" .. math.random(1, 1000000)})
end
LUA
config 5 > "$work/cohort.yaml"
taskset -c "$rest" nginx -c "$work/backend.conf" -e "$work/backend.err" &
taskset -c "$last" target/release/cohort run --config "$work/cohort.yaml" 2> "$work/cohort.log" &
for _ in $(seq 100); do curl -sf 127.0.0.1:18219/readyz >/dev/null && break; sleep 0.1; done

load() { taskset -c "$rest" wrk -t1 -c64 -d"${secs}s" --latency -s "$work/users.lua" http://127.0.0.1:18210/v1/chat; }
taskset -c "$rest" wrk -t1 -c64 -d2s -s "$work/users.lua" http://127.0.0.1:18210/ >/dev/null  # warm-up

echo "== no reloads"
load | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors" || true
echo "== 10 reloads/s"
# The reloader is one light process (no fork per reload) beside wrk and the backend, never
# on the proxy's core: it rewrites the split and POSTs /reload on a kept-alive connection.
config 10 > "$work/ten.yaml"; config 5 > "$work/five.yaml"
cat > "$work/reloader.py" <<PY
import http.client, os, time
conn = http.client.HTTPConnection("127.0.0.1", 18219)
n = 0
while True:
    n += 1
    src = "$work/ten.yaml" if n % 2 else "$work/five.yaml"
    with open(src) as f, open("$work/next.yaml", "w") as g:
        g.write(f.read())
    os.replace("$work/next.yaml", "$work/cohort.yaml")
    conn.request("POST", "/reload"); conn.getresponse().read()
    time.sleep(0.1)
PY
taskset -c "$rest" python3 "$work/reloader.py" &
reloader=$!
load | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors" || true
kill $reloader
echo "generation after the reload phase: $(curl -s 127.0.0.1:18219/routes | grep -o '"generation": [0-9]*')"
echo "reload failures: $(curl -s 127.0.0.1:18219/metrics | grep 'result="failure"')"
