//! The configuration file as written: raw serde types (`deny_unknown_fields`, in `raw`) and
//! loading.
//!
//! Owns: YAML parsing, and turning any error (syntax, type, or a later validation error that
//! carries a field path) into a [`ConfigError`] that names file, line, column and field.
//! Must not touch: validation rules (see `routing::table`), sockets, metrics or the serving table.

pub(crate) mod duration;
mod fleet;
mod late;
pub(crate) mod locate;
mod pin;
mod raw;
mod rollout;
mod segment;

use std::fmt;
use std::path::{Path, PathBuf};

pub use fleet::{RawFleet, RawFleetTls};
pub use late::RawLateOutcomes;
pub use pin::RawPin;
pub use raw::{
    RawAdmin, RawAuthority, RawCertificate, RawConfig, RawKeySource, RawLimits, RawListener,
    RawListenerTls, RawMatch, RawPrice, RawProtocol, RawReload, RawRoute, RawSplit, RawUnderscores,
    RawUpstream, RawUpstreamTls, RawUsage,
};
pub use rollout::{RawAfter, RawGuard, RawGuardMetric, RawRollout};
pub use segment::RawSegment;

/// A config error located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (it could not be read).
    pub line: usize,
    pub column: usize,
    /// Field path such as `routes[0].split[1].percent`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A parsed file, with its text kept so later validation errors can be located.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub text: String,
    pub raw: RawConfig,
}

impl Loaded {
    /// A [`ConfigError`] for `field`, placed at that field's position in the file (or its
    /// nearest present ancestor's).
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = locate::field_position(&self.text, field).unwrap_or((0, 0));
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// A stable hash of the file's contents, for audit lines and no-op reload detection.
    pub fn content_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.text.as_bytes())
    }
}

/// Reads and parses `file`. Never panics on any input.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(file, text)
}

/// serde_yaml's own recursion limit; no config comes near it.
const MAX_NESTING: usize = 128;

/// Parses `text` as if read from `file`.
pub fn parse(file: &Path, text: String) -> Result<Loaded, ConfigError> {
    // YAML forbids duplicate keys, but a typed map (such as `upstreams`) would keep the last.
    if let Some(dup) = locate::duplicate_key(&text) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: dup.line,
            column: dup.column,
            field: dup.field,
            message: format!("duplicate key {:?}", dup.key),
        });
    }
    // serde_yaml refuses deeper nesting anyway, but only after libyaml has spent time
    // quadratic in the depth on it: a few deep brackets would stall a reload for minutes.
    if let Some((line, column)) = locate::too_deep(&text, MAX_NESTING) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            field: String::new(),
            message: format!("recursion limit exceeded: nested deeper than {MAX_NESTING} levels"),
        });
    }
    let de = serde_yaml::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(raw) => Ok(Loaded {
            file: file.to_path_buf(),
            text,
            raw,
        }),
        Err(e) => {
            // The typed pass stops at the first semantic error in the events that precede a
            // syntax error, which would then be reported in its place: syntax comes first.
            if let Err(syntax) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
                let (line, column) = syntax.location().map_or((0, 0), |l| (l.line(), l.column()));
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line,
                    column,
                    field: String::new(),
                    message: strip_location(&syntax.to_string()),
                });
            }
            let field = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let (line, column) = match inner.location() {
                Some(loc) => (loc.line(), loc.column()),
                None => locate::field_position(&text, &field).unwrap_or((0, 0)),
            };
            let message = strip_path(&strip_location(&inner.to_string()), &field);
            Err(ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field,
                message,
            })
        }
    }
}

/// serde_path_to_error writes `.` for the root; an empty path reads better.
fn clean_path(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

/// serde_yaml writes " at line L column C" after a message (and after its context, for syntax
/// errors); the location is printed once, up front.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = digits(after);
        let located = after[n..]
            .strip_prefix(" column ")
            .filter(|c| n > 0 && digits(c) > 0);
        match located {
            Some(c) => rest = &c[digits(c)..],
            None => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// serde_yaml starts a message with the path of the enclosing value (`routes[0]: unknown
/// field ...`); the field path is printed once, up front.
fn strip_path(message: &str, field: &str) -> String {
    match message.split_once(": ") {
        Some((head, tail))
            if !head.is_empty()
                && field.starts_with(head)
                && matches!(field[head.len()..].chars().next(), None | Some('.' | '[')) =>
        {
            tail.to_string()
        }
        _ => message.to_string(),
    }
}
