//! The judge: the task that ticks every rollout once a second, and has `reload` swap the table
//! in the same tick when a decision changes a percent.
//!
//! Owns: the cadence. Must not touch: decisions (`machine`, through [`super::Rollouts::tick`])
//! or the swap (`reload::Control::apply_rollouts`). Tests call [`tick`] with their own clock.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Now;
use crate::control::reload::Control;

/// How often the judge looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// One tick at `now`; whether a percent changed (and the table was swapped).
pub fn tick(control: &Control, now: Now) -> bool {
    let changed = control.rollouts().tick(now);
    if changed {
        control.apply_rollouts("judge");
    }
    changed
}

/// Ticks every `every` until `abort`, off the async workers (a tick may write files).
pub async fn run(control: Arc<Control>, every: Duration, abort: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = abort.cancelled() => break,
            _ = interval.tick() => {}
        }
        let c = Arc::clone(&control);
        if tokio::task::spawn_blocking(move || tick(&c, Now::real()))
            .await
            .is_err()
        {
            tracing::error!("a rollout judge tick panicked");
        }
    }
}
