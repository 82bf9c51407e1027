//! [`Metered`]: a block device wrapper that counts operations, bytes and
//! time per kind of I/O.
//!
//! The open benchmark wraps the pool's device in it so the report can say how
//! much an open *read* — the claim under test is that this depends on zone
//! count and log length, not on the data stored — and where its wall time
//! went (reads vs. the flushes of the checkpoint every open ends with).
//! Timing an `await` is exact here because the wrapped devices complete
//! synchronously.

use serde::{Deserialize, Serialize};
use sluice_engine::dev::{BlockDev, BufResult};
use sluice_engine::AlignedBuf;
use std::cell::Cell;
use std::io;
use std::ops::Sub;
use std::time::Instant;

/// Totals since the device was wrapped; subtract two snapshots for a phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct IoCounts {
    pub reads: u64,
    pub read_bytes: u64,
    pub read_ns: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub write_ns: u64,
    pub flushes: u64,
    pub flush_ns: u64,
}

impl Sub for IoCounts {
    type Output = IoCounts;
    fn sub(self, o: IoCounts) -> IoCounts {
        IoCounts {
            reads: self.reads - o.reads,
            read_bytes: self.read_bytes - o.read_bytes,
            read_ns: self.read_ns - o.read_ns,
            writes: self.writes - o.writes,
            write_bytes: self.write_bytes - o.write_bytes,
            write_ns: self.write_ns - o.write_ns,
            flushes: self.flushes - o.flushes,
            flush_ns: self.flush_ns - o.flush_ns,
        }
    }
}

pub struct Metered<D> {
    inner: D,
    c: Cell<IoCounts>,
}

impl<D> Metered<D> {
    pub fn new(inner: D) -> Self {
        Metered {
            inner,
            c: Cell::new(IoCounts::default()),
        }
    }

    pub fn counts(&self) -> IoCounts {
        self.c.get()
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn bump(&self, f: impl FnOnce(&mut IoCounts)) {
        let mut c = self.c.get();
        f(&mut c);
        self.c.set(c);
    }
}

fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

impl<D: BlockDev> BlockDev for Metered<D> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        let n = buf.len() as u64;
        let t = Instant::now();
        let r = self.inner.read_at(buf, offset).await;
        let ns = ns_since(t);
        self.bump(|c| {
            c.reads += 1;
            c.read_bytes += n;
            c.read_ns += ns;
        });
        r
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        let n = buf.len() as u64;
        let t = Instant::now();
        let r = self.inner.write_at(buf, offset).await;
        let ns = ns_since(t);
        self.bump(|c| {
            c.writes += 1;
            c.write_bytes += n;
            c.write_ns += ns;
        });
        r
    }

    async fn flush(&self) -> io::Result<()> {
        let t = Instant::now();
        let r = self.inner.flush().await;
        let ns = ns_since(t);
        self.bump(|c| {
            c.flushes += 1;
            c.flush_ns += ns;
        });
        r
    }
}
