#!/usr/bin/env bash
# The floor under CPU per request: what a proxy that does no HTTP work at all costs, measured
# beside cohort, nginx and HAProxy doing the sticky 95/5 x-user-id split.
#
#   benches/floor.sh                         # ROUNDS=3 DURATION=10: about 3 minutes
#   ROUNDS=2 DURATION=5 benches/floor.sh
#
#   relay    benches/relay_floor.rs: one upstream connection per client connection, bytes copied
#            both ways (tokio, one thread), no HTTP parsing: 4 socket operations a request
#   cohort   `cohort run` on the 95/5 split config of benches/lib.sh
#   nginx    split_clients 95/5, upstream keepalive   (the peer configs of ../shared/bench/peers.py)
#   haproxy  the same split (xxh32 of x-user-id), http-reuse always
#
# Each proxy is pinned to the last CPU, wrk and the nginx backend to the others. In each of
# ROUNDS rounds (the order rotates) each proxy gets a 2 s warm-up, then wrk for DURATION seconds
# (1 thread, 64 kept-alive connections, random x-user-id keys, --latency), with its user and
# system CPU time (utime and stime of /proc/PID/stat, with its children's) read before and after.
# Prints the medians per proxy: req/s, p99, user, system and total CPU microseconds per request,
# each as a ratio to the better of nginx and HAProxy (the lower total), and what the relay's
# figure leaves, under a target of 0.85x that peer, for all the HTTP work.
# Needs nginx, haproxy, wrk, taskset and python3 (Debian: nginx-light haproxy wrk). Builds
# cohort and the relay (`cargo build --release`, honouring CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-10}
. benches/lib.sh
bench_init floor

relay=$(build_bench relay_floor)
if [ ! -x "$relay" ] || [ ! -x "$cohort_bin" ]; then
  echo "floor.sh: the build produced no relay or no cohort" >&2
  exit 1
fi

