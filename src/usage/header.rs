//! cohort's own usage header (or trailer) for custom agents:
//! `x-agent-usage: input=812, output=164, cached=100`.
//!
//! Owns that grammar alone: comma-separated `key=value` pairs in any order, spaces optional,
//! keys case-insensitive, unknown keys ignored, `input` and `output` required, `cached`
//! optional and part of `input`. A value that is not a plain decimal u64, a repeated key or a
//! pair without `=` makes the whole header unusable: a guess would be a wrong count.

use super::Usage;

pub const USAGE_HEADER: &str = "x-agent-usage";

/// The usage a header value states, or None if it is malformed or incomplete.
pub fn parse_usage_header(value: &[u8]) -> Option<Usage> {
    let mut input = None;
    let mut output = None;
    let mut cached = None;
    for pair in value.split(|&b| b == b',') {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = pair[..eq].trim_ascii();
        let number = pair[eq + 1..].trim_ascii();
        let slot = if name.eq_ignore_ascii_case(b"input") {
            &mut input
        } else if name.eq_ignore_ascii_case(b"output") {
            &mut output
        } else if name.eq_ignore_ascii_case(b"cached") {
            &mut cached
        } else if name.is_empty() {
            return None;
        } else {
            continue;
        };
        if slot.replace(decimal(number)?).is_some() {
            return None;
        }
    }
    let (input, output, cached_input) = (input?, output?, cached.unwrap_or(0));
    (cached_input <= input).then_some(Usage {
        input,
        output,
        cached_input,
    })
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}
