//! The dm-compress seed's race, driven on purpose: a write is in flight
//! (its device completion delayed), the cache object is "reused" for another
//! chunk, another reader takes the first chunk's place and reads it. The read
//! must see the new data, never the stale on-disk copy; and blocks freed by an
//! overwrite must not be handed to another write before the freeing record is
//! durable.

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use sluice_engine::dev::{SimConfig, SimDev};
use sluice_engine::{Compression, Pool, PoolOptions, ZoneConfig};
use std::cell::RefCell;
use std::rc::Rc;

fn opts() -> PoolOptions {
    PoolOptions {
        zone_size: 4 << 20,
        zone: ZoneConfig::default(),
    }
}

#[test]
fn read_during_delayed_write_sees_new_data() {
    let dev = Rc::new(SimDev::new(16 << 20, SimConfig::default()));
    let mut exec = LocalPool::new();
    let pool = Rc::new(exec.run_until(Pool::format(dev.clone(), &opts())).unwrap());
    let v = exec
        .run_until(pool.create_volume("v", 1 << 20, 65536, Compression::Lz4))
        .unwrap();
    let old = vec![0x11u8; 65536];
    let new = vec![0x22u8; 65536];
    let other = vec![0x33u8; 65536];
    exec.run_until(pool.write(&v, 0, &old)).unwrap();
    exec.run_until(pool.flush()).unwrap();

    // 1. "object x flushes": the write of chunk 0 is issued; its completion is delayed.
    dev.hold_writes();
    let sp = exec.spawner();
    let done = Rc::new(RefCell::new(Vec::new()));
    {
        let (pool, done, new) = (pool.clone(), done.clone(), new.clone());
        sp.spawn_local(async move {
            pool.write(&v, 0, &new).await.unwrap();
            done.borrow_mut().push("write x");
        })
        .unwrap();
    }
    // 2. "object x is reused as y": another chunk's write goes out too.
    {
        let (pool, done, other) = (pool.clone(), done.clone(), other.clone());
        sp.spawn_local(async move {
            pool.write(&v, 65536, &other).await.unwrap();
            done.borrow_mut().push("write y");
        })
        .unwrap();
    }
    // 3. "another object takes x and reads": a read of chunk 0.
    let got = Rc::new(RefCell::new(Vec::new()));
    {
        let (pool, done, got) = (pool.clone(), done.clone(), got.clone());
        sp.spawn_local(async move {
            let mut buf = vec![0u8; 65536];
            pool.read(&v, 0, &mut buf).await.unwrap();
            *got.borrow_mut() = buf;
            done.borrow_mut().push("read x");
        })
        .unwrap();
    }
    exec.run_until_stalled();
    assert!(
        done.borrow().is_empty(),
        "nothing may complete while the device holds writes: {:?}",
        done.borrow()
    );
    // 4. The writes complete.
    dev.release_writes();
    exec.run();
    assert_eq!(done.borrow().len(), 3);
    let pos_w = done.borrow().iter().position(|s| *s == "write x").unwrap();
    let pos_r = done.borrow().iter().position(|s| *s == "read x").unwrap();
    assert!(
        pos_w < pos_r,
        "the read must wait for the in-flight write: {:?}",
        done.borrow()
    );
    assert!(
        *got.borrow() == new,
        "stale read: got {:#x}, want {:#x}",
        got.borrow()[0],
        new[0]
    );
}

#[test]
fn freed_blocks_stay_busy_until_durable() {
    let dev = Rc::new(SimDev::new(16 << 20, SimConfig::default()));
    let pool = futures::executor::block_on(Pool::format(dev.clone(), &opts())).unwrap();
    futures::executor::block_on(async {
        let v = pool
            .create_volume("v", 4 << 20, 65536, Compression::None)
            .await
            .unwrap();
        let z = v.zone_of(0, pool.geometry().nzones) as usize;
        pool.write(&v, 0, &vec![1u8; 65536]).await.unwrap();
        pool.flush().await.unwrap();
        let first = pool.zones()[z].lookup(v.id, 0).await.unwrap().unwrap();
        // Overwrite: chunk 0 moves; its old blocks are freed but not yet durable.
        pool.write(&v, 0, &vec![2u8; 65536]).await.unwrap();
        // Fill the zone's stripe with more writes; none may land on the old blocks.
        for c in 1..16u64 {
            pool.write(&v, c * 65536, &vec![3u8; 65536]).await.unwrap();
            let e = pool.zones()[z].lookup(v.id, c).await.unwrap().unwrap();
            let overlap =
                e.pblk < first.pblk + first.nblk as u32 && first.pblk < e.pblk + e.nblk as u32;
            assert!(
                !overlap,
                "chunk {c} reused blocks freed by an undurable record"
            );
        }
        // After a flush the old blocks are reusable again.
        let before = pool.zones()[z].free_data_blocks();
        pool.flush().await.unwrap();
        assert_eq!(
            pool.zones()[z].free_data_blocks(),
            before + first.nblk as u32
        );
    });
    // A crash now (everything flushed) must still read the second version of chunk 0.
    let d2 = Rc::new(SimDev::from_image(dev.crash_image(), SimConfig::default()));
    let p2 = futures::executor::block_on(Pool::open(d2, &opts())).unwrap();
    let v = p2.volume("v").unwrap();
    let mut buf = vec![0u8; 65536];
    futures::executor::block_on(p2.read(&v, 0, &mut buf)).unwrap();
    assert!(buf.iter().all(|&b| b == 2));
}
