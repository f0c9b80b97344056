//! The percent history on disk: `percent-history.jsonl` in `state_dir`, one JSON line per split
//! a route began serving, appended and flushed as it happens, rewritten whole (atomically) only
//! to drop what the outcome window no longer needs.
//!
//! Owns: the file. Must not touch: what an entry means (`routing::history`), the endpoint.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::routing::history::{Entry, History};

pub const HISTORY_FILE: &str = "percent-history.jsonl";

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_path_buf(),
        source,
    }
}

/// The history kept in `dir`, and how many of its lines could not be read (a line cut short
/// by a crash mid-append, say: the entries before and after it still count). A missing file
/// is an empty history.
pub fn read(dir: &Path) -> Result<(History, usize), FileError> {
    let path = dir.join(HISTORY_FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((History::default(), 0)),
        Err(e) => return Err(at(&path)(e)),
    };
    let mut entries = Vec::new();
    let mut bad = 0;
    for line in text.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) if e.well_formed() => entries.push(e),
            _ => bad += 1,
        }
    }
    Ok((History::from_entries(entries), bad))
}

/// Appends one entry, flushed to disk before the caller goes on.
pub fn append(dir: &Path, entry: &Entry) -> Result<(), FileError> {
    let path = dir.join(HISTORY_FILE);
    let mut line = serde_json::to_string(entry).unwrap_or_default();
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(at(&path))?;
    f.write_all(line.as_bytes()).map_err(at(&path))?;
    f.sync_data().map_err(at(&path))
}

/// Replaces the file with `history`'s entries: a temporary file, fsync, rename, fsync of the
/// directory, so a crash leaves the old file or the new one.
pub fn rewrite(dir: &Path, history: &History) -> Result<(), FileError> {
    let path = dir.join(HISTORY_FILE);
    let mut text = String::new();
    for e in history.entries() {
        text.push_str(&serde_json::to_string(e).unwrap_or_default());
        text.push('\n');
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(at(dir))?;
    tmp.write_all(text.as_bytes()).map_err(at(tmp.path()))?;
    tmp.as_file().sync_all().map_err(at(&path))?;
    tmp.persist(&path).map_err(|e| at(&path)(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}
