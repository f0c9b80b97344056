//! Time to parse, validate, build and publish a routing table of 1,000 routes: the cost of one
//! reload, all of it off the request path.
//!
//!     cargo bench --bench table

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};

fn config_with_routes(n: usize) -> String {
    let mut s = String::from(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  stable:\n    endpoints: [\"127.0.0.1:18001\"]\n  canary:\n    endpoints: [\"127.0.0.1:18002\"]\nroutes:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - name: route-{i}\n    match:\n      host: agent-{i}.example.com\n      path_prefix: /v1/tenant-{i}/\n    \
             cohort_key:\n      - header: x-user-id\n    split:\n      - cohort: stable\n        upstream: stable\n        \
             percent: 95\n      - cohort: canary\n        upstream: canary\n        percent: 5\n"
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let text = config_with_routes(1000);
    let metrics = cohort::telemetry::Metrics::new();
    let path = Path::new("bench.yaml");
    let first = cohort::config::parse(path, text.clone()).expect("parses");
    let table = cohort::routing::table::from_loaded(&first, &metrics, None, 1).expect("valid");
    let swap = Arc::new(ArcSwap::from_pointee(table));
    c.bench_function("reload_1000_routes_parse_build_swap", |b| {
        b.iter(|| {
            let loaded = cohort::config::parse(path, text.clone()).expect("parses");
            let old = swap.load_full();
            let new = cohort::routing::table::from_loaded(
                &loaded,
                &metrics,
                Some(&old),
                old.generation + 1,
            )
            .expect("valid");
            swap.store(Arc::new(new));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
