//! The framing tracker: a byte-driven state machine that finds each request head's end, looks
//! at three header names in it, and follows the body that head announces to the next head.
//!
//! Owns: hyper's framing rules as far as counting heads needs them. Must not touch: IO (fed
//! slices by `Watched`), the verdict's sharing (`super::Framing`).

/// The longest header name the tracker needs to recognise: `transfer-encoding`.
const NAME_MAX: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: hyper skips empty lines before a request line, so does this.
    Idle,
    /// The method of the request line.
    Method,
    /// The rest of a line that says nothing about framing.
    Skip,
    /// The start of a header line, up to its colon (or the empty line ending the head).
    Name,
    /// A Content-Length value.
    Length,
    /// A body of known length: this many bytes still to come.
    Body(u64),
    ChunkStart,
    ChunkSize(u64),
    ChunkLws(u64),
    ChunkExt(u64),
    ChunkSizeLf(u64),
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    Trailer,
    EndCr,
    EndLf,
    /// Not following any more: after an upgrade or CONNECT, a flagged head, or bytes hyper
    /// will refuse.
    Off,
}

/// What the current head said about its framing so far.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    length: Option<u64>,
    /// A Content-Length line was seen, whether or not its value could be read.
    has_length: bool,
    /// A Content-Length value the tracker cannot follow (a list, a sign, two different ones).
    length_unknown: bool,
    chunked: bool,
    /// Upgrade or CONNECT: what follows may not be HTTP.
    leaves: bool,
}

/// Follows the requests of one connection in the bytes read from it. Holds no buffer: a
/// header name is at most `NAME_MAX` bytes kept inline, and the rest of every line is skipped
/// with `memchr`.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: State,
    /// Bytes of the current head; past `limit` hyper refuses the head.
    head_len: usize,
    limit: usize,
    /// Heads seen to their end on this connection.
    heads: u64,
    name: [u8; NAME_MAX],
    /// Bytes of the current name seen, kept or not (more than `NAME_MAX` means none of ours).
    name_len: usize,
    /// The Content-Length value being read: its digits so far, and whether whitespace
    /// followed them.
    digits: bool,
    after: bool,
    value: u64,
    head: Head,
}

