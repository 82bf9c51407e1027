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

/// Non-zero blocks of zone `z`'s log ring (copy 0) in `img`, as positions.
fn log_positions(pool_geo: &sluice_engine::format::Geometry, z: u32, img: &[u8]) -> Vec<u32> {
    (0..pool_geo.log_blocks)
        .filter(|&p| {
            let o = (pool_geo.abs(z, pool_geo.log_rel(0, p)) as usize) * BLOCK_SIZE;
            img[o..o + BLOCK_SIZE].iter().any(|&b| b != 0)
        })
        .collect()
}

/// Zero log ring position `pos` of zone `z` in the given copies.
fn zero_log(
    geo: &sluice_engine::format::Geometry,
    z: u32,
    pos: u32,
    copies: &[u32],
    img: &mut [u8],
) {
    for &c in copies {
        let o = (geo.abs(z, geo.log_rel(c, pos)) as usize) * BLOCK_SIZE;
        img[o..o + BLOCK_SIZE].fill(0);
    }
}

/// A volume of 4 KiB chunks all homed in one zone, `n` chunks written with
/// `tag`'s data and flushed once: one log write of several blocks.
fn one_batch_of_records(n: usize) -> (Rc<MemDev>, Pool<MemDev>, u32) {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 4096, Compression::None)).unwrap();
    let z = v.zone_of(0, pool.geometry().nzones);
    for c in 0..n {
        block_on(pool.write(&v, c as u64 * 4096, &data(c as u8 | 1, 4096))).unwrap();
    }
    block_on(pool.flush()).unwrap();
    (dev, pool, z)
}

#[test]
fn one_bad_log_copy_loses_nothing() {
    // 200 records of 38 bytes: two log blocks, both copies.
    let (dev, pool, z) = one_batch_of_records(200);
    let geo = pool.geometry().clone();
    let img0 = dev.image();
    let pos = log_positions(&geo, z, &img0);
    assert_eq!(pos.len(), 2, "{pos:?}");
    drop(pool);
    for (p, copy) in [(pos[0], 0), (pos[1], 0), (pos[0], 1), (pos[1], 1)] {
        let mut img = img0.clone();
        zero_log(&geo, z, p, &[copy], &mut img);
        let pool = block_on(Pool::open(Rc::new(MemDev::from_image(img)), &opts())).unwrap();
        let v = pool.volume("v").unwrap();
        let mut buf = vec![0u8; 200 * 4096];
        block_on(pool.read(&v, 0, &mut buf)).unwrap();
        for c in 0..200 {
            assert_eq!(
                &buf[c * 4096..(c + 1) * 4096],
                &data(c as u8 | 1, 4096)[..],
                "chunk {c} after zeroing copy {copy} of log position {p}"
            );
        }
        assert!(block_on(pool.check(true)).unwrap().is_empty());
    }
}

#[test]
fn a_hole_in_the_middle_of_the_log_is_an_error_not_its_end() {
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
    // Both copies of the first block bad, the second (a later, flushed
    // write) intact: durable records are missing.
    zero_log(&geo, z, pos[0], &[0, 1], &mut img);
    drop(pool);
    let err = block_on(Pool::open(Rc::new(MemDev::from_image(img)), &opts()))
        .err()
        .expect("opened over a hole in the log");
    match err {
        Error::Corrupt {
            structure: Structure::LogBlock,
            block,
            ..
        } => assert_eq!(block, geo.abs(z, geo.log_rel(0, pos[0]))),
        e => panic!("wrong error: {e}"),
    }
}

