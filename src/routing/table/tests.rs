//! Every configuration rule, each checked for the exact line, column and field path it reports.
//!
//! Cases are edits of the contract's `minimal.yaml` (kept verbatim in `config/minimal.yaml`),
//! so each position can be read off that file with the edit applied.

use std::path::Path;
use std::time::Duration;

use http::{HeaderName, Method};

use super::{from_loaded, Fallback, HostMatch, RoutingTable};
use crate::config::{parse, ConfigError};
use crate::routing::bands::seed_for;
use crate::routing::key::KeySource;
use crate::telemetry::Metrics;

/// The contract's minimal config. Line numbers below refer to it:
/// 3 `listeners:`, 5 listener address, 7 admin address, 10/12 stable/canary endpoints,
/// 14 route name, 16 path_prefix, 18 header source, 19 `split:`, 20-22 stable, 23-25 canary.
pub(super) const MINIMAL: &str = include_str!("../../../config/minimal.yaml");

const LISTENERS: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n";
const SPLIT: &str = "    split:\n      - cohort: stable\n        upstream: stable\n        percent: 95\n      - cohort: canary\n        upstream: canary\n        percent: 5\n";

/// `MINIMAL` with `from`, which must occur exactly once, replaced by `to`.
pub(super) fn edit(from: &str, to: &str) -> String {
    assert_eq!(MINIMAL.matches(from).count(), 1, "{from:?} must occur once");
    MINIMAL.replacen(from, to, 1)
}

/// `MINIMAL` with `lines` inserted after the line `anchor` (given without its newline).
pub(super) fn insert_after(anchor: &str, lines: &str) -> String {
    edit(&format!("{anchor}\n"), &format!("{anchor}\n{lines}"))
}

fn build(text: &str) -> Result<RoutingTable, ConfigError> {
    let loaded = parse(Path::new("cohort.yaml"), text.to_string())?;
    from_loaded(&loaded, &Metrics::new(), None, 1)
}

#[track_caller]
pub(super) fn accept(text: &str) -> RoutingTable {
    build(text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"))
}

/// Asserts the exact location and field, and that the message holds every one of `says`.
#[track_caller]
pub(super) fn reject(
    text: &str,
    line: usize,
    column: usize,
    field: &str,
    says: &[&str],
) -> ConfigError {
    let Err(e) = build(text) else {
        panic!("accepted, expected an error at {field}:\n{text}")
    };
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (line, column, field),
        "wrong place for: {e}"
    );
    for s in says {
        assert!(e.message.contains(s), "{:?} does not say {s:?}", e.message);
    }
    // The location and field are printed once, up front: never again inside the message.
    assert!(!e.message.contains(" at line "), "{:?}", e.message);
    if !field.is_empty() {
        let parent = field.rsplit_once(['.', '[']).map_or(field, |(p, _)| p);
        for path in [parent, field] {
            assert!(
                !e.message.starts_with(&format!("{path}: ")),
                "path repeated in {:?}",
                e.message
            );
        }
    }
    e
}

// ---- the minimal config -------------------------------------------------------------------

