//! Targeted recovery and bad-input tests: log epochs, superblock fallback,
//! corruption reports, no-space behaviour, resize, clean reopen.

use futures::executor::block_on;
use sluice_engine::dev::{MemDev, SimConfig, SimDev};
use sluice_engine::error::Structure;
use sluice_engine::{Compression, Error, Pool, PoolOptions, ZoneConfig, BLOCK_SIZE};
use std::rc::Rc;

fn opts() -> PoolOptions {
    PoolOptions {
        zone_size: 2 << 20,
        zone: ZoneConfig::default(),
    }
}

fn data(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag ^ (i as u8).wrapping_mul(31) ^ (i >> 9) as u8)
        .collect()
}

/// Non-zero blocks of zone `z`'s log area in `img`, as positions.
fn log_positions(pool_geo: &sluice_engine::format::Geometry, z: u32, img: &[u8]) -> Vec<u32> {
    (0..pool_geo.log_blocks)
        .filter(|&p| {
            let o = (pool_geo.abs(z, pool_geo.log_start + p) as usize) * BLOCK_SIZE;
            img[o..o + BLOCK_SIZE].iter().any(|&b| b != 0)
        })
        .collect()
}

#[test]
fn stale_log_block_after_a_gap_is_never_replayed() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 65536, Compression::None)).unwrap();
    let z = v.zone_of(0, pool.geometry().nzones);
    let geo = pool.geometry().clone();
    block_on(pool.write(&v, 0, &data(1, 65536))).unwrap();
    block_on(pool.flush()).unwrap();
    block_on(pool.write(&v, 65536, &data(2, 65536))).unwrap();
    block_on(pool.flush()).unwrap();
    let mut img = dev.image();
    let pos = log_positions(&geo, z, &img);
    assert_eq!(pos.len(), 2, "two log writes, two blocks: {pos:?}");
    // Block k is lost, block k+1 survived (a torn log write).
    let o = (geo.abs(z, geo.log_start + pos[0]) as usize) * BLOCK_SIZE;
    img[o..o + BLOCK_SIZE].fill(0);
    drop(pool);

    let dev = Rc::new(MemDev::from_image(img));
    let pool = block_on(Pool::open(dev.clone(), &opts())).unwrap();
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 131072];
    block_on(pool.read(&v, 0, &mut buf)).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "both writes were behind the gap"
    );
    // New writes reuse the freed blocks and log block k again...
    block_on(pool.write(&v, 2 * 65536, &data(3, 65536))).unwrap();
    block_on(pool.flush()).unwrap();
    let img = dev.image();
    drop(pool);
    // ...and after another crash the old block k+1 must not come back.
    let pool = block_on(Pool::open(Rc::new(MemDev::from_image(img)), &opts())).unwrap();
    let problems = block_on(pool.check(true)).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 3 * 65536];
    block_on(pool.read(&v, 0, &mut buf)).unwrap();
    assert!(
        buf[..131072].iter().all(|&b| b == 0),
        "a stale log record was replayed"
    );
    assert_eq!(&buf[131072..], &data(3, 65536)[..]);
}

#[test]
fn clean_close_leaves_nothing_to_replay_and_data_intact() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 2 << 20, 16384, Compression::Lz4)).unwrap();
    let d = data(9, 2 << 20);
    block_on(pool.write(&v, 0, &d)).unwrap();
    block_on(pool.close()).unwrap();
    let pool = block_on(Pool::open(dev, &opts())).unwrap();
    assert_eq!(
        pool.zones()
            .iter()
            .map(|z| z.stats().replayed_records)
            .sum::<u64>(),
        0
    );
    let mut buf = vec![0u8; 2 << 20];
    block_on(pool.read(&pool.volume("v").unwrap(), 0, &mut buf)).unwrap();
    assert!(buf == d);
}

#[test]
fn superblock_slots_fall_back_and_report_corruption() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 65536, Compression::Lz4)).unwrap();
    block_on(pool.write(&v, 0, &data(4, 1 << 20))).unwrap();
    block_on(pool.close()).unwrap();
    let img = dev.image();
    let geo = sluice_engine::format::PoolHeader::decode(&img[..4096], (8 << 20) / 4096)
        .unwrap()
        .geo;
    // Flip a byte in the newer slot of zone 0: the older one is used, the log replays.
    for slot in 0..2u32 {
        let mut im = img.clone();
        im[geo.abs(0, slot) as usize * BLOCK_SIZE + 100] ^= 0xff;
        let p = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts()));
        let p = p.unwrap_or_else(|e| panic!("slot {slot} corrupt: open failed: {e}"));
        assert!(block_on(p.check(true)).unwrap().is_empty());
    }
    // Both slots bad: a clear error naming the structure and block.
    let mut im = img.clone();
    for slot in 0..2u32 {
        im[geo.abs(0, slot) as usize * BLOCK_SIZE + 100] ^= 0xff;
    }
    match block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts())) {
        Err(Error::Corrupt {
            structure: Structure::Superblock,
            block,
            ..
        }) => {
            assert!(block == geo.abs(0, 0) || block == geo.abs(0, 1))
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened with both superblocks corrupt"),
    }
}

