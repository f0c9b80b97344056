//! Server-sent events line framing (WHATWG HTML, "Interpreting an event stream"), reduced to
//! what usage needs: which bytes are `data` field values, where an event's data lines begin,
//! and where a blank line ends the event.
//!
//! Owns line ends (`\n`, `\r\n`, `\r`, a `\r\n` split across chunks) and field names. It must
//! not buffer: a line is handed on in the pieces it arrives in, so one of any length costs no
//! memory, and it knows nothing of JSON.

use memchr::memchr2;

/// Where the pieces of a stream go.
pub(super) trait Sink {
    /// A data line's value begins; `first` when it is the first of its event.
    fn data_line(&mut self, first: bool);
    /// Part of a data line's value.
    fn data(&mut self, bytes: &[u8]);
    /// A blank line ended an event that had data.
    fn dispatch(&mut self);
}

const DATA: &[u8] = b"data";
/// The spec drops one byte order mark at the start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of the stream, this many bytes of a byte order mark matched.
    Bom(u8),
    /// At the start of a line, this many bytes of `data` matched.
    Name(u8),
    /// A comment or a field other than `data`: skipped to its end.
    Skip,
    /// Right after `data:`, where one space is dropped.
    Space,
    /// In a data line's value.
    Value,
}

/// The framing state between chunks: a few bytes.
pub(super) struct Lines {
    line: Line,
    /// The last byte was a `\r` line end, so a `\n` now ends nothing.
    after_cr: bool,
    /// The current event has had a data line.
    in_event: bool,
}

impl Lines {
    pub(super) fn new() -> Lines {
        Lines {
            line: Line::Bom(0),
            after_cr: false,
            in_event: false,
        }
    }

    /// Frames one chunk; returns how many events started in it.
    pub(super) fn feed(&mut self, chunk: &[u8], sink: &mut impl Sink) -> u32 {
        let mut started = 0;
        let mut i = 0;
        while i < chunk.len() {
            if matches!(self.line, Line::Skip | Line::Value) {
                // after_cr is already false here: these states follow a byte that ends nothing.
                let rest = &chunk[i..];
                let end = memchr2(b'\n', b'\r', rest);
                let piece = &rest[..end.unwrap_or(rest.len())];
                if self.line == Line::Value && !piece.is_empty() {
                    sink.data(piece);
                }
                match end {
                    None => return started,
                    Some(k) => i += k,
                }
            }
            let b = chunk[i];
            i += 1;
            if b == b'\n' || b == b'\r' {
                let same_end = b == b'\n' && self.after_cr;
                self.after_cr = b == b'\r';
                if !same_end {
                    started += self.end_line(sink);
                }
                continue;
            }
            self.after_cr = false;
            if let Line::Bom(n) = self.line {
                let n = n as usize;
                if b == BOM[n] {
                    self.line = if n + 1 == BOM.len() {
                        Line::Name(0)
                    } else {
                        Line::Bom(n as u8 + 1)
                    };
                    continue;
                }
                // No mark: the byte starts the first line (a part of one starts no field).
                self.line = if n == 0 { Line::Name(0) } else { Line::Skip };
            }
            match self.line {
                Line::Name(n) => {
                    let n = n as usize;
                    self.line = if n < DATA.len() && b == DATA[n] {
                        Line::Name(n as u8 + 1)
                    } else if n == DATA.len() && b == b':' {
                        started += self.data_line(sink);
                        Line::Space
                    } else {
                        Line::Skip
                    };
                }
                Line::Space => {
                    self.line = Line::Value;
                    if b != b' ' {
                        sink.data(&chunk[i - 1..i]);
                    }
                }
                Line::Bom(_) | Line::Skip | Line::Value => {}
            }
        }
        started
    }

    /// A data line begins; 1 when it starts an event.
    fn data_line(&mut self, sink: &mut impl Sink) -> u32 {
        let first = !self.in_event;
        self.in_event = true;
        sink.data_line(first);
        u32::from(first)
    }

    /// A line ended; 1 when it was a bare `data` line starting an event.
    fn end_line(&mut self, sink: &mut impl Sink) -> u32 {
        let line = std::mem::replace(&mut self.line, Line::Name(0));
        match line {
            Line::Name(0) | Line::Bom(0) => {
                if std::mem::take(&mut self.in_event) {
                    sink.dispatch();
                }
                0
            }
            // `data` alone is the data field with an empty value.
            Line::Name(n) if n as usize == DATA.len() => self.data_line(sink),
            _ => 0,
        }
    }
}
