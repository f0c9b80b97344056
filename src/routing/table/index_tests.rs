//! The route index against the linear first-match scan it stands in for: random route sets and
//! requests (proptest), then the orderings that matter, by hand, through whole tables.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::index::RouteIndex;
use super::tests::{accept, MINIMAL};
use super::{HostMatch, RouteMatch, RoutingTable};

const TENANT: HeaderName = HeaderName::from_static("x-tenant");

/// One request: host without port, path, method, `x-tenant` value.
type Request = (String, String, Method, Option<&'static str>);

fn header_map(tenant: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = tenant {
        h.insert(TENANT, HeaderValue::from_static(v));
    }
    h
}

/// One of the space-separated `words`.
fn one_of(words: &'static str) -> impl Strategy<Value = String> {
    prop::sample::select(words.split(' ').collect::<Vec<_>>()).prop_map(String::from)
}

fn host_match() -> impl Strategy<Value = HostMatch> {
    prop_oneof![
        Just(HostMatch::Any),
        one_of("api.example.com example.com eu.api.example.com other.org")
            .prop_map(HostMatch::Exact),
        "[abAB.]{1,6}".prop_map(HostMatch::Exact),
        one_of(".example.com .api.example.com .com .org").prop_map(HostMatch::Suffix),
        "\\.[abAB.]{0,5}".prop_map(HostMatch::Suffix),
        // Not something a config builds (no leading dot), but the type allows it.
        "[ab.]{0,3}".prop_map(HostMatch::Suffix),
    ]
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    let prefix = prop_oneof![
        one_of("/ /v1 /v1/ /v1/chat /v10 /v2 /tenant/1/ /tenant/10/"),
        "/[ab1/]{0,4}",
    ];
    let method = prop::option::of(prop::sample::select(vec![Method::GET, Method::POST]));
    let tenant = prop::option::of(prop::sample::select(&["acme", "other"][..]));
    (host_match(), prefix, method, tenant).prop_map(|(host, path_prefix, method, tenant)| {
        RouteMatch {
            host,
            path_prefix,
            method,
            headers: tenant
                .map(|t| vec![(TENANT, HeaderValue::from_static(t))])
                .unwrap_or_default(),
        }
    })
}

fn request() -> impl Strategy<Value = Request> {
    let long = format!("{}.example.com", "a".repeat(300));
    let host = prop_oneof![
        one_of(
            "api.example.com API.Example.COM example.com eu.api.example.com x.eu.API.example.com"
        ),
        one_of(".example.com example.com. other.org é.example.com agent-7.example.com"),
        Just(String::new()),
        Just(long),
        "[abAB.é]{0,8}",
    ];
    let path = prop_oneof![
        one_of("/ /v1 /v1/chat/x /v10 /v /tenant/10/x /tenant/1"),
        Just(String::new()),
        "[/ab1é]{0,6}",
        "/v1[/a-c0-9]{0,6}",
    ];
    let method = prop::sample::select(vec![Method::GET, Method::POST, Method::PUT]);
    let tenant = prop::option::of(prop::sample::select(&["acme", "other", "ACME"][..]));
    (host, path, method, tenant)
}

proptest! {
    /// For every request, the index picks the route the linear scan picks (or none).
    #[test]
    fn index_agrees_with_the_linear_scan(
        routes in prop::collection::vec(route_match(), 0..40),
        requests in prop::collection::vec(request(), 1..24),
    ) {
        let index = RouteIndex::new(&routes);
        prop_assert_eq!(index.len(), routes.len());
        for (host, path, method, tenant) in &requests {
            let headers = header_map(*tenant);
            let matches = |i: usize| routes[i].matches(host, path, method, &headers);
            let linear = (0..routes.len()).find(|&i| matches(i));
            let got = index.find(host, path, matches);
            prop_assert_eq!(got, linear, "host {:?} path {:?} {} {:?}", host, path, method, tenant);
        }
    }
}

/// A table of `routes`, each a name and its `match:` lines (indented by 6), all to `stable`.
fn table(routes: &[(&str, &str)]) -> RoutingTable {
    let mut text = MINIMAL[..MINIMAL.find("routes:\n").expect("routes") + 8].to_string();
    for (name, matcher) in routes {
        text.push_str(&format!(
            "  - name: {name}\n    match:\n{matcher}    cohort_key:\n      - header: x-user-id\n    \
             split:\n      - cohort: stable\n        upstream: stable\n        percent: 100\n"
        ));
    }
    accept(&text)
}

/// The route `find_route` picks, after checking the linear scan picks the same.
#[track_caller]
fn pick<'t>(t: &'t RoutingTable, host: &str, path: &str, method: Method) -> Option<&'t str> {
    pick_with(t, host, path, method, None)
}

