#!/usr/bin/env bash
# What cohort adds to the first event of an SSE stream, at p50/p99/p99.9: the time from
# sending a request to holding the first event's bytes, straight to a streaming backend and
# through `cohort run` in front of it.
#
#   benches/sse_first_event.sh [REQUESTS] [more options of benches/sse_first_event.rs]
#
# REQUESTS (default 2000) sequential requests per side after 200 of warm-up, on kept-alive
# connections, alternating direct and proxied. The backend (in the bench process) sends one
# event at once and a second 10 ms later. cohort (the release build) is pinned with taskset to
# the last CPU, the bench to the others, as in ../shared/bench/peers.py. Options:
# --new-connections (a connection per request, connect counted), --second-event-ms MS,
# --cohort-args --workers 2, --no-pin. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
shift || true
cargo bench --bench sse_first_event -- --requests "$requests" "$@"
