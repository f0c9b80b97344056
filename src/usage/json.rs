//! A streaming JSON tokenizer in fixed space that picks the usage counts out of one document:
//! it follows the key path down to [`PATH_DEPTH`] levels, checks the document's structure, and
//! keeps the integers found at known paths.
//!
//! Owns the document grammar; the table of usage paths is `paths.rs`. It must not keep any of the bytes
//! it is fed (a key of up to [`MAX_KEY`] bytes is copied to be compared, nothing else) nor grow:
//! nesting is a counter and a bit per level, so a hostile document costs time, never memory.
//!
//! Strings are checked for their escapes but not for control characters or UTF-8: neither can
//! make a key match, and skipping them lets `memchr` jump over long text.

use memchr::memchr2;

use super::paths::{field, key, Counts, Field, Key};

/// Levels of keys followed: `response.usage.input_tokens_details.cached_tokens` is the longest
/// path read.
pub(super) const PATH_DEPTH: usize = 4;
/// Deeper documents are not read at all: a bound a real answer never comes near.
pub(super) const MAX_DEPTH: u8 = 64;
/// Keys longer than this are none of ours (the longest, `cache_creation_input_tokens`, is 27).
pub(super) const MAX_KEY: usize = 40;
/// `name_len` of a key that is none of ours whatever its bytes.
const OVERLONG: u8 = MAX_KEY as u8 + 1;

/// Where in a number the tokenizer is (RFC 8259's grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value is due: at the top, after `:` or after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    Colon,
    /// After a value inside a container: `,` or its close.
    After,
    /// In a string skipped to its end; `key` when it is a key.
    Str {
        key: bool,
    },
    /// In a key that is copied to be compared.
    Name,
    Escape {
        key: bool,
    },
    Unicode {
        key: bool,
        left: u8,
    },
    Num(Num),
    /// Inside `true`, `false` or `null`: which one, and how many bytes are matched.
    Literal {
        which: u8,
        at: u8,
    },
    /// The top-level value is complete; only whitespace may follow.
    Done,
    /// Not a document we read: invalid, or too deep.
    Broken,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// One JSON document being read.
