#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable whatever else the machine
# is doing, so it tells small request-path changes apart where wall-clock figures cannot.
#
#   cargo build --release && benches/instructions.sh [extra cohort run args]
#
# Runs the proxy under callgrind twice, with FEW (500) and with MANY (5,500) kept-alive requests
# (random x-user-id keys, 95/5 split, an nginx backend), and prints the difference per request,
# which leaves start-up and shutdown out. Start-up is not quite constant (the metrics clock
# calibrates for a fixed time, not a fixed count), hence the large difference in counts.
# Needs valgrind and nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/cohort-instr.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cat > "$work/backend.conf" <<NGX
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18501; location / { return 200 "stable agent reply\n"; } }
  server { listen 127.0.0.1:18502; location / { return 200 "canary agent reply\n"; } } }
NGX
# ROLLOUT=1 gives the route a rollout (error-rate and latency guards), to price the guards'
# sample recording on the request path.
rollout=""
if [ "${ROLLOUT:-0}" = 1 ]; then
  rollout="    rollout: {id: bench, canary: canary, steps: [5, 50], soak: 1h, guards: [{metric: error_rate}, {metric: latency, quantile: 0.95}]}"
fi
cat > "$work/cohort.yaml" <<YAML
state_dir: $work/state
listeners: [{name: public, address: "127.0.0.1:18510"}]
admin: {address: "127.0.0.1:18519"}
upstreams:
  stable: {endpoints: ["127.0.0.1:18501"]}
  canary: {endpoints: ["127.0.0.1:18502"]}
routes:
  - name: agent
    cohort_key: [{header: x-user-id}]
    split:
      - {cohort: stable, upstream: stable, percent: 95}
      - {cohort: canary, upstream: canary, percent: 5}
$rollout
YAML
cat > "$work/client.py" <<'PY'
import http.client, random, sys, time
n = int(sys.argv[1])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18510, timeout=60); c.connect(); break
    except OSError:
        time.sleep(0.1)
for i in range(n):
    c.request("GET", "/v1/chat", headers={"x-user-id": "user-%d" % random.randint(1, 10**6)})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
nginx -c "$work/backend.conf" -e "$work/backend.err" &
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" target/release/cohort run --config "$work/cohort.yaml" "${@:2}" 2>/dev/null &
  local pid=$!
  python3 "$work/client.py" "$1"
  kill -TERM $pid; wait $pid 2>/dev/null || true
  callgrind_annotate "$work/cg.$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
few=${FEW:-500}; many=${MANY:-5500}
a=$(count "$few" "$@"); b=$(count "$many" "$@")
echo "instructions per request: $(( (b - a) / (many - few) ))  ($few requests: $a, $many requests: $b; args: $*; ROLLOUT=${ROLLOUT:-0})"
