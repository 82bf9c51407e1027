//! Shared blocks in GETFSMAP. Nothing writes overlapping reverse-map
//! records yet (reflink comes later), so these tests insert them into a
//! zone's reverse map directly: the flag and the paging must follow the
//! overlap whatever the page and batch sizes.

use super::{pool_fsmap_all, FsmapOwner, FsmapQuery, FsmapRecord};
use crate::dev::MemDev;
use crate::rmap::RmapRec;
use crate::{Compression, Pool, PoolOptions, BLOCK_SIZE};
use futures::executor::block_on;
use std::rc::Rc;

const BS: u64 = BLOCK_SIZE as u64;

/// (volume id, chunk, first data block, blocks), data-area relative.
const RECS: [(u64, u64, u32, u32); 7] = [
    (1, 0, 10, 4),
    (2, 5, 12, 4),
    (1, 1, 20, 4),
    (2, 7, 30, 8),
    (1, 9, 30, 2),
    (1, 3, 31, 2),
    (2, 8, 40, 4),
];
/// Which of them overlap another.
const SHARED: [bool; 7] = [true, true, false, true, true, true, false];

fn pool_with_overlaps() -> Pool<MemDev> {
    let dev = Rc::new(MemDev::new(64 << 20));
    let opts = PoolOptions {
        zone_size: 16 << 20,
        ..PoolOptions::default()
    };
    let pool = block_on(Pool::format_with_uuid(dev, &opts, [9; 16])).unwrap();
    for name in ["x", "y"] {
        block_on(pool.create_volume(name, 1 << 20, 16 << 10, Compression::None)).unwrap();
    }
    let z = &pool.zones()[0];
    let ds = z.geometry().data_start;
    block_on(async {
        let mut t = z.lock_trees().await;
        for (owner, offset, pblk, count) in RECS {
            let r = RmapRec {
                pblk: ds + pblk,
                count,
                owner,
                offset,
                flags: 0,
            };
            t.rmap.insert(r).await.unwrap();
        }
    });
    pool
}

fn walk(pool: &Pool<MemDev>, start: u64, end: Option<u64>, page: usize) -> Vec<FsmapRecord> {
    let cat = pool.catalog.catalog();
    block_on(pool_fsmap_all(
        pool.geometry(),
        &cat,
        pool,
        start,
        end,
        page,
    ))
    .unwrap()
}

#[test]
fn overlapping_records_are_shared_and_pages_agree() {
    let pool = pool_with_overlaps();
    let g = pool.geometry().clone();
    let abs = |rel: u32| g.abs(0, g.data_start + rel) * BS;
    let all = walk(&pool, 0, None, 10_000);
    for (i, (id, chunk, pblk, count)) in RECS.iter().enumerate() {
        let name = if *id == 1 { "x" } else { "y" };
        let r = all
            .iter()
            .find(|r| r.physical == abs(*pblk) && matches!(&r.owner, FsmapOwner::Volume { name: n, offset } if n == name && *offset == chunk * (16 << 10)))
            .unwrap_or_else(|| panic!("record {i} missing"));
        assert_eq!(r.length, *count as u64 * BS);
        assert_eq!(r.shared, SHARED[i], "record {i}: {r:?}");
        assert_eq!(r.flags().contains(&"shared"), SHARED[i]);
    }
    for page in 1..=9 {
        assert!(walk(&pool, 0, None, page) == all, "page {page}");
    }
    // A window starting inside two overlapping records clips both to the
    // same block: they order by owner, and pages agree.
    let start = abs(13) + 5;
    let w = walk(&pool, start, Some(abs(60)), 10_000);
    assert_eq!(w[0].physical, abs(13));
    assert_eq!(w[1].physical, abs(13));
    assert!(w[0].shared && w[1].shared);
    assert_eq!(
        w[0].owner,
        FsmapOwner::Volume {
            name: "x".into(),
            offset: 3 * BS
        }
    );
    assert_eq!(
        w[1].owner,
        FsmapOwner::Volume {
            name: "y".into(),
            offset: 5 * (16 << 10) + BS
        }
    );
    for page in 1..=5 {
        assert!(
            walk(&pool, start, Some(abs(60)), page) == w,
            "window page {page}"
        );
    }
    // Records clipped away from their partner are not shared in a window
    // that holds only one of them.
    let w = walk(&pool, abs(10), Some(abs(12)), 10);
    assert!(w.iter().all(|r| !r.shared), "{w:?}");
    // And a plain page call sees the same as the walk's first page.
    let q = FsmapQuery {
        count: Some(3),
        ..FsmapQuery::default()
    };
    assert_eq!(block_on(pool.fsmap(&q)).unwrap(), all[..3].to_vec());
}
