//! Building a whole tree from sorted records (leaves left to right, then
//! each level above), and freeing a whole tree.
//!
//! Bulk loading is how a tree rebuilt on the in-memory target, or a tree
//! scanned from another, is written without one split per record.

use super::node::MAX_LEVELS;
use super::ops::BtreeOps;
use super::target::BufTarget;
use super::tree::{Btree, TreeRoot, L};
use crate::error::{Error, Result};
use std::rc::Rc;

/// Sizes of the nodes `n` items are spread over: about `pct` percent full,
/// never fewer than `min` per node (unless there is only one node), never
/// more than `max`.
fn plan(n: usize, max: usize, min: usize, pct: u8) -> Vec<usize> {
    let per = (max * pct as usize / 100).clamp(1, max);
    let k = n.div_ceil(per).min((n / min.max(1)).max(1)).max(1);
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

impl<O: BtreeOps, T: BufTarget> Btree<O, T> {
    /// A new tree holding `recs`, which must be in strictly ascending key
    /// order (`Error::Invalid` otherwise). Nodes are filled to about
    /// `fill_pct` percent (1..=100), leaving room for later inserts.
    pub async fn bulk_load(
        target: Rc<T>,
        recs: impl IntoIterator<Item = O::Rec>,
        fill_pct: u8,
    ) -> Result<Self> {
        if !(1..=100).contains(&fill_pct) {
            return Err(Error::Invalid(format!(
                "bulk_load fill {fill_pct}% not in 1..=100"
            )));
        }
        let recs: Vec<O::Rec> = recs.into_iter().collect();
        if let Some(i) = recs.windows(2).position(|w| O::key(&w[0]) >= O::key(&w[1])) {
            return Err(Error::Invalid(format!(
                "bulk_load input for {} not strictly ascending at {}: {:?} then {:?}",
                O::NAME,
                i + 1,
                O::key(&recs[i]),
                O::key(&recs[i + 1])
            )));
        }
        if recs.is_empty() {
            return Self::create(target).await;
        }
        let mut made = Vec::new();
        match Self::build(&target, &recs, fill_pct, &mut made).await {
            Ok(root) => Ok(Self::open(target, root)),
            Err(e) => {
                for b in made {
                    target.free(b);
                }
                Err(e)
            }
        }
    }

    async fn build(
        target: &Rc<T>,
        recs: &[O::Rec],
        pct: u8,
        made: &mut Vec<u64>,
    ) -> Result<TreeRoot> {
        let (zone, gen) = (target.zone(), target.generation());
        let mut entries = Vec::new();
        let mut off = 0;
        for size in plan(recs.len(), L::<O>::LEAF_MAX, L::<O>::min_slots(0), pct) {
            let (blk, node) = target.alloc().await?;
            made.push(blk);
            let keys = {
                let mut n = node.borrow_mut();
                n.init(O::TREE_ID, 0, zone, blk, gen);
                for (i, r) in recs[off..off + size].iter().enumerate() {
                    L::<O>::insert_rec(&mut n, i, r);
                }
                L::<O>::node_keys(&n)
            };
            target.mark_dirty(blk);
            entries.extend(keys.map(|k| (k, blk)));
            off += size;
        }
        let mut level = 0u8;
        while entries.len() > 1 {
            level += 1;
            if level as usize >= MAX_LEVELS {
                return Err(Error::NoSpace(format!(
                    "{} tree would exceed {MAX_LEVELS} levels",
                    O::NAME
                )));
            }
            let mut next = Vec::new();
            let mut off = 0;
            for size in plan(
                entries.len(),
                L::<O>::NODE_MAX,
                L::<O>::min_slots(level),
                pct,
            ) {
                let (blk, node) = target.alloc().await?;
                made.push(blk);
                let keys = {
                    let mut n = node.borrow_mut();
                    n.init(O::TREE_ID, level, zone, blk, gen);
                    for (i, (k, child)) in entries[off..off + size].iter().enumerate() {
                        L::<O>::insert_entry(&mut n, i, k, *child);
                    }
                    L::<O>::node_keys(&n)
                };
                target.mark_dirty(blk);
                next.extend(keys.map(|k| (k, blk)));
                off += size;
            }
            entries = next;
        }
        Ok(TreeRoot {
            blk: entries[0].1,
            height: level + 1,
        })
    }

    /// Free every node of the tree.
    pub async fn destroy(self) -> Result<()> {
        let mut stack = vec![(self.root.blk, self.root_level()?)];
        while let Some((blk, level)) = stack.pop() {
            if level > 0 {
                let node = self.read(blk, level).await?;
                let n = node.borrow();
                stack.extend((0..n.nrecs()).map(|i| (L::<O>::ptr(&n, i), level - 1)));
            }
            self.target.free(blk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn plan_respects_min_and_max() {
        for max in [4usize, 5, 10, 19, 254] {
            let min = max / 2;
            for pct in [1u8, 50, 75, 100] {
                for n in 1..600 {
                    let p = plan(n, max, min, pct);
                    assert_eq!(p.iter().sum::<usize>(), n);
                    assert!(p.iter().all(|&s| s <= max), "{n} {max} {pct} {p:?}");
                    if p.len() > 1 {
                        assert!(p.iter().all(|&s| s >= min), "{n} {max} {pct} {p:?}");
                    }
                }
            }
        }
    }
}
