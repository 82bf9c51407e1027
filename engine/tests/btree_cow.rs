//! Copy-on-write checkpoints of the device target: a checkpoint stays
//! readable whatever is written after it, nodes being written stay readable
//! from memory, pending frees wait for the commit, and failed writes or a
//! full metadata area never break a tree.

#[path = "btree_common.rs"]
mod common;

use common::*;
use futures::executor::block_on;
use futures::future::join;
use sluice_engine::btree::{Btree, BufTarget, DevTarget, TreeRoot};
use sluice_engine::dev::{BlockDev, MemDev, SimConfig, SimDev};
use sluice_engine::{Error, BLOCK_SIZE};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

const START: u64 = 64;
const NBLK: u32 = 6000;
const ZONE: u32 = 4;

fn sim(seed: u64) -> Rc<SimDev> {
    let size = (START + NBLK as u64 + 64) * BLOCK_SIZE as u64;
    Rc::new(SimDev::new(
        size,
        SimConfig {
            seed,
            ..Default::default()
        },
    ))
}

type Model = BTreeMap<u64, Kv>;

/// What a zone would have persisted for a checkpoint.
#[derive(Clone)]
struct Saved {
    big: TreeRoot,
    small: TreeRoot,
    bitmap: Vec<u8>,
    mbig: Model,
    msmall: Model,
}

/// Open `image` as of `saved` and check it holds exactly that checkpoint:
/// both trees sound and equal to their models, and the live bitmap is
/// exactly the blocks the two trees occupy (no leak, no dangling pointer).
/// Then keep using it, to show the reopened allocator is consistent.
fn verify_image(image: Vec<u8>, saved: &Saved, seed: u64, what: &str) {
    let dev = Rc::new(MemDev::from_image(image));
    let t = Rc::new(DevTarget::open(dev, START, NBLK, ZONE, 12, &saved.bitmap).expect("open"));
    let mut big = Btree::<Big, _>::open(t.clone(), saved.big);
    let mut small = Btree::<Small, _>::open(t.clone(), saved.small);
    assert_sound(&mut big, what);
    assert_sound(&mut small, what);
    assert_eq!(
        contents(&mut big),
        saved.mbig.values().copied().collect::<Vec<_>>(),
        "{what}: big"
    );
    assert_eq!(
        contents(&mut small),
        saved.msmall.values().copied().collect::<Vec<_>>(),
        "{what}: small"
    );
    let mut blocks: Vec<u64> = block_on(big.node_blocks()).unwrap();
    blocks.extend(block_on(small.node_blocks()).unwrap());
    let set: HashSet<u64> = blocks.iter().copied().collect();
    assert_eq!(set.len(), blocks.len(), "{what}: trees share a block");
    assert_eq!(
        set.len() as u32,
        t.nodes_in_use(),
        "{what}: live bitmap != blocks in use"
    );
    let mut m = saved.mbig.clone();
    let mut rng = rng(seed, "reopened");
    model_run(&mut big, &mut m, &mut rng, 600, 3000, 300, |_, _| {});
    let ck = block_on(t.checkpoint_write()).unwrap();
    t.checkpoint_committed(ck.epoch);
    assert_sound(&mut big, what);
    assert_sound(&mut small, what);
}

