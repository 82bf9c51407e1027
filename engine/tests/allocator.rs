//! Allocation policy: random overwrites reuse the blocks they free instead
//! of walking the whole zone, so a pool on a sparse file only touches (and
//! makes the file system allocate) about as much as it holds.

use futures::executor::block_on;
use rand::{Rng, SeedableRng};
use sluice_engine::dev::MemDev;
use sluice_engine::{Compression, Pool, PoolOptions, ZoneConfig, BLOCK_SIZE};
use std::rc::Rc;

#[test]
fn overwrites_stay_below_the_high_water_mark() {
    let dev = Rc::new(MemDev::new(16 << 20));
    let opts = PoolOptions {
        zone_size: 8 << 20,
        zone: ZoneConfig::default(),
    };
    let pool = block_on(Pool::format(dev.clone(), &opts)).unwrap();
    let geo = pool.geometry().clone();
    const CHUNKS: u64 = 64;
    let v = block_on(pool.create_volume("v", CHUNKS * 4096, 4096, Compression::None)).unwrap();
    let z = v.zone_of(0, geo.nzones);
    assert!(
        (0..CHUNKS).all(|c| v.zone_of(c, geo.nzones) == z),
        "the test wants one zone"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut block = vec![0u8; 4096];
    for c in 0..CHUNKS {
        rng.fill(&mut block[..]);
        block_on(pool.write(&v, c * 4096, &block)).unwrap();
    }
    block_on(pool.flush()).unwrap();
    const FLUSH_EVERY: u64 = 16;
    for i in 0..3000u64 {
        rng.fill(&mut block[..]);
        let c = rng.gen_range(0..CHUNKS);
        block_on(pool.write(&v, c * 4096, &block)).unwrap();
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            block_on(pool.flush()).unwrap();
        }
    }
    block_on(pool.flush()).unwrap();
    let data_blocks = geo.zone_blocks - geo.data_start;
    assert!(
        data_blocks as u64 > 4 * (CHUNKS + FLUSH_EVERY),
        "zone too small to tell"
    );
    // Live data plus what can be busy between two flushes, and nothing more.
    let bound = geo.data_start + (CHUNKS + FLUSH_EVERY + 1) as u32;
    let hwm = pool.zones()[z as usize].high_water();
    assert!(hwm <= bound, "high water {hwm} > {bound}");
    // And the device agrees: no data block above the mark was ever written.
    let img = dev.image();
    let touched = (geo.data_start..geo.zone_blocks)
        .filter(|&b| {
            let o = geo.abs(z, b) as usize * BLOCK_SIZE;
            img[o..o + BLOCK_SIZE].iter().any(|&x| x != 0)
        })
        .max()
        .map_or(geo.data_start, |b| b + 1);
    assert!(
        touched <= hwm,
        "block {} written above the mark {hwm}",
        touched - 1
    );
    assert!(block_on(pool.check(true)).unwrap().is_empty());
}
