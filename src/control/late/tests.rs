//! The percent history as `Late` keeps it: one line appended per change, the file rewritten
//! when the window drops entries, read back the same after a restart.

use std::path::Path;

use super::{file, Late};
use crate::routing::table::{from_loaded, RoutingTable};
use crate::telemetry::Metrics;

/// A table of route `agent` with the canary at `canary`%, and `late` lines under
/// `late_outcomes:`.
fn table(canary: u32, late: &str) -> RoutingTable {
    let text = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nupstreams:\n  u:\n    \
         endpoints: [\"127.0.0.1:1\"]\nroutes:\n  - name: agent\n    split:\n      - cohort: \
         stable\n        upstream: u\n        percent: {}\n      - cohort: canary\n        \
         upstream: u\n        percent: {canary}\nlate_outcomes:\n  window: 1s\n{late}",
        100 - canary
    );
    let loaded = crate::config::parse(Path::new("cohort.yaml"), text).unwrap();
    from_loaded(&loaded, &Metrics::new(), None, 1).unwrap()
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(file::HISTORY_FILE))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn changes_are_appended_and_the_window_prunes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let late = Late::open(Some(dir.path()), &Metrics::new());
    late.record(&table(5, ""), 1_000);
    late.record(&table(5, ""), 2_000);
    assert_eq!(lines(dir.path()), 1, "an unchanged split is not recorded");
    late.record(&table(25, ""), 3_000);
    assert_eq!(lines(dir.path()), 2);
    // 1s later the 5% split is still in force at the window's start; 1s after that it is not.
    late.record(&table(25, ""), 3_900);
    assert_eq!(lines(dir.path()), 2);
    late.record(&table(25, ""), 4_500);
    assert_eq!(lines(dir.path()), 1);

    let (read, bad) = file::read(dir.path()).unwrap();
    assert_eq!(bad, 0);
    let again = Late::open(Some(dir.path()), &Metrics::new());
    assert_eq!(read.entries().len(), 1);
    assert_eq!(read.entries()[0].at_unix_ms, 3_000);
    assert_eq!(read.entries()[0].cohorts[1].weight, 2_500);
    assert_eq!(again.history_json()["entries"][0]["at_unix_ms"], 3_000);
}

#[test]
fn a_torn_line_is_skipped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let late = Late::open(Some(dir.path()), &Metrics::new());
    late.record(&table(5, ""), 1_000);
    let path = dir.path().join(file::HISTORY_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"route\":\"agent\",\"at_un");
    std::fs::write(&path, text).unwrap();
    let (read, bad) = file::read(dir.path()).unwrap();
    assert_eq!((read.entries().len(), bad), (1, 1));
}
