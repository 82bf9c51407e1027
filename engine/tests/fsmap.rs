//! GETFSMAP on the in-memory device: every block of the pool covered once
//! per owner, volume owners as the forward map has them (checked against
//! block status and the bytes on the device), the compressed flag, windows
//! clipped, and paging with `after` equal to one big call.

#[path = "data_common.rs"]
mod data;

use data::random;
use futures::executor::block_on;
use sluice_engine::dev::{BlockDev, MemDev};
use sluice_engine::fsmap::{self, FsmapOwner, FsmapQuery, FsmapRecord, Special, MAX_COUNT};
use sluice_engine::{AlignedBuf, Compression, Pool, PoolOptions, VolInfo, BLOCK_SIZE};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

const K: u64 = 1024;
const M: u64 = 1024 * 1024;
const BS: u64 = BLOCK_SIZE as u64;

fn compressible(seed: u64, len: usize) -> Vec<u8> {
    let r = random(seed, len);
    (0..len)
        .map(|i| if i % 64 < 8 { r[i] } else { b'a' })
        .collect()
}

struct Fixture {
    dev: Rc<MemDev>,
    pool: Pool<MemDev>,
    a: VolInfo,
    b: VolInfo,
}

/// Two volumes written (one raw with 4 KiB chunks, enough records per zone
/// for several reverse-map batches; one lz4), parts discarded, and a third
/// volume written and deleted.
fn fixture() -> Fixture {
    let dev = Rc::new(MemDev::new(256 * M));
    let opts = PoolOptions {
        zone_size: 32 * M,
        ..PoolOptions::default()
    };
    let pool = block_on(Pool::format_with_uuid(dev.clone(), &opts, [3; 16])).unwrap();
    let a = block_on(pool.create_volume("a", 32 * M, 4 * K, Compression::None)).unwrap();
    let b = block_on(pool.create_volume("b", 16 * M, 64 * K, Compression::Lz4)).unwrap();
    let c = block_on(pool.create_volume("c", 8 * M, 64 * K, Compression::None)).unwrap();
    block_on(pool.write(&a, 0, &random(1, 16 * M as usize))).unwrap();
    block_on(pool.write(&b, 0, &compressible(2, 2 * M as usize))).unwrap();
    block_on(pool.write(&b, 4 * M, &random(3, M as usize))).unwrap();
    block_on(pool.write(&c, 0, &random(4, 2 * M as usize))).unwrap();
    block_on(pool.write_zeroes(&a, M, 256 * K)).unwrap();
    block_on(pool.write_zeroes(&b, 256 * K, 128 * K)).unwrap();
    block_on(pool.delete_volume("c")).unwrap();
    block_on(pool.flush()).unwrap();
    Fixture { dev, pool, a, b }
}

fn one_call(pool: &Pool<MemDev>, start: u64, end: Option<u64>) -> Vec<FsmapRecord> {
    let q = FsmapQuery {
        start,
        end,
        count: Some(MAX_COUNT),
        after: None,
    };
    let recs = block_on(pool.fsmap(&q)).unwrap();
    assert!(recs.len() < MAX_COUNT, "the fixture must fit one call");
    recs
}

/// Walk the window page by page, each page after the last record of the
/// one before; every page holds at most `page` records.
fn paged(pool: &Pool<MemDev>, start: u64, end: Option<u64>, page: usize) -> Vec<FsmapRecord> {
    let mut all: Vec<FsmapRecord> = Vec::new();
    loop {
        let q = FsmapQuery {
            start,
            end,
            count: Some(page),
            after: all.last().cloned(),
        };
        let got = block_on(pool.fsmap(&q)).unwrap();
        assert!(
            got.len() <= page,
            "{} records in a page of {page}",
            got.len()
        );
        if got.is_empty() {
            break;
        }
        assert!(
            all.last() != got.first(),
            "page of {page} starts with the record it was to continue after: {:?}",
            got[0]
        );
        all.extend(got);
    }
    // The engine's own walk agrees.
    let cat = pool.catalog.catalog();
    let walk = fsmap::pool_fsmap_all(pool.geometry(), &cat, pool, start, end, page);
    assert!(
        block_on(walk).unwrap() == all,
        "pool_fsmap_all, page {page}"
    );
    all
}