#[test]
fn minimal_yaml_is_accepted_with_its_defaults() {
    let t = accept(MINIMAL);
    assert_eq!(t.listeners.len(), 1);
    assert_eq!(t.listeners[0].name, "public");
    assert_eq!(t.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(t.admin_address, "127.0.0.1:9901".parse().unwrap());
    assert!(t.trusted_cidrs.is_empty());
    assert_eq!(t.poll_interval, Duration::from_secs(2));
    assert_eq!(t.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(t.shutdown_delay, Duration::ZERO, "off unless asked for");
    let canary = &t.upstreams["canary"].spec;
    assert_eq!(canary.endpoints[0].authority.as_str(), "127.0.0.1:18002");
    assert_eq!(canary.endpoints[0].scheme, http::uri::Scheme::HTTP);
    assert_eq!(canary.connect_timeout, Duration::from_secs(2));
    assert_eq!(canary.response_timeout, Duration::from_secs(300));
    assert_eq!(canary.idle_timeout, Duration::from_secs(60));
    assert_eq!(canary.max_idle_per_endpoint, 256);

    let r = t.route("agent").unwrap();
    assert_eq!(r.salt, "agent", "salt defaults to the route name");
    assert_eq!(r.seed, 11548422540501417285);
    assert_eq!(r.matcher.host, HostMatch::Any);
    assert_eq!(r.matcher.path_prefix, "/");
    assert_eq!(r.matcher.method, None);
    assert_eq!(
        r.key_sources,
        [KeySource::Header(HeaderName::from_static("x-user-id"))]
    );
    assert_eq!(r.fallback, Fallback::Random);
    assert_eq!(r.override_header, None);
    assert_eq!(r.outcome_header, "x-agent-outcome");
    assert_eq!(r.outcomes, ["resolved", "escalated", "abandoned", "error"]);
    assert!(r.response_cohort_header);
    let weights: Vec<u32> = r.cohorts.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [9500, 500]);
    // The contract: user-3 is canary; user-1, user-2 and alice are stable.
    for (key, cohort) in [
        ("user-1", "stable"),
        ("user-2", "stable"),
        ("user-3", "canary"),
        ("alice", "stable"),
    ] {
        assert_eq!(
            r.cohorts[r.assign(Some(key.as_bytes()))].name,
            cohort,
            "{key}"
        );
    }
}

#[test]
fn minimal_yaml_is_the_contracts_copy() {
    // Only checkable beside the shared contract; a clean clone has just the copy.
    let contract = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/contract/minimal.yaml"
    );
    if let Ok(text) = std::fs::read_to_string(contract) {
        assert_eq!(MINIMAL, text, "config/minimal.yaml drifted from {contract}");
    }
}

#[test]
fn errors_print_file_line_column_and_field_once() {
    let e = reject(
        &edit("percent: 95", "percent: 94.995"),
        22,
        18,
        "routes[0].split[0].percent",
        &[],
    );
    assert_eq!(
        e.to_string(),
        "cohort.yaml:22:18: routes[0].split[0].percent: \
         94.995 is not a percent between 0 and 100 with at most two decimals"
    );
}

// ---- unknown keys -------------------------------------------------------------------------

#[test]
fn unknown_key_at_top_level() {
    reject(
        &format!("{MINIMAL}bogus: 1\n"),
        26,
        1,
        "bogus",
        &["unknown field `bogus`", "expected one of `listeners`"],
    );
}

#[test]
fn unknown_key_in_a_listener() {
    reject(
        &insert_after("    address: 127.0.0.1:8080", "    colour: blue\n"),
        6,
        5,
        "listeners[0].colour",
        &[
            "unknown field `colour`",
            "expected one of `name`, `address`, `tls`",
        ],
    );
}

#[test]
fn unknown_key_in_admin() {
    reject(
        &insert_after("  address: 127.0.0.1:9901", "  port: 9901\n"),
        8,
        3,
        "admin.port",
        &["unknown field `port`", "expected `address`"],
    );
}

#[test]
fn unknown_key_in_reload() {
    reject(
        &format!("{MINIMAL}reload:\n  interval: 2s\n"),
        27,
        3,
        "reload.interval",
        &["unknown field `interval`", "expected `poll_interval`"],
    );
}

#[test]
fn unknown_key_in_an_upstream() {
    reject(
        &insert_after("    endpoints: [\"127.0.0.1:18002\"]", "    retries: 3\n"),
        13,
        5,
        "upstreams.canary.retries",
        &["unknown field `retries`", "`max_idle_per_endpoint`"],
    );
}

#[test]
fn unknown_key_in_a_route() {
    reject(
        &insert_after("  - name: agent", "    colour: red\n"),
        15,
        5,
        "routes[0].colour",
        &["unknown field `colour`", "`response_cohort_header`"],
    );
}

#[test]
fn unknown_key_in_a_match() {
    reject(
        &insert_after("      path_prefix: /", "      query: x\n"),
        17,
        7,
        "routes[0].match.query",
        &["unknown field `query`", "`path_prefix`"],
    );
}

#[test]
fn unknown_key_in_a_key_source() {
    reject(
        &insert_after("      - header: x-user-id", "        jwt: sub\n"),
        19,
        9,
        "routes[0].cohort_key[0].jwt",
        &["unknown field `jwt`", "`client_ip`"],
    );
}

