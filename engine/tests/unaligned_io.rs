//! Any byte offset and length: reads and writes that do not start or end
//! on a sector or block are served by read-modify-write of the chunks they
//! touch, and two partial writes to one chunk never lose each other's
//! bytes (each holds the chunk's write lock across its read-modify-write).

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_engine::dev::{SimConfig, SimDev};
use sluice_engine::{Compression, Pool, PoolOptions, ZoneConfig};
use std::rc::Rc;

fn opts() -> PoolOptions {
    PoolOptions {
        zone_size: 4 << 20,
        zone: ZoneConfig::default(),
    }
}

#[test]
fn unaligned_reads_and_writes_match_a_model() {
    for (chunk, comp) in [(4096, Compression::None), (65536, Compression::Lz4)] {
        let dev = Rc::new(SimDev::new(32 << 20, SimConfig::default()));
        let mut exec = LocalPool::new();
        let pool = exec.run_until(Pool::format(dev, &opts())).unwrap();
        let size = 1u64 << 20;
        let v = exec
            .run_until(pool.create_volume("v", size, chunk, comp))
            .unwrap();
        let mut model = vec![0u8; size as usize];
        let mut rng = SmallRng::seed_from_u64(chunk);
        for i in 0..300u32 {
            let len = rng.gen_range(1..=3 * chunk as usize);
            let off = rng.gen_range(0..=size as usize - len);
            if i % 3 == 2 {
                let mut buf = vec![0xeeu8; len];
                exec.run_until(pool.read(&v, off as u64, &mut buf)).unwrap();
                assert!(
                    buf == model[off..off + len],
                    "chunk {chunk}: read {off}+{len} differs from the model"
                );
            } else {
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                exec.run_until(pool.write(&v, off as u64, &data)).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
        }
        let mut all = vec![0u8; size as usize];
        exec.run_until(pool.read(&v, 0, &mut all)).unwrap();
        assert!(all == model, "chunk {chunk}: final image differs");
        // The end of the volume is still enforced to the byte.
        assert!(exec.run_until(pool.write(&v, size - 1, &[1, 2])).is_err());
    }
}

#[test]
fn concurrent_partial_writes_to_one_chunk_both_land() {
    let dev = Rc::new(SimDev::new(16 << 20, SimConfig::default()));
    let mut exec = LocalPool::new();
    let pool = Rc::new(exec.run_until(Pool::format(dev.clone(), &opts())).unwrap());
    let v = exec
        .run_until(pool.create_volume("v", 1 << 20, 65536, Compression::Lz4))
        .unwrap();
    exec.run_until(pool.write(&v, 0, &vec![0x11u8; 65536]))
        .unwrap();
    // Hold device writes so both read-modify-writes are in flight at once.
    dev.hold_writes();
    let sp = exec.spawner();
    for (off, len, byte) in [(1u64, 1000usize, 0xaau8), (3001, 777, 0xbb)] {
        let pool = pool.clone();
        sp.spawn_local(async move {
            pool.write(&v, off, &vec![byte; len]).await.unwrap();
        })
        .unwrap();
    }
    exec.run_until_stalled();
    dev.release_writes();
    exec.run();
    let mut got = vec![0u8; 65536];
    exec.run_until(pool.read(&v, 0, &mut got)).unwrap();
    let mut want = vec![0x11u8; 65536];
    want[1..1001].fill(0xaa);
    want[3001..3778].fill(0xbb);
    assert!(got == want, "a partial write was lost or misplaced");
}