fn owner_key(r: &FsmapRecord) -> String {
    match &r.owner {
        FsmapOwner::Volume { name, .. } => format!("v:{name}"),
        FsmapOwner::Special(s) => format!("s:{}", s.name()),
    }
}

/// Every block of `[lo, hi)` (bytes, block-aligned) is covered by exactly
/// one record per owner, by one special owner or by volumes only, records
/// in physical order and inside the window. Returns the owners per block.
fn assert_covered(recs: &[FsmapRecord], lo: u64, hi: u64) -> Vec<Vec<String>> {
    let n = ((hi - lo) / BS) as usize;
    let mut per: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut prev = 0;
    for r in recs {
        assert!(r.physical >= prev, "not in physical order at {r:?}");
        prev = r.physical;
        assert!(r.length > 0 && r.physical % BS == 0 && r.length % BS == 0);
        assert!(
            r.physical >= lo && r.physical + r.length <= hi,
            "{r:?} outside {lo}..{hi}"
        );
        let k = owner_key(r);
        for b in (r.physical - lo) / BS..(r.physical + r.length - lo) / BS {
            let owners = &mut per[b as usize];
            assert!(
                !owners.contains(&k),
                "block {} owned twice by {k}",
                lo / BS + b
            );
            owners.push(k.clone());
        }
        let special = matches!(r.owner, FsmapOwner::Special(_));
        assert_eq!(r.flags().contains(&"special"), special, "{r:?}");
    }
    for (i, o) in per.iter().enumerate() {
        let blk = lo / BS + i as u64;
        assert!(!o.is_empty(), "block {blk} has no record");
        let specials = o.iter().filter(|k| k.starts_with("s:")).count();
        assert!(
            specials == 0 || o.len() == 1,
            "block {blk}: a special owner and others: {o:?}"
        );
    }
    per
}

/// Chunks of `v` that block status says are mapped.
fn mapped_chunks(pool: &Pool<MemDev>, v: &VolInfo) -> BTreeSet<u64> {
    let cs = v.chunk_size() as u64;
    let runs = block_on(pool.block_status(v, 0, v.size)).unwrap();
    runs.into_iter()
        .filter(|r| r.2)
        .flat_map(|(o, l, _)| o / cs..(o + l).div_ceil(cs))
        .collect()
}

fn dev_bytes(dev: &MemDev, off: u64, len: u64) -> Vec<u8> {
    let (b, r) = block_on(dev.read_at(AlignedBuf::zeroed(len as usize), off));
    r.unwrap();
    b[..].to_vec()
}

