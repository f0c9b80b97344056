//! What rollouts keep on disk, in `state_dir`: one state file per route
//! (`rollout-<route>.json`, written whole and atomically: a temporary file, fsync, rename, fsync
//! of the directory) and the audit log (`audit.jsonl`, one JSON line appended per decision).
//!
//! Owns: the file formats and their checks. A state file carries a checksum of its contents;
//! one that does not parse, does not match its checksum or does not make sense is reported
//! as corrupt and never trusted. Also a read-only look at a directory ([`Store::inspect`]) for
//! `cohort check`, which must not create or write anything. Must not touch: decisions
//! (`machine`), the table.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cells::{Tally, BINS, OUTCOME_SLOTS};
use super::guard::Reading;
use super::machine::{DecisionKind, Phase, Progress};

const VERSION: u32 = 1;
pub const AUDIT_FILE: &str = "audit.jsonl";

/// Where a rollout stood, in a decision record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub state: Phase,
    /// Index into the steps (0 is the first).
    pub step: usize,
    /// The canary's share.
    pub percent: f64,
}

/// One decision with the numbers behind it: a line of the audit log, an entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339, UTC.
    pub at: String,
    pub at_unix_ms: u64,
    pub route: String,
    pub id: String,
    pub decision: DecisionKind,
    /// `judge`, `admin`, `startup` or `reload`.
    pub trigger: String,
    /// Absent for a rollout's first decision.
    pub from: Option<Position>,
    pub to: Position,
    pub reason: String,
    pub soaked_seconds: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    pub guards: Vec<Reading>,
}

/// A rollout's state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub version: u32,
    pub route: String,
    pub id: String,
    pub state: Phase,
    pub step: usize,
    pub soaked_ms: u64,
    pub canary: SavedTally,
    pub baseline: SavedTally,
    pub wealth: BTreeMap<String, f64>,
    /// Why the rollout is halted, when it is.
    pub note: Option<String>,
    pub history: Vec<Decision>,
    /// The steps (basis points) `step` indexes, so a restart can refuse an edit of them as a
    /// reload does (see `spec::steps_edit`); empty in a file written before they were kept.
    #[serde(default)]
    pub steps: Vec<u32>,
}

/// A [`Tally`] with its histograms and outcome counters kept sparse: `[index, count]` pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTally {
    pub requests: u64,
    pub errors: u64,
    pub with_outcome: u64,
    pub outcomes: Vec<(usize, u64)>,
    pub latency: Vec<(usize, u64)>,
    pub ttfb: Vec<(usize, u64)>,
}

fn sparse(v: &[u64]) -> Vec<(usize, u64)> {
    v.iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (i, *c))
        .collect()
}

fn dense(pairs: &[(usize, u64)], len: usize, what: &str) -> Result<Vec<u64>, String> {
    let mut v = vec![0; len];
    for &(i, c) in pairs {
        *v.get_mut(i)
            .ok_or_else(|| format!("{what} index {i} out of range"))? = c;
    }
    Ok(v)
}

impl From<&Tally> for SavedTally {
    fn from(t: &Tally) -> Self {
        SavedTally {
            requests: t.requests,
            errors: t.errors,
            with_outcome: t.with_outcome,
            outcomes: sparse(&t.outcomes),
            latency: sparse(&t.latency),
            ttfb: sparse(&t.ttfb),
        }
    }
}

/// The longest soak a state file may claim: the longest duration a config may give (durations
/// are capped at ten years where they are read), so anything past it was not written by cohort.
const MAX_SOAKED_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// The most decisions a state file may hold: the history cohort keeps, with room to spare.
const MAX_HISTORY: usize = 1000;

impl SavedTally {
    /// The counts, refused when recording cannot have produced them ([`Tally::impossible`]).
    fn restore(&self, cohort: &str) -> Result<Tally, String> {
        let t = self.dense()?;
        match t.impossible() {
            Some(why) => Err(format!("{cohort}: {why}")),
            None => Ok(t),
        }
    }

    fn dense(&self) -> Result<Tally, String> {
        Ok(Tally {
            requests: self.requests,
            errors: self.errors,
            with_outcome: self.with_outcome,
            outcomes: dense(&self.outcomes, OUTCOME_SLOTS, "outcome")?,
            latency: dense(&self.latency, BINS, "latency bin")?,
            ttfb: dense(&self.ttfb, BINS, "ttfb bin")?,
        })
    }
}

