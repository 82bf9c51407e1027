//! The daemon's event log: one line per event on stderr, with a UTC
//! timestamp and a level, written as it happens. Libraries log through the
//! `log` facade; `sluiced` installs this logger once at start.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

/// Install the logger at `level` (later calls keep the first logger).
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Parse a level name ("error", "warn", "info", "debug", "trace", "off").
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse::<LevelFilter>()
        .map_err(|_| format!("unknown log level '{s}' (error, warn, info, debug, trace, off)"))
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!("{} {:<5} {}\n", utc_now(), r.level(), r.args());
        // One write per line: lines from several threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if r.level() == Level::Error {
            let _ = std::io::stderr().flush();
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A JSON value shortened for the log: strings over 64 characters are cut,
/// so a huge parameter never floods it.
pub fn short_json(v: &serde_json::Value) -> String {
    fn cut(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) if s.chars().count() > 64 => {
                Value::String(format!("{}…", s.chars().take(64).collect::<String>()))
            }
            Value::Array(a) => Value::Array(a.iter().take(16).map(cut).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .take(16)
                    .map(|(k, v)| (k.chars().take(64).collect(), cut(v)))
                    .collect(),
            ),
            v => v.clone(),
        }
    }
    cut(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn long_strings_are_cut() {
        let v = serde_json::json!({"name": "x".repeat(10_000), "size": 5});
        let s = short_json(&v);
        assert!(s.len() < 200, "{s}");
        assert!(s.contains("\"size\":5"), "{s}");
    }
}
