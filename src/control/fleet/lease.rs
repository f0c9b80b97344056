//! A lease on one key of the [`Engine`]: who may judge (per fleet, or per route), for how
//! long, and the epoch that fences a former holder's writes.
//!
//! Owns: the lease record's shape, the pure decision of what to write given what was read and
//! the time ([`decide`]), and one round of read-decide-write ([`Lease::tick`]). Must not
//! touch: what the holder does with the lease (the judge), the record's own checks of the
//! epoch (the record refuses a write whose epoch is below the one it holds).
//!
//! The record is `{holder, incarnation, expires_at_ms, epoch}`. The holder renews it every
//! heartbeat (`expires_at_ms` = now + lease); any other replica takes it over once
//! `expires_at_ms` has passed, by compare-and-swap on the revision it read, so of several
//! replicas that see it expire exactly one wins. `epoch` grows by one at every change of
//! holder (a restarted process is a new holder: its incarnation differs), never on a renewal.
//!
//! Clocks. `expires_at_ms` is wall time written by the holder and compared by readers with
//! their own wall clocks. The assumption: the replicas' clocks agree to well within the lease
//! (NTP keeps them within milliseconds; the default lease is 10 s). A reader whose clock runs
//! `d` ahead takes over up to `d` early, so for up to `d` two replicas may believe they judge;
//! the CAS makes the old holder's next renewal fail, and the epoch makes its record writes
//! fail, so the overlap can delay a decision but never let two judges both write one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::engine::{Engine, EngineError, Revision};

/// The value of a lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's replica id.
    pub holder: String,
    /// The holder's process: random per process start.
    pub incarnation: u64,
    /// Wall time, in ms since the Unix epoch, after which the lease may be taken over.
    pub expires_at_ms: u64,
    /// The fencing token: +1 on every change of holder.
    pub epoch: u64,
}

/// Who asks for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub replica: String,
    pub incarnation: u64,
}

impl Claimant {
    /// This process, with a fresh random incarnation.
    pub fn new(replica: impl Into<String>) -> Self {
        Claimant {
            replica: replica.into(),
            incarnation: fastrand::u64(..),
        }
    }

    fn holds(&self, record: &LeaseRecord) -> bool {
        record.holder == self.replica && record.incarnation == self.incarnation
    }

    fn record(&self, now_ms: u64, lease: Duration, epoch: u64) -> LeaseRecord {
        LeaseRecord {
            holder: self.replica.clone(),
            incarnation: self.incarnation,
            expires_at_ms: now_ms.saturating_add(lease.as_millis() as u64),
            epoch,
        }
    }
}

/// What the key held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Never written, or deleted.
    Empty,
    Record(LeaseRecord, Revision),
    /// Bytes that are no lease record (another version wrote it, or a person did).
    Unreadable(Revision),
}

/// What to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Write the first record of the key.
    Create(LeaseRecord),
    /// Renew (same epoch) or take over (next epoch), if the key is still at `expected`.
    Update {
        record: LeaseRecord,
        expected: Revision,
    },
    /// Another holder's lease is live: wait.
    Wait(LeaseRecord),
}

/// The decision of one round, from what was read and the reader's clock. Pure.
pub fn decide(me: &Claimant, read: &Read, now_ms: u64, lease: Duration) -> Plan {
    match read {
        Read::Empty => Plan::Create(me.record(now_ms, lease, 1)),
        Read::Record(current, revision) if me.holds(current) => Plan::Update {
            record: me.record(now_ms, lease, current.epoch),
            expected: *revision,
        },
        Read::Record(current, revision) if now_ms >= current.expires_at_ms => Plan::Update {
            record: me.record(now_ms, lease, current.epoch.saturating_add(1)),
            expected: *revision,
        },
        Read::Record(current, _) => Plan::Wait(current.clone()),
        // Each change of holder is a write, so an epoch never exceeds the key's revision:
        // one past the revision is past every epoch the key ever held.
        Read::Unreadable(revision) => Plan::Update {
            record: me.record(now_ms, lease, revision.saturating_add(1)),
            expected: *revision,
        },
    }
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// This process holds the lease until `expires_at_ms`, with this epoch.
    Held { epoch: u64, expires_at_ms: u64 },
    /// Another holds it (or won the race this round).
    HeldBy(LeaseRecord),
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One lease key on an engine, claimed by this process.
pub struct Lease {
    engine: Arc<dyn Engine>,
    key: String,
    me: Claimant,
    duration: Duration,
}

impl Lease {
    pub fn new(
        engine: Arc<dyn Engine>,
        key: impl Into<String>,
        me: Claimant,
        duration: Duration,
    ) -> Self {
        Lease {
            engine,
            key: key.into(),
            me,
            duration,
        }
    }

    pub fn claimant(&self) -> &Claimant {
        &self.me
    }

    async fn read(&self) -> Result<Read, EngineError> {
        Ok(match self.engine.get(&self.key).await? {
            None => Read::Empty,
            Some((bytes, revision)) => match serde_json::from_slice(&bytes) {
                Ok(record) => Read::Record(record, revision),
                Err(e) => {
                    tracing::warn!(key = %self.key, revision, error = %e, "fleet: lease key holds no lease record; taking it over");
                    Read::Unreadable(revision)
                }
            },
        })
    }

    /// Reads the key, then acquires, renews or waits, as [`decide`] says at `now_ms`. Called
    /// every heartbeat. A lost race is no error: the winner is returned. An unreachable
    /// engine is: the caller must stop acting as the holder once its last `expires_at_ms`
    /// has passed, whatever it believes.
    pub async fn tick(&self, now_ms: u64) -> Result<Status, EngineError> {
        let read = self.read().await?;
        let plan = decide(&self.me, &read, now_ms, self.duration);
        let (record, written) = match plan {
            Plan::Wait(current) => return Ok(Status::HeldBy(current)),
            Plan::Create(record) => {
                let bytes = encode(&record)?;
                (record, self.engine.create(&self.key, bytes).await)
            }
            Plan::Update { record, expected } => {
                let bytes = encode(&record)?;
                (record, self.engine.update(&self.key, bytes, expected).await)
            }
        };
        match written {
            Ok(_) => {
                if !matches!(&read, Read::Record(r, _) if self.me.holds(r)) {
                    tracing::info!(key = %self.key, replica = %self.me.replica, epoch = record.epoch, "fleet: lease acquired");
                }
                Ok(Status::Held {
                    epoch: record.epoch,
                    expires_at_ms: record.expires_at_ms,
                })
            }
            // Another wrote first: whoever it was holds the lease now.
            Err(EngineError::Conflict { .. }) => match self.read().await? {
                Read::Record(current, _) if self.me.holds(&current) => Ok(Status::Held {
                    epoch: current.epoch,
                    expires_at_ms: current.expires_at_ms,
                }),
                Read::Record(current, _) => {
                    if matches!(&read, Read::Record(r, _) if self.me.holds(r)) {
                        tracing::warn!(key = %self.key, replica = %self.me.replica, holder = %current.holder, epoch = current.epoch, "fleet: lease lost");
                    }
                    Ok(Status::HeldBy(current))
                }
                _ => Err(EngineError::Conflict {
                    key: self.key.clone(),
                }),
            },
            Err(e) => Err(e),
        }
    }
}

fn encode(record: &LeaseRecord) -> Result<Bytes, EngineError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(EngineError::other)
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
