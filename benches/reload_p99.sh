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
. benches/lib.sh
bench_init reload-p99
write_backend_conf "$work" 18201 18202
write_wrk_users_lua "$work/users.lua"
# config FILE PERCENT: the split with PERCENT to canary.
config() { CANARY_PERCENT=$2 write_split_config "$1" 18210 18219 18201 18202; }
config "$work/cohort.yaml" 5
start_backend "$work" 18201 18202
taskset -c "$last" "$cohort_bin" run --config "$work/cohort.yaml" 2> "$work/cohort.log" &
wait_ready 18219

load() { wrk_users "$secs" http://127.0.0.1:18210/v1/chat; }
wrk_users 2 http://127.0.0.1:18210/ >/dev/null  # warm-up

echo "== no reloads"
load | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors" || true
echo "== 10 reloads/s"
# The reloader is one light process (no fork per reload) beside wrk and the backend, never
# on the proxy's core: it rewrites the split and POSTs /reload on a kept-alive connection.
config "$work/ten.yaml" 10; config "$work/five.yaml" 5
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