#[test]
fn unknown_key_in_a_split() {
    reject(
        &insert_after("        percent: 5", "        weight: 3\n"),
        26,
        9,
        "routes[0].split[1].weight",
        &["unknown field `weight`", "`percent`"],
    );
}

// ---- YAML syntax, duplicate keys and types --------------------------------------------------

#[test]
fn syntax_error_unclosed_quote() {
    reject(
        &edit("name: agent", "name: \"agent"),
        26,
        1,
        "",
        &["unexpected end of stream", "while scanning a quoted scalar"],
    );
}

#[test]
fn syntax_error_tab_indent() {
    reject(
        &edit("      path_prefix: /\n", "\tpath_prefix: /\n"),
        16,
        1,
        "",
        &["cannot start any token"],
    );
}

#[test]
fn syntax_error_unclosed_flow_sequence() {
    reject(
        &edit("[\"127.0.0.1:18001\"]", "[\"127.0.0.1:18001\""),
        11,
        3,
        "",
        &["did not find expected ',' or ']'"],
    );
}

#[test]
fn syntax_error_stray_colon() {
    reject(
        &edit("percent: 95", "percent: 95: 3"),
        22,
        20,
        "",
        &["mapping values are not allowed"],
    );
}

#[test]
fn syntax_error_is_reported_before_what_precedes_it() {
    // Read only as far as the bad line, the route lacks `split`; the syntax is the error.
    reject(
        &insert_after("  - name: agent", "   bad: indent\n"),
        15,
        4,
        "",
        &["did not find expected '-' indicator"],
    );
}

#[test]
fn duplicate_upstream_key() {
    // A map keeps the last of two equal keys; YAML forbids them, and so does cohort.
    reject(
        &edit("  canary:\n", "  stable:\n"),
        11,
        3,
        "upstreams.stable",
        &["duplicate key \"stable\""],
    );
}

#[test]
fn duplicate_field_key() {
    reject(
        &insert_after("        percent: 5", "        percent: 6\n"),
        26,
        9,
        "routes[0].split[1].percent",
        &["duplicate key \"percent\""],
    );
}

#[test]
fn duplicate_match_header_key() {
    reject(
        &insert_after(
            "      path_prefix: /",
            "      headers:\n        x-tier: a\n        x-tier: b\n",
        ),
        19,
        9,
        "routes[0].match.headers.x-tier",
        &["duplicate key \"x-tier\""],
    );
}

#[test]
fn wrong_type_percent() {
    reject(
        &edit("percent: 95", "percent: lots"),
        22,
        18,
        "routes[0].split[0].percent",
        &["invalid type: string \"lots\", expected f64"],
    );
}

#[test]
fn wrong_type_listeners() {
    reject(
        &edit(LISTENERS, "listeners: public\n"),
        3,
        12,
        "listeners",
        &["invalid type: string \"public\", expected a sequence"],
    );
}

#[test]
fn wrong_type_client_ip() {
    reject(
        &edit(
            "      - header: x-user-id\n",
            "      - client_ip: yes please\n",
        ),
        18,
        20,
        "routes[0].cohort_key[0].client_ip",
        &["expected a boolean"],
    );
}

#[test]
fn wrong_type_duration() {
    reject(
        &format!("{MINIMAL}shutdown_timeout: soon\n"),
        26,
        19,
        "shutdown_timeout",
        &["\"soon\", expected a duration"],
    );
    reject(
        &format!("{MINIMAL}shutdown_delay: later\n"),
        26,
        17,
        "shutdown_delay",
        &["\"later\", expected a duration"],
    );
    let table = accept(&format!("{MINIMAL}shutdown_delay: 0s\n"));
    assert_eq!(table.shutdown_delay, Duration::ZERO, "0s is valid: off");
}

#[test]
fn durations_past_ten_years_are_refused() {
    // Past what an Instant holds, `Instant + duration` would panic wherever a timer is armed.
    reject(
        &format!("{MINIMAL}shutdown_timeout: 300000000000y\n"),
        26,
        19,
        "shutdown_timeout",
        &["longer than the longest duration accepted, 10 years"],
    );
    let table = accept(&format!("{MINIMAL}shutdown_timeout: 10y\n"));
    assert_eq!(table.shutdown_timeout, crate::config::duration::MAX);
}

