//! Sharing blocks between volumes (`Pool::share`, `Zone::share`, the
//! `Share` intent record): the destination reads what the source held at
//! the share; shared blocks are freed only when their last owner drops
//! them; `data_bytes` counts physical blocks once; scrub (refcount ==
//! owners) stays clean; a reopen, clean or by log replay, gives the same
//! trees.

#[path = "data_common.rs"]
mod data;

use data::random;
use futures::executor::block_on;
use sluice_engine::dev::MemDev;
use sluice_engine::zone::TreeRecords;
use sluice_engine::{Compression, Error, Pool, PoolOptions, VolInfo, ZoneConfig};
use std::rc::Rc;

const K: usize = 1024;

fn opts(zone_size: u64) -> PoolOptions {
    PoolOptions {
        zone_size,
        zone: ZoneConfig::default(),
    }
}

fn read(pool: &Pool<MemDev>, v: &VolInfo) -> Vec<u8> {
    let mut b = vec![0u8; v.size as usize];
    block_on(pool.read(v, 0, &mut b)).expect("read");
    b
}

fn assert_clean(pool: &Pool<MemDev>) {
    let problems = block_on(pool.check(true)).expect("scrub");
    assert!(problems.is_empty(), "scrub: {problems:#?}");
}

fn trees(pool: &Pool<MemDev>) -> Vec<TreeRecords> {
    pool.zones()
        .iter()
        .map(|z| block_on(z.tree_records()).expect("tree records"))
        .collect()
}

fn shared_records(pool: &Pool<MemDev>) -> usize {
    trees(pool).iter().map(|t| t.refcount.len()).sum()
}

/// A pool of 2 MiB zones with volume `a` (4 KiB chunks, 256 KiB, all in
/// one zone) written with incompressible data, and `b` in its family.
fn two_volumes() -> (Rc<MemDev>, Pool<MemDev>, VolInfo, VolInfo, Vec<u8>) {
    let dev = Rc::new(MemDev::new(8 << 20));
    let pool = block_on(Pool::format(dev.clone(), &opts(2 << 20))).expect("format");
    let a = block_on(pool.create_volume("a", 256 * K as u64, 4096, Compression::None)).unwrap();
    let b = block_on(pool.create_volume_in_family("b", a.size, &a)).unwrap();
    let data = random(1, a.size as usize);
    block_on(pool.write(&a, 0, &data)).unwrap();
    (dev, pool, a, b, data)
}

#[test]
fn overwriting_the_source_keeps_the_shared_data_for_the_destination() {
    let (_dev, pool, a, b, old) = two_volumes();
    let base = pool.usage().data_bytes;
    assert_eq!(base, a.size, "64 raw 4 KiB chunks");
    assert_eq!(block_on(pool.share(&a, &b, 0, a.nchunks())).unwrap(), 64);
    assert_eq!(read(&pool, &b), old);
    assert_eq!(pool.usage().data_bytes, base, "sharing allocates nothing");
    assert!(shared_records(&pool) > 0);
    assert_clean(&pool);

    // Overwrite half of a: b keeps the old blocks, a gets new ones.
    let new = random(2, 128 * K);
    block_on(pool.write(&a, 0, &new)).unwrap();
    assert_eq!(&read(&pool, &a)[..128 * K], &new[..]);
    assert_eq!(read(&pool, &b), old);
    assert_eq!(pool.usage().data_bytes, base + 128 * K as u64);
    block_on(pool.flush()).unwrap();
    assert_eq!(read(&pool, &b), old, "old blocks not reused after a flush");
    assert_clean(&pool);

    // b drops the old blocks a no longer holds: they are freed now.
    block_on(pool.write(&b, 0, &random(3, 128 * K))).unwrap();
    assert_eq!(pool.usage().data_bytes, base + 128 * K as u64);
    assert_eq!(&read(&pool, &b)[128 * K..], &old[128 * K..]);
    assert_clean(&pool);
}

#[test]
fn deleting_both_sharers_frees_every_block() {
    let (_dev, pool, a, b, old) = two_volumes();
    let free0: u32 = pool.zones().iter().map(|z| z.free_data_blocks()).sum();
    block_on(pool.share(&a, &b, 0, a.nchunks())).unwrap();
    block_on(pool.delete_volume("a")).unwrap();
    assert_eq!(read(&pool, &b), old);
    assert_eq!(pool.usage().data_bytes, a.size, "b still holds every block");
    assert_eq!(shared_records(&pool), 0, "each block has one owner left");
    assert_clean(&pool);
    block_on(pool.delete_volume("b")).unwrap();
    block_on(pool.flush()).unwrap();
    assert_eq!(pool.usage().data_bytes, 0);
    let free: u32 = pool.zones().iter().map(|z| z.free_data_blocks()).sum();
    assert_eq!(free, free0 + (a.size / 4096) as u32);
    assert_clean(&pool);
}

