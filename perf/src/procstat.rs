//! Resident memory of this process, read from `/proc/self/status`.
//!
//! `VmRSS` is what is resident now; `VmHWM` is the peak since the process
//! started. The open benchmark measures in a fresh process for exactly this
//! reason: the peak then belongs to the open alone, not to an earlier phase.

use serde::{Deserialize, Serialize};

/// Resident set now and its high-water mark, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
}

/// Read `VmRSS` and `VmHWM` (zero where the kernel does not report them).
pub fn mem() -> Mem {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_status() {
        let m = super::mem();
        assert!(m.rss > 0 && m.hwm >= m.rss, "{m:?}");
    }
}
