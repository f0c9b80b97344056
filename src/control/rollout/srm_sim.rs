//! Monte-Carlo checks of the sample ratio check, driven through [`Progress`] as the judge
//! drives it: realistic keyed traffic (many users, each with a heavy-tailed number of
//! requests) over several steps, counted as units through the real slots
//! (`samples::Seen`), halts a sound split at most `srm_alpha` of the time; the same traffic
//! counted by request would not; a split that loses half the canary's keys halts.
//!
//! Owns: the simulated population. Test-only.

use std::time::Duration;

use fastrand::Rng;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::machine::{DecisionKind, Phase, Progress};
use super::simulate::spec_of;
use crate::routing::table::rollout::RolloutSpec;
use crate::samples::{unit_hash, Seen, Tally};

/// Users of the route, and what each does.
struct Population {
    /// Cumulative request weights: user `i` sends a share `w_i / Σw` of the requests, `w`
    /// Pareto with shape 1.1 (a finite mean and a heavy tail: the busiest of 20 000 users
    /// sends a few percent of all requests).
    cumulative: Vec<f64>,
    /// Each user's slot hash (independent of the route's salt).
    units: Vec<u64>,
    keys: Vec<Vec<u8>>,
}

impl Population {
    fn new(users: usize, rng: &mut Rng) -> Self {
        let mut total = 0.0;
        let cumulative = (0..users)
            .map(|_| {
                total += rng.f64().max(1e-9).powf(-1.0 / 1.1);
                total
            })
            .collect();
        let keys: Vec<Vec<u8>> = (0..users)
            .map(|i| format!("user-{i}").into_bytes())
            .collect();
        Population {
            cumulative,
            units: keys.iter().map(|k| unit_hash(k)).collect(),
            keys,
        }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.f64() * total;
        self.cumulative
            .partition_point(|c| *c <= x)
            .min(self.keys.len() - 1)
    }
}

/// What the simulated client does with a canary user's key.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    Sound,
    /// Drops the key of every other canary user (by bucket parity): those requests go
    /// keyless to the fallback, and count nowhere.
    DropsHalfTheCanary,
}

/// What the check counts.
#[derive(Clone, Copy, PartialEq)]
enum Counting {
    Units,
    Requests,
}

/// One rollout over `spec`'s steps at `per_tick` requests a tick; the step it halted at.
fn halts(
    spec: &RolloutSpec,
    people: &Population,
    per_tick: u64,
    (client, counting): (Client, Counting),
    rng: &mut Rng,
) -> Option<usize> {
    // A new salt each rollout: which users are the canary's is drawn anew.
    let seed = rng.u64(..);
    let buckets: Vec<u32> = people
        .keys
        .iter()
        .map(|k| (xxh3_64_with_seed(k, seed) % 10_000) as u32)
        .collect();
    let seen = Seen::default();
    let mut p = Progress::start();
    for epoch in 1u16.. {
        let percent = p.percent(spec);
        let mut ticks = 0;
        while p.phase == Phase::Ramping && p.step + 1 == usize::from(epoch) {
            ticks += 1;
            assert!(ticks < 10_000, "a step never ended");
            let (mut c, mut b) = (Tally::default(), Tally::default());
            for _ in 0..per_tick {
                let i = people.pick(rng);
                let canary = buckets[i] >= 10_000 - percent;
                if canary && client == Client::DropsHalfTheCanary && buckets[i].is_multiple_of(2) {
                    continue;
                }
                let t = if canary { &mut c } else { &mut b };
                t.requests += 1;
                t.units += match counting {
                    Counting::Units => u64::from(seen.first(people.units[i], epoch)),
                    Counting::Requests => 1,
                };
            }
            p.observe(spec, Duration::from_secs(1), &c, &b);
            match p.verdict(spec, &[]) {
                Some((DecisionKind::Halt, _)) => return Some(p.step),
                Some((kind, _)) => {
                    p.apply(kind);
                }
                None => {}
            }
        }
        if p.phase != Phase::Ramping {
            return None;
        }
    }
    unreachable!()
}

/// Steps 5, 25 and 50%, 20 s soaks, no guard (the check alone), at `srm_alpha`.
fn sim_spec(srm_alpha: f64) -> RolloutSpec {
    RolloutSpec {
        srm_alpha,
        ..spec_of(&[5.0, 25.0, 50.0], 20, 100, 0.05, vec![])
    }
}

/// The steps `sims` rollouts halted at (None for those that did not).
fn halted(sims: u64, mode: (Client, Counting), srm_alpha: f64, seed: u64) -> Vec<Option<usize>> {
    let mut rng = Rng::with_seed(seed);
    let people = Population::new(20_000, &mut rng);
    let spec = sim_spec(srm_alpha);
    (0..sims)
        .map(|_| halts(&spec, &people, 300, mode, &mut rng))
        .collect()
}

fn count(sims: u64, mode: (Client, Counting), srm_alpha: f64, seed: u64) -> u64 {
    halted(sims, mode, srm_alpha, seed)
        .iter()
        .filter(|h| h.is_some())
        .count() as u64
}

#[test]
fn a_sound_split_counted_by_units_halts_at_most_alpha_of_the_time_and_by_requests_often() {
    // At alpha 0.05 over three steps, so that a rate above alpha shows in 300 rollouts: a
    // true rate of 0.05 gives 15 halts on average, and one of 0.1 more than 15 with
    // probability 0.999.
    let (sims, alpha) = (300, 0.05);
    let by_units = count(sims, (Client::Sound, Counting::Units), alpha, 7);
    println!("sound split, units: {by_units} of {sims} rollouts halted at srm_alpha {alpha}");
    assert!(
        by_units as f64 <= alpha * sims as f64,
        "{by_units} of {sims}"
    );
    // The same traffic counted by request: heavy users make the canary's share swing far
    // more than a binomial's, and the check halts sound rollouts.
    let by_requests = count(60, (Client::Sound, Counting::Requests), alpha, 7);
    println!("sound split, requests: {by_requests} of 60 rollouts halted at srm_alpha {alpha}");
    assert!(by_requests >= 15, "{by_requests} of 60");
}

#[test]
fn a_client_that_drops_half_the_canarys_keys_is_halted_mostly_at_its_first_step() {
    // At 5% and 6 000 requests a step, the first step sees a few hundred canary units.
    let steps = halted(20, (Client::DropsHalfTheCanary, Counting::Units), 0.001, 9);
    println!("half the canary's keys dropped: halted at steps {steps:?}");
    assert!(steps.iter().all(|s| s.is_some()), "{steps:?}");
    assert!(
        steps.iter().filter(|s| **s == Some(0)).count() >= 15,
        "{steps:?}"
    );
}
