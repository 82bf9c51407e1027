//! Corrupt nodes: a flipped byte on the device is reported as a corrupt
//! b+tree node naming its block; `verify` never panics on any bytes; and
//! tree operations on nodes with valid checksums but nonsense contents
//! return errors rather than panic.

#[path = "btree_common.rs"]
mod common;

use common::*;
use futures::executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use sluice_engine::btree::node::{seal, verify, HDR_SIZE};
use sluice_engine::btree::{Btree, BtreeOps, DevTarget, TreeRoot};
use sluice_engine::dev::MemDev;
use sluice_engine::error::Structure;
use sluice_engine::{Error, BLOCK_SIZE};
use std::rc::Rc;

const START: u64 = 32;
const NBLK: u32 = 3000;
const ZONE: u32 = 6;

/// A checkpointed tree of `n` records on a MemDev: (device, root, bitmap).
fn build<O: BtreeOps>(recs: Vec<O::Rec>) -> (Rc<MemDev>, TreeRoot, Vec<u8>) {
    let dev = Rc::new(MemDev::new((START + NBLK as u64) * BLOCK_SIZE as u64));
    let t = Rc::new(DevTarget::format(dev.clone(), START, NBLK, ZONE, 64).unwrap());
    let mut tree = block_on(Btree::<O, _>::create(t.clone())).unwrap();
    for r in recs {
        block_on(tree.insert(r)).unwrap();
    }
    let ck = block_on(t.checkpoint_write()).unwrap();
    t.checkpoint_committed(ck.epoch);
    (dev, tree.root(), ck.bitmap)
}

fn reopen<O: BtreeOps>(
    image: Vec<u8>,
    root: TreeRoot,
    bitmap: &[u8],
) -> Btree<O, DevTarget<MemDev>> {
    let dev = Rc::new(MemDev::from_image(image));
    let t = Rc::new(DevTarget::open(dev, START, NBLK, ZONE, 8, bitmap).unwrap());
    Btree::open(t, root)
}

fn big_recs(n: u64) -> Vec<Kv> {
    (0..n).map(|k| Kv { k: k * 2, v: k }).collect()
}

fn block_of(image: &[u8], blk: u64) -> &[u8] {
    &image[blk as usize * BLOCK_SIZE..(blk as usize + 1) * BLOCK_SIZE]
}

#[test]
fn btree_flipped_byte_is_reported_with_its_block() {
    let mut rng = rng(seed_from_env(41), "flip");
    let (dev, root, bitmap) = build::<Big>(big_recs(3000));
    let blocks = block_on(reopen::<Big>(dev.image(), root, &bitmap).node_blocks()).unwrap();
    assert!(root.height >= 3 && blocks.len() > 300);
    for i in 0..60 {
        let blk = blocks[rng.gen_range(0..blocks.len())];
        let off = rng.gen_range(0..BLOCK_SIZE);
        let mut image = dev.image();
        image[blk as usize * BLOCK_SIZE + off] ^= rng.gen_range(1..=255u8);

        let mut tree = reopen::<Big>(image.clone(), root, &bitmap);
        match block_on(tree.count()) {
            Err(Error::Corrupt {
                structure,
                block,
                detail,
            }) => {
                assert_eq!(structure, Structure::BtreeNode);
                assert_eq!(block, blk, "iteration {i}: byte {off}: {detail}");
            }
            other => panic!("iteration {i}: block {blk} byte {off} flipped, scan gave {other:?}"),
        }
        let mut tree = reopen::<Big>(image, root, &bitmap);
        let problems = block_on(tree.check()).unwrap();
        let needle = format!("block {blk}");
        assert!(
            problems.iter().any(|p| p.contains(&needle)),
            "iteration {i}: check did not name block {blk}: {problems:?}"
        );
    }
}