#[track_caller]
fn pick_with<'t>(
    t: &'t RoutingTable,
    host: &str,
    path: &str,
    method: Method,
    tenant: Option<&'static str>,
) -> Option<&'t str> {
    let h = header_map(tenant);
    let got = t
        .find_route(host, path, &method, &h)
        .map(|r| r.name.as_str());
    let linear = t.find_route_linear(host, path, &method, &h);
    assert_eq!(got, linear.map(|r| r.name.as_str()), "{host} {path}");
    got
}

const ALL: &str = "      path_prefix: /\n";
const V1: &str = "      path_prefix: /v1\n";

#[test]
fn an_earlier_route_shadows_a_later_narrower_one() {
    let t = table(&[("all", ALL), ("v1", V1)]);
    assert_eq!(
        pick(&t, "a.example.com", "/v1/chat", Method::GET),
        Some("all")
    );
    let t = table(&[("v1", V1), ("all", ALL)]);
    assert_eq!(
        pick(&t, "a.example.com", "/v1/chat", Method::GET),
        Some("v1")
    );
    assert_eq!(pick(&t, "a.example.com", "/v2", Method::GET), Some("all"));
}

#[test]
fn suffix_and_exact_hosts_take_turns_in_config_order() {
    let wild = "      host: \"*.example.com\"\n";
    let api = "      host: api.example.com\n";
    let t = table(&[("wild", wild), ("api", api)]);
    assert_eq!(pick(&t, "API.Example.com", "/", Method::GET), Some("wild"));
    // A suffix needs a label in front of it.
    assert_eq!(pick(&t, "example.com", "/", Method::GET), None);
    let t = table(&[("api", api), ("wild", wild)]);
    assert_eq!(pick(&t, "API.Example.com", "/", Method::GET), Some("api"));
    assert_eq!(
        pick(&t, "eu.api.example.com", "/", Method::GET),
        Some("wild")
    );
    assert_eq!(pick(&t, "api.example.org", "/", Method::GET), None);
}

#[test]
fn a_prefix_is_a_plain_string_prefix() {
    let t = table(&[("v1", V1)]);
    for (path, want) in [
        ("/v10", true),
        ("/v1", true),
        ("/v1/x", true),
        ("/v", false),
    ] {
        let got = pick(&t, "h", path, Method::GET);
        assert_eq!(got, want.then_some("v1"), "{path}");
    }
    assert_eq!(pick(&t, "h", "/V1", Method::GET), None);
}

#[test]
fn method_and_headers_pass_over_to_later_candidates() {
    let t = table(&[
        ("post", "      method: POST\n      path_prefix: /v1/\n"),
        (
            "tenant",
            "      host: api.example.com\n      headers: {x-tenant: acme}\n",
        ),
        ("rest", ALL),
    ]);
    let (host, get) = ("api.example.com", Method::GET);
    assert_eq!(pick(&t, host, "/v1/chat", Method::POST), Some("post"));
    assert_eq!(
        pick_with(&t, host, "/v1/chat", get.clone(), Some("acme")),
        Some("tenant")
    );
    assert_eq!(
        pick_with(&t, host, "/v1/chat", get.clone(), Some("other")),
        Some("rest")
    );
    assert_eq!(
        pick_with(&t, "eu.example.com", "/", get, Some("acme")),
        Some("rest")
    );
}

#[test]
fn long_and_non_ascii_hosts_are_still_matched() {
    let t = table(&[("wild", "      host: \"*.example.com\"\n")]);
    let long = format!("{}.Example.com", "a".repeat(300));
    assert_eq!(pick(&t, &long, "/", Method::GET), Some("wild"));
    let labels = format!("{}example.com", "a.".repeat(5000));
    assert_eq!(pick(&t, &labels, "/", Method::GET), Some("wild"));
    assert_eq!(pick(&t, "é.EXAMPLE.com", "/", Method::GET), Some("wild"));
    assert_eq!(pick(&t, "é.example.com.", "/", Method::GET), None);
}

#[test]
fn a_thousand_routes_by_host_and_prefix() {
    let matchers: Vec<String> = (0..1000)
        .map(|i| format!("      host: agent-{i}.example.com\n      path_prefix: /tenant/{i}/\n"))
        .collect();
    let names: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
    let routes: Vec<(&str, &str)> = names
        .iter()
        .map(String::as_str)
        .zip(matchers.iter().map(String::as_str))
        .collect();
    let t = table(&routes);
    for i in [0, 1, 10, 100, 998, 999] {
        let host = format!("agent-{i}.example.com");
        let got = pick(&t, &host, &format!("/tenant/{i}/chat"), Method::GET);
        assert_eq!(got, Some(names[i].as_str()));
        assert_eq!(pick(&t, &host, "/tenant/1000/", Method::GET), None);
    }
}