pub(super) struct Doc {
    state: State,
    depth: u8,
    /// Bit `d` is set when the container at depth `d + 1` is an object.
    objects: u64,
    path: [Key; PATH_DEPTH],
    name: [u8; MAX_KEY],
    /// Bytes of the key being read; past `MAX_KEY` (or on an escape) it is no key of ours.
    name_len: u8,
    number: u64,
    /// False once the number is negative, fractional, exponential or overflowed.
    number_ok: bool,
    openai: bool,
    anthropic: bool,
    /// What this document has said so far; worth keeping only if it ends well.
    pub(super) found: Counts,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Doc {
    pub(super) fn new(openai: bool, anthropic: bool) -> Doc {
        Doc {
            state: State::Value,
            depth: 0,
            objects: 0,
            path: [Key::Other; PATH_DEPTH],
            name: [0; MAX_KEY],
            name_len: 0,
            number: 0,
            number_ok: false,
            openai,
            anthropic,
            found: Counts::default(),
        }
    }

    /// Starts a new document.
    pub(super) fn reset(&mut self) {
        *self = Doc::new(self.openai, self.anthropic);
    }

    /// Marks the document unreadable.
    pub(super) fn spoil(&mut self) {
        self.state = State::Broken;
    }

    /// The input ended: whether it held exactly one complete document.
    pub(super) fn end(&mut self) -> bool {
        if let State::Num(n) = self.state {
            if n.complete() && self.depth == 0 {
                self.end_number();
            }
        }
        self.state == State::Done
    }

    pub(super) fn feed(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Broken => return,
                State::Str { key } => {
                    // Strings are the bulk of a body and, but for a few keys, none of ours.
                    let Some(k) = memchr2(b'"', b'\\', &input[i..]) else {
                        return;
                    };
                    i += k + 1;
                    if input[i - 1] == b'\\' {
                        self.state = State::Escape { key };
                    } else if key {
                        self.key_end();
                    } else {
                        self.value_end();
                    }
                }
                State::Name => i += self.name_bytes(&input[i..]),
                State::Num(Num::Int) => {
                    i += self.digits(&input[i..]);
                    if i < input.len() && self.step(input[i]) {
                        i += 1;
                    }
                }
                _ => {
                    if self.step(input[i]) {
                        i += 1;
                    }
                }
            }
        }
    }

    /// Copies a key's bytes up to its closing quote; returns how many were consumed. An
    /// escape makes it no key of ours, so the rest is skipped as any string is.
    fn name_bytes(&mut self, input: &[u8]) -> usize {
        let end = input.iter().position(|&b| b == b'"' || b == b'\\');
        let part = &input[..end.unwrap_or(input.len())];
        let n = self.name_len as usize;
        match self.name.get_mut(n..n + part.len()) {
            Some(room) => {
                room.copy_from_slice(part);
                self.name_len += part.len() as u8;
            }
            None => self.name_len = OVERLONG,
        }
        match end.map(|k| input[k]) {
            None => return input.len(),
            Some(b'"') => self.key_end(),
            Some(_) => {
                self.name_len = OVERLONG;
                self.state = State::Escape { key: true };
            }
        }
        part.len() + 1
    }

    /// Whether the key about to be read can be on a usage path: the top level's keys, and
    /// those under a top-level key that starts one.
    fn key_matters(&self) -> bool {
        let d = self.depth as usize;
        d == 1
            || (d <= PATH_DEPTH
                && matches!(self.path[0], Key::Usage | Key::Response | Key::Message))
    }

    /// Reads the digits of an integer part; returns how many were consumed.
    fn digits(&mut self, input: &[u8]) -> usize {
        for (k, &b) in input.iter().enumerate() {
            if !b.is_ascii_digit() {
                return k;
            }
            match self
                .number
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
            {
                Some(n) => self.number = n,
                None => self.number_ok = false,
            }
        }
        input.len()
    }

    /// Takes one byte in any state but the string and digit runs; false when the byte ended a
    /// number and must be read again in the state after it.
    fn step(&mut self, b: u8) -> bool {
        match self.state {
            State::Value | State::ArrayFirst => self.value_start(b),
            State::ObjectFirst | State::Key => match b {
                b'"' => {
                    self.state = if self.key_matters() {
                        self.name_len = 0;
                        State::Name
                    } else {
                        self.name_len = OVERLONG;
                        State::Str { key: true }
                    };
                }
                b'}' if self.state == State::ObjectFirst => self.close(),
                _ if is_space(b) => {}
                _ => self.state = State::Broken,
            },
            State::Colon => match b {
                b':' => self.state = State::Value,
                _ if is_space(b) => {}
                _ => self.state = State::Broken,
            },
            State::After => {
                let object = self.in_object();
                match b {
                    b',' => self.state = if object { State::Key } else { State::Value },
                    b'}' if object => self.close(),
                    b']' if !object => self.close(),
                    _ if is_space(b) => {}
                    _ => self.state = State::Broken,
                }
            }
            State::Done => {
                if !is_space(b) {
                    self.state = State::Broken;
                }
            }
            State::Escape { key } => match b {
                b'u' => self.state = State::Unicode { key, left: 4 },
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.state = State::Str { key }
                }
                _ => self.state = State::Broken,
            },
            State::Unicode { key, left } => {
                self.state = match (b.is_ascii_hexdigit(), left) {
                    (false, _) => State::Broken,
                    (true, 1) => State::Str { key },
                    (true, _) => State::Unicode {
                        key,
                        left: left - 1,
                    },
                }
            }
            State::Num(n) => return self.number_byte(n, b),
            State::Literal { which, at } => {
                let word = LITERALS[which as usize];
                if word.get(at as usize) != Some(&b) {
                    self.state = State::Broken;
                } else if at as usize + 1 == word.len() {
                    // true, false and null are never counts.
                    self.value_end();
                } else {
                    self.state = State::Literal { which, at: at + 1 };
                }
            }
            State::Str { .. } | State::Name | State::Broken => {}
        }
        true
    }

    fn value_start(&mut self, b: u8) {
        self.state = match b {
            b'{' => return self.open(true),
            b'[' => return self.open(false),
            b'"' => State::Str { key: false },
            b'-' => {
                self.number_ok = false;
                State::Num(Num::Minus)
            }
            b'0'..=b'9' => {
                self.number = u64::from(b - b'0');
                self.number_ok = true;
                State::Num(if b == b'0' { Num::Zero } else { Num::Int })
            }
            b't' => State::Literal { which: 0, at: 1 },
            b'f' => State::Literal { which: 1, at: 1 },
            b'n' => State::Literal { which: 2, at: 1 },
            b']' if self.state == State::ArrayFirst => return self.close(),
            _ if is_space(b) => self.state,
            _ => State::Broken,
        }
    }

    fn number_byte(&mut self, n: Num, b: u8) -> bool {
        let digit = b.is_ascii_digit();
        let next = match (n, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => {
                self.digits(&[b]);
                Num::Int
            }
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, _) if digit => Num::Exp,
            _ if n.complete() && !(n == Num::Zero && digit) => {
                self.end_number();
                return false;
            }
            _ => {
                self.state = State::Broken;
                return true;
            }
        };
        if next != Num::Int {
            // A sign, a fraction or an exponent: a valid number, but not a count.
            self.number_ok = false;
        }
        self.state = State::Num(next);
        true
    }

    fn end_number(&mut self) {
        if self.number_ok {
            if let Some(f) = self.field_here() {
                self.found.set(f, self.number);
            }
        }
        self.value_end();
    }

    fn field_here(&self) -> Option<Field> {
        let d = self.depth as usize;
        if d == 0 || d > PATH_DEPTH || !self.in_object() {
            return None;
        }
        field(&self.path[..d], self.openai, self.anthropic)
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, object: bool) {
        if self.depth >= MAX_DEPTH {
            self.state = State::Broken;
            return;
        }
        let bit = 1u64 << self.depth;
        if object {
            self.objects |= bit;
        } else {
            self.objects &= !bit;
        }
        if let Some(k) = self.path.get_mut(self.depth as usize) {
            *k = Key::Other;
        }
        self.depth += 1;
        self.state = if object {
            State::ObjectFirst
        } else {
            State::ArrayFirst
        };
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.value_end();
    }

    fn key_end(&mut self) {
        let n = self.name_len as usize;
        let slot = (self.depth as usize)
            .checked_sub(1)
            .and_then(|d| self.path.get_mut(d));
        if let Some(slot) = slot {
            *slot = match self.name.get(..n) {
                Some(name) => key(name),
                None => Key::Other,
            };
        }
        self.state = State::Colon;
    }

    fn value_end(&mut self) {
        self.state = if self.depth == 0 {
            State::Done
        } else {
            State::After
        };
    }
}