#[test]
fn every_block_once_per_owner_and_owners_match_the_forward_map() {
    let f = fixture();
    let g = f.pool.geometry().clone();
    let size = g.size_bytes();
    let recs = one_call(&f.pool, 0, None);
    let per = assert_covered(&recs, 0, size);
    // No reflinks here: every block has exactly one owner and no flag says
    // otherwise.
    assert!(per.iter().all(|o| o.len() == 1));
    assert!(recs.iter().all(|r| !r.shared));

    // The fixed layout.
    let at = |blk: u64| &per[blk as usize][0];
    assert_eq!(at(0), "s:pool-header");
    assert_eq!(at(1), "s:catalog");
    assert_eq!(at(g.header_backup_blk()), "s:pool-header");
    for z in 0..g.nzones {
        assert_eq!(at(g.abs(z, 0)), "s:superblock");
        assert_eq!(at(g.abs(z, g.bitmap_rel(0, 0))), "s:bitmap");
        assert_eq!(at(g.abs(z, g.log_start)), "s:log");
        assert_eq!(at(g.abs(z, g.meta_start)), "s:metadata");
        assert_eq!(at(g.abs(z, g.data_start - 1)), "s:metadata");
        assert_ne!(at(g.abs(z, g.data_start)), "s:metadata");
    }

    // Volume owners: exactly the mapped chunks; the deleted volume is gone.
    let mut got: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut data = 0;
    for r in &recs {
        if let FsmapOwner::Volume { name, offset } = &r.owner {
            let v = if name == "a" { &f.a } else { &f.b };
            assert!(name == "a" || name == "b", "owner {name}");
            let cs = v.chunk_size() as u64;
            assert_eq!(offset % cs, 0, "{r:?}");
            assert!(got.entry(name.clone()).or_default().insert(offset / cs));
            data += r.length;
            if name == "a" {
                // Raw chunks: the bytes on the device are the volume's.
                assert!(!r.compressed);
                let mut want = vec![0u8; r.length as usize];
                block_on(f.pool.read(&f.a, *offset, &mut want)).unwrap();
                assert!(
                    dev_bytes(&f.dev, r.physical, r.length) == want,
                    "{r:?}: device bytes are not volume a's at that offset"
                );
            } else {
                // lz4 chunks: the compressible MiBs compress, the random MiB not.
                let random_part = (4 * M..5 * M).contains(offset);
                assert_eq!(r.compressed, !random_part, "{r:?}");
                assert_eq!(r.flags().contains(&"compressed"), r.compressed);
                if r.compressed {
                    assert!(r.length < cs, "{r:?}");
                }
            }
        }
    }
    assert_eq!(
        got.remove("a").unwrap_or_default(),
        mapped_chunks(&f.pool, &f.a)
    );
    assert_eq!(
        got.remove("b").unwrap_or_default(),
        mapped_chunks(&f.pool, &f.b)
    );
    assert_eq!(
        data,
        f.pool.usage().data_bytes,
        "volume records vs data bytes"
    );
    let free: u64 = recs
        .iter()
        .filter(|r| r.owner == FsmapOwner::Special(Special::Free))
        .map(|r| r.length)
        .sum();
    assert!(free > 0);
}

#[test]
fn paging_with_after_equals_one_call_for_every_page_size() {
    let f = fixture();
    let all = one_call(&f.pool, 0, None);
    for page in 1..=12 {
        assert!(paged(&f.pool, 0, None, page) == all, "page size {page}");
    }
}

/// A window not on block boundaries is widened to whole blocks; records
/// are the big call's, clipped (a raw volume's offset moves with the
/// clip, a compressed one's stays at its chunk), and pages agree.
#[test]
fn a_window_clips_records_and_pages_agree() {
    let f = fixture();
    let g = f.pool.geometry().clone();
    let all = one_call(&f.pool, 0, None);
    // Inside a raw record (volume b's random MiB), up to the middle of the
    // next zone.
    let inside = all
        .iter()
        .find(|r| {
            matches!(r.owner, FsmapOwner::Volume { .. }) && !r.compressed && r.length >= 2 * BS
        })
        .map(|r| r.physical + BS + 100)
        .unwrap();
    let start_zone = (inside / BS - g.zone0_start) / g.zone_blocks as u64;
    let end = g.abs(start_zone as u32 + 1, g.zone_blocks / 2) * BS + 7;
    let (lo, hi) = (inside / BS * BS, end.div_ceil(BS) * BS);
    let got = one_call(&f.pool, inside, Some(end));
    assert_covered(&got, lo, hi);
    let want: Vec<FsmapRecord> = all
        .iter()
        .filter(|r| r.physical < hi && r.physical + r.length > lo)
        .map(|r| {
            let (s, e) = (r.physical.max(lo), (r.physical + r.length).min(hi));
            let mut c = r.clone();
            c.physical = s;
            c.length = e - s;
            if let FsmapOwner::Volume { offset, .. } = &mut c.owner {
                if !r.compressed {
                    *offset += s - r.physical;
                }
            }
            c
        })
        .collect();
    assert!(got == want, "clipped window differs from the big call");
    assert!(
        matches!(&got[0].owner, FsmapOwner::Volume { offset, .. } if offset % (64 * K) == 4 * K),
        "first record {:?} is not clipped by one block",
        got[0]
    );
    for page in 1..=6 {
        assert!(
            paged(&f.pool, inside, Some(end), page) == got,
            "page {page}"
        );
    }
    // The compressed volume clipped inside a record keeps its chunk offset.
    let zrec = all
        .iter()
        .find(|r| r.compressed && r.length >= 2 * BS)
        .unwrap();
    let w = one_call(&f.pool, zrec.physical + BS, Some(zrec.physical + 2 * BS));
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].owner, zrec.owner);
    assert!(w[0].compressed);
}

