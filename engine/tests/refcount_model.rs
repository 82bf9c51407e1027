//! The refcount tree (`sluice_engine::refcount`) against a per-block model:
//! a `Vec<u32>` of reference counts for a 4096-block zone (0 = free). After
//! every operation the tree's records must be exactly the model's maximal
//! runs of count >= 2, the blocks `adjust` reports freed exactly the blocks
//! whose count fell to 0, and the tree's own structural check must pass.
//! Trees start with thousands of records so nodes split, merge and the root
//! grows and collapses; one run uses the on-disk record size, one a padded
//! record (10 per leaf) for deeper trees. All on the memfd target.

use futures::executor::block_on;
use proptest::prelude::*;
use sluice_engine::btree::{Btree, BtreeOps, BufTarget, MemTarget};
use sluice_engine::refcount::{
    adjust, any_shared, is_shared, lookup, shared_ranges, Delta, Refcount, RefcountRec,
};
use sluice_engine::Error;
use std::rc::Rc;

const ZONE_BLOCKS: usize = 4096;

/// The refcount record padded to 400 bytes (keys to 240): 10 records per
/// leaf and 16 children per interior node, so 2000 records make a 3-4
/// level tree.
struct PaddedRefcount;

impl BtreeOps for PaddedRefcount {
    type Key = u32;
    type Rec = RefcountRec;
    const TREE_ID: u8 = 104;
    const NAME: &'static str = "padded refcount";
    const KEY_SIZE: usize = 240;
    const REC_SIZE: usize = 400;
    const OVERLAPPING: bool = false;
    fn key(r: &RefcountRec) -> u32 {
        r.start
    }
    fn encode_key(k: &u32, out: &mut [u8]) {
        out[..4].copy_from_slice(&k.to_le_bytes());
        for (i, x) in out[4..240].iter_mut().enumerate() {
            *x = (*k as u8).wrapping_add(i as u8);
        }
    }
    fn decode_key(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn encode_rec(r: &RefcountRec, out: &mut [u8]) {
        out[..4].copy_from_slice(&r.start.to_le_bytes());
        out[4..8].copy_from_slice(&r.len.to_le_bytes());
        out[8..12].copy_from_slice(&r.refcount.to_le_bytes());
        for (i, x) in out[12..400].iter_mut().enumerate() {
            *x = (r.refcount as u8).wrapping_mul(7).wrapping_add(i as u8);
        }
    }
    fn decode_rec(b: &[u8]) -> RefcountRec {
        let g = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        RefcountRec {
            start: g(0),
            len: g(4),
            refcount: g(8),
        }
    }
}

fn new_tree<O: BtreeOps<Key = u32, Rec = RefcountRec>>() -> Btree<O, MemTarget> {
    // A small cache, so nodes are evicted and read back.
    let target = Rc::new(MemTarget::new(7, 16).expect("memfd"));
    block_on(Btree::<O, _>::create(target)).expect("create")
}

fn records<O: BtreeOps<Key = u32, Rec = RefcountRec>, T: BufTarget>(
    t: &mut Btree<O, T>,
) -> Vec<RefcountRec> {
    let mut v = Vec::new();
    block_on(t.for_each(|r| v.push(*r))).expect("scan");
    v
}

/// Maximal runs of blocks satisfying `keep`, as (start, len, count): runs
/// break where the count changes.
fn model_runs(model: &[u32], keep: impl Fn(u32) -> bool) -> Vec<RefcountRec> {
    let mut out: Vec<RefcountRec> = Vec::new();
    for (b, &c) in model.iter().enumerate() {
        if !keep(c) {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.end() == b as u64 && r.refcount == c => r.len += 1,
            _ => out.push(RefcountRec {
                start: b as u32,
                len: 1,
                refcount: c,
            }),
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Inc,
    Dec,
    /// The caller's bitmap allocates free blocks (count 0 -> 1); the tree
    /// is not involved, it only keeps the model's blocks alive.
    Alloc,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    kind: Kind,
    start: u32,
    len: u32,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![3 => Just(Kind::Inc), 3 => Just(Kind::Dec), 1 => Just(Kind::Alloc)];
    // Mostly short ranges (many records survive), some spanning hundreds.
    let len = prop_oneof![6 => 1u32..8, 3 => 8u32..128, 1 => 128u32..1500];
    (kind, 0..ZONE_BLOCKS as u32, len).prop_map(|(kind, start, len)| Op {
        kind,
        start,
        len: len.min(ZONE_BLOCKS as u32 - start),
    })
}

/// Tree and model agree exactly, and the tree is sound.
fn compare<O: BtreeOps<Key = u32, Rec = RefcountRec>>(
    tree: &mut Btree<O, MemTarget>,
    model: &[u32],
    what: &str,
) -> Result<(), TestCaseError> {
    let problems = block_on(tree.check()).expect("check");
    prop_assert!(problems.is_empty(), "{}: check: {:#?}", what, problems);
    let got = records(tree);
    let want = model_runs(model, |c| c >= 2);
    if got != want {
        // Name the first difference, not thousands of records.
        let i = got.iter().zip(&want).take_while(|(g, w)| g == w).count();
        let near = |v: &[RefcountRec]| v[i.saturating_sub(1)..(i + 2).min(v.len())].to_vec();
        return Err(TestCaseError::fail(format!(
            "{what}: records differ at #{i} ({} in tree, {} in model): tree {:?}, model {:?}",
            got.len(),
            want.len(),
            near(&got),
            near(&want)
        )));
    }
    Ok(())
}

/// Build thousands of records: every `stride`-th block shared 2..4 times.
fn prepopulate<O: BtreeOps<Key = u32, Rec = RefcountRec>>(
    tree: &mut Btree<O, MemTarget>,
    model: &mut [u32],
    stride: u32,
) {
    for b in (0..ZONE_BLOCKS as u32).step_by(stride as usize) {
        for _ in 0..1 + b % 3 {
            let freed = block_on(adjust(tree, b, 1, Delta::Inc)).expect("adjust");
            assert!(freed.is_empty());
            model[b as usize] += 1;
        }
    }
}

fn run_ops<O: BtreeOps<Key = u32, Rec = RefcountRec>>(
    stride: u32,
    ops: &[Op],
    min_height: u8,
) -> Result<(), TestCaseError> {
    let mut tree = new_tree::<O>();
    // Every block starts allocated and unshared.
    let mut model = vec![1u32; ZONE_BLOCKS];
    prepopulate(&mut tree, &mut model, stride);
    compare(&mut tree, &model, "after prepopulating")?;
    let mut max_height = tree.root().height;
    for (i, &o) in ops.iter().enumerate() {
        let range = o.start as usize..(o.start + o.len) as usize;
        let live = model[range.clone()].iter().all(|&c| c >= 1);
        let kind = if live { o.kind } else { Kind::Alloc };
        let what = format!("op {i} {kind:?} {}+{}", o.start, o.len);
        match kind {
            Kind::Alloc => {
                for c in &mut model[range] {
                    *c = (*c).max(1);
                }
            }
            Kind::Inc | Kind::Dec => {
                let delta = if matches!(kind, Kind::Inc) {
                    Delta::Inc
                } else {
                    Delta::Dec
                };
                let freed = block_on(adjust(&mut tree, o.start, o.len, delta))
                    .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
                let mut went_free = vec![false; ZONE_BLOCKS];
                for b in range {
                    if matches!(kind, Kind::Inc) {
                        model[b] += 1;
                    } else {
                        model[b] -= 1;
                        went_free[b] = model[b] == 0;
                    }
                }
                let want: Vec<(u32, u32)> = model_runs(
                    &went_free.iter().map(|&f| f as u32).collect::<Vec<_>>(),
                    |f| f == 1,
                )
                .iter()
                .map(|r| (r.start, r.len))
                .collect();
                prop_assert_eq!(freed, want, "{}: freed", &what);
            }
        }
        compare(&mut tree, &model, &what)?;
        max_height = max_height.max(tree.root().height);
        // Point and range queries at a block derived from the op.
        let b = (o.start as usize * 7 + i) % ZONE_BLOCKS;
        let c = block_on(lookup(&mut tree, b as u32)).expect("lookup");
        prop_assert_eq!(c, model[b].max(1), "{}: lookup {}", &what, b);
        let (qs, ql) = (o.start / 2, o.len * 2);
        let ql = ql.min(ZONE_BLOCKS as u32 - qs);
        let got = block_on(shared_ranges(&mut tree, qs, ql)).expect("shared_ranges");
        let want: Vec<(u32, u32, u32)> = model_runs(&model, |c| c >= 2)
            .iter()
            .filter_map(|r| {
                let a = r.start.max(qs) as u64;
                let e = r.end().min((qs + ql) as u64);
                (a < e).then(|| (a as u32, (e - a) as u32, r.refcount))
            })
            .collect();
        prop_assert_eq!(got, want, "{}: shared_ranges {}+{}", &what, qs, ql);
        // The write path's one-lookup test agrees, on the op's own range too.
        for (s, l) in [(qs, ql), (o.start, o.len)] {
            let any = block_on(any_shared(&mut tree, s, l)).expect("any_shared");
            let want = model[s as usize..(s + l) as usize].iter().any(|&c| c >= 2);
            prop_assert_eq!(any, want, "{}: any_shared {}+{}", &what, s, l);
        }
    }
    // Enough records that nodes split.
    prop_assert!(max_height >= min_height, "tree only {} levels", max_height);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// The on-disk record size (~340 records per leaf): 2-3 leaves and a root.
    #[test]
    fn refcount_model_ondisk_records(stride in 2u32..4, ops in prop::collection::vec(op(), 1..80)) {
        run_ops::<Refcount>(stride, &ops, 2)?;
    }

    /// Padded records: 10 per leaf, so the same runs make 3-4 level trees.
    #[test]
    fn refcount_model_padded_records(stride in 2u32..6, ops in prop::collection::vec(op(), 1..80)) {
        run_ops::<PaddedRefcount>(stride, &ops, 3)?;
    }
}

fn rec(start: u32, len: u32, refcount: u32) -> RefcountRec {
    RefcountRec {
        start,
        len,
        refcount,
    }
}

fn tree_with(recs: &[RefcountRec]) -> Btree<Refcount, MemTarget> {
    let mut t = new_tree::<Refcount>();
    for r in recs {
        block_on(t.insert(*r)).expect("insert");
    }
    t
}

#[test]
fn adjust_spans_records_and_gaps() {
    // [10,15)x2  gap  [20,25)x3  gap  [30,31)x2
    let mut t = tree_with(&[rec(10, 5, 2), rec(20, 5, 3), rec(30, 1, 2)]);
    let freed = block_on(adjust(&mut t, 12, 22, Delta::Inc)).unwrap();
    assert!(freed.is_empty());
    assert_eq!(
        records(&mut t),
        vec![
            rec(10, 2, 2), // left part of the split record, unchanged
            rec(12, 3, 3), // covered part 2 -> 3
            rec(15, 5, 2), // gap 1 -> 2
            rec(20, 5, 4), // 3 -> 4
            rec(25, 5, 2), // gap 1 -> 2
            rec(30, 1, 3), // 2 -> 3
            rec(31, 3, 2), // gap up to the range end
        ]
    );
    // And back down: the same range -1 restores the original exactly.
    let freed = block_on(adjust(&mut t, 12, 22, Delta::Dec)).unwrap();
    assert!(freed.is_empty());
    assert_eq!(
        records(&mut t),
        vec![rec(10, 5, 2), rec(20, 5, 3), rec(30, 1, 2)]
    );
    // -1 over records and gaps: gaps free, 2s vanish, 3 becomes 2.
    let freed = block_on(adjust(&mut t, 8, 26, Delta::Dec)).unwrap();
    assert_eq!(freed, vec![(8, 2), (15, 5), (25, 5), (31, 3)]);
    assert_eq!(records(&mut t), vec![rec(20, 5, 2)]);
    assert!(block_on(t.check()).unwrap().is_empty());
}

#[test]
fn adjust_merges_both_sides() {
    let mut t = tree_with(&[rec(0, 10, 3), rec(20, 10, 3)]);
    block_on(adjust(&mut t, 10, 10, Delta::Inc)).unwrap();
    assert_eq!(
        records(&mut t),
        vec![rec(0, 10, 3), rec(10, 10, 2), rec(20, 10, 3)]
    );
    block_on(adjust(&mut t, 10, 10, Delta::Inc)).unwrap();
    assert_eq!(records(&mut t), vec![rec(0, 30, 3)]);
    // Decrement merging: 2 | 3 | 2 -> one record of 2.
    let mut t = tree_with(&[rec(0, 10, 2), rec(10, 10, 3), rec(20, 10, 2)]);
    block_on(adjust(&mut t, 10, 10, Delta::Dec)).unwrap();
    assert_eq!(records(&mut t), vec![rec(0, 30, 2)]);
    // Splitting the middle off and putting it back merges again.
    block_on(adjust(&mut t, 5, 3, Delta::Inc)).unwrap();
    assert_eq!(
        records(&mut t),
        vec![rec(0, 5, 2), rec(5, 3, 3), rec(8, 22, 2)]
    );
    block_on(adjust(&mut t, 5, 3, Delta::Dec)).unwrap();
    assert_eq!(records(&mut t), vec![rec(0, 30, 2)]);
}

#[test]
fn adjust_refuses_to_wrap_and_changes_nothing() {
    let before = vec![rec(90, 3, 2), rec(100, 10, u32::MAX)];
    let mut t = tree_with(&before);
    let e = block_on(adjust(&mut t, 88, 20, Delta::Inc)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RefcountOverflow {
                zone: 7,
                pblk: 100,
                refcount: u32::MAX
            }
        ),
        "{e}"
    );
    assert_eq!(records(&mut t), before);
    // Taking a reference away is fine.
    block_on(adjust(&mut t, 100, 1, Delta::Dec)).unwrap();
    assert_eq!(block_on(lookup(&mut t, 100)).unwrap(), u32::MAX - 1);
    assert_eq!(block_on(lookup(&mut t, 101)).unwrap(), u32::MAX);
}

#[test]
fn lookup_and_queries() {
    let mut t = tree_with(&[rec(10, 5, 2), rec(20, 5, 3)]);
    assert_eq!(block_on(lookup(&mut t, 9)).unwrap(), 1);
    assert_eq!(block_on(lookup(&mut t, 10)).unwrap(), 2);
    assert_eq!(block_on(lookup(&mut t, 14)).unwrap(), 2);
    assert_eq!(block_on(lookup(&mut t, 15)).unwrap(), 1);
    assert!(block_on(is_shared(&mut t, 24)).unwrap());
    assert!(!block_on(is_shared(&mut t, 25)).unwrap());
    assert_eq!(
        block_on(shared_ranges(&mut t, 12, 10)).unwrap(),
        vec![(12, 3, 2), (20, 2, 3)]
    );
    assert!(block_on(shared_ranges(&mut t, 0, 0)).unwrap().is_empty());
}

#[test]
fn bad_input_and_corrupt_records_are_errors() {
    let mut t = new_tree::<Refcount>();
    let e = block_on(adjust(&mut t, u32::MAX - 2, 5, Delta::Inc)).unwrap_err();
    assert!(matches!(e, Error::OutOfRange(_)), "{e}");
    assert!(block_on(adjust(&mut t, 5, 0, Delta::Dec))
        .unwrap()
        .is_empty());
    // A stored count of 1 can only be damage.
    let mut t = tree_with(&[rec(10, 5, 1)]);
    let e = block_on(adjust(&mut t, 12, 1, Delta::Dec)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    // Overlapping records too.
    let mut t = tree_with(&[rec(10, 5, 2), rec(12, 5, 3)]);
    let e = block_on(adjust(&mut t, 0, 20, Delta::Inc)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}
