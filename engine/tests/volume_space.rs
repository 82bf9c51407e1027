//! Per-volume space (`volume_get_volumes`' `mapped_bytes` and
//! `allocated_bytes`): the figures follow writes, overwrites, holes,
//! discards, shrinks and deletes; reopening gives the same figures; the
//! per-zone table built while writes go on matches the trees.

#[path = "data_common.rs"]
mod data;

use data::random;
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use sluice_engine::dev::{BlockDev, BufResult, MemDev};
use sluice_engine::{AlignedBuf, Compression, Pool, PoolOptions, VolInfo, VolumeSpace, ZoneConfig};
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

fn opts(zone_size: u64, cache_nodes: usize) -> PoolOptions {
    PoolOptions {
        zone_size,
        zone: ZoneConfig {
            cache_nodes,
            ..ZoneConfig::default()
        },
    }
}

/// Bytes lz4 packs to about a fifth: 8 random bytes in every 64.
fn compressible(seed: u64, len: usize) -> Vec<u8> {
    let r = random(seed, len);
    (0..len)
        .map(|i| if i % 64 < 8 { r[i] } else { b'a' })
        .collect()
}

fn space_of<D: BlockDev>(pool: &Pool<D>, v: &VolInfo) -> VolumeSpace {
    block_on(pool.volume_space())
        .expect("volume space")
        .get(&v.id)
        .copied()
        .unwrap_or_default()
}

fn assert_clean<D: BlockDev>(pool: &Pool<D>) {
    let problems = block_on(pool.check(false)).expect("scrub");
    assert!(problems.is_empty(), "scrub: {problems:#?}");
}

/// The volumes' figures add up to the pool's data and logical bytes.
fn assert_sums<D: BlockDev>(pool: &Pool<D>) {
    let all = block_on(pool.volume_space()).expect("volume space");
    let u = pool.usage();
    let alloc: u64 = all.values().map(|s| s.allocated_bytes()).sum();
    let mapped: u64 = all.values().map(|s| s.mapped_bytes).sum();
    assert_eq!(alloc, u.data_bytes, "allocated vs the pool's data bytes");
    assert_eq!(
        mapped, u.logical_used_bytes,
        "mapped vs the pool's logical bytes"
    );
}

fn raw(chunks: u64, cs: u64) -> VolumeSpace {
    VolumeSpace {
        chunks,
        mapped_bytes: chunks * cs,
        data_blocks: chunks * cs / 4096,
    }
}

#[test]
fn figures_follow_writes_overwrites_discards_and_shrinks() {
    let dev = Rc::new(MemDev::new(512 * M));
    let o = opts(64 * M, 1024);
    let pool = block_on(Pool::format_with_uuid(dev.clone(), &o, [7; 16])).unwrap();
    let cs = 64 * K;
    // Uncompressed: every mapped chunk takes exactly 16 blocks.
    let a = block_on(pool.create_volume("a", 16 * M, cs, Compression::None)).unwrap();
    let b = block_on(pool.create_volume("b", 16 * M, cs, Compression::Lz4)).unwrap();
    assert_eq!(space_of(&pool, &a), VolumeSpace::default());

    // 1 MiB of data: 16 chunks, 1 MiB on the pool.
    block_on(pool.write(&a, 0, &random(1, M as usize))).unwrap();
    assert_eq!(space_of(&pool, &a), raw(16, cs));
    // 4 KiB inside chunk 128: the chunk counts whole (stored raw, 16 blocks).
    block_on(pool.write(&a, 8 * M, &random(2, 4096))).unwrap();
    assert_eq!(space_of(&pool, &a), raw(17, cs));
    // Overwrite the first MiB: nothing changes (the old blocks are busy
    // until the next log write, and no volume owns them).
    block_on(pool.write(&a, 0, &random(3, M as usize))).unwrap();
    assert_eq!(space_of(&pool, &a), raw(17, cs));
    assert_sums(&pool);
    // Zeros over a whole chunk make it a hole.
    block_on(pool.write(&a, 0, &vec![0; cs as usize])).unwrap();
    assert_eq!(space_of(&pool, &a), raw(16, cs));
    // Discard (TRIM / WRITE_ZEROES) of chunks 4..7.
    block_on(pool.write_zeroes(&a, 4 * cs, 4 * cs)).unwrap();
    assert_eq!(space_of(&pool, &a), raw(12, cs));
    // Zeroing part of a chunk keeps it mapped.
    block_on(pool.write_zeroes(&a, cs + 512, 4096)).unwrap();
    assert_eq!(space_of(&pool, &a), raw(12, cs));
    assert_clean(&pool);
    assert_sums(&pool);

    // Shrink to 200 KiB: chunks 1, 2 and the kept head of chunk 3 remain.
    let a = block_on(pool.resize_volume("a", 200 * K)).unwrap();
    assert_eq!(space_of(&pool, &a), raw(3, cs));
    // Growing back maps nothing.
    let a = block_on(pool.resize_volume("a", 16 * M)).unwrap();
    assert_eq!(space_of(&pool, &a), raw(3, cs));

    // A compressing volume stores less than it maps.
    block_on(pool.write(&b, 0, &compressible(4, 2 * M as usize))).unwrap();
    let sb = space_of(&pool, &b);
    assert_eq!((sb.chunks, sb.mapped_bytes), (32, 2 * M));
    assert!(
        sb.allocated_bytes() < M && sb.data_blocks >= sb.chunks,
        "lz4 volume: {sb:?}"
    );
    assert_eq!(space_of(&pool, &a), raw(3, cs), "another volume's figure");
    assert_clean(&pool);
    assert_sums(&pool);

    // Reopen (clean close, then after a crash with unflushed changes gone).
    let before = block_on(pool.volume_space()).unwrap();
    block_on(pool.close()).unwrap();
    let pool = block_on(Pool::open(dev.clone(), &o)).unwrap();
    assert!(
        pool.zones().iter().all(|z| !z.volume_space_built()),
        "the table is built on first use, not at open"
    );
    assert_eq!(block_on(pool.volume_space()).unwrap(), before);
    assert!(pool.zones().iter().all(|z| z.volume_space_built()));
    assert_clean(&pool);

    // Log replay: flushed changes after the last checkpoint come back.
    block_on(pool.write(&b, 4 * M, &random(5, 3 * cs as usize))).unwrap();
    block_on(pool.flush()).unwrap();
    let replayed = block_on(pool.volume_space()).unwrap();
    assert_eq!(replayed[&b.id].chunks, 35);
    let image = dev.image();
    drop(pool);
    let pool = block_on(Pool::open(Rc::new(MemDev::from_image(image)), &o)).unwrap();
    assert!(
        pool.zones()
            .iter()
            .map(|z| z.stats().replayed_records)
            .sum::<u64>()
            > 0
    );
    assert_eq!(block_on(pool.volume_space()).unwrap(), replayed);
    assert_clean(&pool);

    // Delete: the volume's figures are gone, the other's stay.
    block_on(pool.delete_volume("b")).unwrap();
    let after = block_on(pool.volume_space()).unwrap();
    assert!(!after.contains_key(&b.id), "{after:?}");
    assert_eq!(after[&a.id], raw(3, cs));
    assert_sums(&pool);
    assert_clean(&pool);
}

