//! The zone counters come from the superblock; a superblock whose counters
//! say less than the trees hold (checksummed, so written wrong rather than
//! damaged) must make an unmap fail with a corruption error naming the
//! superblock, never wrap a counter or panic.

#[path = "data_common.rs"]
mod data;

use data::random;
use futures::executor::block_on;
use sluice_engine::dev::MemDev;
use sluice_engine::error::Structure;
use sluice_engine::format::superblock::ZoneCounters;
use sluice_engine::format::Superblock;
use sluice_engine::{Compression, Error, Pool, PoolOptions, ZoneConfig, BLOCK_SIZE};
use std::rc::Rc;

#[test]
fn counters_below_the_trees_fail_loudly_on_unmap() {
    let opts = PoolOptions {
        zone_size: 2 << 20,
        zone: ZoneConfig::default(),
    };
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts)).expect("format");
    let v = block_on(pool.create_volume("v", 256 << 10, 4096, Compression::None)).unwrap();
    block_on(pool.write(&v, 0, &random(7, 256 << 10))).unwrap();
    let g = pool.geometry().clone();
    block_on(pool.close()).unwrap();

    // Every superblock copy of every zone says "nothing mapped".
    let img = dev.image();
    for z in 0..g.nzones {
        for (slot, copy) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let blk = g.abs(z, g.sb_rel(slot, copy));
            let o = blk as usize * BLOCK_SIZE;
            if let Some(mut sb) =
                Superblock::decode(&img[o..o + BLOCK_SIZE], blk, z, &g.uuid).expect("superblock")
            {
                sb.counters = ZoneCounters::default();
                dev.poke(o as u64, &sb.encode());
            }
        }
    }
    let pool = block_on(Pool::open(Rc::new(MemDev::from_image(dev.image())), &opts)).expect("open");
    let v = pool.volume("v").expect("volume v");
    let e = block_on(async {
        pool.write_zeroes(&v, 0, 256 << 10).await?;
        pool.flush().await
    })
    .expect_err("an unmap below zero counters");
    assert!(
        matches!(
            &e,
            Error::Corrupt {
                structure: Structure::Superblock,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("counters"), "{e}");
}
