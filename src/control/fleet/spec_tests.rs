//! The `fleet` section's rules, each checked for the line, column and field it reports.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::parse;

/// The contract's minimal config, then a fleet section from line 26 on.
const MINIMAL: &str = include_str!("../../../config/minimal.yaml");

fn with_fleet(fleet: &str) -> String {
    format!("{MINIMAL}fleet:\n{fleet}")
}

fn build(text: &str, host: Option<&str>) -> Result<Option<FleetSpec>, ConfigError> {
    let loaded = parse(Path::new("cohort.yaml"), text.to_string())?;
    let raw = loaded.raw.fleet.as_ref().expect("a fleet section");
    let input = FleetInput {
        raw,
        base_dir: Path::new(env!("CARGO_MANIFEST_DIR")),
        host_name: host.map(str::to_string),
    };
    FleetSpec::try_from(input)
        .map(Some)
        .map_err(|e| loaded.error_at(&e.field(), e.to_string()))
}

#[track_caller]
fn accept(fleet: &str) -> FleetSpec {
    match build(&with_fleet(fleet), Some("pod-7.example.internal")) {
        Ok(Some(spec)) => spec,
        Ok(None) => panic!("no spec"),
        Err(e) => panic!("rejected: {e}"),
    }
}

/// Asserts the exact line (1-based, counted in `with_fleet`'s text), column and field.
#[track_caller]
fn reject(fleet: &str, line: usize, column: usize, field: &str, says: &str) {
    let e = match build(&with_fleet(fleet), Some("pod-7")) {
        Ok(_) => panic!("accepted, expected an error at {field}:\n{fleet}"),
        Err(e) => e,
    };
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (line, column, field),
        "wrong place for: {e}"
    );
    assert!(
        e.message.contains(says),
        "{:?} does not say {says:?}",
        e.message
    );
    assert_eq!(e.file, Path::new("cohort.yaml"));
}

/// The fleet section starts on this line of `with_fleet`'s text.
const L: usize = 26;

#[test]
fn a_good_section_with_defaults() {
    assert_eq!(MINIMAL.lines().count(), L - 1);
    let spec = accept("  servers: [\"nats://127.0.0.1:4222\", \"10.0.0.2:4222\"]\n  name: prod\n");
    assert_eq!(spec.servers.len(), 2);
    assert_eq!(spec.name, "prod");
    assert_eq!(spec.bucket(), "cohort_prod");
    assert_eq!(spec.replica, "pod-7", "the host name up to its first dot");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.auth, Auth::None);
    assert!(spec.tls.is_none());
    assert_eq!(
        (spec.lease, spec.heartbeat, spec.stale_after),
        (
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(30)
        )
    );
}

#[test]
fn a_good_section_with_everything_set() {
    let spec = accept(
        "  servers: [\"tls://nats-0:4222\"]\n  user: cohort\n  password: s3cret\n  \
         tls:\n    ca_file: config/tls/example-cert.pem\n  name: prod\n  replica: edge-1\n  \
         replicas: 3\n  lease: 5s\n  heartbeat: 500ms\n  stale_after: 20s\n",
    );
    assert_eq!(spec.replica, "edge-1");
    assert_eq!(spec.replicas, 3);
    assert!(format!("{:?}", spec.auth).contains("cohort"));
    assert!(
        !format!("{:?}", spec.auth).contains("s3cret"),
        "a secret in Debug"
    );
    assert!(spec.tls.is_some());
    assert_eq!(spec.heartbeat, Duration::from_millis(500));
}

#[test]
fn a_stale_after_that_a_leader_failover_outlasts_is_warned_of_on_a_replicated_bucket() {
    let servers = "  servers: [\"nats://n:4222\"]\n  name: prod\n";
    let short = accept(&format!(
        "{servers}  replicas: 3\n  lease: 3s\n  stale_after: 5s\n"
    ));
    let w = short.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("fleet.stale_after (5s) is under 10s"),
        "{w:?}"
    );
    // One copy has no failover to outlast; the default outlasts it.
    let single = accept(&format!("{servers}  lease: 3s\n  stale_after: 5s\n"));
    assert_eq!(single.warnings(), Vec::<String>::new());
    let default = accept(&format!("{servers}  replicas: 3\n"));
    assert_eq!(default.warnings(), Vec::<String>::new());
}

#[test]
fn without_a_section_nothing_is_built() {
    let loaded = parse(Path::new("cohort.yaml"), MINIMAL.to_string()).unwrap();
    assert!(from_loaded(&loaded).unwrap().is_none());
}