#[test]
fn bad_queries_are_refused() {
    let f = fixture();
    let size = f.pool.geometry().size_bytes();
    let q = |start, end, count, after| FsmapQuery {
        start,
        end,
        count,
        after,
    };
    let bad = [
        q(0, Some(size + 1), None, None),
        q(8192, Some(4096), None, None),
        q(4096, Some(4096), None, None),
        q(0, None, Some(0), None),
        q(0, None, Some(MAX_COUNT + 1), None),
    ];
    for b in bad {
        assert!(block_on(f.pool.fsmap(&b)).is_err(), "{b:?} accepted");
    }
    let mut r = one_call(&f.pool, 0, None)[5].clone();
    // Outside the window, unaligned, and naming a volume that is gone.
    assert!(block_on(
        f.pool
            .fsmap(&q(r.physical + BS, None, None, Some(r.clone())))
    )
    .is_err());
    r.physical += 1;
    assert!(block_on(f.pool.fsmap(&q(0, None, None, Some(r.clone())))).is_err());
    r.physical -= 1;
    r.owner = FsmapOwner::Volume {
        name: "c".into(),
        offset: 0,
    };
    assert!(block_on(f.pool.fsmap(&q(0, None, None, Some(r)))).is_err());
}

/// Blocks shared by a reflink (`Pool::share`) show both owners, each record
/// flagged shared exactly where another owner covers the same block; the
/// volume records then add up to `data_bytes` plus one more copy of every
/// shared block; paging agrees with one call.
#[test]
fn shared_blocks_show_every_owner_and_the_flag() {
    let f = fixture();
    let a2 = block_on(f.pool.create_volume_in_family("a2", f.a.size, &f.a)).unwrap();
    // Chunks 256..1024 of a (1..4 MiB, with the discarded 256 KiB inside).
    let shared = block_on(f.pool.share(&f.a, &a2, 256, 1024)).unwrap();
    assert!(shared > 0);
    block_on(f.pool.flush()).unwrap();
    let size = f.pool.geometry().size_bytes();
    let recs = one_call(&f.pool, 0, None);
    let per = assert_covered(&recs, 0, size);
    let mut both = 0u64;
    for r in &recs {
        for b in r.physical / BS..(r.physical + r.length) / BS {
            let o = &per[b as usize];
            let two = o.len() == 2;
            assert_eq!(r.shared, two, "{r:?}: block {b} owners {o:?}");
            if two {
                let mut o = o.clone();
                o.sort();
                assert_eq!(o, ["v:a", "v:a2"]);
            }
        }
        if let FsmapOwner::Volume { name, offset } = &r.owner {
            if name == "a2" {
                assert!((M..4 * M).contains(offset), "{r:?}");
                assert!(r.shared, "{r:?}");
                both += r.length;
            }
        }
    }
    assert_eq!(both, shared * f.a.chunk_size() as u64);
    let data: u64 = recs
        .iter()
        .filter(|r| matches!(r.owner, FsmapOwner::Volume { .. }))
        .map(|r| r.length)
        .sum();
    assert_eq!(data, f.pool.usage().data_bytes + both);
    for page in [1, 2, 7, 64] {
        assert!(paged(&f.pool, 0, None, page) == recs, "page {page}");
    }
}
