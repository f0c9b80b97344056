//! Usage scanning: any response body, in any framing and for any dialects, cut into frames at
//! points the input chooses, must give the same usage and event count as when fed whole, and
//! never a panic; the usage header's parser likewise takes any bytes.
#![no_main]

use cohort::usage::{parse_usage_header, Dialects, Framing, Scanner, Usage};
use libfuzzer_sys::fuzz_target;

fn scan(framing: Framing, d: Dialects, frames: &[&[u8]]) -> (Option<Usage>, u32) {
    let mut s = Scanner::new(framing, d);
    let events = frames.iter().map(|f| s.feed(f)).sum();
    (s.finish(), events)
}

fuzz_target!(|data: &[u8]| {
    // framing and dialects, two cut points, then the body.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((cuts, body)) = rest.split_at_checked(2) else {
        return;
    };
    let framing = [Framing::Sse, Framing::Json, Framing::None][(mode % 3) as usize];
    let d = Dialects {
        openai: mode & 8 != 0,
        anthropic: mode & 16 != 0,
        header: mode & 32 != 0,
    };
    let a = cuts[0] as usize % (body.len() + 1);
    let b = (a + cuts[1] as usize) % (body.len() + 1);
    let (a, b) = (a.min(b), a.max(b));
    let whole = scan(framing, d, &[body]);
    let cut = scan(framing, d, &[&body[..a], &body[a..b], &body[b..]]);
    assert_eq!(whole, cut);
    if let Some(u) = whole.0 {
        assert!(u.cached_input <= u.input);
    }
    if let Some(u) = parse_usage_header(body) {
        assert!(u.cached_input <= u.input);
    }
});
