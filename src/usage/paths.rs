//! The usage paths: which keys matter, which field a number at a key path fills under which
//! dialect, and the per-field last values a document or a stream has given.
//!
//! Owns the table of paths and nothing of the grammar: the tokenizer in `json.rs` calls
//! [`key`] on each key it copies and [`field`] on each count it reads.

/// The counts a document can carry, before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// `prompt_tokens` or `input_tokens`.
    Input,
    /// `completion_tokens` or `output_tokens`.
    Output,
    /// OpenAI's `*_tokens_details.cached_tokens`, already part of `Input`.
    Cached,
    /// Anthropic's `cache_read_input_tokens`, not part of its `input_tokens`.
    CacheRead,
    /// Anthropic's `cache_creation_input_tokens`, not part of its `input_tokens`.
    CacheCreation,
}

const FIELDS: usize = 5;

/// The last value seen of each field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    values: [u64; FIELDS],
    seen: u8,
}

impl Counts {
    pub(super) fn get(&self, f: Field) -> Option<u64> {
        let i = f as usize;
        (self.seen & (1 << i) != 0).then_some(self.values[i])
    }

    pub(super) fn set(&mut self, f: Field, v: u64) {
        let i = f as usize;
        self.values[i] = v;
        self.seen |= 1 << i;
    }

    /// `later`'s values replace these where it has one.
    pub(super) fn merge(&mut self, later: &Counts) {
        for i in 0..FIELDS {
            if later.seen & (1 << i) != 0 {
                self.values[i] = later.values[i];
            }
        }
        self.seen |= later.seen;
    }
}

/// The keys that matter; everything else, and every array level, is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Other,
    Usage,
    Response,
    Message,
    PromptTokens,
    CompletionTokens,
    PromptTokensDetails,
    InputTokens,
    OutputTokens,
    InputTokensDetails,
    CachedTokens,
    CacheRead,
    CacheCreation,
}

pub(super) fn key(name: &[u8]) -> Key {
    match name {
        b"usage" => Key::Usage,
        b"response" => Key::Response,
        b"message" => Key::Message,
        b"prompt_tokens" => Key::PromptTokens,
        b"completion_tokens" => Key::CompletionTokens,
        b"prompt_tokens_details" => Key::PromptTokensDetails,
        b"input_tokens" => Key::InputTokens,
        b"output_tokens" => Key::OutputTokens,
        b"input_tokens_details" => Key::InputTokensDetails,
        b"cached_tokens" => Key::CachedTokens,
        b"cache_read_input_tokens" => Key::CacheRead,
        b"cache_creation_input_tokens" => Key::CacheCreation,
        _ => Key::Other,
    }
}

/// The field a number at `path` fills, if the dialects that define both the path's prefix and
/// its key include an enabled one. `usage.input_tokens` is both OpenAI's (Responses) and
/// Anthropic's; `response.usage` is OpenAI's stream, `message.usage` Anthropic's.
pub(super) fn field(path: &[Key], openai: bool, anthropic: bool) -> Option<Field> {
    use Key::*;
    let (rest, p_openai, p_anthropic) = match path {
        [Usage, rest @ ..] => (rest, true, true),
        [Response, Usage, rest @ ..] => (rest, true, false),
        [Message, Usage, rest @ ..] => (rest, false, true),
        _ => return None,
    };
    let (f, k_openai, k_anthropic) = match rest {
        [PromptTokens] => (Field::Input, true, false),
        [CompletionTokens] => (Field::Output, true, false),
        [PromptTokensDetails | InputTokensDetails, CachedTokens] => (Field::Cached, true, false),
        [InputTokens] => (Field::Input, true, true),
        [OutputTokens] => (Field::Output, true, true),
        [CacheRead] => (Field::CacheRead, false, true),
        [CacheCreation] => (Field::CacheCreation, false, true),
        _ => return None,
    };
    let on = (openai && p_openai && k_openai) || (anthropic && p_anthropic && k_anthropic);
    on.then_some(f)
}
