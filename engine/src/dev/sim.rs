//! A simulated device for crash tests, driven by a seed so a failure replays.
//!
//! - Writes land in a volatile cache until `flush`; every version of a block
//!   written since the last flush is remembered.
//! - `crash_image` picks, per block, the durable version or any version
//!   written since (so multi-block writes tear at 4 KiB boundaries and later
//!   writes may survive while earlier ones do not).
//! - After `crash_after_ops` operations the device "loses power": every later
//!   operation fails with EIO.
//! - Reads, writes and flushes can fail with EIO at configured rates.
//! - Writes can be held (completion delayed) to provoke races in tests.

use super::{check_range, BlockDev, BufResult};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::task::{Poll, Waker};

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub seed: u64,
    /// Fail this fraction of reads / writes / flushes with EIO.
    pub read_error_rate: f64,
    pub write_error_rate: f64,
    pub flush_error_rate: f64,
    /// Power is lost when this many operations have been issued.
    pub crash_after_ops: Option<u64>,
}

/// The simulated device: durable bytes, unflushed versions per block, and
/// the fault-injection state.
struct SimDevState {
    durable: Vec<u8>,
    /// Block -> versions written since the last flush, oldest first.
    volatile: HashMap<u64, Vec<Box<[u8]>>>,
    rng: SmallRng,
    cfg: SimConfig,
    ops: u64,
    crashed: bool,
    stats: SimStats,
}

#[derive(Debug, Clone, Default)]
pub struct SimStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub injected_errors: u64,
}

pub struct SimDev {
    st: RefCell<SimDevState>,
    size: u64,
    hold_writes: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO ({what})"))
}

impl SimDev {
    pub fn new(size: u64, cfg: SimConfig) -> Self {
        Self::from_image(vec![0; size as usize], cfg)
    }

    pub fn from_image(image: Vec<u8>, cfg: SimConfig) -> Self {
        let size = image.len() as u64;
        SimDev {
            st: RefCell::new(SimDevState {
                durable: image,
                volatile: HashMap::new(),
                rng: SmallRng::seed_from_u64(cfg.seed),
                cfg,
                ops: 0,
                crashed: false,
                stats: SimStats::default(),
            }),
            size,
            hold_writes: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Change fault settings (e.g. arm a crash point after set-up).
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.st.borrow_mut().cfg);
    }

    pub fn ops(&self) -> u64 {
        self.st.borrow().ops
    }

    pub fn crashed(&self) -> bool {
        self.st.borrow().crashed
    }

    /// Lose power now.
    pub fn crash(&self) {
        self.st.borrow_mut().crashed = true;
    }

    pub fn stats(&self) -> SimStats {
        self.st.borrow().stats.clone()
    }

    /// What the media holds after power loss: per block, the durable version
    /// or any version written since the last flush, chosen by the seed.
    pub fn crash_image(&self) -> Vec<u8> {
        let mut st = self.st.borrow_mut();
        let mut img = st.durable.clone();
        let mut blocks: Vec<u64> = st.volatile.keys().copied().collect();
        blocks.sort_unstable();
        for b in blocks {
            let n = st.volatile[&b].len();
            let pick = st.rng.gen_range(0..=n);
            if pick > 0 {
                let o = (b as usize) * BLOCK_SIZE;
                img[o..o + BLOCK_SIZE].copy_from_slice(&st.volatile[&b][pick - 1]);
            }
        }
        img
    }

    /// The device as it would read now (durable plus newest volatile data).
    pub fn current_image(&self) -> Vec<u8> {
        let st = self.st.borrow();
        let mut img = st.durable.clone();
        for (b, v) in &st.volatile {
            let o = (*b as usize) * BLOCK_SIZE;
            if let Some(last) = v.last() {
                img[o..o + BLOCK_SIZE].copy_from_slice(last);
            }
        }
        img
    }

    /// Delay write completions until `release_writes`.
    pub fn hold_writes(&self) {
        self.hold_writes.set(true);
    }