#[test]
fn missing_field_is_reported_at_its_parent() {
    reject(
        &edit("        upstream: canary\n", ""),
        23,
        9,
        "routes[0].split[1]",
        &["missing field `upstream`"],
    );
    reject(
        &edit(LISTENERS, ""),
        3,
        1,
        "",
        &["missing field `listeners`"],
    );
}

// ---- listeners and admin ------------------------------------------------------------------

#[test]
fn no_listeners() {
    reject(
        &edit(LISTENERS, "listeners: []\n"),
        3,
        1,
        "listeners",
        &["at least one listener is required"],
    );
}

#[test]
fn duplicate_listener_names() {
    reject(
        &insert_after(
            "    address: 127.0.0.1:8080",
            "  - name: public\n    address: 127.0.0.1:8081\n",
        ),
        6,
        11,
        "listeners[1].name",
        &["duplicate listener name \"public\""],
    );
}

#[test]
fn two_listeners_on_one_address() {
    reject(
        &insert_after(
            "    address: 127.0.0.1:8080",
            "  - name: internal\n    address: 0.0.0.0:8080\n",
        ),
        7,
        14,
        "listeners[1].address",
        &["address 0.0.0.0:8080 is also used by listener \"public\""],
    );
    // Port 0 asks the kernel for a fresh port, so it never clashes.
    let t = accept(&edit(
        LISTENERS,
        "listeners:\n  - name: a\n    address: 127.0.0.1:0\n  - name: b\n    address: 127.0.0.1:0\n",
    ));
    assert_eq!(t.listeners.len(), 2);
}

#[test]
fn bad_listener_address_and_name() {
    reject(
        &edit("127.0.0.1:8080", "localhost:8080"),
        5,
        14,
        "listeners[0].address",
        &["\"localhost:8080\" is not an ip:port socket address"],
    );
    reject(
        &edit("name: public", "name: \"pub lic\""),
        4,
        11,
        "listeners[0].name",
        &["\"pub lic\" is not a valid name"],
    );
}

#[test]
fn admin_address_equal_to_a_listener() {
    reject(
        &edit("127.0.0.1:9901", "127.0.0.1:8080"),
        7,
        12,
        "admin.address",
        &["address 127.0.0.1:8080 is also used by listener \"public\""],
    );
}

#[test]
fn admin_address_overlapping_a_wildcard_listener() {
    // 0.0.0.0 takes the port on every address, 127.0.0.1 included, whichever side has it.
    reject(
        &edit("127.0.0.1:9901", "0.0.0.0:8080"),
        7,
        12,
        "admin.address",
        &["address 0.0.0.0:8080 is also used by listener \"public\""],
    );
    reject(
        &edit("127.0.0.1:8080", "0.0.0.0:9901"),
        7,
        12,
        "admin.address",
        &["address 127.0.0.1:9901 is also used by listener \"public\""],
    );
    // Another address on the same port is a different socket.
    let t = accept(&edit("127.0.0.1:9901", "127.0.0.2:8080"));
    assert_eq!(t.admin_address, "127.0.0.2:8080".parse().unwrap());
}

#[test]
fn admin_address_defaults_to_loopback() {
    let t = accept(&edit("admin:\n  address: 127.0.0.1:9901\n", ""));
    assert_eq!(t.admin_address, "127.0.0.1:9901".parse().unwrap());
}

// ---- upstreams ----------------------------------------------------------------------------

#[test]
fn unknown_upstream() {
    reject(
        &edit("upstream: canary", "upstream: canery"),
        24,
        19,
        "routes[0].split[1].upstream",
        &["upstream \"canery\" is not defined under `upstreams`"],
    );
}

#[test]
fn bad_endpoints() {
    for (endpoint, says) in [
        ("127.0.0.1", "a port is required"),
        ("http://127.0.0.1:18002/v1", "with no path"),
        ("http://user@127.0.0.1:18002", "with no path or user"),
        (
            "ftp://127.0.0.1:18002",
            "the schemes accepted are http:// and https://",
        ),
        ("not an endpoint", "not a host:port"),
        (":18002", "a host is required"),
    ] {
        let e = reject(
            &edit("127.0.0.1:18002", endpoint),
            12,
            17,
            "upstreams.canary.endpoints[0]",
            &[says],
        );
        assert!(e.message.starts_with(&format!("endpoint {endpoint:?}: ")));
    }
    reject(
        &edit(
            "\"127.0.0.1:18002\"]",
            "\"127.0.0.1:18002\", \"127.0.0.1\"]",
        ),
        12,
        36,
        "upstreams.canary.endpoints[1]",
        &["endpoint \"127.0.0.1\": a port is required"],
    );
    reject(
        &edit("[\"127.0.0.1:18002\"]", "[]"),
        12,
        5,
        "upstreams.canary.endpoints",
        &["an upstream needs at least one endpoint"],
    );
}

