//! Token usage read from response bodies as they pass (issue 17): the public API, the
//! normalisation of each dialect's counts, and the SSE and JSON framings wired to the tokenizer.
//!
//! Owns: [`Scanner`], [`Usage`], [`Dialects`], [`framing`] and the `x-agent-usage` header's
//! grammar. It must not touch the body (it reads borrowed chunks and keeps nothing of them),
//! allocate, or name anything else in the crate: it is a leaf, so the proxy can call it on
//! every frame without its state growing with the body.
//!
//! A body cut early (client gone, upstream reset) is simply never `finish`ed: whatever was
//! read stays inside the scanner and is dropped with it, so a partial answer is never reported
//! as a whole one.

mod header;
mod json;
mod paths;
mod sse;

#[cfg(test)]
mod tests;

pub use header::{parse_usage_header, USAGE_HEADER};

use json::Doc;
use paths::{Counts, Field};

/// Which dialects a route reads (from its config; `auto` = all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialects {
    /// OpenAI Chat Completions and Responses bodies.
    pub openai: bool,
    /// Anthropic Messages bodies.
    pub anthropic: bool,
    /// cohort's own `x-agent-usage` header or trailer; the caller reads it with
    /// [`parse_usage_header`], the scanner ignores this flag.
    pub header: bool,
}

impl Dialects {
    pub const AUTO: Dialects = Dialects {
        openai: true,
        anthropic: true,
        header: true,
    };
    pub const OFF: Dialects = Dialects {
        openai: false,
        anthropic: false,
        header: false,
    };

    /// Whether anything at all is read for the route.
    pub fn any(self) -> bool {
        self.openai || self.anthropic || self.header
    }

    /// Whether the body has to be tokenized (the header dialect needs no body).
    fn body(self) -> bool {
        self.openai || self.anthropic
    }
}

/// Token counts of one answer, normalised: `input` counts every input token INCLUDING cached
/// ones; `cached_input` is the part of `input` read from a prompt cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

/// How the body is framed, from the response's content-type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: each event's data is one JSON document.
    Sse,
    /// `application/json` or any `+json` type: the body is one document.
    Json,
    /// Anything else: nothing is read.
    None,
}

/// The framing of a body from its content-type (case-insensitive, parameters ignored).
pub fn framing(content_type: Option<&[u8]>) -> Framing {
    let Some(value) = content_type else {
        return Framing::None;
    };
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let media = value[..end].trim_ascii();
    if media.eq_ignore_ascii_case(b"text/event-stream") {
        return Framing::Sse;
    }
    if media.eq_ignore_ascii_case(b"application/json") {
        return Framing::Json;
    }
    let Some(slash) = media.iter().position(|&b| b == b'/') else {
        return Framing::None;
    };
    let (kind, sub) = (&media[..slash], &media[slash + 1..]);
    let suffix = b"+json";
    if !kind.is_empty()
        && sub.len() > suffix.len()
        && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    {
        Framing::Json
    } else {
        Framing::None
    }
}

/// A JSON body longer than this is not read: a usage object comes in answers, not in bulk
/// downloads, and counting stops the tokenizer from running over the rest of a huge body.
pub const MAX_JSON_BODY: u64 = 64 << 20;

/// Reads one response body's usage, chunk by chunk, in fixed space.
///
/// Feed it every frame as it is forwarded; call [`Scanner::finish`] only when the body ended
/// normally. A body cut early is never finished, so nothing partial is reported.
pub struct Scanner {
    framing: Framing,
    /// Whether the body is tokenized at all (some JSON dialect is on).
    reading: bool,
    doc: Doc,
    lines: sse::Lines,
    /// What documents that ended well have said, last value per field.
    read: Counts,
    /// Bytes of a JSON body seen so far.
    seen: u64,
}

impl Scanner {
    pub fn new(framing: Framing, dialects: Dialects) -> Scanner {
        Scanner {
            framing,
            reading: dialects.body(),
            doc: Doc::new(dialects.openai, dialects.anthropic),
            lines: sse::Lines::new(),
            read: Counts::default(),
            seen: 0,
        }
    }

    /// Feeds one body chunk; returns how many SSE events (events carrying at least one
    /// `data:` line) STARTED in this chunk (0 for JSON bodies). An event starts at its first
    /// `data:` line, once the field name and its colon are seen.
    pub fn feed(&mut self, chunk: &[u8]) -> u32 {
        match self.framing {
            Framing::Sse => {
                let mut sink = Events {
                    doc: &mut self.doc,
                    read: &mut self.read,
                    reading: self.reading,
                };
                self.lines.feed(chunk, &mut sink)
            }
            Framing::Json => {
                if self.reading {
                    self.seen = self.seen.saturating_add(chunk.len() as u64);
                    if self.seen > MAX_JSON_BODY {
                        self.doc.spoil();
                    } else {
                        self.doc.feed(chunk);
                    }
                }
                0
            }
            Framing::None => 0,
        }
    }

    /// The body ended normally: the usage read, if any. None when no usage was seen, when the
    /// JSON body was not one valid document, or was over [`MAX_JSON_BODY`] or nested too
    /// deep. An SSE event the body did not end with a blank line is dropped, as the SSE spec
    /// drops it.
    pub fn finish(&mut self) -> Option<Usage> {
        match self.framing {
            Framing::Sse => {}
            Framing::Json => {
                if self.reading && self.doc.end() {
                    self.read.merge(&self.doc.found);
                }
            }
            Framing::None => return None,
        }
        normalise(&self.read)
    }
}

/// One answer's counts in cohort's terms: Anthropic's `input_tokens` leaves out cache reads
/// and writes, OpenAI's includes its cached tokens, so the cache fields (only Anthropic sends
/// them) are added back in. `cached_input` is clamped to `input` so that it stays a part of
/// it whatever an upstream claims; a sum that overflows is no usage.
fn normalise(c: &Counts) -> Option<Usage> {
    if c.get(Field::Input).is_none() && c.get(Field::Output).is_none() {
        return None;
    }
    let read = c.get(Field::CacheRead);
    let input = c
        .get(Field::Input)
        .unwrap_or(0)
        .checked_add(read.unwrap_or(0))?
        .checked_add(c.get(Field::CacheCreation).unwrap_or(0))?;
    let cached = read.or(c.get(Field::Cached)).unwrap_or(0);
    Some(Usage {
        input,
        output: c.get(Field::Output).unwrap_or(0),
        cached_input: cached.min(input),
    })
}

/// Where the SSE framing's pieces go: each event's data is one document, reset at its first
/// data line and kept only if it ended well.
struct Events<'a> {
    doc: &'a mut Doc,
    read: &'a mut Counts,
    reading: bool,
}

impl sse::Sink for Events<'_> {
    fn data_line(&mut self, first: bool) {
        if !self.reading {
            return;
        }
        if first {
            self.doc.reset();
        } else {
            // The SSE spec joins an event's data lines with a line feed.
            self.doc.feed(b"\n");
        }
    }

    fn data(&mut self, bytes: &[u8]) {
        if self.reading {
            self.doc.feed(bytes);
        }
    }

    fn dispatch(&mut self) {
        if self.reading && self.doc.end() {
            self.read.merge(&self.doc.found);
        }
    }
}
