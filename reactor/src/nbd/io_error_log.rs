//! Warnings for I/O errors returned to NBD clients, rate-limited per
//! export.
//!
//! This file owns `returned`, called for every backend error a client
//! gets: it logs a `warn!` line with the export, command, range and error,
//! at most [`LINES_PER_WINDOW`] lines per export per [`WINDOW`]; the lines
//! it holds back are counted and the count is reported on the next line
//! that goes out for that export. A failing disk therefore shows up in the
//! log at once without drowning it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::backend::BackendError;
use super::proto::Command;

/// Length of one rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Lines per export per window.
pub const LINES_PER_WINDOW: u32 = 5;

/// One export's window: when it started, lines logged in it, and lines
/// suppressed since the last logged one.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(now: Instant) -> RateLimit {
        RateLimit {
            start: now,
            lines: 0,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be logged: `Some(n)` with the number
    /// of events suppressed since the last logged one, or `None` (counted
    /// as suppressed).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.start) >= WINDOW {
            self.start = now;
            self.lines = 0;
        }
        if self.lines < LINES_PER_WINDOW {
            self.lines += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Windows by export name (exports are few; entries are tiny).
static LIMITS: Mutex<Option<HashMap<String, RateLimit>>> = Mutex::new(None);

/// Log (rate-limited) that `export` returned `err` to a client for `cmd`
/// over `[offset, offset + len)`.
pub(crate) fn returned(export: &str, cmd: Command, offset: u64, len: u64, err: &BackendError) {
    let now = Instant::now();
    let verdict = {
        let mut g = LIMITS.lock().unwrap_or_else(|p| p.into_inner());
        let map = g.get_or_insert_with(HashMap::new);
        match map.get_mut(export) {
            Some(l) => l.admit(now),
            None => {
                let mut l = RateLimit::new(now);
                let v = l.admit(now);
                map.insert(export.to_string(), l);
                v
            }
        }
    };
    match verdict {
        Some(0) => log::warn!(
            "nbd export {export:?}: {cmd:?} at offset {offset} length {len} failed: {err}"
        ),
        Some(n) => log::warn!(
            "nbd export {export:?}: {cmd:?} at offset {offset} length {len} failed: {err} \
             ({n} more I/O errors not logged)"
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_few_lines_per_window_then_the_count() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(t0);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(l.admit(t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(l.admit(t0 + Duration::from_millis(500)), None);
        }
        // Next window: logged again, reporting what was held back.
        assert_eq!(l.admit(t0 + WINDOW), Some(7));
        assert_eq!(l.admit(t0 + WINDOW), Some(0));
    }
}