#[test]
fn accepted_endpoint_forms() {
    for (endpoint, authority) in [
        ("127.0.0.1:18002", "127.0.0.1:18002"),
        ("localhost:18002", "localhost:18002"),
        ("http://127.0.0.1:18002", "127.0.0.1:18002"),
        (
            "http://canary.agents.internal:8000/",
            "canary.agents.internal:8000",
        ),
        ("[::1]:18002", "[::1]:18002"),
    ] {
        let t = accept(&edit("127.0.0.1:18002", endpoint));
        assert_eq!(
            t.upstreams["canary"].spec.endpoints[0].authority.as_str(),
            authority,
            "{endpoint}"
        );
    }
}

#[test]
fn upstream_options_are_read() {
    let t = accept(&insert_after(
        "    endpoints: [\"127.0.0.1:18002\"]",
        "    connect_timeout: 500ms\n    response_timeout: 10m\n    idle_timeout: 90s\n    max_idle_per_endpoint: 8\n",
    ));
    let spec = &t.upstreams["canary"].spec;
    assert_eq!(spec.connect_timeout, Duration::from_millis(500));
    assert_eq!(spec.response_timeout, Duration::from_secs(600));
    assert_eq!(spec.idle_timeout, Duration::from_secs(90));
    assert_eq!(spec.max_idle_per_endpoint, 8);
}

// ---- percents -----------------------------------------------------------------------------

#[test]
fn percent_with_three_decimals_is_rejected() {
    reject(
        &edit("percent: 95", "percent: 94.995").replacen("percent: 5\n", "percent: 5.005\n", 1),
        22,
        18,
        "routes[0].split[0].percent",
        &["94.995 is not a percent between 0 and 100 with at most two decimals"],
    );
    reject(
        &edit("percent: 95", "percent: 100").replacen("percent: 5\n", "percent: 0.001\n", 1),
        25,
        18,
        "routes[0].split[1].percent",
        &["0.001 is not a percent"],
    );
}

#[test]
fn percent_with_two_decimals_is_accepted() {
    let three = "      - cohort: a\n        upstream: stable\n        percent: 33.33\n      - cohort: b\n        upstream: canary\n        percent: 33.33\n      - cohort: c\n        upstream: canary\n        percent: 33.34\n";
    let t = accept(&edit(SPLIT, &format!("    split:\n{three}")));
    let weights: Vec<u32> = t.routes[0].cohorts.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [3333, 3333, 3334]);
    let t = accept(&edit("percent: 95", "percent: 99.99").replacen(
        "percent: 5\n",
        "percent: 0.01\n",
        1,
    ));
    assert_eq!(t.routes[0].cohorts[1].weight, 1);
}

#[test]
fn percent_out_of_range_is_rejected() {
    for (value, shown) in [
        ("-5", "-5"),
        ("100.01", "100.01"),
        (".nan", "NaN"),
        (".inf", "inf"),
    ] {
        reject(
            &edit("percent: 95", &format!("percent: {value}")),
            22,
            18,
            "routes[0].split[0].percent",
            &[&format!("{shown} is not a percent between 0 and 100")],
        );
    }
}

#[test]
fn zero_percent_is_accepted() {
    let t =
        accept(&edit("percent: 95", "percent: 100").replacen("percent: 5\n", "percent: 0\n", 1));
    assert_eq!(t.routes[0].cohorts[1].weight, 0);
    assert!(t.warnings().iter().any(|w| w.contains("is at 0%")));
}

#[test]
fn percents_must_sum_to_100() {
    reject(
        &edit("percent: 95", "percent: 94.5"),
        19,
        5,
        "routes[0].split",
        &["percents sum to 99.5, not exactly 100"],
    );
    reject(
        &edit("percent: 95", "percent: 95.01"),
        19,
        5,
        "routes[0].split",
        &["percents sum to 100.01, not exactly 100"],
    );
}