/// Targeted header damage, resealed so each check past the checksum runs.
#[test]
fn btree_verify_names_what_is_wrong() {
    let (dev, root, _) = build::<Big>(big_recs(500));
    let image = dev.image();
    let good = block_of(&image, root.blk).to_vec();
    assert!(verify::<Big>(&good, root.blk, ZONE).is_ok());
    let expect = |img: &[u8], blk: u64, zone: u32, what: &str| match verify::<Big>(img, blk, zone) {
        Err(Error::Corrupt { detail, block, .. }) => {
            assert_eq!(block, blk);
            assert!(detail.contains(what), "wanted {what:?}, got {detail:?}");
        }
        other => panic!("wanted {what:?}, got {other:?}"),
    };
    let resealed = |f: &dyn Fn(&mut [u8])| {
        let mut b = good.clone();
        f(&mut b);
        seal(&mut b);
        b
    };
    expect(&resealed(&|b| b[0] = b'X'), root.blk, ZONE, "bad magic");
    let mut b = good.clone();
    b[HDR_SIZE + 3] ^= 1;
    expect(&b, root.blk, ZONE, "crc mismatch");
    expect(&good, root.blk + 1, ZONE, "lives at block");
    expect(&good, root.blk, ZONE + 1, "zone");
    expect(
        &resealed(&|b| b[4] = Small::TREE_ID),
        root.blk,
        ZONE,
        "tree id",
    );
    expect(&resealed(&|b| b[5] = 40), root.blk, ZONE, "level");
    expect(
        &resealed(&|b| b[6..8].copy_from_slice(&999u16.to_le_bytes())),
        root.blk,
        ZONE,
        "exceeds the maximum",
    );
    // Swap the first two interior slots' keys: out of order.
    let entry = 240 + 8;
    expect(
        &resealed(&|b| {
            let (a, c) = (HDR_SIZE, HDR_SIZE + entry);
            let first: Vec<u8> = b[a..a + 240].to_vec();
            b.copy_within(c..c + 240, a);
            b[c..c + 240].copy_from_slice(&first);
        }),
        root.blk,
        ZONE,
        "out of order",
    );
    expect(&good[..100], root.blk, ZONE, "bytes");
}