impl Saved {
    pub fn new(
        route: &str,
        id: &str,
        p: &Progress,
        note: Option<String>,
        history: Vec<Decision>,
        steps: &[u32],
    ) -> Self {
        Saved {
            version: VERSION,
            route: route.to_string(),
            id: id.to_string(),
            state: p.phase,
            step: p.step,
            soaked_ms: u64::try_from(p.soaked.as_millis()).unwrap_or(u64::MAX),
            canary: (&p.canary).into(),
            baseline: (&p.baseline).into(),
            // A wealth that is not a number would not survive JSON; it restarts at 1.
            wealth: p
                .wealth
                .iter()
                .map(|(k, w)| (k.clone(), if w.is_finite() { *w } else { 0.0 }))
                .collect(),
            note,
            history,
            steps: steps.to_vec(),
        }
    }

    /// The progress this file describes, or why it makes no sense. A file whose checksum
    /// matches can still hold counts that recording cannot produce (hand-edited and re-summed,
    /// or written by a bug): it is refused like a damaged one, never half-trusted.
    pub fn progress(&self) -> Result<Progress, String> {
        if self.wealth.values().any(|w| !w.is_finite()) {
            return Err("a guard's wealth is not a number".into());
        }
        if self.soaked_ms > MAX_SOAKED_MS {
            return Err(format!(
                "soaked for {}, longer than any soak cohort can be given",
                humantime::format_duration(Duration::from_millis(self.soaked_ms))
            ));
        }
        if self.history.len() > MAX_HISTORY {
            return Err(format!("{} decisions in its history", self.history.len()));
        }
        Ok(Progress {
            phase: self.state,
            step: self.step,
            soaked: Duration::from_millis(self.soaked_ms),
            canary: self.canary.restore("canary")?,
            baseline: self.baseline.restore("baseline")?,
            wealth: self.wealth.clone(),
            recent: Default::default(),
        })
    }