#[test]
fn empty_split() {
    reject(
        &edit(SPLIT, "    split: []\n"),
        19,
        5,
        "routes[0].split",
        &["a route needs at least one cohort in `split`"],
    );
}

// ---- names --------------------------------------------------------------------------------

#[test]
fn duplicate_route_names() {
    reject(
        &format!(
            "{MINIMAL}  - name: agent\n    split:\n      - cohort: stable\n        upstream: stable\n        percent: 100\n"
        ),
        26,
        11,
        "routes[1].name",
        &["duplicate route name \"agent\""],
    );
}

#[test]
fn duplicate_cohort_names_in_a_route() {
    reject(
        &edit("cohort: canary", "cohort: stable"),
        23,
        17,
        "routes[0].split[1].cohort",
        &["duplicate cohort name \"stable\""],
    );
}

#[test]
fn no_routes() {
    let text = MINIMAL.split("routes:").next().unwrap().to_string() + "routes: []\n";
    reject(&text, 13, 1, "routes", &["at least one route is required"]);
}

// ---- key sources --------------------------------------------------------------------------

#[test]
fn key_source_with_two_fields() {
    reject(
        &insert_after("      - header: x-user-id", "        cookie: session\n"),
        18,
        9,
        "routes[0].cohort_key[0]",
        &["set exactly one of header, cookie, query or client_ip: true"],
    );
}

#[test]
fn key_source_with_no_field() {
    for source in ["{}", "{client_ip: false}"] {
        reject(
            &edit("header: x-user-id", source),
            18,
            9,
            "routes[0].cohort_key[0]",
            &["set exactly one of header, cookie, query or client_ip: true"],
        );
    }
    reject(
        &insert_after("      - header: x-user-id", "      - {}\n"),
        19,
        9,
        "routes[0].cohort_key[1]",
        &["set exactly one of"],
    );
}

#[test]
fn key_source_with_an_empty_name() {
    reject(
        &edit("header: x-user-id", "cookie: \"\""),
        18,
        17,
        "routes[0].cohort_key[0].cookie",
        &["must not be empty"],
    );
}

#[test]
fn every_key_source_kind_is_accepted() {
    let t = accept(&insert_after(
        "      - header: x-user-id",
        "      - cookie: session\n      - query: user\n      - client_ip: true\n",
    ));
    assert_eq!(
        t.routes[0].key_sources,
        [
            KeySource::Header(HeaderName::from_static("x-user-id")),
            KeySource::Cookie("session".into()),
            KeySource::Query("user".into()),
            KeySource::ClientIp,
        ]
    );
}

// ---- header names and values --------------------------------------------------------------

#[test]
fn bad_key_source_header_name() {
    reject(
        &edit("header: x-user-id", "header: \"x user\""),
        18,
        17,
        "routes[0].cohort_key[0].header",
        &["\"x user\" is not a valid header name"],
    );
}

#[test]
fn bad_match_header_name_and_value() {
    // A map entry is reported at its value, on the entry's line.
    reject(
        &insert_after(
            "      path_prefix: /",
            "      headers:\n        \"bad name\": v\n",
        ),
        18,
        21,
        "routes[0].match.headers.bad name",
        &["\"bad name\" is not a valid header name"],
    );
    reject(
        &insert_after(
            "      path_prefix: /",
            "      headers:\n        x-tier: \"a\\x01\"\n",
        ),
        18,
        17,
        "routes[0].match.headers.x-tier",
        &["\"a\\u{1}\" is not a valid header value"],
    );
}

#[test]
fn bad_override_and_outcome_header_names() {
    reject(
        &insert_after("  - name: agent", "    override_header: \"x:y\"\n"),
        15,
        22,
        "routes[0].override_header",
        &["\"x:y\" is not a valid header name"],
    );
    reject(
        &insert_after("  - name: agent", "    outcome_header: \"\"\n"),
        15,
        21,
        "routes[0].outcome_header",
        &["\"\" is not a valid header name"],
    );
}

// ---- match --------------------------------------------------------------------------------

