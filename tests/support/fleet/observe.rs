//! The fleet harness's observers: client-side samples ([`Sampler`]), the shared record over
//! time ([`RecordWatch`], [`Timeline`]) and each replica's switch at a change ([`switches`]).

use super::*;

/// One request as the test saw it: which replica, which key, when it was sent and answered
/// (Unix µs), and who answered.
#[derive(Debug, Clone)]
pub struct Sample {
    pub replica: usize,
    pub key: String,
    pub sent_us: u64,
    pub recv_us: u64,
    pub status: u16,
    pub canary: bool,
}

/// Which keys a sampler sends.
#[derive(Clone)]
pub enum Keys {
    /// These, in turn (each worker starting elsewhere in the list).
    Cycle(Arc<Vec<String>>),
    /// A new user each request.
    Fresh,
}

/// Requests sent to each replica by `workers` tasks, each pausing `gap` after each
/// answer, until stopped; every answer recorded as a [`Sample`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Sampler {
    pub fn start(targets: &[Shared], keys: Keys, workers: usize, gap: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for (replica, target) in targets.iter().enumerate() {
            for worker in 0..workers {
                let (stop, samples, target, keys) = (
                    Arc::clone(&stop),
                    Arc::clone(&samples),
                    Arc::clone(target),
                    keys.clone(),
                );
                tasks.spawn(async move {
                    let client = h1_client();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = match &keys {
                            Keys::Cycle(list) => {
                                list[(worker * list.len() / workers + n) % list.len()].clone()
                            }
                            Keys::Fresh => format!("fresh-{replica}-{worker}-{n}"),
                        };
                        let Some(addr) = *target.lock().unwrap() else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let sent_us = now_us();
                        let answer = ask(&client, addr, &key, Duration::from_secs(3)).await;
                        let recv_us = now_us();
                        match answer {
                            Some(a) if !a.upstream.is_empty() => {
                                samples.lock().unwrap().push(Sample {
                                    replica,
                                    key,
                                    sent_us,
                                    recv_us,
                                    status: a.status,
                                    canary: a.upstream == "canary",
                                });
                            }
                            // A replica going down, or a proxy's own error answer.
                            _ => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                    }
                });
            }
        }
        Sampler {
            stop,
            samples,
            tasks,
        }
    }

    /// The samples so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops every worker; all samples.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let mut all = std::mem::take(&mut *self.samples.lock().unwrap());
        all.sort_by_key(|s| s.sent_us);
        all
    }
}

// ---------------------------------------------------------------------------------------
// The shared record over time

/// One version of the route's record, as a replica's `/rollouts` last showed it, and when
/// the test first saw it (Unix ms). The view's `percent` is the share in force when read, so
/// a version read before its `effective_at_ms` shows the share before it until read again.
#[derive(Debug, Clone)]
pub struct Seen {
    pub observed_ms: u64,
    pub record: Value,
    /// The share the view showed when asked a second or more after `effective_at_ms` (the
    /// view is refreshed every heartbeat), if it was.
    pub in_force_bp: Option<u32>,
}

impl Seen {
    pub fn version(&self) -> u64 {
        self.record["version"].as_u64().unwrap_or(0)
    }
    pub fn effective_ms(&self) -> u64 {
        self.record["effective_at_ms"].as_u64().unwrap_or(0)
    }
    /// The share this version puts in force at `effective_at_ms`: as its last decision
    /// says (a claim keeps the decision before it), else as read well after it was in
    /// force, else as shown.
    pub fn bp(&self) -> u32 {
        target_bp(&self.record)
            .or(self.in_force_bp)
            .unwrap_or_else(|| bp(self.record["percent"].as_f64().unwrap_or(0.0)))
    }
    pub fn step(&self) -> u64 {
        self.record["step"].as_u64().unwrap_or(0)
    }
    pub fn phase(&self) -> &str {
        phase(&self.record)
    }
}

/// The share the record's latest decision (in its history) moved to, in basis points.
pub fn target_bp(record: &Value) -> Option<u32> {
    let version = record["version"].as_u64()?;
    record["history"]
        .as_array()?
        .iter()
        .filter(|d| d["version"].as_u64().is_some_and(|v| v <= version))
        .max_by_key(|d| d["version"].as_u64())
        .and_then(|d| d["to"]["percent"].as_f64())
        .map(bp)
}

/// A record's phase (`ramping`, `paused`, `rolled_back`, ...), whether the view calls it
/// `phase` or `state`.
pub fn phase(record: &Value) -> &str {
    record["phase"]
        .as_str()
        .or(record["state"].as_str())
        .unwrap_or("")
}