/// Two trees share one metadata area. After each checkpoint more work is
/// done (write-backs reach the device, sometimes flushed); the device image
/// reopened at the checkpoint must still hold the checkpoint's trees, both
/// with every later write landed and with a seeded crash's subset of them.
#[test]
fn btree_checkpoint_survives_later_writes() {
    for seed in [11u64, 12, 13, 14, 15, 16] {
        let seed = seed_from_env(seed);
        let mut rng = rng(seed, "cow");
        let dev = sim(seed);
        let t = Rc::new(DevTarget::format(dev.clone(), START, NBLK, ZONE, 12).unwrap());
        let mut big = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
        let mut small = block_on(Btree::<Small, _>::create(t.clone())).unwrap();
        let (mut mbig, mut msmall) = (Model::new(), Model::new());
        for round in 0..4 {
            model_run(&mut big, &mut mbig, &mut rng, 1500, 3000, 0, |_, _| {});
            model_run(
                &mut small,
                &mut msmall,
                &mut rng,
                1500,
                20_000,
                0,
                |_, _| {},
            );
            let ck = block_on(t.checkpoint_write()).unwrap();
            block_on(dev.flush()).unwrap();
            let saved = Saved {
                big: big.root(),
                small: small.root(),
                bitmap: ck.bitmap.clone(),
                mbig: mbig.clone(),
                msmall: msmall.clone(),
            };
            t.checkpoint_committed(ck.epoch);
            let writes = dev.stats().writes;
            model_run(&mut big, &mut mbig, &mut rng, 1500, 3000, 0, |_, _| {});
            model_run(
                &mut small,
                &mut msmall,
                &mut rng,
                1500,
                20_000,
                0,
                |_, _| {},
            );
            assert!(
                dev.stats().writes > writes + 100,
                "later work must reach the device"
            );
            if round % 2 == 1 {
                block_on(dev.flush()).unwrap();
            }
            let what = format!("seed {seed} round {round}");
            verify_image(
                dev.current_image(),
                &saved,
                seed,
                &format!("{what} (all later writes)"),
            );
            verify_image(dev.crash_image(), &saved, seed, &format!("{what} (crash)"));
        }
        assert_sound(&mut big, "live big");
        assert_sound(&mut small, "live small");
    }
}

/// While a checkpoint's writes are held in flight, reads are served from
/// memory and see current data, and changes go to new blocks: the image
/// reopened at that checkpoint shows the tree as of its snapshot.
#[test]
fn btree_nodes_in_flight_stay_readable() {
    for budget in [16usize, 1 << 20] {
        let seed = seed_from_env(21);
        let mut rng = rng(seed, "in flight");
        let dev = sim(seed);
        let t = Rc::new(DevTarget::format(dev.clone(), START, NBLK, ZONE, budget).unwrap());
        let mut tree = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
        let mut model = Model::new();
        model_run(&mut tree, &mut model, &mut rng, 3000, 4000, 0, |_, _| {});
        let ck = block_on(t.checkpoint_write()).unwrap();
        block_on(dev.flush()).unwrap();
        t.checkpoint_committed(ck.epoch);
        model_run(&mut tree, &mut model, &mut rng, 400, 4000, 0, |_, _| {});

        let snap_root = tree.root();
        let snap_model = model.clone();
        dev.hold_writes();
        let ckf = t.checkpoint_write();
        let work = async {
            for (k, r) in &snap_model {
                assert_eq!(
                    tree.get(k).await.unwrap(),
                    Some(*r),
                    "get {k} during the checkpoint"
                );
            }
            assert!(
                t.cache_stats().dirty == 0,
                "the snapshot took every dirty node"
            );
            if budget > 1000 {
                // No write-back can be needed: change the tree mid-checkpoint.
                for i in 0..300u64 {
                    let r = Kv {
                        k: 10_000 + i * 7,
                        v: i,
                    };
                    assert_eq!(tree.insert(r).await.unwrap(), None);
                    model.insert(r.k, r);
                }
                for k in snap_model.keys().step_by(5) {
                    tree.remove(k).await.unwrap();
                    model.remove(k);
                }
            }
            dev.release_writes();
        };
        let (ck, ()) = block_on(join(ckf, work));
        let ck = ck.unwrap();
        block_on(dev.flush()).unwrap();
        t.checkpoint_committed(ck.epoch);
        assert_sound(&mut tree, "live");
        assert_eq!(
            contents(&mut tree),
            model.values().copied().collect::<Vec<_>>()
        );
        // Write what changed meanwhile (the next checkpoint, not committed):
        // it must all go to blocks the first checkpoint does not use.
        block_on(t.checkpoint_write()).unwrap();

        let d2 = Rc::new(MemDev::from_image(dev.current_image()));
        let t2 = Rc::new(DevTarget::open(d2, START, NBLK, ZONE, 16, &ck.bitmap).unwrap());
        let mut old = Btree::<Big, _>::open(t2, snap_root);
        assert_sound(&mut old, "reopened");
        assert_eq!(
            contents(&mut old),
            snap_model.values().copied().collect::<Vec<_>>()
        );
    }
}

