//! Overlapping-interval queries (rmap style) against brute force, paging
//! with `after` as GETFSMAP does, and pruning by the interior high keys.

#[path = "btree_common.rs"]
mod common;

use common::*;
use futures::executor::block_on;
use rand::Rng;
use sluice_engine::btree::{Btree, BufTarget, DevTarget, MemTarget};
use sluice_engine::dev::MemDev;
use sluice_engine::BLOCK_SIZE;
use std::collections::BTreeMap;
use std::rc::Rc;

type Key = (u32, u32);

fn brute(model: &BTreeMap<Key, Iv>, lo: u32, hi: u32) -> Vec<Iv> {
    model
        .values()
        .filter(|r| r.start <= hi && r.end() >= lo)
        .copied()
        .collect()
}

/// The whole answer for `[lo, hi]`, fetched `page` records at a time.
fn paged<T: BufTarget>(tree: &mut Btree<Ivt, T>, lo: Key, hi: Key, page: usize) -> Vec<Iv> {
    let mut out: Vec<Iv> = Vec::new();
    let mut after = None;
    loop {
        let got = block_on(tree.query_overlap(&lo, &hi, after, page)).expect("query");
        assert!(got.len() <= page);
        let n = got.len();
        out.extend(got);
        if n < page {
            return out;
        }
        after = out.last().map(|r| (r.start, r.id));
    }
}

fn run<T: BufTarget>(
    tree: &mut Btree<Ivt, T>,
    seed: u64,
    mut between: impl FnMut(&mut Btree<Ivt, T>),
) {
    let mut rng = rng(seed_from_env(seed), "intervals");
    let mut model: BTreeMap<Key, Iv> = BTreeMap::new();
    let mut next_id = 0u32;
    let mut max_height = 0;
    let mut queries = 0;
    for round in 0..24 {
        // Grow for 16 rounds, then shrink.
        let p_insert = if round < 16 { 0.75 } else { 0.3 };
        for _ in 0..400 {
            if rng.gen_bool(p_insert) || model.is_empty() {
                let r = Iv {
                    start: rng.gen_range(0..50_000),
                    len: rng.gen_range(1..3_000),
                    id: next_id,
                };
                next_id += 1;
                assert_eq!(block_on(tree.insert(r)).unwrap(), None);
                model.insert((r.start, r.id), r);
            } else {
                let k = (rng.gen_range(0..50_000), 0);
                let k = model
                    .range(k..)
                    .next()
                    .or_else(|| model.iter().next())
                    .map(|(k, _)| *k);
                if let Some(k) = k {
                    assert_eq!(block_on(tree.remove(&k)).unwrap(), model.remove(&k));
                }
            }
            // Occasionally change a record's length in place: its high key moves.
            if rng.gen_bool(0.05) {
                if let Some((&k, &r)) = model.range((rng.gen_range(0..50_000), 0)..).next() {
                    let r2 = Iv {
                        len: rng.gen_range(1..6_000),
                        ..r
                    };
                    assert_eq!(block_on(tree.insert(r2)).unwrap(), Some(r));
                    model.insert(k, r2);
                }
            }
        }
        max_height = max_height.max(tree.root().height);
        assert_sound(tree, &format!("round {round}"));
        for _ in 0..40 {
            let lo = rng.gen_range(0..55_000u32);
            let hi = lo + rng.gen_range(0..4_000);
            let want = brute(&model, lo, hi);
            let full =
                block_on(tree.query_overlap(&(lo, 0), &(hi, u32::MAX), None, usize::MAX)).unwrap();
            assert_eq!(full, want, "round {round} [{lo}, {hi}]");
            let page = rng.gen_range(1..12);
            assert_eq!(
                paged(tree, (lo, 0), (hi, u32::MAX), page),
                want,
                "paged by {page}"
            );
            queries += 1;
        }
        between(tree);
    }
    // Empty and inverted queries.
    assert!(block_on(tree.query_overlap(&(10, 0), &(5, 0), None, 10))
        .unwrap()
        .is_empty());
    assert!(
        block_on(tree.query_overlap(&(0, 0), &(u32::MAX, 0), None, 0))
            .unwrap()
            .is_empty()
    );
    assert!(max_height >= 3, "tree never got deep: {max_height}");
    eprintln!(
        "intervals: {queries} queries, max height {max_height}, {} records left",
        model.len()
    );
}

#[test]
fn btree_overlap_queries_match_brute_force_mem() {
    let target = Rc::new(MemTarget::new(0, 12).unwrap());
    let mut tree = block_on(Btree::<Ivt, _>::create(target)).unwrap();
    run(&mut tree, 0x1_0001, |_| {});
}

#[test]
fn btree_overlap_queries_match_brute_force_dev() {
    let dev = Rc::new(MemDev::new(8192 * BLOCK_SIZE as u64));
    let target = Rc::new(DevTarget::format(dev, 100, 8000, 9, 12).unwrap());
    let mut tree = block_on(Btree::<Ivt, _>::create(target.clone())).unwrap();
    run(&mut tree, 0x1_0002, |_| {
        let ck = block_on(target.checkpoint_write()).unwrap();
        target.checkpoint_committed(ck.epoch);
    });
}

/// With disjoint intervals, a point query must read about one root-to-leaf
/// path: the high keys in interior nodes let it skip every other subtree.
#[test]
fn btree_high_keys_prune_subtrees() {
    let target = Rc::new(MemTarget::new(0, 4096).unwrap());
    let recs: Vec<Iv> = (0..20_000u32)
        .map(|i| Iv {
            start: i * 10,
            len: 5,
            id: 0,
        })
        .collect();
    let mut tree = block_on(Btree::<Ivt, _>::bulk_load(target.clone(), recs.clone(), 80)).unwrap();
    assert_sound(&mut tree, "bulk");
    let h = tree.root().height as u64;
    assert!(h >= 4, "height {h}");
    for x in [0u32, 3, 4, 5, 9, 55_555, 123_456, 199_994, 199_999] {
        let before = target.cache_stats();
        let got = block_on(tree.query_overlap(&(x, 0), &(x, u32::MAX), None, 100)).unwrap();
        let after = target.cache_stats();
        let reads = (after.hits + after.misses) - (before.hits + before.misses);
        let want: Vec<Iv> = recs
            .iter()
            .filter(|r| r.start <= x && r.end() >= x)
            .copied()
            .collect();
        assert_eq!(got, want, "point {x}");
        assert!(
            reads <= 2 * h,
            "point query at {x} read {reads} nodes in a tree of height {h}"
        );
    }
    // A query past every interval reads only what it must to see that.
    let before = target.cache_stats();
    assert!(
        block_on(tree.query_overlap(&(300_000, 0), &(400_000, 0), None, 10))
            .unwrap()
            .is_empty()
    );
    let after = target.cache_stats();
    assert!((after.hits + after.misses) - (before.hits + before.misses) <= h + 1);
}
