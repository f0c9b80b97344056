//! The rules by which a fleet replica's entries follow the shared record: nothing before a
//! record is read, the record's percent at its effective time, new cells at a new step, a
//! local rollback never undone, another id at 0%, and `stale` at 0% with the state kept.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::control::rollout::Now;
use crate::routing::table::{self, RoutingTable};
use crate::samples::Cells;
use crate::telemetry::Metrics;

const CONFIG: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nadmin:\n  address: 127.0.0.1:9901\nupstreams:\n  stable:\n    endpoints: [\"127.0.0.1:18001\"]\n  canary:\n    endpoints: [\"127.0.0.1:18002\"]\nroutes:\n  - name: agent\n    match:\n      path_prefix: /\n    cohort_key:\n      - header: x-user-id\n    split:\n      - cohort: stable\n        upstream: stable\n        percent: 95\n      - cohort: canary\n        upstream: canary\n        percent: 5\n    rollout:\n      id: v1\n      canary: canary\n      steps: [5, 25, 50]\n      soak: 10s\n      min_samples: 10\n      guards:\n        - metric: error_rate\n";

struct Rig {
    rollouts: Rollouts,
    table: RoutingTable,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let text = CONFIG.replace(
        "upstreams:",
        &format!("state_dir: {}\nupstreams:", dir.path().display()),
    );
    let loaded = crate::config::parse(Path::new("cohort.yaml"), text).unwrap();
    let metrics = Metrics::new();
    let mut table = table::from_loaded(&loaded, &metrics, None, 1).unwrap();
    let rollouts = Rollouts::open(Some(dir.path()), metrics)
        .unwrap()
        .in_fleet(0.025);
    rollouts.reconcile(&mut table, Now::real(), "startup");
    Rig {
        rollouts,
        table,
        _dir: dir,
    }
}

impl Rig {
    /// The canary's weight and whether it records into cells, in a table adjusted now.
    fn canary(&mut self) -> (u32, Option<Arc<Cells>>) {
        self.rollouts.adjust(&mut self.table);
        let c = &self.table.routes[0].cohorts[1];
        (c.weight, c.guard.clone())
    }
}

fn shared(step: usize, version: u64, step_version: u64, percent: u32) -> Shared<'static> {
    Shared {
        id: "v1",
        phase: Phase::Ramping,
        step,
        version,
        step_version,
        percent,
        in_force: true,
        step_from_ms: u64::MAX,
    }
}

#[test]
fn nothing_is_served_of_the_canary_before_a_record_is_read() {
    let mut rig = rig();
    assert_eq!(rig.canary().0, 0);
    let l = &rig.rollouts.locals()[0];
    assert_eq!(l.followed, Some(Followed::default()));
}

#[test]
fn the_record_percent_is_served_and_a_new_step_gets_new_cells() {
    let mut rig = rig();
    let out = rig.rollouts.follow("agent", &shared(0, 1, 1, 500));
    assert_eq!(out, Follow::Applied { changed: true });
    let (w, cells) = rig.canary();
    assert_eq!(w, 500);
    let first = cells.expect("a judged canary records into cells");
    // The same step again: nothing changes, the same cells.
    assert_eq!(
        rig.rollouts.follow("agent", &shared(0, 2, 1, 500)),
        Follow::Applied { changed: false }
    );
    assert!(Arc::ptr_eq(&first, &rig.canary().1.unwrap()));
    // A new step: its share and new cells.
    rig.rollouts.follow("agent", &shared(1, 3, 3, 2500));
    let (w, cells) = rig.canary();
    assert_eq!(w, 2500);
    assert!(!Arc::ptr_eq(&first, &cells.unwrap()));
    let l = &rig.rollouts.locals()[0];
    let f = l.followed.as_ref().unwrap();
    assert_eq!((f.version, f.step, f.step_version), (3, 1, 3));
}

#[test]
fn before_its_effective_time_a_change_is_not_applied() {
    let mut rig = rig();
    rig.rollouts.follow("agent", &shared(0, 1, 1, 500));
    let pending = Shared {
        in_force: false,
        percent: 500,
        ..shared(1, 2, 2, 2500)
    };
    rig.rollouts.follow("agent", &pending);
    assert_eq!(rig.canary().0, 500);
    assert_eq!(
        rig.rollouts.locals()[0].followed.as_ref().unwrap().version,
        1
    );
}