/// A device whose every read and write first yields to the executor, so
/// that tasks interleave wherever the engine awaits I/O.
struct YieldDev(MemDev);

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl BlockDev for YieldDev {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        YieldOnce(false).await;
        self.0.read_at(buf, offset).await
    }
    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        YieldOnce(false).await;
        self.0.write_at(buf, offset).await
    }
    async fn flush(&self) -> std::io::Result<()> {
        self.0.flush().await
    }
}

/// The table of a zone is built in batches while writes, overwrites, holes
/// and discards commit in between (a small node cache makes the scan read
/// nodes from the device, yielding with the trees lock held). Afterwards
/// it matches the trees (scrub) and a table built on a quiet reopen.
#[test]
fn table_built_while_writes_go_on_matches_the_trees() {
    let dev = Rc::new(YieldDev(MemDev::new(256 * M)));
    let o = opts(32 * M, 8);
    let mut exec = LocalPool::new();
    let pool = exec
        .run_until(Pool::format_with_uuid(dev.clone(), &o, [8; 16]))
        .unwrap();
    let cs = 4 * K;
    let v = exec
        .run_until(pool.create_volume("v", 128 * M, cs, Compression::None))
        .unwrap();
    // 120 MiB of 4 KiB chunks: several scan batches (1024) in every zone.
    for i in 0..120u64 {
        exec.run_until(pool.write(&v, i * M, &random(10 + i, M as usize)))
            .unwrap();
    }
    let nzones = pool.zones().len() as u64;
    assert!(120 * M / cs / nzones > 4 * 1024, "{nzones} zones");
    exec.run_until(pool.close()).unwrap();
    let pool = Rc::new(exec.run_until(Pool::open(dev.clone(), &o)).unwrap());

    let writes_done = Rc::new(Cell::new(0u32));
    let at_scan_end = Rc::new(Cell::new(None));
    let sp = exec.spawner();
    {
        let (pool, writes_done, at_scan_end) =
            (pool.clone(), writes_done.clone(), at_scan_end.clone());
        sp.spawn_local(async move {
            pool.volume_space().await.unwrap();
            at_scan_end.set(Some(writes_done.get()));
        })
        .unwrap();
    }
    const WRITERS: u64 = 32;
    const OPS: u64 = 20;
    for w in 0..WRITERS {
        let (pool, writes_done) = (pool.clone(), writes_done.clone());
        sp.spawn_local(async move {
            let mut x = 0x1234_5678 + w;
            for i in 0..OPS {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Anywhere in 128 MiB: overwrites, new chunks past 120 MiB.
                let chunk = (x >> 20) % (128 * M / cs - 3);
                let off = chunk * cs;
                match i % 5 {
                    0 => pool.write_zeroes(&v, off, cs * 3).await,
                    1 => pool.write(&v, off, &vec![0; cs as usize]).await,
                    _ => pool.write(&v, off, &random(x, 2 * cs as usize)).await,
                }
                .unwrap();
                writes_done.set(writes_done.get() + 1);
            }
        })
        .unwrap();
    }
    exec.run();
    let seen = at_scan_end.get().expect("the scan finished");
    println!(
        "{seen} of {} writes done when the table was complete",
        WRITERS * OPS
    );
    assert!(
        seen > 0 && seen < (WRITERS * OPS) as u32,
        "writes must commit while the table is built ({seen} before its end)"
    );
    let live = exec.run_until(pool.volume_space()).unwrap();
    let problems = exec.run_until(pool.check(false)).unwrap();
    assert!(problems.is_empty(), "scrub: {problems:#?}");
    let u = pool.usage();
    assert_eq!(live[&v.id].allocated_bytes(), u.data_bytes);
    assert_eq!(live[&v.id].mapped_bytes, u.logical_used_bytes);

    drop(sp);
    let pool = Rc::try_unwrap(pool).ok().expect("every task is done");
    exec.run_until(pool.close()).unwrap();
    let pool = exec.run_until(Pool::open(dev.clone(), &o)).unwrap();
    let quiet: HashMap<u32, VolumeSpace> = exec.run_until(pool.volume_space()).unwrap();
    assert_eq!(quiet, live);
}
