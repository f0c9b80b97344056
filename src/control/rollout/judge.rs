//! The judge: the task that ticks every rollout once a second, and swaps the table through the
//! door in the same tick when a decision changes a percent.
//!
//! Owns: the cadence. Must not touch: decisions (`machine`, through [`Rollouts::tick`]), the
//! swap (`door`, through [`Rollouts::apply`]), or `reload`: the judge reaches the rollouts and
//! the door through [`Judged`], which `reload::Control` implements, so the arrow points from
//! `reload` to here. Tests call [`tick`] with their own clock.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Now, Rollouts};
use crate::control::door::Door;

/// How often the judge looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// What the judge ticks: the live rollouts, and the door their percents reach the request path
/// through (the same one reloads use).
pub trait Judged: Send + Sync + 'static {
    fn rollouts(&self) -> &Rollouts;
    fn door(&self) -> &Door;
}

/// The judge runs on a shared owner.
impl<J: Judged + ?Sized> Judged for Arc<J> {
    fn rollouts(&self) -> &Rollouts {
        J::rollouts(self)
    }

    fn door(&self) -> &Door {
        J::door(self)
    }
}

/// One tick at `now`; whether a percent changed (and the table was swapped).
pub fn tick(on: &impl Judged, now: Now) -> bool {
    let changed = on.rollouts().tick(now);
    if changed {
        on.rollouts().apply(on.door(), "judge");
    }
    changed
}

/// Ticks every `every` until `abort`, off the async workers (a tick may write files); the
/// task ends once a tick in flight has finished.
pub async fn run(on: Arc<impl Judged>, every: Duration, abort: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A tick that is due never wins over the abort: shutdown's final checkpoint
            // follows this task's end.
            biased;
            _ = abort.cancelled() => break,
            _ = interval.tick() => {}
        }
        let on = Arc::clone(&on);
        if tokio::task::spawn_blocking(move || tick(&on, Now::real()))
            .await
            .is_err()
        {
            tracing::error!("a rollout judge tick panicked");
        }
    }
}