#[test]
fn a_replica_that_rolled_back_on_its_own_keeps_it_against_any_record() {
    let mut rig = rig();
    rig.rollouts.follow("agent", &shared(0, 1, 1, 500));
    {
        let mut entries = rig.rollouts.lock();
        let e = entries.get_mut("agent").unwrap();
        rig.rollouts.decide(
            "agent",
            e,
            DecisionKind::Rollback,
            "judge",
            "guard failed".into(),
            Now::real(),
        );
    }
    assert_eq!(
        rig.rollouts.follow("agent", &shared(1, 5, 5, 2500)),
        Follow::KeptRollback
    );
    assert_eq!(rig.canary().0, 0);
    let l = &rig.rollouts.locals()[0];
    assert_eq!(l.own_rollback.as_deref(), Some("guard failed"));
}

#[test]
fn another_id_and_a_lost_fleet_serve_no_canary_and_keep_the_state() {
    let mut rig = rig();
    rig.rollouts.follow("agent", &shared(1, 3, 3, 2500));
    assert!(rig.rollouts.set_stale(true));
    assert!(!rig.rollouts.set_stale(true), "no change the second time");
    assert_eq!(rig.canary().0, 0);
    let l = &rig.rollouts.locals()[0];
    assert_eq!(
        (l.phase, l.followed.as_ref().unwrap().step),
        (Phase::Ramping, 1)
    );
    assert!(rig.rollouts.set_stale(false));
    assert_eq!(rig.canary().0, 2500);
    let other = Shared {
        id: "v2",
        ..shared(0, 4, 4, 500)
    };
    assert_eq!(rig.rollouts.follow("agent", &other), Follow::OtherId);
    assert_eq!(rig.canary().0, 0);
}

#[test]
fn a_replica_judges_at_its_share_of_alpha() {
    let rig = rig();
    let spec = Arc::clone(&rig.rollouts.locals()[0].spec);
    assert_eq!(judging(&spec, None).alpha, spec.alpha);
    assert_eq!(judging(&spec, Some(0.025)).alpha, spec.alpha * 0.025);
}

#[test]
fn a_replica_judges_locally_only_in_a_step_it_saw_begin() {
    let mut rig = rig();
    let judges = |rig: &Rig| rig.rollouts.locals()[0].followed.clone().unwrap().judges;
    // A step in force before this process opened: judged by the others and the pool only.
    let before = Shared {
        step_from_ms: 1,
        ..shared(1, 3, 3, 2500)
    };
    rig.rollouts.follow("agent", &before);
    assert!(!judges(&rig));
    assert!(!Rollouts::judges_locally(
        rig.rollouts.lock().get("agent").unwrap()
    ));
    // The next step it saw begin.
    let next = Shared {
        step_from_ms: 2,
        ..shared(2, 5, 5, 5000)
    };
    rig.rollouts.follow("agent", &next);
    assert!(judges(&rig));
    // A step that began after it opened, seen first: its own too.
    let fresh = self::rig();
    fresh.rollouts.follow("agent", &shared(0, 1, 1, 500));
    assert!(judges(&fresh));
    let _ = rig.canary();
}

#[test]
fn a_replicas_own_sample_ratio_mismatch_never_hides_a_failed_guard() {
    use crate::samples::Answer;
    let rig = rig();
    rig.rollouts.follow("agent", &shared(0, 1, 1, 500));
    let mut now = Now::real();
    // Each tick, half the units in a 5% canary (a mismatch), and every canary answer an
    // error; the guard bets from its second block on.
    for _ in 0..5 {
        {
            let entries = rig.rollouts.lock();
            let (canary, baseline) = &entries.get("agent").unwrap().cells;
            for _ in 0..100 {
                canary.count_unit();
                baseline.count_unit();
                canary.record(&Answer {
                    status: 500,
                    ..Answer::default()
                });
                baseline.record(&Answer {
                    status: 200,
                    ..Answer::default()
                });
            }
        }
        now = now.later(std::time::Duration::from_secs(1));
        rig.rollouts.tick(now);
    }
    let report = rig.rollouts.report();
    let r = &report["rollouts"][0];
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let reason = r["history"][1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("guard failed: error_rate"), "{reason}");
}