    pub fn release_writes(&self) {
        self.hold_writes.set(false);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Count an op; fail it if power is lost or an error is injected.
    fn begin(&self, kind: &str, rate: impl Fn(&SimConfig) -> f64) -> io::Result<()> {
        let mut st = self.st.borrow_mut();
        st.ops += 1;
        if let Some(limit) = st.cfg.crash_after_ops {
            if st.ops > limit {
                st.crashed = true;
            }
        }
        if st.crashed {
            return Err(eio("power lost"));
        }
        let r = rate(&st.cfg);
        if r > 0.0 && st.rng.gen_bool(r.min(1.0)) {
            st.stats.injected_errors += 1;
            return Err(eio(kind));
        }
        Ok(())
    }

    async fn wait_released(&self) {
        poll_fn(|cx| {
            if self.hold_writes.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

impl BlockDev for SimDev {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, mut buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        if let Err(e) = self.begin("read", |c| c.read_error_rate) {
            return (buf, Err(e));
        }
        let mut st = self.st.borrow_mut();
        st.stats.reads += 1;
        for (i, chunk) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            let b = offset / BLOCK_SIZE as u64 + i as u64;
            match st.volatile.get(&b).and_then(|v| v.last()) {
                Some(v) => chunk.copy_from_slice(v),
                None => {
                    let o = b as usize * BLOCK_SIZE;
                    chunk.copy_from_slice(&st.durable[o..o + BLOCK_SIZE]);
                }
            }
        }
        (buf, Ok(()))
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        if let Err(e) = self.begin("write", |c| c.write_error_rate) {
            return (buf, Err(e));
        }
        self.wait_released().await;
        let mut st = self.st.borrow_mut();
        if st.crashed {
            return (buf, Err(eio("power lost")));
        }
        st.stats.writes += 1;
        for (i, chunk) in buf.chunks(BLOCK_SIZE).enumerate() {
            let b = offset / BLOCK_SIZE as u64 + i as u64;
            st.volatile.entry(b).or_default().push(chunk.into());
        }
        (buf, Ok(()))
    }

    async fn flush(&self) -> io::Result<()> {
        self.begin("flush", |c| c.flush_error_rate)?;
        let mut st = self.st.borrow_mut();
        st.stats.flushes += 1;
        let vol = std::mem::take(&mut st.volatile);
        for (b, v) in vol {
            if let Some(last) = v.last() {
                let o = b as usize * BLOCK_SIZE;
                st.durable[o..o + BLOCK_SIZE].copy_from_slice(last);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn blk(v: u8) -> AlignedBuf {
        AlignedBuf::from_slice(&[v; BLOCK_SIZE])
    }

    #[test]
    fn unflushed_writes_may_be_lost_flushed_never() {
        let mut lost = 0;
        let mut kept = 0;
        for seed in 0..64 {
            let d = SimDev::new(
                1 << 20,
                SimConfig {
                    seed,
                    ..Default::default()
                },
            );
            block_on(async {
                d.write_at(blk(1), 0).await.1.unwrap();
                d.flush().await.unwrap();
                d.write_at(blk(2), 4096).await.1.unwrap();
            });
            let img = d.crash_image();
            assert_eq!(img[0], 1, "flushed write must survive (seed {seed})");
            match img[4096] {
                0 => lost += 1,
                2 => kept += 1,
                x => panic!("impossible content {x}"),
            }
        }
        assert!(lost > 0 && kept > 0, "lost {lost} kept {kept}");
    }

    #[test]
    fn multi_block_writes_tear_and_replay_by_seed() {
        let run = |seed| {
            let d = SimDev::new(
                1 << 20,
                SimConfig {
                    seed,
                    ..Default::default()
                },
            );
            block_on(async {
                d.write_at(AlignedBuf::from_slice(&[7u8; 8 * BLOCK_SIZE]), 0)
                    .await
                    .1
                    .unwrap();
            });
            let img = d.crash_image();
            (0..8).map(|i| img[i * BLOCK_SIZE]).collect::<Vec<_>>()
        };
        let torn = (0..32).any(|s| {
            let v = run(s);
            v.contains(&0) && v.contains(&7)
        });
        assert!(torn, "some seed must tear an 8-block write");
        assert_eq!(run(5), run(5), "same seed, same crash");
    }

    #[test]
    fn crash_point_fails_later_ops() {
        let d = SimDev::new(
            1 << 20,
            SimConfig {
                seed: 1,
                crash_after_ops: Some(2),
                ..Default::default()
            },
        );
        block_on(async {
            assert!(d.write_at(blk(1), 0).await.1.is_ok());
            assert!(d.write_at(blk(1), 4096).await.1.is_ok());
            assert!(d.write_at(blk(1), 8192).await.1.is_err());
            assert!(d.flush().await.is_err());
        });
        assert!(d.crashed());
    }

    #[test]
    fn injected_errors_are_reported() {
        let d = SimDev::new(
            1 << 20,
            SimConfig {
                seed: 3,
                write_error_rate: 1.0,
                ..Default::default()
            },
        );
        let r = block_on(d.write_at(blk(1), 0)).1;
        assert!(r.is_err());
        assert_eq!(d.stats().injected_errors, 1);
    }
}