#[test]
fn servers_are_required_and_must_be_nats_urls() {
    reject(
        "  name: prod\n",
        L + 1,
        3,
        "fleet",
        "missing field `servers`",
    );
    // A collection is reported at its key.
    reject(
        "  servers: []\n  name: prod\n",
        L + 1,
        3,
        "fleet.servers",
        "at least one",
    );
    reject(
        "  servers: [\"a:4222\", \"http://b:4222\"]\n  name: prod\n",
        L + 1,
        23,
        "fleet.servers[1]",
        "invalid scheme",
    );
    reject(
        "  servers: [\"ws://b:8080\"]\n  name: prod\n",
        L + 1,
        13,
        "fleet.servers[0]",
        "websocket",
    );
}

#[test]
fn names_are_single_subject_tokens() {
    reject(
        "  servers: [a]\n  name: pr.od\n",
        L + 2,
        9,
        "fleet.name",
        "not a valid fleet name",
    );
    reject(
        "  servers: [a]\n  name: \"\"\n",
        L + 2,
        9,
        "fleet.name",
        "1 to 64",
    );
    reject(
        "  servers: [a]\n  name: prod\n  replica: \"edge 1\"\n",
        L + 3,
        12,
        "fleet.replica",
        "not a valid replica name",
    );
    let e = build(&with_fleet("  servers: [a]\n  name: prod\n"), None).unwrap_err();
    assert_eq!(e.field, "fleet.replica");
    assert!(e.message.contains("set `replica`"), "{}", e.message);
}

#[test]
fn one_way_to_authenticate() {
    reject(
        "  servers: [a]\n  name: prod\n  credentials: config/secrets/example-fleet.creds\n  token: t\n",
        L + 4,
        10,
        "fleet.token",
        "`credentials` and `token`",
    );
    reject(
        "  servers: [a]\n  name: prod\n  user: u\n",
        L + 3,
        9,
        "fleet.user",
        "needs `password`",
    );
    reject(
        "  servers: [a]\n  name: prod\n  token: \"\"\n",
        L + 3,
        10,
        "fleet.token",
        "must not be empty",
    );
    reject(
        "  servers: [a]\n  name: prod\n  credentials: no/such.creds\n",
        L + 3,
        16,
        "fleet.credentials",
        "no/such.creds",
    );
    reject(
        "  servers: [a]\n  name: prod\n  credentials: config/minimal.yaml\n",
        L + 3,
        16,
        "fleet.credentials",
        "not a NATS credentials file",
    );
    let spec =
        accept("  servers: [a]\n  name: prod\n  credentials: config/secrets/example-fleet.creds\n");
    assert!(matches!(spec.auth, Auth::Credentials(_)));
}

#[test]
fn tls_files_must_be_usable() {
    reject(
        "  servers: [a]\n  name: prod\n  tls:\n    ca_file: config/minimal.yaml\n",
        L + 4,
        14,
        "fleet.tls.ca_file",
        "minimal.yaml",
    );
    reject(
        "  servers: [a]\n  name: prod\n  tls:\n    client_cert: config/tls/example-cert.pem\n",
        L + 4,
        18,
        "fleet.tls.client_cert",
        "needs `tls.client_key`",
    );
}

#[test]
fn timings_are_in_order() {
    reject(
        "  servers: [a]\n  name: prod\n  heartbeat: 10s\n",
        L + 3,
        14,
        "fleet.heartbeat",
        "heartbeat (10s) must be shorter than lease (10s)",
    );
    reject(
        "  servers: [a]\n  name: prod\n  lease: 30s\n",
        L + 3,
        10,
        "fleet.lease",
        "lease (30s) must be shorter than stale_after (30s)",
    );
    reject(
        "  servers: [a]\n  name: prod\n  heartbeat: 0s\n",
        L + 3,
        14,
        "fleet.heartbeat",
        "shorter than the shortest this field accepts, 100ms",
    );
    reject(
        "  servers: [a]\n  name: prod\n  replicas: 7\n",
        L + 3,
        13,
        "fleet.replicas",
        "from 1 to 5",
    );
    reject(
        "  servers: [a]\n  name: prod\n  leases: 3s\n",
        L + 3,
        3,
        "fleet.leases",
        "unknown field `leases`",
    );
}

#[test]
fn the_reference_config_shows_a_valid_fleet() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cohort.yaml"));
    let loaded = crate::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let spec = from_loaded(&loaded).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.is_some());
    // The ways to authenticate it does not use are shown commented out.
    for alternative in ["user:", "password:", "token:"] {
        assert!(
            loaded
                .text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("# {alternative}"))),
            "config/cohort.yaml does not show `{alternative}`"
        );
    }
}