#[test]
fn bad_method() {
    for method in ["get", "\"\"", "\"PO ST\""] {
        reject(
            &insert_after("      path_prefix: /", &format!("      method: {method}\n")),
            17,
            15,
            "routes[0].match.method",
            &["is not an HTTP method"],
        );
    }
    let t = accept(&insert_after(
        "      path_prefix: /",
        "      method: POST\n",
    ));
    assert_eq!(t.routes[0].matcher.method, Some(Method::POST));
}

#[test]
fn bad_host_pattern() {
    for host in ["api.*.com", "*foo.com", "api.example.com:8080", "", "*."] {
        reject(
            &insert_after("      path_prefix: /", &format!("      host: \"{host}\"\n")),
            17,
            13,
            "routes[0].match.host",
            &[&format!(
                "{host:?} is not a host: use a name such as api.example.com or *.example.com"
            )],
        );
    }
}

#[test]
fn accepted_host_patterns() {
    for (host, expected) in [
        ("\"*\"", HostMatch::Any),
        (
            "API.Example.com",
            HostMatch::Exact("api.example.com".into()),
        ),
        (
            "\"*.Example.COM\"",
            HostMatch::Suffix(".example.com".into()),
        ),
    ] {
        let t = accept(&insert_after(
            "      path_prefix: /",
            &format!("      host: {host}\n"),
        ));
        assert_eq!(t.routes[0].matcher.host, expected, "{host}");
    }
}

#[test]
fn path_prefix_must_start_with_a_slash() {
    reject(
        &edit("path_prefix: /", "path_prefix: v1/"),
        16,
        20,
        "routes[0].match.path_prefix",
        &["\"v1/\" must start with '/'"],
    );
}

// ---- fallback, salt, outcomes -------------------------------------------------------------

#[test]
fn fallback_naming_an_unknown_cohort() {
    reject(
        &insert_after("  - name: agent", "    fallback: beta\n"),
        15,
        15,
        "routes[0].fallback",
        &["fallback \"beta\" is neither `random` nor a cohort of this route"],
    );
    let t = accept(&insert_after("  - name: agent", "    fallback: canary\n"));
    assert_eq!(t.routes[0].fallback, Fallback::Cohort(1));
    assert_eq!(t.routes[0].assign(None), 1);
    let t = accept(&insert_after("  - name: agent", "    fallback: random\n"));
    assert_eq!(t.routes[0].fallback, Fallback::Random);
}

#[test]
fn salt_is_used_and_must_not_be_empty() {
    let t = accept(&insert_after(
        "  - name: agent",
        "    salt: support-2026-11\n",
    ));
    assert_eq!(t.routes[0].seed, 14391869356304411198);
    assert_eq!(t.routes[0].seed, seed_for("support-2026-11"));
    reject(
        &insert_after("  - name: agent", "    salt: \"\"\n"),
        15,
        11,
        "routes[0].salt",
        &["must not be empty"],
    );
}

#[test]
fn outcomes_must_be_names() {
    reject(
        &insert_after("  - name: agent", "    outcomes: [resolved, \"gave up\"]\n"),
        15,
        26,
        "routes[0].outcomes[1]",
        &["\"gave up\" is not a valid name"],
    );
    let t = accept(&insert_after(
        "  - name: agent",
        "    outcomes: [Resolved, handed_off]\n    outcome_header: x-outcome\n",
    ));
    assert_eq!(t.routes[0].outcomes, ["resolved", "handed_off"]);
    assert_eq!(t.routes[0].outcome_header, "x-outcome");
}

// ---- trusted CIDRs ------------------------------------------------------------------------

