#!/usr/bin/env bash
# Every figure of the performance targets, in one run, with public tools:
#
#   benches/perf.sh                 # all of them (about 13 minutes on 2 cores)
#   benches/perf.sh routing peers   # only some: routing routes memory sse peers floor
#
#   routing  criterion: key extraction + hash + band + metric handle      (target <= 60 ns)
#   routes   criterion: find_route with 1 and with 1,000 routes           (1,000 no slower)
#   memory   idle RSS, and RSS with 10,000 idle kept-alive connections    (<= 20 MiB, <= 16 KiB each)
#   sse      first SSE event through cohort vs direct, p99 difference     (<= 1 ms)
#   peers    ../shared/bench/peers.py --rounds 5 --duration 10: CPU per request and p99 against
#            nginx and HAProxy, each pinned to one core                  (cpu <= 0.85x, p99 <= 1x)
#   floor    benches/floor.sh: CPU per request of a relay with no HTTP work (benches/relay_floor.rs)
#            against the better of nginx and HAProxy: the floor under the cpu target
#
# Needs: cargo, taskset, curl, python3, and for `peers` and `floor` nginx, haproxy and wrk
# (Debian: nginx-light haproxy wrk). PEERS=path/to/peers.py overrides where the peer benchmark is.
# The machine is usually shared: compare the ratios within one run, not absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(routing routes memory sse peers floor)
peers=${PEERS:-../shared/bench/peers.py}
work=$(mktemp -d /tmp/cohort-perf.XXXX)
summary="$work/summary"
: > "$summary"
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" | tee -a "$summary"; }

# criterion's middle estimate for one benchmark id, from its "time: [low mid high]" line.
estimate() {
  awk -v id="$1" '$1 == id {found = 1} found && /time:/ {print $(NF-3), $(NF-2); exit}' "$2"
}

cargo build --release --bin cohort >&2
echo "machine: $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$summary"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" | tee -a "$summary"

for step in "${steps[@]}"; do
  echo "== $step" >&2
  case $step in
    routing)
      cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3 routing/ | tee "$work/routing.out" >&2
      row "routing decision, header key (target <= 60 ns)" "$(estimate routing/header_key_hash_band_metric "$work/routing.out")" "cargo bench --bench routing -- routing/"
      row "routing decision, cookie key" "$(estimate routing/cookie_key_hash_band_metric "$work/routing.out")" "same run"
      ;;
    routes)
      cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3 find_route/ | tee "$work/routes.out" >&2
      row "find_route, 1 route" "$(estimate find_route/1_routes "$work/routes.out")" "cargo bench --bench routing -- find_route/"
      row "find_route, 1,000 routes (target: no slower than 1)" "$(estimate find_route/1000_routes "$work/routes.out")" "same run"
      row "linear scan, 1,000 routes (what the index replaced)" "$(estimate find_route/1000_routes_linear_scan "$work/routes.out")" "same run"
      ;;
    memory)
      benches/idle_conns.sh 10000 | tee "$work/memory.out" >&2
      row "idle RSS (target <= 20 MiB)" "$(awk '/^idle RSS/ {printf "%.1f MiB", $3 / 1024}' "$work/memory.out")" "benches/idle_conns.sh 10000"
      row "per idle kept-alive connection, 10,000 open (target <= 16 KiB)" "$(awk '/KiB per connection/ {print $(NF-3), "KiB"}' "$work/memory.out")" "same run"
      ;;
    sse)
      benches/sse_first_event.sh 2000 | tee "$work/sse.out" >&2
      row "first SSE event, through cohort minus direct (target p99 <= +1 ms)" "$(awk '/^cohort adds:/ {sub(/^cohort adds: /, ""); print}' "$work/sse.out")" "benches/sse_first_event.sh 2000"
      ;;
    peers)
      if [ ! -f "$peers" ]; then
        echo "perf.sh: $peers not found; set PEERS=path/to/peers.py" >&2
        exit 1
      fi
      python3 "$peers" --rounds 5 --duration 10 --json "$work/peers.json" | tee "$work/peers.out" >&2
      python3 - "$work/peers.json" <<'PY' | tee -a "$summary"
import json, sys
d = json.load(open(sys.argv[1]))
med = d["median"]
peers = [p for p in med if p != "cohort"]
best_cpu = min(peers, key=lambda p: med[p]["cpu_us_per_req"])
best_p99 = min(peers, key=lambda p: med[p]["p99_ms"])
for name in ["cohort"] + peers:
    m = med[name]
    print(f"| peers: {name} | {m['rps']:.0f} req/s, p99 {m['p99_ms']:.3f} ms, {m['cpu_us_per_req']:.2f} us CPU/req, {m['errors']:.0f} errors | peers.py --rounds 5 --duration 10 |")
c = med["cohort"]
print(f"| CPU per request vs the better peer ({best_cpu}) (target <= 0.85x) | x{c['cpu_us_per_req'] / med[best_cpu]['cpu_us_per_req']:.2f} | same run |")
print(f"| p99 vs the better peer ({best_p99}) (target <= 1x, 0 errors) | x{c['p99_ms'] / med[best_p99]['p99_ms']:.2f}, {c['errors']:.0f} errors | same run |")
PY
      ;;
    floor)
      benches/floor.sh | tee "$work/floor.out" >&2
      row "floor: CPU per request of a relay with no HTTP work vs the better peer" "$(awk '/^floor:/ {sub(/^floor: a relay with no HTTP work costs /, ""); sub(/ of the better peer/, ""); print}' "$work/floor.out")" "benches/floor.sh"
      ;;
    *)
      echo "perf.sh: unknown step $step (routing routes memory sse peers floor)" >&2
      exit 2
      ;;
  esac
done

echo
echo "| figure | value | command |"
echo "|---|---|---|"
grep '^|' "$summary"
grep -v '^|' "$summary"
echo "(outputs kept in $work)"
