//! The routing decision allocates nothing: the client's address (through trusted proxies),
//! the cohort key from each kind of source, the hash and the band, counted by an allocator
//! that tallies this thread's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderValue, Uri};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread being torn down has no counter, and is not the one measured.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const MINIMAL: &str = include_str!("../config/minimal.yaml");

/// The minimal config keyed on `source`, with 10.0.0.0/8 as trusted proxies.
fn table(source: &str) -> cohort::routing::table::RoutingTable {
    let text = MINIMAL.replacen("- header: x-user-id", source, 1).replacen(
        "routes:",
        "trusted_proxies: [\"10.0.0.0/8\"]\nroutes:",
        1,
    );
    let loaded = cohort::config::parse(Path::new("minimal.yaml"), text).unwrap();
    cohort::routing::table::from_loaded(&loaded, &cohort::telemetry::Metrics::new(), None, 1)
        .unwrap()
}

#[test]
fn the_routing_decision_allocates_nothing() {
    let mut h = HeaderMap::new();
    h.insert("x-user-id", HeaderValue::from_static("user-3"));
    h.insert(
        "cookie",
        HeaderValue::from_static("_ga=GA1.2.3; session=s-1; theme=dark"),
    );
    h.append(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.9, 10.0.0.5"),
    );
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.6"));
    let uri = Uri::from_static("/v1/chat?user=alice&x=1");
    let peer: IpAddr = "10.0.0.7".parse().unwrap();
    for source in [
        "- header: x-user-id",
        "- cookie: session",
        "- query: user",
        "- client_ip: true",
    ] {
        let table = table(source);
        let route = &table.routes[0];
        let before = allocations();
        let client = table.client_ip(peer, &h);
        let key = cohort::routing::key::extract_key(&route.key_sources, &h, &uri, client);
        let index = route.assign(key.as_deref());
        let counter = &route.cohorts[index].metrics.requests[1];
        let made = allocations() - before;
        std::hint::black_box(counter);
        assert_eq!(made, 0, "{source}: {made} allocations");
        // Through the trusted proxies, to the first address that is not one.
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
    }
}

#[test]
fn checking_a_conversation_pin_allocates_nothing() {
    let secrets: [&[u8]; 2] = [
        b"the-new-pin-secret-0123456789",
        b"the-old-pin-secret-0123456789",
    ];
    let pin = cohort::routing::pin::Pin {
        route: "agent",
        cohort: "canary",
        rollout: "v2",
        issued: 1_000,
        expires: 2_000,
    };
    // Signed with the older secret, so both are tried.
    let value = cohort::routing::pin::mint(secrets[1], &pin);
    let mut h = HeaderMap::new();
    let cookie = format!("theme=dark; cohort_pin={value}");
    h.insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    let before = allocations();
    let found = cohort::routing::key::cookie_value(&h, "cohort_pin").unwrap();
    let checked = cohort::routing::pin::verify(&secrets, found, 1_500);
    let forged = cohort::routing::pin::verify(&secrets[..1], found, 1_500);
    let made = allocations() - before;
    assert_eq!(made, 0, "{made} allocations");
    assert_eq!(checked, Ok(pin));
    assert_eq!(forged, Err(cohort::routing::pin::Rejection::Forged));
}

#[test]
fn a_segment_is_found_and_counted_without_allocating() {
    let text = format!(
        "{MINIMAL}    segment:\n      request_header: x-channel\n      values: [billing, shipping]\n"
    );
    let loaded = cohort::config::parse(Path::new("minimal.yaml"), text).unwrap();
    let registry = cohort::telemetry::Metrics::new();
    let table = cohort::routing::table::from_loaded(&loaded, &registry, None, 1).unwrap();
    let route = &table.routes[0];
    let segment = route.segment.as_ref().unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-channel", HeaderValue::from_static("Shipping"));
    let before = allocations();
    let index = segment.of_request(&h);
    let metrics = &route.cohorts[0].metrics;
    metrics.request_in(Some(index), http::StatusCode::OK);
    metrics.outcome_in(Some(index), cohort::telemetry::OutcomeSlot::Other);
    let duration = metrics.duration_in(Some(index));
    let made = allocations() - before;
    std::hint::black_box(duration);
    assert_eq!(made, 0, "{made} allocations");
    assert_eq!(index, 1);
    let scrape = registry.render();
    let line = "cohort_requests_total{route=\"agent\",cohort=\"stable\",segment=\"shipping\",status_class=\"2xx\"} 1";
    assert!(scrape.lines().any(|l| l == line), "{scrape}");
}
