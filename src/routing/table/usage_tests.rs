//! The usage and price settings and the token guards' rules, checked for the exact line,
//! column and field path they report (edits of the contract's `minimal.yaml`, as `tests.rs`).

use super::tests::{accept, insert_after, reject, MINIMAL};
use super::{Price, UsageSource};

const PRICED: &str = "    price:\n      input_per_million: 2.5\n      output_per_million: 10\n";

/// `MINIMAL` with `extra` at the end of its route, then a rollout with one guard `metric`.
fn guarded(text: &str, extra: &str, metric: &str) -> String {
    format!(
        "{text}{extra}    rollout:\n      id: v2\n      canary: canary\n      guards:\n        - metric: {metric}\nstate_dir: state\n"
    )
}

#[test]
fn a_route_reads_every_dialect_and_prices_nothing_by_default() {
    let t = accept(MINIMAL);
    for c in &t.routes[0].cohorts {
        assert_eq!((c.usage, c.price), (UsageSource::Auto, None));
    }
    let t = accept(&format!("{MINIMAL}    usage: openai\n"));
    assert_eq!(t.routes[0].cohorts[1].usage, UsageSource::OpenAi);
    reject(
        &format!("{MINIMAL}    usage: everything\n"),
        26,
        12,
        "routes[0].usage",
        &["unknown variant `everything`", "`anthropic`"],
    );
}

#[test]
fn a_price_is_per_million_tokens_and_cached_input_defaults_to_the_input_price() {
    let t = accept(&insert_after(
        "    endpoints: [\"127.0.0.1:18001\"]",
        PRICED,
    ));
    let stable = t.routes[0].cohorts[0].price;
    let p = Price {
        input: 2.5,
        output: 10.0,
        cached_input: 2.5,
    };
    assert_eq!(stable, Some(p));
    assert_eq!(t.routes[0].cohorts[1].price, None);
    // 600 uncached and 400 cached input at 2.5, 200 output at 10, in millionths.
    assert_eq!(p.micros(1000, 200, 400), 4500.0);
    let cheap = Price {
        cached_input: 0.25,
        ..p
    };
    assert_eq!(cheap.micros(1000, 200, 400), 1500.0 + 100.0 + 2000.0);
    // Cached input past the input is the input, not a negative count.
    assert_eq!(p.micros(10, 0, 99), 25.0);
}

#[test]
fn a_price_that_is_negative_unbounded_or_misspelt_is_refused_where_it_is() {
    let at = |lines: &str| insert_after("    endpoints: [\"127.0.0.1:18001\"]", lines);
    reject(
        &at("    price:\n      input_per_million: 1\n      output_per_million: -2\n"),
        13,
        27,
        "upstreams.stable.price.output_per_million",
        &["-2 is not a price per million tokens"],
    );
    reject(
        &at("    price:\n      input_per_million: 1e9\n      output_per_million: 2\n"),
        12,
        26,
        "upstreams.stable.price.input_per_million",
        &["from 0 to 1000000"],
    );
    reject(
        &at("    price:\n      input_per_million: 1\n      output: 2\n"),
        13,
        7,
        "upstreams.stable.price.output",
        &["unknown field `output`", "`output_per_million`"],
    );
}

#[test]
fn token_guards_are_named_by_their_quantile_and_a_cost_guard_needs_both_prices() {
    let priced = insert_after("    endpoints: [\"127.0.0.1:18002\"]", PRICED);
    let both = insert_after("    endpoints: [\"127.0.0.1:18001\"]", PRICED).replacen(
        "    endpoints: [\"127.0.0.1:18002\"]\n",
        &format!("    endpoints: [\"127.0.0.1:18002\"]\n{PRICED}"),
        1,
    );
    let t = accept(&guarded(&both, "", "cost"));
    let spec = t.routes[0].rollout.as_ref().unwrap();
    assert_eq!(spec.guards[0].name, "cost p50");
    for (metric, name) in [
        ("ttft", "ttft p50"),
        ("inter_token", "inter_token p50"),
        ("output_tokens", "output_tokens p50"),
    ] {
        let t = accept(&guarded(MINIMAL, "", metric));
        assert_eq!(t.routes[0].rollout.as_ref().unwrap().guards[0].name, name);
    }
    // Only the canary's upstream priced: the baseline's is named.
    reject(
        &guarded(&priced, "", "cost"),
        33,
        19,
        "routes[0].rollout.guards[0].metric",
        &["price on upstream \"stable\"", "upstreams.stable.price"],
    );
    // Usage off: nothing for a token guard to read.
    reject(
        &guarded(MINIMAL, "    usage: off\n", "output_tokens"),
        31,
        19,
        "routes[0].rollout.guards[0].metric",
        &["output_tokens p50 guard needs the route's usage"],
    );
    // Timing a stream needs no usage.
    accept(&guarded(MINIMAL, "    usage: off\n", "ttft"));
}
