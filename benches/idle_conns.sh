#!/usr/bin/env bash
# What idle kept-alive client connections cost cohort in memory.
#
#   benches/idle_conns.sh [N] [extra cohort run args]      # N defaults to 10000
#
# Builds once (`cargo build --release`, honouring CARGO_TARGET_DIR), starts a `cohort demo-agent`
# backend and `cohort run` in front of it (the proxy pinned to the last CPU, the rest on the
# others, as in ../shared/bench/peers.py), reads cohort's VmRSS at idle, then has the client
# (benches/idle_conns.rs) open N connections and send one request on each, reading the answer
# to the end, so each is a served, kept-alive HTTP/1.1 connection. With all N held open and
# idle for 2 s it reads VmRSS again and prints the difference per connection. The config's
# timeouts are long enough that cohort closes none of them meanwhile (checked).
# CLIENT_ARGS adds client options: CLIENT_ARGS=--no-request opens the connections without a
# request (what a connection costs before hyper takes it over).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
shift || true
. benches/lib.sh
bench_init idle-conns

# cohort and the client each hold N sockets (separate processes).
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt $(( n + 256 )) ]; then
  echo "idle_conns.sh: the open-files hard limit $(ulimit -Hn) is too low for $n connections" >&2
  exit 1
fi
ulimit -n "$(ulimit -Hn)"

client=$(build_bench idle_conns)
[ -x "$client" ] && [ -x "$cohort_bin" ] || { echo "idle_conns.sh: build produced no client or cohort" >&2; exit 1; }

cat > "$work/cohort.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:18710"}]
admin: {address: "127.0.0.1:18719"}
upstreams:
  agent: {endpoints: ["127.0.0.1:18701"]}
routes:
  - name: agent
    cohort_key: [{header: x-user-id}]
    split:
      - {cohort: stable, upstream: agent, percent: 100}
# hyper's header timer also closes idle HTTP/1.1 connections, so both timers are long.
limits: {max_connections: $(( n + 1000 )), header_read_timeout: 10m, keepalive_timeout: 10m}
YAML

taskset -c "$rest" "$cohort_bin" demo-agent --name stable --port 18701 2> "$work/agent.log" &
taskset -c "$last" "$cohort_bin" run --config "$work/cohort.yaml" "$@" 2> "$work/cohort.log" &
pid=$!
wait_ready 18719
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
open_conns() { curl -s 127.0.0.1:18719/metrics | awk '/^cohort_open_connections/ {print $2}'; }
parked_conns() { curl -s 127.0.0.1:18719/metrics | awk '/^cohort_parked_connections/ {print $2}'; }

sleep 1
idle=$(rss)

# The client holds its connections until its standard input (this fifo) closes.
mkfifo "$work/hold"
taskset -c "$rest" "$client" --target 127.0.0.1:18710 --connections "$n" ${CLIENT_ARGS:-} < "$work/hold" > "$work/client.out" &
client_pid=$!
exec 3> "$work/hold"
start=$(date +%s.%N)
until grep -q '^ready' "$work/client.out"; do
  kill -0 $client_pid 2>/dev/null || { echo "the client stopped early; see $work" >&2; cat "$work/client.out" >&2; exit 1; }
  sleep 0.1
done
opened=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
read -r _ ok failed < <(grep '^ready' "$work/client.out")
sleep "${HOLD:-3}"
held=$(rss)
gauge=$(open_conns)
parked=$(parked_conns)
exec 3>&-
wait $client_pid || true
sleep 1
after=$(rss)

echo "idle RSS: $idle kB"
echo "RSS with $ok idle connections: $held kB  (opened and answered in ${opened}s; $failed failed; cohort_open_connections ${gauge:-?}, cohort_parked_connections ${parked:-?})"
awk -v a="$idle" -v b="$held" -v n="$ok" 'BEGIN {printf "(delta / N): %.2f KiB per connection\n", (b - a) / n}'
echo "RSS after the client closed them: $after kB"
grep '^closed' "$work/client.out"
rm -rf "$work"