/// Polls the running replicas' `/rollouts` every 25 ms (the first that answers each time)
/// and keeps every new version of the route's record.
pub struct RecordWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWatch {
    pub fn start(admins: &[Shared]) -> RecordWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (s, v, admins) = (Arc::clone(&stop), Arc::clone(&seen), admins.to_vec());
        let task = tokio::spawn(async move {
            let client = h1_client();
            while !s.load(Ordering::Relaxed) {
                for admin in &admins {
                    let Some(addr) = *admin.lock().unwrap() else {
                        continue;
                    };
                    let asked_ms = now_ms();
                    let Some((200, body)) = admin_get(&client, addr, "/rollouts").await else {
                        continue;
                    };
                    let observed_ms = now_ms();
                    let all: Value = serde_json::from_str(&body).unwrap_or_default();
                    let record = all["fleet"]["routes"][ROUTE]["record"].clone();
                    let Some(version) = record["version"].as_u64() else {
                        continue;
                    };
                    // The view's percent is the one in force when it is read.
                    let in_force = record["effective_at_ms"]
                        .as_u64()
                        .filter(|e| e + 1000 <= asked_ms)
                        .and_then(|_| record["percent"].as_f64())
                        .map(bp);
                    let mut seen = v.lock().unwrap();
                    match seen.last_mut() {
                        Some(l) if l.version() > version => {}
                        Some(l) if l.version() == version => {
                            l.record = record;
                            l.in_force_bp = l.in_force_bp.or(in_force);
                        }
                        _ => seen.push(Seen {
                            observed_ms,
                            record,
                            in_force_bp: in_force,
                        }),
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        RecordWatch { stop, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The latest version seen.
    pub fn latest(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    pub fn timeline(&self) -> Timeline {
        Timeline::of(&self.seen())
    }

    /// Waits up to `limit` until the latest version satisfies `pred`; it then.
    pub async fn until(&self, what: &str, limit: Duration, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.latest().filter(|s| pred(s)) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {limit:?}; the record: {:#?}",
                    self.latest()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

/// What the record said the canary's share was, over time: the percent of the highest
/// version whose `effective_at_ms` has come.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// (version, effective ms, basis points), by version.
    pub versions: Vec<(u64, u64, u32)>,
}

/// One change of the canary's share in a [`Timeline`].
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
}

impl Timeline {
    pub fn of(seen: &[Seen]) -> Timeline {
        let mut versions: Vec<_> = seen
            .iter()
            .map(|s| (s.version(), s.effective_ms(), s.bp()))
            .collect();
        versions.sort();
        versions.dedup_by_key(|v| v.0);
        Timeline { versions }
    }

    /// The share in force at `t_ms` (None before the first version's).
    pub fn at(&self, t_ms: u64) -> Option<u32> {
        self.versions
            .iter()
            .filter(|(_, eff, _)| *eff <= t_ms)
            .max_by_key(|(v, _, _)| *v)
            .map(|(_, _, bp)| *bp)
    }

    /// Every change of the share, in time order.
    pub fn changes(&self) -> Vec<Change> {
        let mut points: Vec<u64> = self.versions.iter().map(|v| v.1).collect();
        points.sort();
        points.dedup();
        let mut out = Vec::new();
        let mut last: Option<u32> = None;
        for t in points {
            let now = self.at(t);
            if let (Some(from), Some(to)) = (last, now) {
                if from != to {
                    out.push(Change { at_ms: t, from, to });
                }
            }
            last = now.or(last);
        }
        out
    }

    /// The shares in force at some moment of `[from_us, to_us]`.
    pub fn during(&self, from_us: u64, to_us: u64) -> Vec<u32> {
        let (a, b) = (from_us / 1000, to_us.div_ceil(1000));
        let mut out: Vec<u32> = self.at(a).into_iter().collect();
        for &(_, eff, _) in &self.versions {
            if eff > a && eff <= b {
                out.extend(self.at(eff));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether `s` is what the record said while it was in flight, give or take `slack`.
    pub fn agrees(&self, s: &Sample, slack: Duration) -> bool {
        let slack = slack.as_micros() as u64;
        self.during(s.sent_us.saturating_sub(slack), s.recv_us + slack)
            .iter()
            .any(|&bp| in_canary(&s.key, bp) == s.canary)
    }
}

/// When one replica switched at one change of the share, bracketed by its answers for the
/// keys that move: the last answer by the old share was sent at `last_old_us`, the first by
/// the new one was received at `first_new_us` (so the switch is between them, when they
/// are in that order). `stray` counts answers that agree with neither side's moment (an
/// old answer after a new one).
#[derive(Debug, Clone)]
pub struct Switch {
    pub replica: usize,
    pub last_old_us: Option<u64>,
    pub first_new_us: Option<u64>,
    pub stray: usize,
    pub samples: usize,
}

impl Switch {
    /// The switch's moment, estimated as the middle of its bracket.
    pub fn estimate_us(&self) -> Option<u64> {
        match (self.last_old_us, self.first_new_us) {
            (Some(a), Some(b)) => Some((a + b) / 2),
            (None, Some(b)) => Some(b),
            (Some(a), None) => Some(a),
            (None, None) => None,
        }
    }
}

/// Each replica's switch at `change`, from the samples of the moving keys sent within
/// `around` of it (and, at most, to the middle of the neighbouring changes).
pub fn switches(
    samples: &[Sample],
    replicas: usize,
    change: Change,
    lo_us: u64,
    hi_us: u64,
) -> Vec<Switch> {
    (0..replicas)
        .map(|r| {
            let mut sw = Switch {
                replica: r,
                last_old_us: None,
                first_new_us: None,
                stray: 0,
                samples: 0,
            };
            let moving = samples.iter().filter(|s| {
                s.replica == r
                    && s.sent_us >= lo_us
                    && s.sent_us < hi_us
                    && in_canary(&s.key, change.from) != in_canary(&s.key, change.to)
            });
            let mut ordered: Vec<&Sample> = moving.collect();
            ordered.sort_by_key(|s| s.sent_us);
            for s in ordered {
                sw.samples += 1;
                let new = in_canary(&s.key, change.to) == s.canary;
                if new {
                    sw.first_new_us = Some(sw.first_new_us.map_or(s.recv_us, |f| f.min(s.recv_us)));
                } else {
                    if sw.first_new_us.is_some_and(|f| f < s.sent_us) {
                        sw.stray += 1;
                    }
                    sw.last_old_us = Some(sw.last_old_us.map_or(s.sent_us, |l| l.max(s.sent_us)));
                }
            }
            sw
        })
        .collect()
}