impl Tracker {
    /// A tracker for a connection whose heads hyper accepts up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Tracker {
            state: State::Idle,
            head_len: 0,
            limit,
            heads: 0,
            name: [0; NAME_MAX],
            name_len: 0,
            digits: false,
            after: false,
            value: 0,
            head: Head::default(),
        }
    }

    /// A tracker that follows nothing (a connection that is not HTTP/1.x).
    pub fn off() -> Self {
        let mut t = Tracker::new(0);
        t.state = State::Off;
        t
    }

    /// Whether the tracker still follows the connection.
    pub fn is_following(&self) -> bool {
        self.state != State::Off
    }

    /// Heads begun so far (the one being read included once its first byte is in).
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Follows `bytes`, the next ones read from the connection. Returns the ordinal (from 0)
    /// of a request whose head carried both Transfer-Encoding and Content-Length; after one,
    /// the tracker stops, since hyper closes the connection after that request.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<u64> {
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self.state {
                State::Off => return None,
                State::Idle => {
                    i += rest.iter().position(|&b| b != b'\r' && b != b'\n')?;
                    self.begin_head();
                    continue;
                }
                State::Body(n) | State::ChunkData(n) => {
                    let k = n.min(rest.len() as u64);
                    i += k as usize;
                    let left = n - k;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Idle,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkDataCr,
                        _ => State::ChunkData(left),
                    };
                    continue;
                }
                State::Name if self.name_len == 0 => {
                    // Most names are whole in one read: looked at in place, not byte by byte.
                    if let Some(k) = memchr::memchr2(b':', b'\n', rest) {
                        if !self.grow(k + 1) {
                            return None;
                        }
                        i += k + 1;
                        let line = &rest[..k];
                        if rest[k] == b':' {
                            self.state = self.header(line);
                        } else if line.is_empty() || line == b"\r" {
                            if let Some(flagged) = self.end_head() {
                                return Some(flagged);
                            }
                        } else {
                            self.state = State::Off;
                        }
                        continue;
                    }
                }
                State::Skip | State::Trailer => {
                    let found = memchr::memchr(b'\n', rest);
                    let k = found.map_or(rest.len(), |k| k + 1);
                    if self.state == State::Skip && !self.grow(k) {
                        return None;
                    }
                    i += k;
                    if found.is_some() {
                        // A trailer line is read to its CR; hyper refuses a bare LF there, and a
                        // stream it refuses is never flagged, so the LF is as good a mark.
                        self.state = if self.state == State::Skip {
                            self.name_len = 0;
                            State::Name
                        } else {
                            State::EndCr
                        };
                    }
                    continue;
                }
                _ => {}
            }
            let b = rest[0];
            i += 1;
            if matches!(self.state, State::Method | State::Name | State::Length) && !self.grow(1) {
                return None;
            }
            if let Some(flagged) = self.step(b) {
                return Some(flagged);
            }
        }
        None
    }

    fn begin_head(&mut self) {
        self.state = State::Method;
        self.head_len = 0;
        self.name_len = 0;
        self.head = Head::default();
    }

    fn grow(&mut self, k: usize) -> bool {
        self.head_len += k;
        if self.head_len > self.limit {
            self.state = State::Off;
            return false;
        }
        true
    }

    fn keep(&mut self, b: u8) {
        if self.name_len < NAME_MAX {
            self.name[self.name_len] = b.to_ascii_lowercase();
        }
        self.name_len += 1;
    }

    fn name(&self) -> &[u8] {
        &self.name[..self.name_len.min(NAME_MAX)]
    }

    /// One byte in a state that is read byte by byte.
    fn step(&mut self, b: u8) -> Option<u64> {
        use State::*;
        self.state = match (self.state, b) {
            (Method, b' ') => match self.name() {
                // The h2 preface: not HTTP/1.x from here on.
                b"pri" => Off,
                b"connect" => {
                    self.head.leaves = true;
                    Skip
                }
                _ => Skip,
            },
            (Method, b'\n') => Off,
            (Method, _) => {
                self.keep(b);
                Method
            }
            (Name, b':') => {
                let (name, len) = (self.name, self.name_len);
                self.header(&name[..len])
            }
            (Name, b'\n') if self.name_len == 0 || self.name() == b"\r" => {
                return self.end_head();
            }
            (Name, b'\n') => Off,
            (Name, _) if self.name_len >= NAME_MAX => Skip,
            (Name, _) => {
                self.keep(b);
                Name
            }
            (Length, b'0'..=b'9') if !self.after => {
                match self
                    .value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) => {
                        (self.value, self.digits) = (v, true);
                        Length
                    }
                    None => self.length_unknown(),
                }
            }
            (Length, b' ' | b'\t' | b'\r') => {
                // Only whitespace may follow the digits.
                self.after = self.digits;
                Length
            }
            (Length, b'\n') => {
                self.length_line_end();
                self.name_len = 0;
                Name
            }
            (Length, _) => self.length_unknown(),
            (ChunkStart, _) => match hex(b) {
                Some(d) => ChunkSize(d),
                None => Off,
            },
            (ChunkSize(n), _) => match hex(b) {
                Some(d) => match n.checked_mul(16).and_then(|v| v.checked_add(d)) {
                    Some(v) => ChunkSize(v),
                    None => Off,
                },
                None => chunk_size_end(n, b),
            },
            (ChunkLws(n), b' ' | b'\t') => ChunkLws(n),
            (ChunkLws(n), _) => chunk_size_end(n, b),
            (ChunkExt(n), b'\r') => ChunkSizeLf(n),
            (ChunkExt(_), b'\n') => Off,
            (ChunkExt(n), _) => ChunkExt(n),
            (ChunkSizeLf(0), b'\n') => EndCr,
            (ChunkSizeLf(n), b'\n') => ChunkData(n),
            (ChunkDataCr, b'\r') => ChunkDataLf,
            (ChunkDataLf, b'\n') => ChunkStart,
            (EndCr, b'\r') => EndLf,
            (EndCr, _) => Trailer,
            (EndLf, b'\n') => Idle,
            _ => Off,
        };
        None
    }

    /// The name before a colon: which of the three it is decides how its value is read.
    fn header(&mut self, name: &[u8]) -> State {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match () {
            _ if is(b"content-length") => {
                self.head.has_length = true;
                (self.digits, self.after, self.value) = (false, false, 0);
                State::Length
            }
            _ if is(b"transfer-encoding") => {
                self.head.chunked = true;
                State::Skip
            }
            _ if is(b"upgrade") => {
                self.head.leaves = true;
                State::Skip
            }
            _ => State::Skip,
        }
    }

    fn length_line_end(&mut self) {
        match self.head.length {
            _ if !self.digits => self.head.length_unknown = true,
            Some(prev) if prev != self.value => self.head.length_unknown = true,
            _ => self.head.length = Some(self.value),
        }
    }

    fn length_unknown(&mut self) -> State {
        self.head.length_unknown = true;
        State::Skip
    }

    fn end_head(&mut self) -> Option<u64> {
        let ordinal = self.heads;
        self.heads += 1;
        let head = self.head;
        if head.chunked && head.has_length {
            self.state = State::Off;
            return Some(ordinal);
        }
        self.state = if head.leaves || (!head.chunked && head.length_unknown) {
            State::Off
        } else if head.chunked {
            State::ChunkStart
        } else {
            match head.length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Idle,
            }
        };
        None
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// What may follow a chunk size's digits, as hyper reads it.
fn chunk_size_end(n: u64, b: u8) -> State {
    match b {
        b' ' | b'\t' => State::ChunkLws(n),
        b';' => State::ChunkExt(n),
        b'\r' => State::ChunkSizeLf(n),
        _ => State::Off,
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
