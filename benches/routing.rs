//! The routing decision on the request path: cohort key extraction, the contract's hash, the
//! band lookup, and fetching the chosen cohort's metric handle, on the table built from the
//! contract's minimal config (stable 95, canary 5).
//!
//!     cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3
//!
//! Keys cycle through 1,024 prebuilt requests with distinct user ids, so the band lookup sees
//! both cohorts as it would in traffic; building the requests is outside the timed loop.
//!
//! The `find_route` group times route matching with 1 route and with 1,000 (each its own host
//! `agent-NNN.example.com` and prefix `/tenant/NNN/`), the request taking the last route, and,
//! for comparison, the linear first-match scan that the route index replaced.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{ACCEPT, CONTENT_TYPE, COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Uri};

use cohort::routing::bands::bucket;
use cohort::routing::key::extract_key;
use cohort::routing::table::{Route, RoutingTable};

const MINIMAL: &str = include_str!("../config/minimal.yaml");
const REQUESTS: usize = 1024;

fn table(text: &str) -> RoutingTable {
    let loaded =
        cohort::config::parse(Path::new("minimal.yaml"), text.to_string()).expect("parses");
    cohort::routing::table::from_loaded(&loaded, &cohort::telemetry::Metrics::new(), None, 1)
        .expect("valid")
}

/// Headers as an agent client sends them, plus `extra` carrying the key.
fn headers(extra: (&http::HeaderName, String)) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        USER_AGENT,
        HeaderValue::from_static("agent-sdk/1.4 python/3.12"),
    );
    h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("0f8b2c1e-4c1d-4d59-9a57-2f1c0c6a9e21"),
    );
    h.insert(extra.0, HeaderValue::from_str(&extra.1).expect("ascii"));
    h
}

/// One routing decision: the key, its cohort, and that cohort's 2xx counter handle.
#[inline]
fn decide<'t>(route: &'t Route, h: &HeaderMap, uri: &Uri, client: IpAddr) -> &'t metrics::Counter {
    let key = extract_key(&route.key_sources, h, uri, client);
    let index = route.assign(key.as_deref());
    &route.cohorts[index].metrics.requests[1]
}

fn bench(c: &mut Criterion) {
    let by_header = table(MINIMAL);
    let by_cookie = table(&MINIMAL.replacen("- header: x-user-id", "- cookie: session", 1));
    let uri: Uri = "/v1/chat".parse().expect("uri");
    let client: IpAddr = "10.1.2.3".parse().expect("ip");
    let user_header = http::HeaderName::from_static("x-user-id");
    let header_requests: Vec<HeaderMap> = (0..REQUESTS)
        .map(|i| headers((&user_header, format!("user-{i}"))))
        .collect();
    let cookie_requests: Vec<HeaderMap> = (0..REQUESTS)
        .map(|i| {
            headers((
                &COOKIE,
                format!("_ga=GA1.2.1234567890.1700000000; session=s-{i}-4f1c9a; theme=dark"),
            ))
        })
        .collect();
    let keys: Vec<String> = (0..REQUESTS).map(|i| format!("user-{i}")).collect();

    // What is timed is the real decision: the contract puts user-3 in canary, user-1 in stable.
    let route = &by_header.routes[0];
    for (i, cohort) in [(1, "stable"), (3, "canary")] {
        let key = extract_key(&route.key_sources, &header_requests[i], &uri, client);
        assert_eq!(route.cohorts[route.assign(key.as_deref())].name, cohort);
    }

    let mut group = c.benchmark_group("routing");
    for (name, table, requests) in [
        ("header_key_hash_band_metric", &by_header, &header_requests),
        ("cookie_key_hash_band_metric", &by_cookie, &cookie_requests),
    ] {
        let route = &table.routes[0];
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % REQUESTS;
                black_box(decide(route, black_box(&requests[i]), &uri, client));
            })
        });
    }
    // A `client_ip` key, the address resolved through a trusted proxy's X-Forwarded-For.
    let by_ip = table(
        &MINIMAL
            .replacen("- header: x-user-id", "- client_ip: true", 1)
            .replacen("routes:", "trusted_proxies: [\"10.0.0.0/8\"]\nroutes:", 1),
    );
    let forwarded: Vec<HeaderMap> = (0..REQUESTS)
        .map(|i| {
            let xff = format!("198.51.{}.{}, 10.0.0.7", i / 256, i % 256);
            headers((&http::HeaderName::from_static("x-forwarded-for"), xff))
        })
        .collect();
    let route = &by_ip.routes[0];
    let mut i = 0;
    group.bench_function("client_ip_trusted_proxy_key_hash_band_metric", |b| {
        b.iter(|| {
            i = (i + 1) % REQUESTS;
            let h = black_box(&forwarded[i]);
            let ip = by_ip.client_ip(black_box(client), h);
            black_box(decide(route, h, &uri, ip));
        })
    });
    // The hash and band lookup alone, for comparison.
    let route = &by_header.routes[0];
    let mut i = 0;
    group.bench_function("hash_band_only", |b| {
        b.iter(|| {
            i = (i + 1) % REQUESTS;
            let key = black_box(keys[i].as_bytes());
            black_box(route.bands.lookup(bucket(key, route.seed)))
        })
    });
    group.finish();
}

/// The minimal config with `n` routes, route `rN` for host `agent-NNN.example.com` and paths
/// under `/tenant/NNN/`, all to `stable`.
fn with_routes(n: usize) -> String {
    let mut text = MINIMAL[..MINIMAL.find("routes:\n").expect("routes") + 8].to_string();
    for i in 0..n {
        let matcher = format!("{{host: agent-{i:03}.example.com, path_prefix: /tenant/{i:03}/}}");
        let split = "[{cohort: stable, upstream: stable, percent: 100}]";
        text.push_str(&format!(
            "  - {{name: r{i}, match: {matcher}, cohort_key: [{{header: x-user-id}}], split: {split}}}\n"
        ));
    }
    text
}

fn find_route(c: &mut Criterion) {
    let h = headers((&http::HeaderName::from_static("x-user-id"), "alice".into()));
    let mut group = c.benchmark_group("find_route");
    for n in [1, 1000] {
        let table = table(&with_routes(n));
        let host = format!("agent-{:03}.example.com", n - 1);
        let path = format!("/tenant/{:03}/chat/stream", n - 1);
        let last = format!("r{}", n - 1);
        let found = table.find_route(&host, &path, &Method::POST, &h);
        assert_eq!(found.map(|r| r.name.as_str()), Some(last.as_str()));
        group.bench_function(format!("{n}_routes"), |b| {
            b.iter(|| {
                black_box(table.find_route(black_box(&host), black_box(&path), &Method::POST, &h))
            })
        });
        group.bench_function(format!("{n}_routes_linear_scan"), |b| {
            b.iter(|| {
                let (host, path) = (black_box(host.as_str()), black_box(path.as_str()));
                black_box(
                    table
                        .routes
                        .iter()
                        .find(|r| r.matcher.matches(host, path, &Method::POST, &h)),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, find_route);
criterion_main!(benches);
