# shellcheck shell=bash
# Shared pieces of the bench scripts, sourced by them once they are at the repo root:
#
#   cd "$(dirname "$0")/.."
#   . benches/lib.sh
#   bench_init reload-p99                  # $work, $last, $rest, $cohort_bin; cleanup on exit
#   client=$(build_bench idle_conns)       # cohort and the plain program benches/idle_conns.rs
#   write_backend_conf "$work" 18201 18202 # nginx: "stable agent reply" and "canary agent reply"
#   start_backend "$work" 18201 18202      # pinned to $rest; returns once both ports answer
#   write_wrk_users_lua "$work/users.lua"  # wrk requests with random x-user-id keys
#   write_split_config "$work/cohort.yaml" 18210 18219 18201 18202   # the 95/5 x-user-id split
#   wait_ready 18219                       # cohort's /readyz on its admin port
#   wrk_users 10 http://127.0.0.1:18210/v1/chat
#
# The proxy under test goes on the last CPU ($last), wrk and the backend on the others ($rest),
# as in ../shared/bench/peers.py.

# bench_init NAME: a fresh work folder /tmp/cohort-NAME.XXXX in $work; $last, the CPU for the
# proxy under test, and $rest, the others (CPU 0 alone on a one-CPU machine); $cohort_bin, the
# release build, under CARGO_TARGET_DIR when it is set. Every background job of the script is
# stopped when it exits.
# shellcheck disable=SC2034 # $last, $rest and $cohort_bin are for the scripts
bench_init() {
  work=$(mktemp -d "/tmp/cohort-$1.XXXX")
  last=$(($(nproc) - 1))
  rest="0-$((last > 0 ? last - 1 : 0))"
  cohort_bin=${CARGO_TARGET_DIR:-target}/release/cohort
  trap bench_cleanup EXIT
}

bench_cleanup() {
  # shellcheck disable=SC2046 # one word a job
  kill $(jobs -p) 2>/dev/null || true
  sleep 0.3
}

# build_bench NAME: builds cohort and the plain program benches/NAME.rs (release, under
# CARGO_TARGET_DIR when it is set) and prints the program's path.
build_bench() {
  cargo build --release --bin cohort --bench "$1" --message-format=json > "$work/build.json" || return 1
  grep -o "\"executable\":\"[^\"]*/$1-[^\"]*\"" "$work/build.json" | tail -1 | cut -d'"' -f4
}

# write_backend_conf DIR STABLE_PORT CANARY_PORT: DIR/backend.conf, one nginx worker answering
# "stable agent reply" on STABLE_PORT and "canary agent reply" on CANARY_PORT.
write_backend_conf() {
  cat > "$1/backend.conf" <<NGX
worker_processes 1; daemon off; pid $1/backend.pid; error_log $1/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "stable agent reply\n"; } }
  server { listen 127.0.0.1:$3; location / { return 200 "canary agent reply\n"; } } }
NGX
}

# start_backend DIR PORT...: runs nginx on DIR/backend.conf in the background, pinned to $rest,
# and returns once every PORT accepts connections (1 if one does not within 10 s).
start_backend() {
  local dir=$1 port
  shift
  taskset -c "$rest" nginx -c "$dir/backend.conf" -e "$dir/backend.err" &
  for port; do
    wait_port "$port" || { echo "the nginx backend is not listening on $port; see $dir/backend.err" >&2; return 1; }
  done
}

# wait_port PORT: until 127.0.0.1:PORT accepts a connection, 10 s at most.
wait_port() {
  for _ in $(seq 100); do
    (: > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# wait_ready ADMIN_PORT: until cohort answers /readyz on its admin port, 10 s at most.
wait_ready() {
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "cohort did not start; see $work" >&2
  return 1
}

# write_wrk_users_lua FILE: a wrk script sending GET /v1/chat with a random x-user-id
# (user-1 to user-1000000) on each request.
write_wrk_users_lua() {
  cat > "$1" <<'LUA'
request = function()
  return wrk.format("GET", "/v1/chat", {["x-user-id"] = "user-" .. math.random(1, 1000000)})
end
LUA
}

# wrk_users SECONDS URL: wrk pinned to $rest, one thread, 64 kept-alive connections, requests
# from $work/users.lua (write_wrk_users_lua), with the latency distribution.
wrk_users() {
  taskset -c "$rest" wrk -t1 -c64 -d"$1s" --latency -s "$work/users.lua" "$2"
}

# write_split_config FILE LISTEN_PORT ADMIN_PORT STABLE_PORT CANARY_PORT [LINE...]: a cohort
# config with one listener, the admin port, upstreams stable and canary, and one route
# splitting on x-user-id, CANARY_PERCENT (default 5) to canary. Each LINE is appended as it is:
# indented by four spaces it belongs to the route, at the margin it is a top-level key.
write_split_config() {
  local file=$1 listen=$2 admin=$3 stable=$4 canary=$5 percent=${CANARY_PERCENT:-5}
  shift 5
  {
    cat <<YAML
listeners: [{name: public, address: "127.0.0.1:$listen"}]
admin: {address: "127.0.0.1:$admin"}
upstreams:
  stable: {endpoints: ["127.0.0.1:$stable"]}
  canary: {endpoints: ["127.0.0.1:$canary"]}
routes:
  - name: agent
    cohort_key: [{header: x-user-id}]
    split:
      - {cohort: stable, upstream: stable, percent: $((100 - percent))}
      - {cohort: canary, upstream: canary, percent: $percent}
YAML
    [ $# -eq 0 ] || printf '%s\n' "$@"
  } > "$file"
}
