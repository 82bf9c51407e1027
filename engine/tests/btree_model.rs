//! The B+tree against a `BTreeMap` model: long seeded random runs on both
//! targets with tiny caches, proptest runs with shrinking, and bulk loading.

#[path = "btree_common.rs"]
mod common;

use common::*;
use futures::executor::block_on;
use proptest::prelude::*;
use sluice_engine::btree::{Btree, BtreeOps, DevTarget, MemTarget};
use sluice_engine::dev::MemDev;
use sluice_engine::{Error, BLOCK_SIZE};
use std::collections::BTreeMap;
use std::rc::Rc;

const META_START: u64 = 16;

fn dev_target(nblocks: u32, budget: usize) -> Rc<DevTarget<MemDev>> {
    let dev = Rc::new(MemDev::new(
        (META_START + nblocks as u64 + 16) * BLOCK_SIZE as u64,
    ));
    Rc::new(DevTarget::format(dev, META_START, nblocks, 5, budget).expect("format"))
}

fn checkpoint(t: &DevTarget<MemDev>) {
    let ck = block_on(t.checkpoint_write()).expect("checkpoint");
    t.checkpoint_committed(ck.epoch);
}

/// 100k operations on a tree over the memfd target.
fn mem_run<O: BtreeOps<Key = u64, Rec = common::Kv>>(
    seed: u64,
    keyspace: u64,
    check_every: u64,
) -> RunStats {
    let mut rng = rng(seed_from_env(seed), O::NAME);
    let target = Rc::new(MemTarget::new(5, 12).expect("memfd"));
    let mut tree = block_on(Btree::<O, _>::create(target.clone())).expect("create");
    let mut model = BTreeMap::new();
    let st = model_run(
        &mut tree,
        &mut model,
        &mut rng,
        100_000,
        keyspace,
        check_every,
        |_, _| {},
    );
    assert_sound(&mut tree, "end of run");
    assert_eq!(
        contents(&mut tree),
        model.values().copied().collect::<Vec<_>>()
    );
    let cs = target.cache_stats();
    assert!(
        cs.evictions > 0 && cs.writebacks > 0,
        "cache never under pressure: {cs:?}"
    );
    drain_all(&mut tree, &mut model);
    assert_eq!(target.nodes_in_use(), 1, "only the empty root leaf is left");
    eprintln!("{}: {st:?} {cs:?}", O::NAME);
    st
}

/// 100k operations on a tree over a device region, checkpointing every
/// `ckpt_every` operations so copy-on-write shadowing and pending frees run
/// all the time.
fn dev_run<O: BtreeOps<Key = u64, Rec = common::Kv>>(
    seed: u64,
    keyspace: u64,
    check_every: u64,
    ckpt_every: u64,
) -> RunStats {
    let mut rng = rng(seed_from_env(seed), O::NAME);
    let target = dev_target(8192, 12);
    let mut tree = block_on(Btree::<O, _>::create(target.clone())).expect("create");
    let mut model = BTreeMap::new();
    let t2 = target.clone();
    let st = model_run(
        &mut tree,
        &mut model,
        &mut rng,
        100_000,
        keyspace,
        check_every,
        |_, i| {
            if (i + 1) % ckpt_every == 0 {
                checkpoint(&t2);
            }
        },
    );
    assert_sound(&mut tree, "end of run");
    assert_eq!(
        contents(&mut tree),
        model.values().copied().collect::<Vec<_>>()
    );
    let cs = target.cache_stats();
    assert!(
        cs.evictions > 0 && cs.writebacks > 0,
        "cache never under pressure: {cs:?}"
    );
    assert!(cs.checkpoint_writes > 0, "{cs:?}");
    drain_all(&mut tree, &mut model);
    checkpoint(&target);
    assert_eq!(target.nodes_in_use(), 1, "only the empty root leaf is left");
    assert_eq!(
        target.free_blocks(),
        8191,
        "every pending free released at commit"
    );
    eprintln!("{}: {st:?} {cs:?}", O::NAME);
    st
}

#[test]
fn btree_small_records_mem_100k_ops() {
    let st = mem_run::<Small>(0x5eed_0001, 60_000, 10_000);
    assert!(st.max_height >= 2, "{st:?}");
}

#[test]
fn btree_small_records_dev_100k_ops() {
    let st = dev_run::<Small>(0x5eed_0002, 60_000, 10_000, 5_000);
    assert!(st.max_height >= 2, "{st:?}");
}

#[test]
fn btree_big_records_mem_100k_ops() {
    let st = mem_run::<Big>(0x5eed_0003, 20_000, 5_000);
    assert!(st.max_height >= 4, "tree never got 4 levels: {st:?}");
    assert!(st.collapses > 0, "root never collapsed: {st:?}");
}