#[test]
fn corrupt_structures_are_named() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 65536, Compression::None)).unwrap();
    block_on(pool.write(&v, 0, &data(5, 1 << 20))).unwrap();
    block_on(pool.close()).unwrap();
    let img = dev.image();
    let geo = sluice_engine::format::PoolHeader::decode(&img[..4096], (8 << 20) / 4096)
        .unwrap()
        .geo;

    // Pool header.
    let mut im = img.clone();
    im[60] ^= 1;
    let e = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts()))
        .err()
        .expect("must fail");
    assert!(
        matches!(
            e,
            Error::Corrupt {
                structure: Structure::PoolHeader,
                block: 0,
                ..
            }
        ),
        "{e}"
    );

    // Not a pool at all.
    let e = block_on(Pool::open(Rc::new(MemDev::new(8 << 20)), &opts()))
        .err()
        .expect("must fail");
    assert!(matches!(e, Error::NotAPool(_)), "{e}");

    // Both catalog copies.
    let mut im = img.clone();
    for c in 0..2u64 {
        let o = ((geo.catalog_start + c * geo.catalog_blocks as u64) as usize) * BLOCK_SIZE + 40;
        im[o] ^= 1;
    }
    let e = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts()))
        .err()
        .expect("must fail");
    assert!(
        matches!(
            e,
            Error::Corrupt {
                structure: Structure::Catalog,
                ..
            }
        ),
        "{e}"
    );

    // A chunk's data: reads fail with a checksum error naming the block; deep scrub reports it.
    let p = block_on(Pool::open(
        Rc::new(MemDev::from_image(img.clone())),
        &opts(),
    ))
    .unwrap();
    let v = p.volume("v").unwrap();
    let z = v.zone_of(0, geo.nzones);
    let e = block_on(p.zones()[z as usize].lookup(v.id, 0))
        .unwrap()
        .unwrap();
    let mut im = img.clone();
    im[geo.abs(z, e.pblk) as usize * BLOCK_SIZE + 7] ^= 1;
    let p = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts())).unwrap();
    let mut buf = vec![0u8; 65536];
    let err = block_on(p.read(&v, 0, &mut buf)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                structure: Structure::ChunkData,
                ..
            }
        ),
        "{err}"
    );
    let probs = block_on(p.check(true)).unwrap();
    assert_eq!(probs.len(), 1, "{probs:#?}");
    assert_eq!(probs[0].what, "data");

    // Every metadata node of zone z: flipping any one is reported, never a panic.
    let mut detected = 0;
    for b in 0..geo.meta_blocks {
        let o = geo.abs(z, geo.meta_start + b) as usize * BLOCK_SIZE;
        if img[o..o + BLOCK_SIZE].iter().all(|&x| x == 0) {
            continue;
        }
        let mut im = img.clone();
        im[o + 200] ^= 0x10;
        let r = block_on(async {
            let p = Pool::open(Rc::new(MemDev::from_image(im)), &opts()).await?;
            let probs = p.check(true).await?;
            Ok::<_, Error>(probs.len())
        });
        match r {
            Err(Error::Corrupt {
                structure: Structure::BtreeNode,
                ..
            }) => detected += 1,
            Ok(n) if n > 0 => detected += 1,
            Ok(_) => {} // a node no longer referenced (old checkpoint copy)
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(detected > 0, "no node corruption detected");
}

#[test]
fn full_pool_says_no_space_and_keeps_data() {
    let dev = Rc::new(MemDev::new(6 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("big", 64 << 20, 65536, Compression::Lz4)).unwrap();
    let mut written = 0u64;
    let err = loop {
        let d = data((written / 65536) as u8, 65536);
        match block_on(pool.write(&v, written, &d)) {
            Ok(()) => written += 65536,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "never filled");
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert!(written > 2 << 20, "filled after only {written} bytes");
    // Everything written before the error reads back.
    let mut buf = vec![0u8; written as usize];
    block_on(pool.read(&v, 0, &mut buf)).unwrap();
    for c in 0..written / 65536 {
        assert!(
            buf[(c * 65536) as usize..((c + 1) * 65536) as usize] == data(c as u8, 65536)[..],
            "chunk {c}"
        );
    }
    assert!(block_on(pool.check(true)).unwrap().is_empty());
    // Trimming gives space back: the failed write now fits.
    let used = pool.usage().data_bytes;
    block_on(pool.write_zeroes(&v, 0, 1 << 20)).unwrap();
    block_on(pool.flush()).unwrap();
    assert!(pool.usage().data_bytes < used);
    // Deleting the volume frees everything.
    block_on(pool.delete_volume("big")).unwrap();
    assert_eq!(pool.usage().data_bytes, 0);
    assert!(block_on(pool.check(false)).unwrap().is_empty());
}

#[test]
fn resize_shrink_then_grow_reads_zeros() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev, &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 65536, Compression::Lz4)).unwrap();
    block_on(pool.write(&v, 0, &data(6, 1 << 20))).unwrap();
    let small = block_on(pool.resize_volume("v", 100 * 1024)).unwrap();
    assert_eq!(small.size, 100 * 1024);
    let mut b = vec![0u8; 512];
    assert!(matches!(
        block_on(pool.read(&small, 100 * 1024, &mut b)),
        Err(Error::OutOfRange(_))
    ));
    let big = block_on(pool.resize_volume("v", 2 << 20)).unwrap();
    let mut buf = vec![0u8; 2 << 20];
    block_on(pool.read(&big, 0, &mut buf)).unwrap();
    assert!(buf[..100 * 1024] == data(6, 1 << 20)[..100 * 1024]);
    assert!(
        buf[100 * 1024..].iter().all(|&x| x == 0),
        "shrunk-away data came back"
    );
    assert!(block_on(pool.check(true)).unwrap().is_empty());
}

