//! Shared harness for the integration tests. Each file owns one concern:
//!
//! | file | owns |
//! |---|---|
//! | `mock/` | mock upstreams on real sockets (what they answer, what they saw) |
//! | `raw.rs` | raw TCP: byte-level exchanges, a byte-level upstream, a dead endpoint |
//! | `config.rs` | config files written from builders, and the common setups |
//! | `proxy.rs` | the proxy started in-process (`TestProxy`) |
//! | `client.rs` | HTTP/1.1 and h2c clients, requests, whole replies |
//! | `scrape.rs` | the `/metrics` scrape, parsed and checked for well-formedness |
//! | `process.rs` | the `cohort` binary run as a separate process |
//! | `tls.rs` | a test CA, certificates, TLS clients |
//! | `sim.rs` | the simulated agent backend of the rollout tests |
//! | `late.rs` | the late-outcome tests' proxy, its admin calls and events |
//! | `nats.rs` | a NATS JetStream cluster on loopback, for the fleet tests |
//! | `fleet/` | several `cohort run` replicas on one NATS cluster: their configs and processes (`replica.rs`), admin reads, client-side sampling and the shared record over time (`observe.rs`) |
//!
//! This file keeps what they all share: the step timeout, header values as text, and the
//! contract's assignment formula. Tests reach everything but `process`, `tls`, `sim`, `nats`, `fleet` and `late`
//! as `support::Name`; those they name by module.
//!
//! Every await that could hang goes through [`within`], so a broken proxy fails a test instead
//! of stalling the suite.

#![allow(dead_code)]

pub mod bodies;
pub mod client;
pub mod config;
pub mod fleet;
pub mod late;
pub mod mock;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod scrape;
pub mod sim;
pub mod tls;

// Each test binary uses a part of the harness: as with dead code, what one leaves unused is
// no fault of the harness.
#[allow(unused_imports)]
pub use {client::*, config::*, mock::*, proxy::*, raw::*, scrape::*};

use std::future::Future;
use std::time::Duration;

use http::HeaderMap;

/// How long any single step may take before the test is declared stuck.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The contract's assignment, derived here from its text rather than from the crate:
/// `bucket = xxh3_64_with_seed(key, xxh3_64(salt)) % 10000`; the first cohort takes
/// `[0, w0)`, each later one stacks down from 10000 in list order. Widths are in buckets.
pub fn contract_cohort<'a>(salt: &str, key: &[u8], split: &[(&'a str, u32)]) -> &'a str {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let bucket = (xxh3_64_with_seed(key, xxh3_64(salt.as_bytes())) % 10_000) as u32;
    let mut top = 10_000;
    for &(name, width) in &split[1..] {
        if bucket < top && bucket >= top - width {
            return name;
        }
        top -= width;
    }
    split[0].0
}

/// Every value of header `name`, in order (as text; the tests only send text).
pub fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}