#[test]
fn btree_big_records_dev_100k_ops() {
    let st = dev_run::<Big>(0x5eed_0004, 20_000, 5_000, 2_000);
    assert!(st.max_height >= 4, "tree never got 4 levels: {st:?}");
    assert!(st.collapses > 0, "root never collapsed: {st:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Ins(u16, u64),
    Rem(u16),
    Get(u16),
    Range(u16, u16),
    Ckpt,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..400u16, any::<u64>()).prop_map(|(k, v)| Op::Ins(k, v)),
        4 => (0..400u16).prop_map(Op::Rem),
        1 => (0..400u16).prop_map(Op::Get),
        1 => (0..400u16, 0..60u16).prop_map(|(k, n)| Op::Range(k, n)),
        1 => Just(Op::Ckpt),
    ]
}

/// Apply `ops` to a Big tree over `target` and the model; `ckpt` runs for
/// `Op::Ckpt`. Returns the first mismatch as an error for proptest.
fn apply_ops<T: sluice_engine::btree::BufTarget>(
    tree: &mut Btree<Big, T>,
    model: &mut BTreeMap<u64, common::Kv>,
    ops: &[Op],
    mut ckpt: impl FnMut(&mut Btree<Big, T>, &BTreeMap<u64, common::Kv>),
) -> Result<(), TestCaseError> {
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Ins(k, v) => {
                let r = common::Kv { k: k as u64, v };
                prop_assert_eq!(
                    block_on(tree.insert(r)).unwrap(),
                    model.insert(k as u64, r),
                    "op {}",
                    i
                );
            }
            Op::Rem(k) => {
                let k = k as u64;
                prop_assert_eq!(
                    block_on(tree.remove(&k)).unwrap(),
                    model.remove(&k),
                    "op {}",
                    i
                );
            }
            Op::Get(k) => {
                let k = k as u64;
                let got = block_on(tree.get(&k)).unwrap();
                prop_assert_eq!(got.as_ref(), model.get(&k), "op {}", i);
            }
            Op::Range(k, n) => {
                let (lo, hi) = (k as u64, k as u64 + n as u64);
                let got = block_on(tree.range(&lo, &hi, 1000)).unwrap();
                let want: Vec<_> = model.range(lo..=hi).map(|(_, r)| *r).collect();
                prop_assert_eq!(got, want, "op {}", i);
            }
            Op::Ckpt => ckpt(tree, model),
        }
    }
    let problems = block_on(tree.check()).unwrap();
    prop_assert!(problems.is_empty(), "{:#?}", problems);
    prop_assert_eq!(contents(tree), model.values().copied().collect::<Vec<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn btree_proptest_big_records_mem(ops in prop::collection::vec(op(), 1..500)) {
        let target = Rc::new(MemTarget::new(1, 8).unwrap());
        let mut tree = block_on(Btree::<Big, _>::create(target)).unwrap();
        let mut model = BTreeMap::new();
        apply_ops(&mut tree, &mut model, &ops, |_, _| {})?;
    }

    /// `lookup_le` (XFS_LOOKUP_LE) against the model's predecessor, on a
    /// deep tree, probing below, between, on and above the keys.
    #[test]
    fn btree_proptest_lookup_le(keys in prop::collection::btree_set(1..5000u64, 0..1500), probes in prop::collection::vec(0..5100u64, 1..200)) {
        let target = Rc::new(MemTarget::new(1, 8).unwrap());
        let mut tree = block_on(Btree::<Big, _>::create(target)).unwrap();
        for &k in &keys {
            block_on(tree.insert(common::Kv { k, v: k * 3 })).unwrap();
        }
        for p in probes.iter().copied().chain(keys.iter().copied()) {
            let got = block_on(tree.lookup_le(&p)).unwrap().map(|r| r.k);
            prop_assert_eq!(got, keys.range(..=p).next_back().copied(), "probe {}", p);
        }
    }

    /// With checkpoints; at the end the device image (every later write
    /// landed) reopened at the last checkpoint must hold that checkpoint's
    /// tree: nothing after it overwrote a block it references.
    #[test]
    fn btree_proptest_big_records_dev_cow(ops in prop::collection::vec(op(), 1..500)) {
        let dev = Rc::new(MemDev::new(2048 * BLOCK_SIZE as u64));
        let target = Rc::new(DevTarget::format(dev.clone(), 8, 2000, 2, 8).unwrap());
        let mut tree = block_on(Btree::<Big, _>::create(target.clone())).unwrap();
        let mut model = BTreeMap::new();
        let mut saved = None;
        apply_ops(&mut tree, &mut model, &ops, |tree, model| {
            let ck = block_on(target.checkpoint_write()).unwrap();
            target.checkpoint_committed(ck.epoch);
            saved = Some((tree.root(), ck.bitmap, model.clone()));
        })?;
        if let Some((root, bitmap, snap)) = saved {
            let dev2 = Rc::new(MemDev::from_image(dev.image()));
            let t2 = Rc::new(DevTarget::open(dev2, 8, 2000, 2, 8, &bitmap).unwrap());
            let mut old = Btree::<Big, _>::open(t2, root);
            let problems = block_on(old.check()).unwrap();
            prop_assert!(problems.is_empty(), "{:#?}", problems);
            prop_assert_eq!(contents(&mut old), snap.values().copied().collect::<Vec<_>>());
        }
    }
}

