//! A pool on a thin file whose host file system fills up: only the data
//! writes that do not fit fail (no-space, the zone stays online), and a zone
//! that must stop (a failed log write) still serves reads, says so once and
//! shows up in scrub.

#[path = "data_common.rs"]
mod data;

use futures::executor::block_on;
use sluice_engine::dev::{BlockDev, BufResult, MemDev, SimConfig, SimDev};
use sluice_engine::format::Geometry;
use sluice_engine::{AlignedBuf, Compression, Error, Pool, PoolOptions, ZoneConfig, BLOCK_SIZE};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::rc::Rc;

const ZONE: u64 = 8 << 20;

fn opts() -> PoolOptions {
    PoolOptions {
        zone_size: ZONE,
        zone: ZoneConfig::default(),
    }
}

/// A thin file on a host file system with `room` blocks left: a write to a
/// block not yet allocated takes one, and fails with ENOSPC when none is
/// left. Metadata ranges are allocated up front, as `preallocate_metadata`
/// does for a pool file.
struct ThinFile {
    mem: MemDev,
    allocated: RefCell<HashSet<u64>>,
    room: Cell<u64>,
    /// Writes that had to allocate (on a real file system with io_uring:
    /// each one runs on an io-wq worker instead of inline).
    allocating_writes: Cell<u64>,
}

impl ThinFile {
    fn new(size: u64, room: u64) -> Self {
        let geo = Geometry::for_device([0; 16], size, ZONE).unwrap();
        let bs = BLOCK_SIZE as u64;
        let allocated = geo
            .metadata_ranges()
            .into_iter()
            .flat_map(|r| r.start / bs..r.end / bs)
            .collect();
        ThinFile {
            mem: MemDev::new(size),
            allocated: RefCell::new(allocated),
            room: Cell::new(room),
            allocating_writes: Cell::new(0),
        }
    }
}

impl BlockDev for ThinFile {
    fn size(&self) -> u64 {
        self.mem.size()
    }

    async fn read_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        self.mem.read_at(buf, offset).await
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        let bs = BLOCK_SIZE as u64;
        let blocks = offset / bs..(offset + buf.len() as u64) / bs;
        let new: Vec<u64> = {
            let a = self.allocated.borrow();
            blocks.filter(|b| !a.contains(b)).collect()
        };
        if new.len() as u64 > self.room.get() {
            return (buf, Err(io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        if !new.is_empty() {
            self.allocating_writes.set(self.allocating_writes.get() + 1);
        }
        self.room.set(self.room.get() - new.len() as u64);
        self.allocated.borrow_mut().extend(new);
        self.mem.write_at(buf, offset).await
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// fallocate: all of the range or, with too little room, none of it.
    async fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let bs = BLOCK_SIZE as u64;
        let new: Vec<u64> = {
            let a = self.allocated.borrow();
            (offset / bs..(offset + len) / bs)
                .filter(|b| !a.contains(b))
                .collect()
        };
        if new.len() as u64 > self.room.get() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.room.set(self.room.get() - new.len() as u64);
        self.allocated.borrow_mut().extend(new);
        Ok(())
    }
}

/// After a sequential fill, random overwrites take blocks past the zone's
/// high-water mark until freed ones come back; none of those writes (nor
/// the fill's) may make the file system allocate: space is allocated ahead,
/// a step at a time, and the file runs at most a step past the mark.
#[test]
fn writes_land_on_space_allocated_ahead() {
    let size = 64 << 20;
    let dev = Rc::new(ThinFile::new(size, u64::MAX / 2));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 24 << 20, 4096, Compression::None)).unwrap();
    for mb in 0..24u64 {
        let data: Vec<u8> = (0..256).flat_map(|i| block(mb * 256 + i)).collect();
        block_on(pool.write(&v, mb << 20, &data)).unwrap();
    }
    block_on(pool.flush()).unwrap();
    let mut x = 7u64;
    for i in 0..3000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let chunk = (x >> 33) % (24 << 8);
        block_on(pool.write(&v, chunk * 4096, &block(100_000 + i))).unwrap();
    }
    assert_eq!(
        dev.allocating_writes.get(),
        0,
        "writes that had to allocate"
    );
    let geo = pool.geometry().clone();
    let step = (geo.data_blocks() / 32).max(16) as u64;
    let a = dev.allocated.borrow();
    for z in pool.zones() {
        let data_alloc = (geo.data_start..geo.zone_blocks)
            .filter(|&b| a.contains(&geo.abs(z.index(), b)))
            .count() as u64;
        let in_use = (z.high_water() - geo.data_start) as u64;
        assert!(
            data_alloc <= in_use + step,
            "zone {}: {data_alloc} data blocks allocated, mark at {in_use}, step {step}",
            z.index()
        );
    }
    assert!(
        pool.zones()
            .iter()
            .map(|z| z.stats().preallocations)
            .sum::<u64>()
            > 0
    );
}