#[test]
fn btree_pending_frees_wait_for_commit() {
    let dev = Rc::new(MemDev::new((START + 2000) * BLOCK_SIZE as u64));
    let t = Rc::new(DevTarget::format(dev, START, 1000, ZONE, 64).unwrap());
    let mut tree = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
    // Within one epoch, freed nodes are reusable at once.
    for k in 0..500u64 {
        block_on(tree.insert(Kv { k, v: k })).unwrap();
    }
    for k in 0..500u64 {
        block_on(tree.remove(&k)).unwrap();
    }
    assert_eq!(t.pending_frees(), 0);
    assert_eq!(t.nodes_in_use(), 1);
    for k in 0..500u64 {
        block_on(tree.insert(Kv { k, v: k })).unwrap();
    }
    let ck = block_on(t.checkpoint_write()).unwrap();
    t.checkpoint_committed(ck.epoch);
    let root = tree.root();
    assert!(root.height >= 3);
    assert!(!t.is_writable(root.blk), "a checkpointed node is read-only");
    let (in_use, free) = (t.nodes_in_use(), t.free_blocks());

    // One change shadows the root-to-leaf path; the old path is pending.
    block_on(tree.insert(Kv { k: 250, v: 1 })).unwrap();
    let h = root.height as u32;
    assert_ne!(tree.root().blk, root.blk, "the root moved");
    assert!(t.is_writable(tree.root().blk));
    assert!(!t.is_allocated(root.blk));
    assert_eq!(t.pending_frees(), h as usize);
    assert_eq!(t.nodes_in_use(), in_use);
    assert_eq!(t.free_blocks(), free - h, "old blocks are not reusable yet");

    // A second change to the same path shadows nothing more.
    block_on(tree.insert(Kv { k: 251, v: 1 })).unwrap();
    assert_eq!(t.pending_frees(), h as usize);

    let ck = block_on(t.checkpoint_write()).unwrap();
    assert_eq!(
        t.pending_frees(),
        h as usize,
        "written but not yet committed"
    );
    t.checkpoint_committed(ck.epoch);
    assert_eq!(t.pending_frees(), 0);
    assert_eq!(t.free_blocks(), 1000 - t.nodes_in_use());
    assert_sound(&mut tree, "end");
}

/// A full metadata area makes an operation fail with NoSpace and change
/// nothing. (Copy-on-write means even a removal needs free blocks to shadow
/// its path, so a completely full area cannot shrink by removals: the zone
/// keeps a reserve. Destroying a tree needs no space.)
#[test]
fn btree_no_space_leaves_tree_intact() {
    let dev = Rc::new(MemDev::new((START + 100) * BLOCK_SIZE as u64));
    let t = Rc::new(DevTarget::format(dev, START, 40, ZONE, 8).unwrap());
    let mut tree = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
    let mut model = Model::new();
    let ckpt = || {
        let ck = block_on(t.checkpoint_write()).unwrap();
        t.checkpoint_committed(ck.epoch);
    };
    let mut failures = 0;
    for i in 0..2000u64 {
        let k = (i * 7919) % 5000;
        let r = Kv { k, v: i };
        match block_on(tree.insert(r)) {
            Ok(old) => assert_eq!(old, model.insert(k, r)),
            Err(Error::NoSpace(_)) => failures += 1,
            Err(e) => panic!("insert {i}: {e}"),
        }
        if i % 37 == 0 {
            ckpt();
        }
        if i % 101 == 0 {
            assert_sound(&mut tree, &format!("insert {i}"));
            assert_eq!(
                contents(&mut tree),
                model.values().copied().collect::<Vec<_>>()
            );
        }
    }
    assert!(
        failures > 100,
        "the area never filled up ({failures} failures)"
    );
    let keys: Vec<u64> = model.keys().copied().collect();
    let (mut removed, mut refused) = (0, 0);
    for (i, k) in keys.iter().enumerate() {
        match block_on(tree.remove(k)) {
            Ok(old) => {
                assert_eq!(old, model.remove(k));
                removed += 1;
            }
            Err(Error::NoSpace(_)) => refused += 1,
            Err(e) => panic!("remove {k}: {e}"),
        }
        if i % 10 == 0 {
            ckpt();
        }
    }
    eprintln!("{failures} inserts and {refused} removals refused, {removed} removed");
    assert_sound(&mut tree, "after removals");
    assert_eq!(
        contents(&mut tree),
        model.values().copied().collect::<Vec<_>>()
    );
    block_on(tree.destroy()).unwrap();
    ckpt();
    assert_eq!(t.free_blocks(), 40);
    let mut tree = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
    block_on(tree.insert(Kv { k: 1, v: 1 })).expect("space again after destroy");
    assert_sound(&mut tree, "new tree");
}