fn kvs(n: u64) -> Vec<common::Kv> {
    (0..n)
        .map(|i| common::Kv {
            k: i * 3 + 1,
            v: i ^ 0xabcd,
        })
        .collect()
}

#[test]
fn btree_bulk_load_equals_inserting() {
    let mut rng = rng(seed_from_env(77), "bulk");
    for n in [0u64, 1, 9, 10, 11, 17, 100, 1000, 3000] {
        for fill in [1u8, 60, 100] {
            let recs = kvs(n);
            // memfd target
            let mt = Rc::new(MemTarget::new(0, 16).unwrap());
            let mut bulk =
                block_on(Btree::<Big, _>::bulk_load(mt.clone(), recs.clone(), fill)).unwrap();
            let mut ins = block_on(Btree::<Big, _>::create(mt.clone())).unwrap();
            for r in &recs {
                block_on(ins.insert(*r)).unwrap();
            }
            assert_sound(&mut bulk, &format!("bulk n={n} fill={fill}"));
            assert_eq!(contents(&mut bulk), contents(&mut ins), "n={n} fill={fill}");
            assert_eq!(contents(&mut bulk), recs);
            if fill == 100 && n > 0 {
                assert!(bulk.root().height <= ins.root().height, "n={n}");
            }
            // then mixed operations keep working
            let mut model: BTreeMap<u64, _> = recs.iter().map(|r| (r.k, *r)).collect();
            model_run(&mut bulk, &mut model, &mut rng, 1500, 4000, 500, |_, _| {});
            assert_eq!(
                contents(&mut bulk),
                model.values().copied().collect::<Vec<_>>()
            );

            // device target, checkpointed right after loading
            let dt = dev_target(4000, 16);
            let mut bulk =
                block_on(Btree::<Big, _>::bulk_load(dt.clone(), recs.clone(), fill)).unwrap();
            checkpoint(&dt);
            assert_sound(&mut bulk, &format!("dev bulk n={n} fill={fill}"));
            assert_eq!(contents(&mut bulk), recs);
            let mut model: BTreeMap<u64, _> = recs.iter().map(|r| (r.k, *r)).collect();
            model_run(&mut bulk, &mut model, &mut rng, 1500, 4000, 500, |_, _| {});
            block_on(bulk.destroy()).unwrap();
            checkpoint(&dt);
            assert_eq!(dt.nodes_in_use(), 0, "destroy frees every node");
        }
    }
}

#[test]
fn btree_bulk_load_rejects_unsorted_and_cleans_up_on_no_space() {
    let mt = Rc::new(MemTarget::new(0, 16).unwrap());
    let mut recs = kvs(50);
    recs.swap(10, 11);
    let r = block_on(Btree::<Small, _>::bulk_load(mt.clone(), recs, 90));
    assert!(matches!(r, Err(Error::Invalid(_))), "unsorted accepted");
    let dup = vec![common::Kv { k: 1, v: 1 }, common::Kv { k: 1, v: 2 }];
    let r = block_on(Btree::<Small, _>::bulk_load(mt.clone(), dup, 90));
    assert!(
        matches!(r, Err(Error::Invalid(_))),
        "duplicate keys accepted"
    );
    let r = block_on(Btree::<Small, _>::bulk_load(mt.clone(), kvs(5), 0));
    assert!(matches!(r, Err(Error::Invalid(_))), "fill 0% accepted");
    assert_eq!(mt.nodes_in_use(), 0);

    // 1000 Big records need ~100 leaves: a 40-block area cannot hold them.
    let dt = dev_target(40, 8);
    let r = block_on(Btree::<Big, _>::bulk_load(dt.clone(), kvs(1000), 100));
    assert!(matches!(r, Err(Error::NoSpace(_))), "expected NoSpace");
    assert_eq!(dt.nodes_in_use(), 0, "a failed bulk load leaks nothing");
    assert_eq!(dt.free_blocks(), 40);
}
