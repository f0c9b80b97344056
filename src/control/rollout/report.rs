//! What the admin endpoints show of the rollouts: `GET /rollouts` in full, and a summary per
//! route for `GET /routes`.
//!
//! Owns: the JSON shapes. Must not touch: state (it only reads under the rollouts' lock).

use serde_json::{json, Value};

use super::Rollouts;
use crate::routing::table::rollout::After;

fn pct(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

impl Rollouts {
    /// Every live rollout: state, step, soak, samples, each guard's reading (values,
    /// statistic and threshold) and the decision history.
    pub fn report(&self) -> Value {
        let entries = self.lock();
        let rollouts: Vec<Value> = entries
            .iter()
            .map(|(route, e)| {
                let s = &e.spec;
                let p = &e.progress;
                json!({
                    "route": route,
                    "id": s.id,
                    "canary": s.canary,
                    "baseline": s.baseline,
                    "state": p.phase,
                    "step": p.step,
                    "steps": s.steps.iter().map(|w| pct(*w)).collect::<Vec<_>>(),
                    "percent": pct(super::follow::serving(e)),
                    "after": match s.after { After::Hold => "hold", After::Promote => "promote" },
                    "soak_seconds": s.soak.as_secs_f64(),
                    "soaked_seconds": p.soaked.as_secs_f64(),
                    "min_samples": s.min_samples,
                    "samples": {"canary": p.canary.requests, "baseline": p.baseline.requests},
                    "alpha": s.alpha,
                    "alpha_per_test": s.alpha_per_test(),
                    "test": "e-process per guard and step (exact two-proportion e-values; Ville's inequality); a guard's statistic is ln of its e-value, its threshold ln(1 / alpha_per_test)",
                    "guards": e.readings,
                    "srm_alpha": s.srm_alpha,
                    "srm": e.progress.srm(&super::follow::judging(s, self.fleet)),
                    "segments": s.segments,
                    "note": e.note,
                    "problem": e.problem,
                    "history": e.history,
                })
            })
            .collect();
        json!({
            "state_dir": self.state_dir().map(|d| d.display().to_string()),
            "rollouts": rollouts,
        })
    }

    /// `route`'s rollout in brief, for `/routes`.
    pub fn summary(&self, route: &str) -> Option<Value> {
        let entries = self.lock();
        let e = entries.get(route)?;
        Some(json!({
            "id": e.spec.id,
            "canary": e.spec.canary,
            "state": e.progress.phase,
            "step": e.progress.step,
            "percent": pct(super::follow::serving(e)),
        }))
    }
}
