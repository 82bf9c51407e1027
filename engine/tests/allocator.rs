//! Allocation policy: random overwrites reuse the blocks they free instead
//! of walking the whole zone, so a pool on a sparse file only touches (and
//! makes the file system allocate) about as much as it holds.

use futures::executor::block_on;
use rand::{Rng, SeedableRng};
use sluice_engine::dev::{MemDev, SimConfig, SimDev};
use sluice_engine::{Compression, Pool, PoolOptions, ZoneConfig, BLOCK_SIZE};
use std::rc::Rc;

/// Pool options with zones of `zone_size` bytes.
fn zones_of(zone_size: u64) -> PoolOptions {
    PoolOptions {
        zone_size,
        zone: ZoneConfig::default(),
    }
}

#[test]
fn overwrites_stay_below_the_high_water_mark() {
    let dev = Rc::new(MemDev::new(16 << 20));
    let opts = zones_of(8 << 20);
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
    let probs = block_on(pool.check(true)).unwrap();
    assert!(probs.is_empty(), "{probs:#?}");
}

/// A wide write is stored as one run: one allocation, the chunks' extents
/// back to back in request order, an all-zero chunk left a hole; and it
/// reads back. (Before, each chunk was allocated and written on its own.)
#[test]
fn a_wide_write_is_one_run_of_blocks() {
    for (cs, comp) in [(4096u64, Compression::None), (16384, Compression::Lz4)] {
        let dev = Rc::new(SimDev::new(32 << 20, SimConfig::default()));
        let opts = zones_of(16 << 20);
        let pool = block_on(Pool::format(dev.clone(), &opts)).unwrap();
        let nz = pool.geometry().nzones;
        let v = block_on(pool.create_volume("v", 1 << 20, cs, comp)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // 32 chunks from chunk 2 on; chunk 7 all zeros; half of each other
        // chunk random, half zeros (compresses to about half under LZ4).
        let n = 32u64;
        let mut data = vec![0u8; (n * cs) as usize];
        for (i, c) in data.chunks_mut(cs as usize).enumerate() {
            if i != 5 {
                rng.fill(&mut c[..cs as usize / 2]);
            }
        }
        let writes = dev.stats().writes;
        block_on(pool.write(&v, 2 * cs, &data)).unwrap();
        assert_eq!(dev.stats().writes - writes, 1, "{comp:?}: one device write");
        let z = &pool.zones()[v.zone_of(2, nz) as usize];
        let mut prev_end = None;
        for i in 0..n {
            let e = block_on(z.lookup(v.id, 2 + i)).unwrap();
            if i == 5 {
                assert!(e.is_none(), "{comp:?}: an all-zero chunk is a hole");
                continue;
            }
            let e = e.expect("mapped");
            if comp == Compression::Lz4 {
                assert!(
                    e.compressed() && (e.nblk as u64) < cs / 4096,
                    "{comp:?}: {e:?}"
                );
            }
            if let Some(end) = prev_end {
                assert_eq!(
                    e.pblk, end,
                    "{comp:?}: chunk {i} is not right after the previous"
                );
            }
            prev_end = Some(e.pblk + e.nblk as u32);
        }
        let mut back = vec![1u8; data.len()];
        block_on(pool.read(&v, 2 * cs, &mut back)).unwrap();
        assert!(back == data, "{comp:?}: read back differs");
        block_on(pool.flush()).unwrap();
        let probs = block_on(pool.check(true)).unwrap();
        assert!(probs.is_empty(), "{probs:#?}");
    }
}

/// A wide write into a zone fragmented below its high-water mark does not
/// grow the mark while the free blocks below it could hold the data and
/// already exceed the slack (1/32 of the zone): the chunks are stored one
/// by one in the gaps, so the touched part of a thin pool file stays live
/// data + busy blocks + that slack.
#[test]
fn wide_writes_into_a_fragmented_zone_stay_below_the_mark() {
    let dev = Rc::new(MemDev::new(16 << 20));
    let opts = zones_of(8 << 20);
    let pool = block_on(Pool::format(dev, &opts)).unwrap();
    let geo = pool.geometry().clone();
    const CHUNKS: u64 = 128;
    let v = block_on(pool.create_volume("v", CHUNKS * 4096, 4096, Compression::None)).unwrap();
    let z = &pool.zones()[v.zone_of(0, geo.nzones) as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut all = vec![0u8; (CHUNKS * 4096) as usize];
    rng.fill(&mut all[..]);
    block_on(pool.write(&v, 0, &all)).unwrap();
    block_on(pool.flush()).unwrap();
    // Free every other block: plenty free below the mark, no run of 2.
    let mut block = vec![0u8; 4096];
    for c in (0..CHUNKS).step_by(2) {
        rng.fill(&mut block[..]);
        block_on(pool.write(&v, c * 4096, &block)).unwrap();
        all[(c * 4096) as usize..][..4096].copy_from_slice(&block);
    }
    block_on(pool.flush()).unwrap();
    let mark = z.high_water();
    let data_blocks = geo.zone_blocks - geo.data_start;
    assert!(
        CHUNKS as u32 / 2 > data_blocks / 32,
        "free gaps must exceed the slack"
    );
    let mut wide = vec![0u8; 32 * 4096];
    rng.fill(&mut wide[..]);
    block_on(pool.write(&v, 8 * 4096, &wide)).unwrap();
    all[8 * 4096..][..wide.len()].copy_from_slice(&wide);
    assert_eq!(z.high_water(), mark, "the wide write grew the mark");
    let mut back = vec![0u8; all.len()];
    block_on(pool.read(&v, 0, &mut back)).unwrap();
    assert!(back == all, "read back differs");
    block_on(pool.flush()).unwrap();
    let probs = block_on(pool.check(true)).unwrap();
    assert!(probs.is_empty(), "{probs:#?}");
}
