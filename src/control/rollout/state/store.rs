//! Where rollout state lives: the state directory, its files replaced whole and atomically (a
//! temporary file, fsync, rename, fsync of the directory), corrupt ones set aside, and the audit
//! log appended to. Also a read-only look at a directory ([`Store::inspect`]) for `cohort check`,
//! which must not create or write anything.
//!
//! Owns: files and directories. Must not touch: what a file means (`format`), decisions.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{decode, encode, Decision, Saved};

pub const AUDIT_FILE: &str = "audit.jsonl";

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
