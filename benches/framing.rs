//! The cost the framing tracker adds to every HTTP/1.x request: following a typical agent
//! request head (about 400 bytes) with its Content-Length body, and a chunked upload, as
//! hyper's reads would hand them over.
//!
//!     cargo bench --bench framing -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cohort::edge::framing::Tracker;

const BODY: &str = r#"{"model":"agent-1","input":"hello"}"#;

/// A POST as an agent SDK sends it: about 400 bytes of head.
fn head(framing: &str) -> String {
    format!(
        "POST /v1/agents/run?stream=false HTTP/1.1\r\n\
         Host: agents.example.com\r\n\
         User-Agent: agent-sdk/1.4 python/3.12\r\n\
         Accept: application/json\r\n\
         Content-Type: application/json\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJl\r\n\
         X-User-Id: user-4242\r\n\
         X-Request-Id: 6f1c2a9e-5d3b-4c7a-9e2f-1b8d4a6c3e5f\r\n\
         Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         Accept-Encoding: gzip, br\r\n\
         {framing}\r\n\
         \r\n"
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracker");
    let length = head(&format!("Content-Length: {}", BODY.len())) + BODY;
    let chunked = head("Transfer-Encoding: chunked")
        + &format!("{:x}\r\n{BODY}\r\n", BODY.len()).repeat(4)
        + "0\r\n\r\n";
    for (name, stream) in [("length_body", &length), ("chunked_4", &chunked)] {
        g.throughput(Throughput::Bytes(stream.len() as u64));
        let mut t = Tracker::new(64 * 1024);
        g.bench_function(name, |b| {
            b.iter(|| black_box(t.feed(black_box(stream.as_bytes()))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