#[test]
fn bad_cidr() {
    reject(
        &format!("{MINIMAL}trusted_cidrs: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
        26,
        31,
        "trusted_cidrs[1]",
        &["\"10.0.0.0/33\" is not a CIDR such as 10.0.0.0/8 or an IP address"],
    );
    reject(
        &format!("{MINIMAL}trusted_cidrs:\n  - 10.0.0.0/8\n  - localhost\n"),
        28,
        5,
        "trusted_cidrs[1]",
        &["\"localhost\" is not a CIDR"],
    );
}

#[test]
fn accepted_cidrs() {
    let t = accept(&format!(
        "{MINIMAL}trusted_cidrs: [\"10.0.0.0/8\", \"192.168.1.7\", \"::1/128\"]\n"
    ));
    for (peer, trusted) in [
        ("10.200.0.1", true),
        ("192.168.1.7", true),
        ("192.168.1.8", false),
        ("::1", true),
        ("::ffff:10.0.0.1", true),
        ("127.0.0.1", false),
    ] {
        assert_eq!(t.is_trusted(peer.parse().unwrap()), trusted, "{peer}");
    }
}

// ---- the shipped configs ------------------------------------------------------------------

fn load_shipped(name: &str) -> (crate::config::Loaded, RoutingTable) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let loaded = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let table = from_loaded(&loaded, &Metrics::new(), None, 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(table.warnings(), Vec::<String>::new(), "{name}");
    (loaded, table)
}

/// Every key the raw config types have, by name (the names of upstreams and match headers,
/// which the user chooses, are not keys of the types).
fn option_names(value: &serde_yaml::Value, user_keys: bool, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                if !user_keys {
                    out.push(k.to_string());
                }
                if k != "headers" {
                    option_names(v, k == "upstreams", out);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| option_names(v, false, out)),
        _ => {}
    }
}

#[test]
fn reference_config_loads_and_shows_every_option() {
    let (loaded, t) = load_shipped("cohort.yaml");
    // Serialised, the raw config holds every option, unset ones as null.
    let value = serde_yaml::to_value(&loaded.raw).unwrap();
    let mut names = Vec::new();
    option_names(&value, false, &mut names);
    for name in [
        "poll_interval",
        "max_idle_per_endpoint",
        "client_ip",
        "path_prefix",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not among {names:?}"
        );
    }
    for name in &names {
        let shown = loaded.text.lines().any(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.starts_with(&format!("{name}:")) && !l.contains(": null")
        });
        assert!(shown, "config/cohort.yaml does not show `{name}`");
    }

    assert_eq!(t.listeners.len(), 3);
    assert!(t.listener_tls[2].is_some());
    // Five TLS files, the admin token, the override secret and the pin secrets.
    assert_eq!(t.watched_files.len(), 8);
    assert_eq!(t.trusted_cidrs.len(), 3);
    assert_eq!(t.upstreams.len(), 3);
    let small = &t.upstreams["agent-v42-small-model"].spec;
    assert_eq!(small.connect_timeout, Duration::from_millis(500));
    assert_eq!(small.max_idle_per_endpoint, 32);
    let r = &t.routes[0];
    assert_eq!(r.matcher.host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(r.matcher.method, Some(Method::POST));
    assert_eq!(r.key_sources.len(), 4);
    assert_eq!(r.seed, seed_for("support-2026-11"));
    let bands: Vec<_> = r
        .bands
        .as_slice()
        .iter()
        .map(|b| (b.start, b.end))
        .collect();
    assert_eq!(bands, [(0, 9000), (9300, 10000), (9000, 9300)]);
    assert_eq!(r.fallback, Fallback::Cohort(0));
    assert_eq!(r.override_header.as_ref().unwrap(), "x-cohort-override");
    assert_eq!(r.outcomes.len(), 5);

    // The example error in the file's header is the one cohort prints.
    let example = loaded
        .text
        .lines()
        .find_map(|l| l.strip_prefix("#   cohort.yaml:"))
        .unwrap();
    let bad = loaded.text.replacen("percent: 7\n", "percent: 7.005\n", 1);
    // Parsed where the file lives, so its relative TLS paths resolve.
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cohort.yaml"));
    let Err(e) =
        crate::config::parse(path, bad).and_then(|l| from_loaded(&l, &Metrics::new(), None, 1))
    else {
        panic!("7.005% was accepted")
    };
    let shown = format!(
        "cohort.yaml:{}:{}: {}: {}",
        e.line, e.column, e.field, e.message
    );
    assert_eq!(shown, format!("cohort.yaml:{example}"));
}

#[test]
fn demo_config_loads() {
    let (loaded, t) = load_shipped("demo.yaml");
    assert_eq!(loaded.text, crate::demo::DEMO_YAML);
    let r = t.route("support-agent").unwrap();
    let names: Vec<_> = r.cohorts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["stable", "canary"]);
    assert!(r.override_header.is_some());
    assert!(t.is_trusted("127.0.0.1".parse().unwrap()));
}