    /// [`Saved::progress`], also checked against the rollout it is resumed for: its step must
    /// be one of the steps the file says it indexes, or, in a file written before they were
    /// kept, one of the rollout's `steps`. (A file whose own steps differ from the rollout's
    /// is an edit, which `edit` refuses before anything is resumed.)
    pub fn progress_for(&self, steps: usize) -> Result<Progress, String> {
        let p = self.progress()?;
        let steps = if self.steps.is_empty() {
            steps
        } else {
            self.steps.len()
        };
        if p.step >= steps {
            return Err(format!(
                "at step {} of a rollout with {steps} steps",
                p.step + 1
            ));
        }
        Ok(p)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt rollout state ({reason}); not trusted", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: not writable: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file's text: `{"checksum":"<xxh3 of the state's JSON, 16 hex digits>","state":{...}}`.
fn encode(saved: &Saved) -> String {
    // Serialising plain data with string keys cannot fail.
    let body = serde_json::to_string(saved).unwrap_or_default();
    let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
    format!("{{\"checksum\":\"{sum:016x}\",\"state\":{body}}}\n")
}

fn decode(text: &str) -> Result<Saved, String> {
    let shape = || "not a cohort rollout state file".to_string();
    let rest = text.strip_prefix("{\"checksum\":\"").ok_or_else(shape)?;
    let (hex, rest) = rest.split_at_checked(16).ok_or_else(shape)?;
    let body = rest
        .strip_prefix("\",\"state\":")
        .and_then(|r| r.trim_end().strip_suffix('}'))
        .ok_or_else(shape)?;
    let want = u64::from_str_radix(hex, 16).map_err(|_| shape())?;
    if xxhash_rust::xxh3::xxh3_64(body.as_bytes()) != want {
        return Err("checksum mismatch: edited or damaged".into());
    }
    let saved: Saved = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if saved.version != VERSION {
        return Err(format!("unknown version {}", saved.version));
    }
    Ok(saved)
}

impl Store {
    /// Creates the directory if needed and checks that files can be written in it.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// What [`Store::open`] would meet at `dir`, found without creating or writing anything
    /// (`cohort check` runs where the directory need not exist): `Ok(None)` when it does not
    /// exist (`open` would create it), an error when it is not a directory or this user cannot
    /// create files in it, else a store to [`Store::load`] from, which only reads.
    pub fn inspect(dir: &Path) -> Result<Option<Store>, StateError> {
        let meta = match fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(dir)(e)),
        };
        if !meta.is_dir() {
            return Err(StateError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        writable(dir).map_err(|source| StateError::NotWritable {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Some(Store {
            dir: dir.to_path_buf(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, route: &str) -> PathBuf {
        self.dir.join(format!("rollout-{route}.json"))
    }

    /// The saved state of `route`'s rollout; `Ok(None)` when there is none. A state for
    /// rollout `id` must also fit its `steps`; one for another id is only checked on its own
    /// (it will be replaced by a new rollout's).
    pub fn load(&self, route: &str, id: &str, steps: usize) -> Result<Option<Saved>, StateError> {
        let path = self.path(route);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        let text = String::from_utf8(text).map_err(|_| corrupt("not UTF-8".into()))?;
        let saved = decode(&text).map_err(corrupt)?;
        if saved.route != route {
            return Err(corrupt(format!("written for route {:?}", saved.route)));
        }
        if saved.id == id {
            saved.progress_for(steps).map_err(corrupt)?;
        } else {
            saved.progress().map_err(corrupt)?;
        }
        Ok(Some(saved))
    }

    /// Replaces `route`'s state file atomically.
    pub fn save(&self, saved: &Saved) -> Result<(), StateError> {
        let path = self.path(&saved.route);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        tmp.write_all(encode(saved).as_bytes())
            .map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&path))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        self.sync_dir()
    }

    /// Where [`Store::set_aside`] moves `route`'s state file.
    pub fn aside_path(&self, route: &str) -> PathBuf {
        self.path(route).with_extension("json.corrupt")
    }

    /// Moves a corrupt state file aside (to `<name>.corrupt`), keeping it for inspection.
    pub fn set_aside(&self, route: &str) -> Result<PathBuf, StateError> {
        let path = self.path(route);
        let aside = self.aside_path(route);
        fs::rename(&path, &aside).map_err(io(&path))?;
        self.sync_dir()?;
        Ok(aside)
    }

    /// Appends one decision to the audit log, flushed to disk.
    pub fn audit(&self, d: &Decision) -> Result<(), StateError> {
        let path = self.dir.join(AUDIT_FILE);
        let mut line = serde_json::to_string(d).unwrap_or_default();
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(line.as_bytes()).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

/// Whether this process could create files in the directory `dir`, asked of the kernel rather
/// than read from the mode bits, so ACLs, capabilities and read-only mounts count as they would
/// for [`Store::open`]'s probe file.
#[cfg(unix)]
fn writable(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    // Creating a file needs write and search permission on the directory; AT_EACCESS asks
    // for the effective ids, the ones `open` would run with.
    accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .map_err(std::io::Error::from)
}

/// Elsewhere only the read-only attribute can be read without writing.
#[cfg(not(unix))]
fn writable(dir: &Path) -> std::io::Result<()> {
    if fs::metadata(dir)?.permissions().readonly() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved {
        let mut p = Progress::start();
        p.step = 2;
        p.soaked = Duration::from_millis(12_345);
        p.canary.requests = 10;
        p.canary.latency[40] = 7;
        p.baseline.requests = 2;
        p.baseline.with_outcome = 2;
        p.baseline.outcomes[3] = 2;
        p.wealth.insert("error_rate".into(), 1.5);
        Saved::new("agent", "v2", &p, None, Vec::new(), &[100, 500, 2500])
    }

    #[test]
    fn a_saved_state_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested/state")).unwrap();
        assert!(store.load("agent", "v2", 4).unwrap().is_none());
        let s = saved();
        store.save(&s).unwrap();
        let back = store.load("agent", "v2", 4).unwrap().unwrap();
        assert_eq!(back, s);
        let p = back.progress().unwrap();
        assert_eq!((p.step, p.soaked.as_millis()), (2, 12_345));
        assert_eq!((p.canary.latency[40], p.baseline.outcomes[3]), (7, 2));
    }

    #[test]
    fn damaged_files_are_corrupt_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&saved()).unwrap();
        let path = store.path("agent");
        let good = fs::read_to_string(&path).unwrap();
        let cases = [
            good[..good.len() / 2].to_string(),
            good.replace("\"step\":2", "\"step\":3"),
            "garbage".to_string(),
            String::new(),
            good.replace("\"route\":\"agent\"", "\"route\":\"other\""),
        ];
        for (i, text) in cases.iter().enumerate() {
            fs::write(&path, text).unwrap();
            match store.load("agent", "v2", 4) {
                Err(StateError::Corrupt { .. }) => {}
                other => panic!("case {i}: {other:?}"),
            }
        }
        let aside = store.set_aside("agent").unwrap();
        assert!(aside.exists() && !path.exists());
        assert!(store.load("agent", "v2", 4).unwrap().is_none());
    }

    /// A file whose checksum matches but whose contents make no sense is refused like a
    /// damaged one (`Saved::new` and `encode` re-sum it as an editor with the format would).
    #[test]
    fn nonsense_with_a_good_checksum_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        type Edit = (&'static str, fn(&mut Saved));
        let edits: [Edit; 8] = [
            ("more errors than requests", |s| s.canary.errors = 11),
            ("more answers with an outcome than requests", |s| {
                s.baseline.with_outcome = 1
            }),
            ("more outcomes than answers with one", |s| {
                s.canary.with_outcome = 1;
                s.canary.outcomes = vec![(2, 2)];
            }),
            ("more timed answers than requests", |s| {
                s.canary.latency = vec![(40, 7), (41, 4)]
            }),
            ("a first byte without a duration", |s| {
                s.canary.ttfb = vec![(3, 8)]
            }),
            ("counts that wrap when added", |s| {
                s.canary.latency = vec![(1, u64::MAX), (2, 2)];
            }),
            ("a soak of 30,000 years", |s| {
                s.soaked_ms = 30_000 * 365 * 24 * 3600 * 1000
            }),
            ("a step past the end", |s| s.step = 4),
        ];
        for (what, edit) in edits {
            let mut s = saved();
            edit(&mut s);
            fs::write(store.path("agent"), encode(&s)).unwrap();
            match store.load("agent", "v2", 4) {
                Err(StateError::Corrupt { reason, .. }) => {
                    assert!(!reason.is_empty(), "{what}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // The step is checked only for the rollout the file is resumed for, against the steps
        // the file says it indexes or, in a file without them, the rollout's.
        let mut s = saved();
        s.step = 4;
        fs::write(store.path("agent"), encode(&s)).unwrap();
        assert!(store.load("agent", "v3", 4).unwrap().is_some());
        assert!(store.load("agent", "v2", 5).is_err());
        s.steps.clear();
        fs::write(store.path("agent"), encode(&s)).unwrap();
        assert!(store.load("agent", "v2", 4).is_err());
        assert!(store.load("agent", "v2", 5).unwrap().is_some());
    }

    #[test]
    fn inspecting_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nested/state");
        assert!(Store::inspect(&missing).unwrap().is_none());
        assert!(!dir.path().join("nested").exists());
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        match Store::inspect(&file) {
            Err(StateError::NotADirectory { path }) => assert_eq!(path, file),
            other => panic!("{other:?}"),
        }
        Store::open(dir.path()).unwrap().save(&saved()).unwrap();
        let before = fs::read_dir(dir.path()).unwrap().count();
        let store = Store::inspect(dir.path()).unwrap().unwrap();
        assert_eq!(store.load("agent", "v2", 4).unwrap().unwrap(), saved());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), before);
    }

    #[test]
    fn the_audit_log_gets_one_line_per_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Decision {
            at: "2026-01-01T00:00:00Z".into(),
            at_unix_ms: 1,
            route: "agent".into(),
            id: "v2".into(),
            decision: DecisionKind::Rollback,
            trigger: "judge".into(),
            from: None,
            to: Position {
                state: Phase::RolledBack,
                step: 0,
                percent: 0.0,
            },
            reason: "test".into(),
            soaked_seconds: 1.0,
            canary_samples: 1,
            baseline_samples: 2,
            guards: Vec::new(),
        };
        store.audit(&d).unwrap();
        store.audit(&d).unwrap();
        let text = fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let lines: Vec<Decision> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, [d.clone(), d]);
    }
}
