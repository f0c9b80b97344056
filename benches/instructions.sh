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
. benches/lib.sh
bench_init instr
write_backend_conf "$work" 18501 18502
# ROLLOUT=1 gives the route a rollout (error-rate and latency guards), to price the guards'
# sample recording on the request path.
rollout=""
if [ "${ROLLOUT:-0}" = 1 ]; then
  rollout="    rollout: {id: bench, canary: canary, steps: [5, 50], soak: 1h, guards: [{metric: error_rate}, {metric: latency, quantile: 0.95}]}"
fi
write_split_config "$work/cohort.yaml" 18510 18519 18501 18502 ${rollout:+"$rollout"} "state_dir: $work/state"
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
start_backend "$work" 18501 18502
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" "$cohort_bin" run --config "$work/cohort.yaml" "${@:2}" 2>/dev/null &
  local pid=$!
  python3 "$work/client.py" "$1"
  kill -TERM $pid; wait $pid 2>/dev/null || true
  callgrind_annotate "$work/cg.$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
few=${FEW:-500}; many=${MANY:-5500}
a=$(count "$few" "$@"); b=$(count "$many" "$@")
echo "instructions per request: $(( (b - a) / (many - few) ))  ($few requests: $a, $many requests: $b; args: $*; ROLLOUT=${ROLLOUT:-0})"
