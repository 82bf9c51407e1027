//! Shared support for the B+tree tests: test tree types and a model-checking
//! driver. Included by the other `btree_*` tests with `#[path]`; built on its
//! own it has no tests.
#![allow(dead_code)]

use futures::executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_engine::btree::{Btree, BtreeOps, BufTarget};
use std::collections::BTreeMap;

/// A key/value record shared by the point-record test trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kv {
    pub k: u64,
    pub v: u64,
}

fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn get64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn get32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// Padding derived from a value, so node bytes are not mostly zeros.
fn pad(b: &mut [u8], seed: u64) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seed as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// Small records: 254 per leaf, 254 children per interior node.
pub struct Small;

impl BtreeOps for Small {
    type Key = u64;
    type Rec = Kv;
    const TREE_ID: u8 = 101;
    const NAME: &'static str = "small";
    const KEY_SIZE: usize = 8;
    const REC_SIZE: usize = 16;
    const OVERLAPPING: bool = false;
    fn key(r: &Kv) -> u64 {
        r.k
    }
    fn encode_key(k: &u64, out: &mut [u8]) {
        put64(out, 0, *k);
    }
    fn decode_key(b: &[u8]) -> u64 {
        get64(b, 0)
    }
    fn encode_rec(r: &Kv, out: &mut [u8]) {
        put64(out, 0, r.k);
        put64(out, 8, r.v);
    }
    fn decode_rec(b: &[u8]) -> Kv {
        Kv {
            k: get64(b, 0),
            v: get64(b, 8),
        }
    }
}

/// Big padded records and keys: 10 records per leaf, 16 children per
/// interior node, so a few thousand records make a 4-5 level tree.
pub struct Big;

impl BtreeOps for Big {
    type Key = u64;
    type Rec = Kv;
    const TREE_ID: u8 = 102;
    const NAME: &'static str = "big";
    const KEY_SIZE: usize = 240;
    const REC_SIZE: usize = 400;
    const OVERLAPPING: bool = false;
    fn key(r: &Kv) -> u64 {
        r.k
    }
    fn encode_key(k: &u64, out: &mut [u8]) {
        put64(out, 0, *k);
        pad(&mut out[8..240], *k);
    }
    fn decode_key(b: &[u8]) -> u64 {
        get64(b, 0)
    }
    fn encode_rec(r: &Kv, out: &mut [u8]) {
        put64(out, 0, r.k);
        put64(out, 8, r.v);
        pad(&mut out[16..400], r.v);
    }
    fn decode_rec(b: &[u8]) -> Kv {
        Kv {
            k: get64(b, 0),
            v: get64(b, 8),
        }
    }
    fn rec_key(b: &[u8]) -> u64 {
        get64(b, 0)
    }
}

/// An interval `[start, start + len - 1]` owned by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iv {
    pub start: u32,
    pub len: u32,
    pub id: u32,
}

impl Iv {
    /// Saturating, so records decoded from corrupt-but-sealed bytes in the
    /// fuzz tests cannot overflow.
    pub fn end(&self) -> u32 {
        self.start.saturating_add(self.len.max(1) - 1)
    }
}

/// An overlapping-interval tree keyed by (start, id), like rmap; padded to
/// 13 records per leaf and 16 children per interior node.
pub struct Ivt;

impl BtreeOps for Ivt {
    type Key = (u32, u32);
    type Rec = Iv;
    const TREE_ID: u8 = 103;
    const NAME: &'static str = "intervals";
    const KEY_SIZE: usize = 120;
    const REC_SIZE: usize = 300;
    const OVERLAPPING: bool = true;
    fn key(r: &Iv) -> (u32, u32) {
        (r.start, r.id)
    }
    fn high_key(r: &Iv) -> (u32, u32) {
        (r.end(), r.id)
    }
    fn encode_key(k: &(u32, u32), out: &mut [u8]) {
        out[0..4].copy_from_slice(&k.0.to_le_bytes());
        out[4..8].copy_from_slice(&k.1.to_le_bytes());
        pad(&mut out[8..120], k.0 as u64);
    }
    fn decode_key(b: &[u8]) -> (u32, u32) {
        (get32(b, 0), get32(b, 4))
    }
    fn encode_rec(r: &Iv, out: &mut [u8]) {
        out[0..4].copy_from_slice(&r.start.to_le_bytes());
        out[4..8].copy_from_slice(&r.len.max(1).to_le_bytes());
        out[8..12].copy_from_slice(&r.id.to_le_bytes());
        pad(&mut out[12..300], r.id as u64);
    }
    fn decode_rec(b: &[u8]) -> Iv {
        Iv {
            start: get32(b, 0),
            len: get32(b, 4),
            id: get32(b, 8),
        }
    }
}

pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("BTREE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Everything the tree holds, in order.
pub fn contents<O: BtreeOps, T: BufTarget>(t: &mut Btree<O, T>) -> Vec<O::Rec> {
    let mut v = Vec::new();
    block_on(t.for_each(|r| v.push(*r))).expect("scan");
    v
}

pub fn assert_sound<O: BtreeOps, T: BufTarget>(t: &mut Btree<O, T>, what: &str) {
    let problems = block_on(t.check()).expect("check");
    assert!(problems.is_empty(), "{what}: check found {problems:#?}");
}

/// Observations from a model run, so tests can assert the run exercised
/// what it meant to.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub ops: u64,
    pub max_height: u8,
    pub collapses: u64,
    pub inserts: u64,
    pub removes: u64,
    pub hits: u64,
}

/// Random operations on `tree` and a `BTreeMap` model side by side, every
/// result compared. Phases: grow (insert-heavy), churn, shrink
/// (remove-heavy), so splits, merges and root collapse all happen. `hook`
/// runs every `hook_every` ops (checkpoints, checks).
pub fn model_run<O, T>(
    tree: &mut Btree<O, T>,
    model: &mut BTreeMap<u64, Kv>,
    rng: &mut SmallRng,
    nops: u64,
    keyspace: u64,
    check_every: u64,
    mut hook: impl FnMut(&mut Btree<O, T>, u64),
) -> RunStats
where
    O: BtreeOps<Key = u64, Rec = Kv>,
    T: BufTarget,
{
    let mut st = RunStats::default();
    for i in 0..nops {
        let phase = i * 100 / nops;
        let (p_ins, p_rem) = match phase {
            0..=39 => (70, 15),
            40..=69 => (40, 40),
            _ => (15, 70),
        };
        let roll = rng.gen_range(0..100);
        let k = rng.gen_range(0..keyspace);
        let before = tree.root().height;
        if roll < p_ins {
            let r = Kv { k, v: rng.gen() };
            let got = block_on(tree.insert(r)).unwrap_or_else(|e| panic!("op {i} insert {k}: {e}"));
            assert_eq!(got, model.insert(k, r), "op {i}: insert {k}");
            st.inserts += 1;
        } else if roll < p_ins + p_rem {
            // Mostly remove keys that exist.
            let k = if rng.gen_bool(0.8) {
                model.range(k..).next().map(|(&k, _)| k).unwrap_or(k)
            } else {
                k
            };
            let got =
                block_on(tree.remove(&k)).unwrap_or_else(|e| panic!("op {i} remove {k}: {e}"));
            assert_eq!(got, model.remove(&k), "op {i}: remove {k}");
            st.removes += 1;
        } else if roll < 95 {
            let got = block_on(tree.get(&k)).unwrap_or_else(|e| panic!("op {i} get {k}: {e}"));
            assert_eq!(got.as_ref(), model.get(&k), "op {i}: get {k}");
            st.hits += got.is_some() as u64;
        } else {
            let hi = k + rng.gen_range(0..keyspace / 20 + 1);
            let limit = rng.gen_range(1..64);
            let got = block_on(tree.range(&k, &hi, limit))
                .unwrap_or_else(|e| panic!("op {i} range: {e}"));
            let want: Vec<Kv> = model.range(k..=hi).take(limit).map(|(_, r)| *r).collect();
            assert_eq!(got, want, "op {i}: range [{k}, {hi}] limit {limit}");
        }
        let after = tree.root().height;
        st.max_height = st.max_height.max(after);
        if after < before {
            st.collapses += 1;
        }
        if check_every > 0 && (i + 1) % check_every == 0 {
            let problems = block_on(tree.check()).expect("check");
            assert!(problems.is_empty(), "after op {i}: {problems:#?}");
            assert_eq!(
                block_on(tree.count()).expect("count"),
                model.len() as u64,
                "after op {i}"
            );
        }
        hook(tree, i);
        st.ops += 1;
    }
    st
}

/// Remove everything left, checking as it empties.
pub fn drain_all<O, T>(tree: &mut Btree<O, T>, model: &mut BTreeMap<u64, Kv>)
where
    O: BtreeOps<Key = u64, Rec = Kv>,
    T: BufTarget,
{
    let keys: Vec<u64> = model.keys().copied().collect();
    for k in keys {
        assert_eq!(block_on(tree.remove(&k)).expect("remove"), model.remove(&k));
    }
    assert_eq!(tree.root().height, 1, "an empty tree is one leaf");
    assert!(block_on(tree.check()).expect("check").is_empty());
    assert_eq!(block_on(tree.count()).expect("count"), 0);
}

pub fn rng(seed: u64, what: &str) -> SmallRng {
    eprintln!("{what}: seed {seed} (set BTREE_SEED to replay)");
    SmallRng::seed_from_u64(seed)
}