fn fuzz_verify<O: BtreeOps>(
    rng: &mut SmallRng,
    samples: &[Vec<u8>],
    blk: u64,
    iters: usize,
) -> (u64, u64) {
    let (mut ok, mut bad) = (0, 0);
    let mut buf = vec![0u8; BLOCK_SIZE];
    for i in 0..iters {
        match i % 3 {
            // Pure noise.
            0 => rng.fill_bytes(&mut buf),
            // Noise with a plausible header, sealed: exercises the slot checks.
            1 => {
                rng.fill_bytes(&mut buf);
                buf[0..4].copy_from_slice(b"SLBT");
                buf[4] = O::TREE_ID;
                buf[5] = rng.gen_range(0..3);
                buf[6..8].copy_from_slice(&rng.gen_range(0..300u16).to_le_bytes());
                buf[8..12].copy_from_slice(&ZONE.to_le_bytes());
                buf[24..32].copy_from_slice(&blk.to_le_bytes());
                seal(&mut buf);
            }
            // A real node with a few bytes changed, mostly in the header and
            // first slots, sealed.
            _ => {
                buf.copy_from_slice(&samples[rng.gen_range(0..samples.len())]);
                for _ in 0..rng.gen_range(1..6) {
                    let off = if rng.gen_bool(0.5) {
                        rng.gen_range(0..HDR_SIZE)
                    } else {
                        rng.gen_range(0..BLOCK_SIZE)
                    };
                    buf[off] = rng.gen();
                }
                if rng.gen_bool(0.9) {
                    seal(&mut buf);
                }
            }
        }
        match verify::<O>(&buf, blk, ZONE) {
            Ok(()) => ok += 1,
            Err(Error::Corrupt { block, .. }) => {
                assert_eq!(block, blk);
                bad += 1
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    (ok, bad)
}

#[test]
fn btree_verify_never_panics_on_any_bytes() {
    let mut rng = rng(seed_from_env(42), "fuzz verify");
    let (dev, root, bitmap) = build::<Big>(big_recs(400));
    let image = dev.image();
    let blocks = block_on(reopen::<Big>(image.clone(), root, &bitmap).node_blocks()).unwrap();
    // Samples relabelled to one block number so they verify there.
    let samples: Vec<Vec<u8>> = blocks
        .iter()
        .map(|&b| {
            let mut s = block_of(&image, b).to_vec();
            s[24..32].copy_from_slice(&7u64.to_le_bytes());
            seal(&mut s);
            s
        })
        .collect();
    assert!(samples.iter().all(|s| verify::<Big>(s, 7, ZONE).is_ok()));
    let (ok, bad) = fuzz_verify::<Big>(&mut rng, &samples, 7, 60_000);
    assert!(ok > 100 && bad > 10_000, "ok {ok} bad {bad}");
    let (ok2, bad2) = fuzz_verify::<Ivt>(&mut rng, &samples, 7, 20_000);
    let (ok3, bad3) = fuzz_verify::<Small>(&mut rng, &samples, 7, 20_000);
    eprintln!("verify: big {ok}/{bad}, intervals {ok2}/{bad2}, small {ok3}/{bad3} (ok/rejected)");
}

/// Nodes with valid checksums but nonsense in them (wrong levels, counts,
/// keys, child pointers): every tree operation returns, Ok or Err, and
/// never panics.
#[test]
fn btree_tree_ops_on_sealed_garbage_never_panic() {
    let mut rng = rng(seed_from_env(43), "sealed garbage");
    let recs: Vec<Iv> = (0..1500u32)
        .map(|i| Iv {
            start: i * 13 % 9000,
            len: 1 + i % 50,
            id: i,
        })
        .collect();
    let (dev, root, bitmap) = build::<Ivt>(recs);
    let image = dev.image();
    let blocks = block_on(reopen::<Ivt>(image.clone(), root, &bitmap).node_blocks()).unwrap();
    let (mut errors, mut oks) = (0u64, 0u64);
    let mut tally = |r: Result<(), Error>| match r {
        Ok(()) => oks += 1,
        Err(Error::Corrupt { .. }) => errors += 1,
        Err(e) => panic!("unexpected error kind: {e}"),
    };
    for _ in 0..250 {
        let mut img = image.clone();
        for _ in 0..rng.gen_range(1..4) {
            let blk = blocks[rng.gen_range(0..blocks.len())] as usize;
            let node = &mut img[blk * BLOCK_SIZE..(blk + 1) * BLOCK_SIZE];
            for _ in 0..rng.gen_range(1..8) {
                let off = match rng.gen_range(0..3) {
                    0 => rng.gen_range(4..8),                     // tree id, level, nrecs
                    1 => rng.gen_range(HDR_SIZE..HDR_SIZE + 600), // first slots
                    _ => rng.gen_range(HDR_SIZE..BLOCK_SIZE),
                };
                node[off] = if rng.gen_bool(0.5) {
                    rng.gen()
                } else {
                    node[off].wrapping_add(1)
                };
            }
            if rng.gen_bool(0.3) {
                // Point a child at another node of the tree.
                let other = blocks[rng.gen_range(0..blocks.len())];
                let slot = rng.gen_range(0..4);
                let o = HDR_SIZE + slot * (2 * Ivt::KEY_SIZE + 8) + 2 * Ivt::KEY_SIZE;
                if node[5] > 0 {
                    node[o..o + 8].copy_from_slice(&other.to_le_bytes());
                }
            }
            seal(node);
        }
        let mut tree = reopen::<Ivt>(img, root, &bitmap);
        let k = (rng.gen_range(0..9000), rng.gen_range(0..1500));
        tally(block_on(tree.get(&k)).map(drop));
        tally(block_on(tree.range(&(0, 0), &(5000, 0), 100)).map(drop));
        tally(block_on(tree.query_overlap(&(100, 0), &(3000, 0), Some(k), 50)).map(drop));
        tally(block_on(tree.count()).map(drop));
        tally(block_on(tree.check()).map(drop));
        for j in 0..30u32 {
            let r = Iv {
                start: rng.gen_range(0..9000),
                len: 3,
                id: 5000 + j,
            };
            tally(block_on(tree.insert(r)).map(drop));
            let k = (rng.gen_range(0..9000), rng.gen_range(0..1500));
            tally(block_on(tree.remove(&k)).map(drop));
        }
        tally(block_on(tree.node_blocks()).map(drop));
        tally(block_on(tree.destroy()));
    }
    assert!(
        errors > 100,
        "corruption was hardly noticed: {errors} errors, {oks} ok"
    );
    eprintln!("sealed garbage: {errors} errors, {oks} ok");
}