names=(relay cohort nginx haproxy)
declare -A port=([relay]=18610 [cohort]=18611 [nginx]=18612 [haproxy]=18613)
write_backend_conf "$work" 18601 18602
write_wrk_users_lua "$work/users.lua"
write_split_config "$work/cohort.yaml" "${port[cohort]}" 18619 18601 18602
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  split_clients "\${http_x_user_id}" \$pool { 5% canary; * stable; }
  upstream stable { server 127.0.0.1:18601; keepalive 128; }
  upstream canary { server 127.0.0.1:18602; keepalive 128; }
  server { listen 127.0.0.1:${port[nginx]};
    location / { proxy_pass http://\$pool; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
NGX
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:${port[haproxy]}
  http-request set-var(txn.bucket) req.hdr(x-user-id),xxh32,mod(10000)
  use_backend canary if { var(txn.bucket) -m int lt 500 }
  default_backend stable
backend stable
  server s1 127.0.0.1:18601
backend canary
  server c1 127.0.0.1:18602
CFG

start_backend "$work" 18601 18602
declare -A pid
start() {  # NAME COMMAND...: the proxy NAME pinned to the last CPU, until its port answers
  local name=$1
  shift
  taskset -c "$last" "$@" > "$work/$name.log" 2>&1 &
  pid[$name]=$!
  wait_port "${port[$name]}" || { echo "floor.sh: $name is not listening on ${port[$name]}; see $work/$name.log" >&2; exit 1; }
  curl -sf -H 'x-user-id: check' "127.0.0.1:${port[$name]}/v1/chat" > /dev/null ||
    { echo "floor.sh: $name does not answer 200; see $work/$name.log" >&2; exit 1; }
}
start relay "$relay" "127.0.0.1:${port[relay]}" 127.0.0.1:18601
start cohort "$cohort_bin" run --config "$work/cohort.yaml"
start nginx nginx -c "$work/nginx.conf" -e "$work/nginx.err"
start haproxy haproxy -db -f "$work/haproxy.cfg"

# cpu_ticks PID: the user and the system time, in clock ticks, of PID and its children
# (fields 14 and 15 of /proc/PID/stat; nginx's worker is its master's child).
cpu_ticks() {
  local p
  for p in "$1" $(cat "/proc/$1/task/$1/children" 2> /dev/null); do
    sed 's/.*) //' "/proc/$p/stat"
  done | awk '{u += $12; s += $13} END {print u, s}'
}

# measure NAME: one round's figures for the proxy NAME, a line "NAME req/s p99_ms user_us sys_us"
# (CPU microseconds per request) appended to $work/rounds.
measure() {
  local name=$1 url="http://127.0.0.1:${port[$1]}/v1/chat" u0 s0 u1 s1 out
  wrk_users 2 "$url" > /dev/null
  read -r u0 s0 < <(cpu_ticks "${pid[$name]}")
  out=$(wrk_users "$duration" "$url")
  read -r u1 s1 < <(cpu_ticks "${pid[$name]}")
  echo "$out" > "$work/wrk.$name.$round"
  echo "$out" | awk -v name="$name" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v tick="$(getconf CLK_TCK)" '
    / requests in / {n = $1}
    /^Requests\/sec/ {rps = $2}
    $1 == "99%" {p99 = $2 + 0; if ($2 ~ /us$/) p99 /= 1000; else if ($2 ~ /ms$/) ; else if ($2 ~ /m$/) p99 *= 60000; else if ($2 ~ /s$/) p99 *= 1000}
    /Non-2xx|Socket errors/ {errors = errors " " $0}
    END {
      if (n == 0) {printf "floor.sh: %s: wrk made no request\n", name > "/dev/stderr"; exit 1}
      if (errors != "") printf "floor.sh: %s:%s\n", name, errors > "/dev/stderr"
      printf "%s %.0f %.3f %.3f %.3f\n", name, rps, p99, u * 1e6 / tick / n, s * 1e6 / tick / n
    }' | tee -a "$work/rounds" >&2
}

echo "floor.sh: $rounds rounds of ${duration}s; proxies on CPU $last, wrk and the backend on $rest; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 0 $((rounds - 1))); do
  echo "round $((round + 1)) (proxy, req/s, p99 ms, user and system CPU us per request):" >&2
  for i in "${!names[@]}"; do
    measure "${names[$(((i + round) % ${#names[@]}))]}"
  done
done

python3 - "$work/rounds" <<'PY'
import statistics
import sys
rows = {}
for line in open(sys.argv[1]):
    name, *figures = line.split()
    rows.setdefault(name, []).append([float(f) for f in figures])
# Each column is a median of its own, the total too (of each round's user + system).
med = {}
for name, runs in rows.items():
    runs = [run + [run[2] + run[3]] for run in runs]
    med[name] = dict(zip(["rps", "p99", "user", "sys", "total"], map(statistics.median, zip(*runs))))
peer = min(("nginx", "haproxy"), key=lambda n: med[n]["total"])
best = med[peer]
keys = ["rps", "p99", "user", "sys", "total"]
print(f"\n{'proxy':8s} {'req/s':>8s} {'p99 ms':>8s} {'user us/req':>12s} {'sys us/req':>11s} {'total us/req':>13s}"
      f" {'x req/s':>8s} {'x p99':>6s} {'x user':>7s} {'x sys':>6s} {'x total':>8s}")
for name in ["relay", "cohort", "nginx", "haproxy"]:
    m = med[name]
    ratios = " ".join(f"{m[k] / best[k]:{w}.2f}" if best[k] else f"{'-':>{w}s}" for k, w in zip(keys, [8, 6, 7, 6, 8]))
    print(f"{name:8s} {m['rps']:8.0f} {m['p99']:8.3f} {m['user']:12.2f} {m['sys']:11.2f} {m['total']:13.2f} {ratios}")
print(f"(medians of {len(rows['relay'])} rounds; x: ratio to {peer}, the peer with the lower total CPU per request)")
relay, target = med["relay"]["total"], 0.85 * best["total"]
print(f"floor: a relay with no HTTP work costs x{relay / best['total']:.2f} of the better peer ({peer}, "
      f"{best['total']:.2f} us/req); the target 0.85x leaves {target - relay:.2f} us for all HTTP work "
      f"(0.85 x {best['total']:.2f} = {target:.2f} us, less the relay's {relay:.2f})")
PY