/// Injected write errors (write-back and checkpoint writes) make single
/// operations or checkpoints fail, never lose or half-apply a change: the
/// tree keeps matching the model, and a final clean checkpoint reopens to it.
#[test]
fn btree_write_errors_lose_nothing() {
    let seed = seed_from_env(31);
    let mut rng = rng(seed, "write errors");
    let dev = sim(seed);
    let t = Rc::new(DevTarget::format(dev.clone(), START, NBLK, ZONE, 8).unwrap());
    let mut tree = block_on(Btree::<Big, _>::create(t.clone())).unwrap();
    let mut model = Model::new();
    dev.configure(|c| c.write_error_rate = 0.05);
    let (mut op_errors, mut ck_errors) = (0, 0);
    for i in 0..6000u64 {
        use rand::Rng;
        let k = rng.gen_range(0..3000u64);
        let r = if rng.gen_bool(0.6) {
            let rec = Kv { k, v: i };
            block_on(tree.insert(rec)).map(|old| assert_eq!(old, model.insert(k, rec)))
        } else {
            block_on(tree.remove(&k)).map(|old| assert_eq!(old, model.remove(&k)))
        };
        match r {
            Ok(()) => {}
            Err(Error::Io { .. }) => op_errors += 1,
            Err(e) => panic!("op {i}: {e}"),
        }
        if i % 250 == 0 {
            match block_on(t.checkpoint_write()) {
                Ok(ck) => t.checkpoint_committed(ck.epoch),
                Err(Error::Io { .. }) => ck_errors += 1,
                Err(e) => panic!("checkpoint: {e}"),
            }
        }
    }
    assert!(
        op_errors > 0 && ck_errors > 0,
        "errors not exercised: {op_errors} {ck_errors}"
    );
    dev.configure(|c| c.write_error_rate = 0.0);
    assert_sound(&mut tree, "after errors");
    assert_eq!(
        contents(&mut tree),
        model.values().copied().collect::<Vec<_>>()
    );
    let ck = block_on(t.checkpoint_write()).unwrap();
    block_on(dev.flush()).unwrap();
    let root = tree.root();
    t.checkpoint_committed(ck.epoch);
    let d2 = Rc::new(MemDev::from_image(dev.crash_image()));
    let t2 = Rc::new(DevTarget::open(d2, START, NBLK, ZONE, 8, &ck.bitmap).unwrap());
    let mut reopened = Btree::<Big, _>::open(t2, root);
    assert_sound(&mut reopened, "reopened");
    assert_eq!(
        contents(&mut reopened),
        model.values().copied().collect::<Vec<_>>()
    );
    eprintln!("{op_errors} failed operations, {ck_errors} failed checkpoints");
}

#[test]
fn btree_region_and_bitmap_are_validated() {
    let dev = Rc::new(MemDev::new(100 * BLOCK_SIZE as u64));
    assert!(matches!(
        DevTarget::format(dev.clone(), 90, 20, 0, 8),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        DevTarget::format(dev.clone(), 0, 0, 0, 8),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        DevTarget::open(dev.clone(), 0, 64, 0, 8, &[0u8; 7]),
        Err(Error::Invalid(_))
    ));
    assert!(DevTarget::open(dev.clone(), 0, 64, 0, 8, &[0u8; 8]).is_ok());
    assert_eq!(dev.size(), 100 * BLOCK_SIZE as u64);
}
