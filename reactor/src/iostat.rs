//! Per-volume I/O statistics. Each reactor counts the requests it serves in
//! its own thread-local table (no locks, no atomics on the I/O path); a
//! report gathers and merges the tables of every reactor.

use crate::reactor::ReactorsHandle;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Trim,
}

#[derive(Clone)]
pub struct VolIo {
    pub ops: [u64; 4],
    pub bytes: [u64; 4],
    pub errors: u64,
    /// Latency in microseconds, reads and writes.
    pub read_us: Histogram<u64>,
    pub write_us: Histogram<u64>,
}

impl VolIo {
    fn new() -> Self {
        let h = || {
            Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
        };
        VolIo {
            ops: [0; 4],
            bytes: [0; 4],
            errors: 0,
            read_us: h(),
            write_us: h(),
        }
    }

    fn merge(&mut self, o: &VolIo) {
        for i in 0..4 {
            self.ops[i] += o.ops[i];
            self.bytes[i] += o.bytes[i];
        }
        self.errors += o.errors;
        let _ = self.read_us.add(&o.read_us);
        let _ = self.write_us.add(&o.write_us);
    }
}

thread_local! {
    /// pool name -> volume id -> counters. Nested so that counting a request
    /// looks the pool up by `&str` and allocates nothing after the first one.
    static TABLE: RefCell<foldhash::HashMap<String, foldhash::HashMap<u32, VolIo>>> =
        RefCell::new(Default::default());
}

/// Count one finished request on the calling thread.
pub fn record(pool: &str, vol: u32, kind: OpKind, bytes: u64, took: Duration, ok: bool) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if !t.contains_key(pool) {
            t.insert(pool.to_string(), Default::default());
        }
        let Some(vols) = t.get_mut(pool) else { return };
        let e = vols.entry(vol).or_insert_with(VolIo::new);
        let i = kind as usize;
        e.ops[i] += 1;
        e.bytes[i] += bytes;
        if !ok {
            e.errors += 1;
        }
        let us = took.as_micros().clamp(1, 60_000_000) as u64;
        match kind {
            OpKind::Read => {
                let _ = e.read_us.record(us);
            }
            OpKind::Write => {
                let _ = e.write_us.record(us);
            }
            _ => {}
        }
    });
}

/// Merge the tables of all `n` reactors.
pub fn gather(reactors: &ReactorsHandle, n: usize) -> HashMap<(String, u32), VolIo> {
    gather_and_reset(reactors, n, None)
}

/// Which counters a report zeroes: (pool, volume id) -> reset?
pub type ResetFilter = Arc<dyn Fn(&str, u32) -> bool + Send + Sync>;

/// [`gather`]; the volumes `reset` selects are zeroed on each reactor in
/// the same step they are read, so no request is counted twice or lost
/// between the read and the reset.
pub fn gather_and_reset(
    reactors: &ReactorsHandle,
    n: usize,
    reset: Option<ResetFilter>,
) -> HashMap<(String, u32), VolIo> {
    let mut out: HashMap<(String, u32), VolIo> = HashMap::new();
    for r in 0..n {
        let reset = reset.clone();
        let part = reactors
            .call(r, move || async move {
                TABLE.with(|t| {
                    let mut t = t.borrow_mut();
                    let snap = t.clone();
                    if let Some(f) = reset {
                        for (pool, vols) in t.iter_mut() {
                            vols.retain(|v, _| !f(pool, *v));
                        }
                    }
                    snap
                })
            })
            .unwrap_or_default();
        let flat = part
            .into_iter()
            .flat_map(|(p, vols)| vols.into_iter().map(move |(v, io)| ((p.clone(), v), io)));
        for (k, v) in flat {
            match out.get_mut(&k) {
                Some(e) => e.merge(&v),
                None => {
                    out.insert(k, v);
                }
            }
        }
    }
    out
}