#[test]
fn volume_errors_are_clear() {
    let pool = block_on(Pool::format(Rc::new(MemDev::new(8 << 20)), &opts())).unwrap();
    block_on(pool.create_volume("a", 1 << 20, 65536, Compression::Lz4)).unwrap();
    assert!(matches!(
        block_on(pool.create_volume("a", 1 << 20, 65536, Compression::Lz4)),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        block_on(pool.create_volume("b", 1 << 20, 3000, Compression::Lz4)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        block_on(pool.create_volume("b c", 1 << 20, 65536, Compression::Lz4)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        block_on(pool.create_volume("b", 1000, 65536, Compression::Lz4)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        block_on(pool.delete_volume("zz")),
        Err(Error::NotFound(_))
    ));
    let v = pool.volume("a").unwrap();
    assert!(matches!(
        block_on(pool.write(&v, 1, &[0; 512])),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        block_on(pool.write(&v, 1 << 20, &[0; 512])),
        Err(Error::OutOfRange(_))
    ));
}

#[test]
fn io_errors_are_reported_not_panics() {
    let dev = Rc::new(SimDev::new(
        8 << 20,
        SimConfig {
            seed: 7,
            ..Default::default()
        },
    ));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 16384, Compression::Lz4)).unwrap();
    dev.configure(|c| c.write_error_rate = 1.0);
    let e = block_on(pool.write(&v, 0, &data(1, 16384))).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    dev.configure(|c| c.write_error_rate = 0.0);
    // A failed data write leaves the zone usable and leaks nothing.
    block_on(pool.write(&v, 0, &data(2, 16384))).unwrap();
    block_on(pool.flush()).unwrap();
    assert!(block_on(pool.check(true)).unwrap().is_empty());
    dev.configure(|c| c.flush_error_rate = 1.0);
    block_on(pool.write(&v, 16384, &data(3, 16384))).unwrap();
    let e = block_on(pool.flush()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // The zone that failed its log write is shut down with a clear reason.
    let z = v.zone_of(1, pool.geometry().nzones) as usize;
    assert!(pool.zones()[z].is_failed().is_some());
    let e = block_on(pool.write(&v, 16384, &data(4, 16384))).unwrap_err();
    assert!(matches!(e, Error::Shutdown { .. }), "{e}");
}

#[test]
fn reformatted_device_does_not_replay_the_old_pools_log() {
    let dev = Rc::new(MemDev::new(8 << 20));
    let o = opts();
    // Pool A leaves a log behind (no close: nothing checkpointed away; short
    // enough not to wrap, so its blocks sit at the LSNs B will use next).
    let a = block_on(Pool::format_with_uuid(dev.clone(), &o, [0xA; 16])).unwrap();
    let va = block_on(a.create_volume("a", 1 << 20, 4096, Compression::None)).unwrap();
    for i in 0..12u64 {
        block_on(a.write(&va, i * 4096, &data(i as u8 | 1, 4096))).unwrap();
        block_on(a.flush()).unwrap();
    }
    drop(a);
    // Pool B on the same device: same geometry, so its log starts at the same
    // epoch and LSN as A's did.
    let b = block_on(Pool::format_with_uuid(dev.clone(), &o, [0xB; 16])).unwrap();
    let vb = block_on(b.create_volume("b", 1 << 20, 4096, Compression::None)).unwrap();
    block_on(b.write(&vb, 0, &data(0x5B, 4096))).unwrap();
    block_on(b.flush()).unwrap();
    drop(b); // crash: B's open must replay B's one record and nothing of A's
    for round in 0..2 {
        let b =
            block_on(Pool::open(dev.clone(), &o)).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(b.volume("a").is_err());
        let vb = b.volume("b").unwrap();
        let mut buf = vec![0u8; 8192];
        block_on(b.read(&vb, 0, &mut buf)).unwrap();
        assert_eq!(&buf[..4096], &data(0x5B, 4096)[..]);
        assert!(
            buf[4096..].iter().all(|&x| x == 0),
            "round {round}: A's data showed up in B"
        );
        let problems = block_on(b.check(true)).unwrap();
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
        block_on(b.close()).unwrap();
    }
}