fn block(seed: u64) -> Vec<u8> {
    data::random(seed, BLOCK_SIZE)
}

#[test]
fn full_host_fails_only_the_data_writes_that_do_not_fit() {
    block_on(async {
        let dev = Rc::new(ThinFile::new(2 * ZONE + (1 << 20), 40));
        let pool = Pool::format(dev.clone(), &opts()).await.unwrap();
        assert_eq!(pool.zones().len(), 2);
        let v = pool
            .create_volume("v", 64 << 20, 4096, Compression::None)
            .await
            .unwrap();
        let mut written = Vec::new();
        let mut err = None;
        for c in 0..200u64 {
            match pool.write(&v, c * 4096, &block(c)).await {
                Ok(()) => written.push(c),
                Err(e) => {
                    err = Some((c, e));
                    break;
                }
            }
        }
        let (c, e) = err.expect("the host never filled up");
        assert_eq!(written.len(), 40, "every block of room was used");
        assert!(matches!(e, Error::NoSpace(_)), "{e}");
        assert_eq!(e.errno(), libc::ENOSPC);
        let z = &pool.zones()[v.zone_of(c, 2) as usize];
        assert!(
            z.is_failed().is_none(),
            "zone shut down: {:?}",
            z.is_failed()
        );
        // The failed write gave its blocks back: the next one gets the same
        // answer, not a leak.
        let free = z.free_data_blocks();
        assert!(pool.write(&v, c * 4096, &block(c)).await.is_err());
        assert_eq!(z.free_data_blocks(), free);
        // The log lives in allocated blocks: FLUSH works on a full host.
        pool.flush().await.unwrap();
        let mut buf = vec![0u8; 4096];
        for &w in &written {
            pool.read(&v, w * 4096, &mut buf).await.unwrap();
            assert!(buf == block(w), "chunk {w} reads back wrong");
        }
        // Room again: writes go on, and scrub is clean.
        dev.room.set(1000);
        pool.write(&v, c * 4096, &block(c)).await.unwrap();
        pool.flush().await.unwrap();
        assert_eq!(pool.check(true).await.unwrap(), vec![]);
    });
}

#[test]
fn a_shut_down_zone_still_reads_and_is_reported_once() {
    block_on(async {
        let dev = Rc::new(SimDev::new(ZONE + (1 << 20), SimConfig::default()));
        let pool = Pool::format(dev.clone(), &opts()).await.unwrap();
        let v = pool
            .create_volume("v", 8 << 20, 4096, Compression::None)
            .await
            .unwrap();
        let told = Rc::new(RefCell::new(Vec::new()));
        let t = told.clone();
        pool.zones()[0].on_shutdown(move |z, why| t.borrow_mut().push((z, why.to_string())));
        pool.write(&v, 0, &block(1)).await.unwrap();
        pool.flush().await.unwrap();
        pool.write(&v, 4096, &block(2)).await.unwrap();
        dev.configure(|c| c.flush_error_rate = 1.0);
        assert!(pool.flush().await.is_err());
        assert!(pool.zones()[0].is_failed().is_some());
        assert_eq!(told.borrow().len(), 1, "{:?}", told.borrow());
        assert_eq!(told.borrow()[0].0, 0);
        // Writes are refused; reads of what the maps hold go on.
        let e = pool.write(&v, 8192, &block(3)).await.unwrap_err();
        assert!(matches!(e, Error::Shutdown { zone: 0, .. }), "{e}");
        let mut buf = vec![0u8; 4096];
        for (c, seed) in [(0u64, 1u64), (1, 2)] {
            pool.read(&v, c * 4096, &mut buf).await.unwrap();
            assert!(buf == block(seed), "chunk {c} reads back wrong");
        }
        pool.read(&v, 8192, &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 0), "a hole reads as zeros");
        assert!(pool.flush().await.is_err());
        assert_eq!(told.borrow().len(), 1, "told more than once");
        let problems = pool.check(false).await.unwrap();
        assert!(
            problems.iter().any(|p| p.zone == 0 && p.what == "shutdown"),
            "{problems:?}"
        );
    });
}
