//! Reading an answer's token usage and event timing as its body passes: which scanner an
//! answer gets (from the route's `usage` and the content type), and what it tells the
//! request's [`Accounting`].
//!
//! Owns: the choice of dialects per answer and the header or trailer of cohort's own. Must
//! not touch: the frames themselves (they pass on unchanged and uncopied: the scanner only
//! looks), the scanning (`crate::usage`).

use http::HeaderMap;

use super::accounting::{Accounting, Tokens};
use crate::routing::table::UsageSource;
use crate::usage::{self, Dialects, Framing, Scanner, Usage};

fn dialects(source: UsageSource) -> Dialects {
    match source {
        UsageSource::Auto => Dialects::AUTO,
        UsageSource::OpenAi => Dialects {
            openai: true,
            ..Dialects::OFF
        },
        UsageSource::Anthropic => Dialects {
            anthropic: true,
            ..Dialects::OFF
        },
        UsageSource::Header => Dialects {
            header: true,
            ..Dialects::OFF
        },
        UsageSource::Off => Dialects::OFF,
    }
}

fn tokens(u: Usage) -> Tokens {
    Tokens {
        input: u.input,
        output: u.output,
        cached: u.cached_input,
    }
}

/// What one answer's body is read for.
pub struct UsageReader {
    /// Absent for a body neither streamed nor read for usage.
    scanner: Option<Scanner>,
    /// Whether a trailer may carry cohort's own usage header.
    header: bool,
}

impl UsageReader {
    /// The reader of a successful answer with `headers`. Usage in the head (cohort's own
    /// header) is taken at once; a stream is still scanned for its events' timing.
    pub fn new(source: UsageSource, headers: &HeaderMap, acct: &mut Accounting) -> Self {
        let dialects = dialects(source);
        let told = dialects.header
            && headers
                .get(usage::USAGE_HEADER)
                .and_then(|v| usage::parse_usage_header(v.as_bytes()))
                .map(|u| acct.usage(tokens(u)))
                .is_some();
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        let framing = usage::framing(content_type);
        let streamed = matches!(framing, Framing::Sse);
        let in_body = (dialects.openai || dialects.anthropic) && !matches!(framing, Framing::None);
        // An answer counts as with or without usage where usage could be: a JSON or SSE
        // body of a dialect the route reads, cohort's own header, or any answer of a route
        // that reads only that header (its trailer may come at the end).
        if in_body || told || source == UsageSource::Header {
            acct.reading(streamed);
        } else if streamed {
            acct.streaming_events();
        }
        // Event timing is wanted of every stream; usage only where the route reads it.
        UsageReader {
            scanner: (streamed || in_body).then(|| Scanner::new(framing, dialects)),
            header: dialects.header,
        }
    }

    #[inline]
    pub fn data(&mut self, data: &[u8], acct: &mut Accounting) {
        if let Some(s) = self.scanner.as_mut() {
            acct.events(s.feed(data));
        }
    }

    pub fn trailers(&mut self, trailers: &HeaderMap, acct: &mut Accounting) {
        if !self.header {
            return;
        }
        if let Some(u) = trailers
            .get(usage::USAGE_HEADER)
            .and_then(|v| usage::parse_usage_header(v.as_bytes()))
        {
            acct.usage(tokens(u));
        }
    }

    /// The body ended whole: what the scanner read, unless a header or trailer said first.
    pub fn end(&mut self, acct: &mut Accounting) {
        if let Some(u) = self.scanner.take().and_then(|mut s| s.finish()) {
            acct.usage_unless_told(tokens(u));
        }
    }
}
