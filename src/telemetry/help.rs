//! The help text and unit of every metric cohort describes in its scrape.
//!
//! Owns: the `# HELP` lines. Must not touch: registration (`super`).

use metrics::Unit;

use super::{
    ABANDONED, CONNECTIONS_REFUSED, COST, DURATION, GENERATION, INTERNAL, INTER_TOKEN, IN_FLIGHT,
    OPEN_CONNECTIONS, OUTCOMES, OUTPUT_TOKENS, OVERRIDE_REJECTED, PARKED_CONNECTIONS, REJECTED,
    RELOADS, REQUESTS, SPLIT, TOKENS, TTFB, TTFT, UNROUTED, UPSTREAM_FAILURES, USAGE_ANSWERS,
};
use super::{LATE_EVICTED, LATE_OUTCOMES, LATE_REFUSED, PINNED, PINS_ISSUED, PIN_REJECTED};

/// Name, unit and help of each metric, described once when the registry is made.
pub(super) const HELP: [(&str, Unit, &str); 29] = [
        (
            TOKENS,
            Unit::Count,
            "Tokens the answers reported, by route, cohort and kind (input counts cached input too).",
        ),
        (
            USAGE_ANSWERS,
            Unit::Count,
            "Successful answers with and without readable token usage, by route and cohort.",
        ),
        (
            OUTPUT_TOKENS,
            Unit::Count,
            "Output tokens per answer that reported usage.",
        ),
        (
            COST,
            Unit::Count,
            "Cost per answer, in the currency of the upstream's configured prices (the sum is the total cost).",
        ),
        (
            TTFT,
            Unit::Seconds,
            "Time from the request to the first event of a streamed (SSE) answer.",
        ),
        (
            INTER_TOKEN,
            Unit::Seconds,
            "Gaps between consecutive events of a streamed (SSE) answer.",
        ),
        (
            REJECTED,
            Unit::Count,
            "Requests refused at the edge (limits, request hygiene, bad or slow bodies), by reason.",
        ),
        (
            OVERRIDE_REJECTED,
            Unit::Count,
            "Cohort overrides ignored and stripped, by route and reason.",
        ),
        (
            CONNECTIONS_REFUSED,
            Unit::Count,
            "Connections refused because the listener was at max_connections.",
        ),
        (
            OPEN_CONNECTIONS,
            Unit::Count,
            "Client connections open, by listener.",
        ),
        (
            PARKED_CONNECTIONS,
            Unit::Count,
            "Idle HTTP/1.1 client connections parked without buffers, by listener.",
        ),
        (
            REQUESTS,
            Unit::Count,
            "Requests answered, by route, cohort and status class.",
        ),
        (
            DURATION,
            Unit::Seconds,
            "Request start to last response byte, by route and cohort.",
        ),
        (
            TTFB,
            Unit::Seconds,
            "Request start to first response body byte, by route and cohort.",
        ),
        (
            ABANDONED,
            Unit::Count,
            "Requests whose client left before the response head or during its body, by route, cohort and stage.",
        ),
        (
            UPSTREAM_FAILURES,
            Unit::Count,
            "Upstream exchanges that failed, by reason.",
        ),
        (
            INTERNAL,
            Unit::Count,
            "Requests cohort answered 500 for its own fault (a bug to report), by reason.",
        ),
        (
            OUTCOMES,
            Unit::Count,
            "Agent outcomes reported by the backend's outcome header.",
        ),
        (
            IN_FLIGHT,
            Unit::Count,
            "Requests currently in flight, by route and cohort.",
        ),
        (
            SPLIT,
            Unit::Percent,
            "Share of each cohort, in percent: the configured one, or its rollout's.",
        ),
        (
            UNROUTED,
            Unit::Count,
            "Requests that matched no route (answered 404).",
        ),
        (
            RELOADS,
            Unit::Count,
            "Configuration reload attempts, by result.",
        ),
        (
            GENERATION,
            Unit::Count,
            "Generation of the serving configuration; starts at 1.",
        ),
        (
            PINNED,
            Unit::Count,
            "Requests a valid conversation pin sent to its cohort, by route and cohort.",
        ),
        (
            PINS_ISSUED,
            Unit::Count,
            "Fresh conversation pins issued (not refreshes), by route and cohort.",
        ),
        (
            PIN_REJECTED,
            Unit::Count,
            "Conversation pins ignored (the request took its normal cohort), by route and reason.",
        ),
        (
            LATE_OUTCOMES,
            Unit::Count,
            "Outcomes posted after the turn (POST /outcomes), by route, the cohort the key had when its conversation started, and outcome.",
        ),
        (
            LATE_REFUSED,
            Unit::Count,
            "Late outcome events refused, by reason; a body refused whole (too large, too slow) counts once.",
        ),
        (
            LATE_EVICTED,
            Unit::Count,
            "Remembered late-outcome event ids forgotten before their dedupe window ended, because max_remembered_ids was reached.",
        ),
    ];
