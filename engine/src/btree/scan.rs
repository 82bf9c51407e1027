//! Read-only walks over a tree: key ranges, interval-overlap queries (paged
//! like GETFSMAP), and full scans.
//!
//! Nodes carry no sibling pointers (they would make copy-on-write cascade
//! sideways), so scans move between leaves through the root-to-leaf path.

use super::node::NodeBuf;
use super::ops::BtreeOps;
use super::target::{BufTarget, NodeRef};
use super::tree::{Btree, Step, L};
use crate::error::Result;

impl<O: BtreeOps, T: BufTarget> Btree<O, T> {
    /// Records with keys in `[lo, hi]`, ascending, at most `limit`.
    pub async fn range(&mut self, lo: &O::Key, hi: &O::Key, limit: usize) -> Result<Vec<O::Rec>> {
        let mut out = Vec::new();
        if lo > hi || limit == 0 {
            return Ok(out);
        }
        let mut path = self.descend(lo).await?;
        let mut pos = L::<O>::first_at_or_after(&path[path.len() - 1].node.borrow(), lo);
        loop {
            {
                let leaf = path[path.len() - 1].node.borrow();
                for i in pos..leaf.nrecs() {
                    if L::<O>::key_at(&leaf, i) > *hi {
                        return Ok(out);
                    }
                    out.push(L::<O>::rec(&leaf, i));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !self.next_leaf(&mut path, Some(hi)).await? {
                return Ok(out);
            }
            pos = 0;
        }
    }

    /// The record with the largest key `<= key`, as XFS's `XFS_LOOKUP_LE`
    /// (for non-overlapping extent trees: the record that may cover `key`).
    /// Parents hold each child's exact first key, so the leaf `key` descends
    /// to holds that record unless every key in the tree is greater.
    pub async fn lookup_le(&mut self, key: &O::Key) -> Result<Option<O::Rec>> {
        let path = self.descend(key).await?;
        let leaf = path[path.len() - 1].node.borrow();
        Ok(match L::<O>::search(&leaf, key) {
            Ok(i) => Some(L::<O>::rec(&leaf, i)),
            Err(0) => None,
            Err(i) => Some(L::<O>::rec(&leaf, i - 1)),
        })
    }

    /// Every record whose interval `[key, high_key]` intersects `[lo, hi]`,
    /// in key order, only keys after `after` (pass the last key of the
    /// previous page to continue), at most `limit`. Subtrees whose largest
    /// high key is below `lo` are not read.
    pub async fn query_overlap(
        &mut self,
        lo: &O::Key,
        hi: &O::Key,
        after: Option<O::Key>,
        limit: usize,
    ) -> Result<Vec<O::Rec>> {
        let mut out = Vec::new();
        if lo > hi || limit == 0 {
            return Ok(out);
        }
        let root = self.read_root().await?;
        // (node, next slot to visit) from the root down.
        let mut stack: Vec<(NodeRef, usize)> = vec![(root, 0)];
        while let Some(frame) = stack.last_mut() {
            let next = {
                let n = frame.0.borrow();
                let cnt = n.nrecs();
                if n.level() == 0 {
                    let start = after.map_or(0, |a| L::<O>::first_after(&n, &a));
                    for i in start..cnt {
                        if L::<O>::key_at(&n, i) > *hi {
                            return Ok(out);
                        }
                        let r = L::<O>::rec(&n, i);
                        if O::high_key(&r) >= *lo {
                            out.push(r);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                    None
                } else {
                    let mut pick = None;
                    while frame.1 < cnt {
                        let i = frame.1;
                        frame.1 += 1;
                        if L::<O>::key_at(&n, i) > *hi {
                            return Ok(out);
                        }
                        // Keys in child i are below child i+1's low key.
                        if i + 1 < cnt {
                            let next_low = L::<O>::key_at(&n, i + 1);
                            if after.is_some_and(|a| next_low <= a) {
                                continue;
                            }
                            if !O::OVERLAPPING && next_low <= *lo {
                                continue;
                            }
                        }
                        if O::OVERLAPPING && L::<O>::high(&n, i) < *lo {
                            continue;
                        }
                        pick = Some(i);
                        break;
                    }
                    pick
                }
            };
            match next {
                Some(i) => {
                    let parent = frame.0.clone();
                    let child = self.read_child(&parent, i).await?.1;
                    stack.push((child, 0));
                }
                None => {
                    stack.pop();
                }
            }
        }
        Ok(out)
    }

    /// Call `f` on every record in key order.
    pub async fn for_each(&mut self, mut f: impl FnMut(&O::Rec)) -> Result<()> {
        self.for_each_leaf(|leaf| {
            for i in 0..leaf.nrecs() {
                f(&L::<O>::rec(leaf, i));
            }
        })
        .await
    }

    /// Number of records (reads every leaf, decodes none).
    pub async fn count(&mut self) -> Result<u64> {
        let mut n = 0u64;
        self.for_each_leaf(|leaf| n += leaf.nrecs() as u64).await?;
        Ok(n)
    }

    async fn for_each_leaf(&mut self, mut f: impl FnMut(&NodeBuf)) -> Result<()> {
        let mut path = self.descend_with(|_| 0).await?;
        loop {
            f(&path[path.len() - 1].node.borrow());
            if !self.next_leaf(&mut path, None).await? {
                return Ok(());
            }
        }
    }

    /// Move `path` to the next leaf to the right; `false` at the end of the
    /// tree or when the next leaf starts after `hi`.
    pub(super) async fn next_leaf(&self, path: &mut [Step], hi: Option<&O::Key>) -> Result<bool> {
        let leaf = path.len() - 1;
        let mut l = leaf;
        loop {
            if l == 0 {
                return Ok(false);
            }
            l -= 1;
            let s = &mut path[l];
            if s.idx + 1 < s.node.borrow().nrecs() {
                s.idx += 1;
                break;
            }
        }
        if let Some(hi) = hi {
            if L::<O>::key_at(&path[l].node.borrow(), path[l].idx) > *hi {
                return Ok(false);
            }
        }
        for m in l + 1..=leaf {
            let child = L::<O>::ptr(&path[m - 1].node.borrow(), path[m - 1].idx);
            let node = self.read(child, (leaf - m) as u8).await?;
            path[m] = Step {
                blk: child,
                node,
                idx: 0,
            };
        }
        Ok(true)
    }
}
