//! The demo's log lines while its live table is on screen: held back and printed above the
//! table at each redraw, instead of landing in the middle of it, where the next redraw (which
//! moves the cursor up by the table's height) would overwrite half of the table and leave the
//! rest stale.
//!
//! Owns: the held bytes and the writer `tracing` writes through. Must not touch: the table's
//! rows (`table`) or what is logged; main picks this writer only for `cohort demo` on a
//! terminal.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Bytes held while the table is drawn; more than this and the oldest whole lines go, so a
/// burst of warnings cannot grow the demo without bound.
const MAX_HELD: usize = 64 * 1024;

static HOLDING: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Where `tracing` writes in the demo: straight to stderr until the table holds the screen,
/// then into the held buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logs;

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !HOLDING.load(Ordering::Acquire) {
            return io::stderr().write(buf);
        }
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.extend_from_slice(buf);
        if held.len() > MAX_HELD {
            let excess = held.len() - MAX_HELD;
            let cut = held[excess..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(held.len(), |i| excess + i + 1);
            held.drain(..cut);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        Logs
    }
}

/// From now on, log lines wait for [`take`].
pub fn hold() {
    HOLDING.store(true, Ordering::Release);
}

/// The lines held since the last call, and whether to go on holding: the table calls this
/// before each redraw and prints them above itself.
pub fn take() -> Vec<u8> {
    std::mem::take(&mut *HELD.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Stops holding and writes out whatever is still held, so that nothing logged is lost when
/// the table goes.
pub fn release() {
    HOLDING.store(false, Ordering::Release);
    let rest = take();
    if !rest.is_empty() {
        let _ = io::stderr().write_all(&rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_held_then_released_and_a_burst_keeps_only_its_newest_whole_lines() {
        hold();
        let mut w = Logs;
        w.write_all(b"first\n").unwrap();
        assert_eq!(take(), b"first\n");
        assert!(take().is_empty());
        let line = [b'x'; 99];
        for _ in 0..1000 {
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
        }
        let held = take();
        assert!(held.len() <= MAX_HELD, "{}", held.len());
        assert_eq!(held.len() % 100, 0, "only whole lines are kept");
        assert_eq!(held.len(), (MAX_HELD / 100) * 100);
        release();
        assert!(!HOLDING.load(Ordering::Acquire));
    }
}