#[test]
fn a_share_over_mapped_chunks_or_across_families_is_refused_unchanged() {
    let (_dev, pool, a, b, _) = two_volumes();
    block_on(pool.write(&b, 100 * K as u64, &random(4, 4 * K))).unwrap();
    let before = trees(&pool);
    let e = block_on(pool.share(&a, &b, 0, a.nchunks())).unwrap_err();
    assert!(matches!(e, Error::Exists(_)), "{e}");
    assert_eq!(trees(&pool), before, "nothing committed");
    // The chunks before b's own are fine to share.
    assert_eq!(block_on(pool.share(&a, &b, 0, 25)).unwrap(), 25);

    let c = block_on(pool.create_volume("c", a.size, 4096, Compression::None)).unwrap();
    let e = block_on(pool.share(&a, &c, 0, 1)).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let e = block_on(pool.share(&a, &a, 0, 1)).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let e = block_on(pool.share(&a, &b, 0, a.nchunks() + 1)).unwrap_err();
    assert!(matches!(e, Error::OutOfRange(_)), "{e}");
    assert_clean(&pool);
}

/// A share of more chunks than one record may carry is several records;
/// reopening after a clean close and after a crash (log replay) gives the
/// same trees, and the same data.
#[test]
fn reopen_clean_and_by_replay_gives_the_same_trees() {
    let dev = Rc::new(MemDev::new(64 << 20));
    let o = opts(16 << 20);
    let pool = block_on(Pool::format(dev.clone(), &o)).expect("format");
    let nz = pool.geometry().nzones;
    // 4 KiB chunks, 1 MiB stripes: 512 chunks in each zone.
    let a = block_on(pool.create_volume("a", 2 * nz as u64 * (1 << 20), 4096, Compression::Lz4))
        .unwrap();
    let b = block_on(pool.create_volume_in_family("b", a.size, &a)).unwrap();
    let data: Vec<u8> = random(5, a.size as usize)
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 16 < 4 { *x } else { 7 })
        .collect();
    block_on(pool.write(&a, 0, &data)).unwrap();
    block_on(sluice_engine::lifecycle::checkpoint(&pool)).unwrap();
    assert_eq!(
        block_on(pool.share(&a, &b, 0, a.nchunks())).unwrap(),
        a.nchunks()
    );
    // Then overwrite some of a so counts differ: some blocks shared, some not.
    block_on(pool.write(&a, 0, &random(6, 64 * K))).unwrap();
    block_on(pool.flush()).unwrap();
    let want = trees(&pool);
    assert_clean(&pool);

    // Crash now: everything since the checkpoint is in the log only.
    let replayed = Pool::open(Rc::new(MemDev::from_image(dev.image())), &o);
    let replayed = block_on(replayed).expect("open with replay");
    let records: u64 = replayed
        .zones()
        .iter()
        .map(|z| z.stats().replayed_records)
        .sum();
    // 16 chunk overwrites, and at least two share steps per zone (512
    // chunks each, at most 256 a record).
    assert!(records >= 16 + 2 * nz as u64, "{records} records replayed");
    assert_eq!(trees(&replayed), want);
    assert_eq!(read(&replayed, &b), data);
    assert_clean(&replayed);

    block_on(pool.close()).unwrap();
    let clean = block_on(Pool::open(Rc::new(MemDev::from_image(dev.image())), &o)).unwrap();
    assert!(clean
        .zones()
        .iter()
        .all(|z| z.stats().replayed_records == 0));
    assert_eq!(trees(&clean), want);
    assert_eq!(read(&clean, &b), data);
    assert_clean(&clean);
}

/// A zone checkpointed before the refcount tree existed has a zeroed
/// `refc_root` slot: it opens with a new empty tree, reads the same, and
/// can share from then on.
#[test]
fn a_zone_without_a_refcount_root_opens_with_an_empty_tree() {
    use sluice_engine::format::superblock::RootPtr;
    use sluice_engine::format::Superblock;
    use sluice_engine::BLOCK_SIZE;
    let (dev, pool, a, b, old) = two_volumes();
    let g = pool.geometry().clone();
    block_on(pool.close()).unwrap();
    let img = dev.image();
    let mut zeroed = 0;
    for z in 0..g.nzones {
        for (slot, copy) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let blk = g.abs(z, g.sb_rel(slot, copy));
            let o = blk as usize * BLOCK_SIZE;
            let Some(mut sb) =
                Superblock::decode(&img[o..o + BLOCK_SIZE], blk, z, &g.uuid).expect("superblock")
            else {
                continue;
            };
            sb.refc_root = RootPtr::default();
            dev.poke(o as u64, &sb.encode());
            zeroed += 1;
        }
    }
    assert_eq!(zeroed, 4 * g.nzones);
    let pool = block_on(Pool::open(
        Rc::new(MemDev::from_image(dev.image())),
        &opts(2 << 20),
    ))
    .expect("open a zone with no refcount root");
    assert_eq!(read(&pool, &a), old);
    assert_clean(&pool);
    assert_eq!(block_on(pool.share(&a, &b, 0, a.nchunks())).unwrap(), 64);
    assert_eq!(read(&pool, &b), old);
    assert_clean(&pool);
}