#[test]
fn torn_last_log_write_ends_the_log_and_is_never_replayed_later() {
    let (dev, pool, z) = one_batch_of_records(200);
    let geo = pool.geometry().clone();
    let mut img = dev.image();
    let pos = log_positions(&geo, z, &img);
    assert_eq!(pos.len(), 2, "{pos:?}");
    // The one write of two blocks tore: its first block is lost in both
    // copies, its second survived. That is the end of the log.
    zero_log(&geo, z, pos[0], &[0, 1], &mut img);
    drop(pool);

    let dev = Rc::new(MemDev::from_image(img));
    let pool = block_on(Pool::open(dev.clone(), &opts())).unwrap();
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 200 * 4096];
    block_on(pool.read(&v, 0, &mut buf)).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "the torn write's records were behind the end"
    );
    // New writes log at the same LSNs in a new epoch...
    block_on(pool.write(&v, 0, &data(3, 4096))).unwrap();
    block_on(pool.flush()).unwrap();
    let img = dev.image();
    drop(pool);
    // ...and after another crash the old second block must not come back.
    let pool = block_on(Pool::open(Rc::new(MemDev::from_image(img)), &opts())).unwrap();
    let problems = block_on(pool.check(true)).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let v = pool.volume("v").unwrap();
    let mut buf = vec![0u8; 200 * 4096];
    block_on(pool.read(&v, 0, &mut buf)).unwrap();
    assert_eq!(&buf[..4096], &data(3, 4096)[..]);
    assert!(
        buf[4096..].iter().all(|&b| b == 0),
        "a stale log record was replayed"
    );
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
    let sb = |slot: u32, copy: u32| geo.abs(0, geo.sb_rel(slot, copy)) as usize * BLOCK_SIZE;
    // Any one copy bad: its mirror is used, nothing is lost.
    for (slot, copy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let mut im = img.clone();
        im[sb(slot, copy) + 100] ^= 0xff;
        let p = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts()));
        let p = p.unwrap_or_else(|e| panic!("slot {slot} copy {copy} corrupt: open failed: {e}"));
        assert!(block_on(p.check(true)).unwrap().is_empty());
        let mut buf = vec![0u8; 1 << 20];
        block_on(p.read(&p.volume("v").unwrap(), 0, &mut buf)).unwrap();
        assert!(
            buf == data(4, 1 << 20),
            "slot {slot} copy {copy}: data differs"
        );
    }
    // Both copies of a slot bad (flipped or zeroed), or all four: never a
    // silent fall back to an older checkpoint, a clear error naming the
    // structure and block.
    let all: [&[(u32, u32)]; 3] = [
        &[(0, 0), (0, 1)],
        &[(1, 0), (1, 1)],
        &[(0, 0), (0, 1), (1, 0), (1, 1)],
    ];
    for bad in all {
        for zero in [false, true] {
            let mut im = img.clone();
            for &(slot, copy) in bad {
                if zero {
                    im[sb(slot, copy)..sb(slot, copy) + BLOCK_SIZE].fill(0);
                } else {
                    im[sb(slot, copy) + 100] ^= 0xff;
                }
            }
            match block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts())) {
                Err(Error::Corrupt {
                    structure: Structure::Superblock,
                    block,
                    ..
                }) => {
                    assert!((geo.abs(0, 0)..geo.abs(0, 4)).contains(&block), "{block}")
                }
                Err(e) => panic!("{bad:?} zeroed {zero}: wrong error {e}"),
                Ok(_) => panic!("{bad:?} zeroed {zero}: opened"),
            }
        }
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

    let open_err = |im: Vec<u8>| {
        block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts()))
            .err()
            .expect("must fail")
    };
    // Pool header: one copy bad is survived (and rewritten), both is an error.
    let backup = sluice_engine::format::header::HEADER_BACKUP_BLK as usize * BLOCK_SIZE;
    for at in [60, backup + 60] {
        let mut im = img.clone();
        im[at] ^= 1;
        let dev = Rc::new(MemDev::from_image(im));
        let p = block_on(Pool::open(dev.clone(), &opts()))
            .unwrap_or_else(|e| panic!("header byte {at} flipped: {e}"));
        assert!(p.volume("v").is_ok());
        assert_eq!(dev.image()[..4096], img[..4096], "block 0 repaired");
        assert_eq!(
            dev.image()[backup..backup + 4096],
            img[backup..backup + 4096]
        );
    }
    let mut im = img.clone();
    im[60] ^= 1;
    im[backup + 60] ^= 1;
    let e = open_err(im);
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
    // Block 0 zeroed and the backup damaged: a damaged pool, not "no pool".
    let mut im = img.clone();
    im[..4096].fill(0);
    im[backup + 60] ^= 1;
    let e = open_err(im);
    assert!(
        matches!(
            e,
            Error::Corrupt {
                structure: Structure::PoolHeader,
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

    // One catalog copy bad: the other (same, newest generation) is used and
    // the bad one rewritten; both bad is an error naming the catalog.
    let cat = |c: u64| ((geo.catalog_start + c * geo.catalog_blocks as u64) as usize) * BLOCK_SIZE;
    for c in 0..2u64 {
        let mut im = img.clone();
        im[cat(c) + 40] ^= 1;
        let dev = Rc::new(MemDev::from_image(im));
        let p = block_on(Pool::open(dev.clone(), &opts()))
            .unwrap_or_else(|e| panic!("catalog copy {c} bad: {e}"));
        assert!(
            p.volume("v").is_ok(),
            "volume lost with catalog copy {c} bad"
        );
        let n = geo.catalog_blocks as usize * BLOCK_SIZE;
        assert_eq!(dev.image()[cat(c)..cat(c) + n], img[cat(c)..cat(c) + n]);
    }
    let mut im = img.clone();
    for c in 0..2u64 {
        im[cat(c) + 40] ^= 1;
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
    let mut named_at_risk = false;
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
                detail,
                ..
            }) => {
                detected += 1;
                named_at_risk |= detail.contains("at risk");
            }
            Ok(n) if n > 0 => detected += 1,
            Ok(_) => {} // a node no longer referenced (old checkpoint copy)
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(detected > 0, "no node corruption detected");
    assert!(
        named_at_risk,
        "no error said what a damaged node put at risk"
    );

    // A damaged lmap leaf under an interior node: a read of a chunk in it
    // names the volume and chunks at risk.
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts())).unwrap();
    let v = block_on(pool.create_volume("v", 1 << 20, 4096, Compression::None)).unwrap();
    for c in 0..256u64 {
        block_on(pool.write(&v, c * 4096, &data(c as u8 | 1, 4096))).unwrap();
    }
    block_on(pool.close()).unwrap();
    let z = v.zone_of(0, geo.nzones) as usize;
    let img = dev.image();
    let pool = block_on(Pool::open(
        Rc::new(MemDev::from_image(img.clone())),
        &opts(),
    ))
    .unwrap();
    let leaf = block_on(pool.zones()[z].lmap_leaf_of(v.id, 200)).unwrap();
    drop(pool);
    let mut im = img.clone();
    im[leaf as usize * BLOCK_SIZE + 300] ^= 4;
    let pool = block_on(Pool::open(Rc::new(MemDev::from_image(im)), &opts())).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = block_on(pool.read(&v, 200 * 4096, &mut buf)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("block {leaf}")) && msg.contains(&format!("volume {} chunks", v.id)),
        "{msg}"
    );
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
    // Any byte offset is accepted (a read-modify-write of the chunk).
    block_on(pool.write(&v, 1, &[0; 512])).unwrap();
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
