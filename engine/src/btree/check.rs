//! `check`: walk a whole tree and report every inconsistency found, for
//! scrub and for tests. Corrupt nodes are reported and their subtrees
//! skipped; only I/O errors abort the walk.

use super::node::NodeKeys;
use super::ops::BtreeOps;
use super::target::BufTarget;
use super::tree::{Btree, L};
use crate::error::{Error, Result};
use std::collections::HashSet;

/// A node still to visit and what its parent says about it.
struct Visit<K> {
    blk: u64,
    level: u8,
    /// The parent's block and its keys for this node (`None` for the root).
    parent: Option<(u64, NodeKeys<K>)>,
}

impl<O: BtreeOps, T: BufTarget> Btree<O, T> {
    /// Every problem found, one human-readable line each; empty when the
    /// tree is sound. Checks node checksums and headers (through the
    /// target's verified reads), levels, fill, key order within and across
    /// nodes, parents' low (and high) keys against their children, and that
    /// no block is reached twice.
    pub async fn check(&mut self) -> Result<Vec<String>> {
        let name = O::NAME;
        let mut problems = Vec::new();
        let top = match self.root_level() {
            Ok(t) => t,
            Err(e) => return Ok(vec![format!("{name}: {e}")]),
        };
        let mut stack = vec![Visit {
            blk: self.root.blk,
            level: top,
            parent: None,
        }];
        let mut seen = HashSet::new();
        let mut last_key: Option<(O::Key, u64)> = None;
        while let Some(v) = stack.pop() {
            let blk = v.blk;
            if !seen.insert(blk) {
                problems.push(format!("{name}: block {blk} is reached twice"));
                continue;
            }
            let node = match self.target.read::<O>(blk).await {
                Ok(n) => n,
                Err(e @ Error::Corrupt { .. }) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = node.borrow();
            let mut bad = |what: String| problems.push(format!("{name}: block {blk}: {what}"));
            if n.level() != v.level {
                bad(format!(
                    "level {} where {} was expected",
                    n.level(),
                    v.level
                ));
                continue;
            }
            if n.blkno() != blk || n.tree_id() != O::TREE_ID || n.zone() != self.target.zone() {
                bad(format!(
                    "header names block {} tree {} zone {}",
                    n.blkno(),
                    n.tree_id(),
                    n.zone()
                ));
            }
            let cnt = n.nrecs();
            let (level, is_root) = (v.level, v.parent.is_none());
            if cnt > L::<O>::max_slots(level) {
                bad(format!(
                    "{cnt} slots, more than {}",
                    L::<O>::max_slots(level)
                ));
                continue;
            }
            if is_root && level > 0 && cnt < 2 {
                bad(format!("interior root with {cnt} children"));
            }
            if !is_root && cnt < L::<O>::min_slots(level) {
                bad(format!(
                    "underfull: {cnt} slots, minimum {}",
                    L::<O>::min_slots(level)
                ));
            }
            for i in 1..cnt {
                let (a, b) = (L::<O>::key_at(&n, i - 1), L::<O>::key_at(&n, i));
                if a >= b {
                    bad(format!("keys out of order at slot {i}: {a:?} then {b:?}"));
                }
            }
            let Some(keys) = L::<O>::node_keys(&n) else {
                if !is_root {
                    bad("empty non-root node".into());
                }
                continue;
            };
            if let Some((pblk, pk)) = v.parent {
                if pk.low != keys.low {
                    bad(format!(
                        "parent {pblk} has low key {:?}, node starts at {:?}",
                        pk.low, keys.low
                    ));
                }
                if O::OVERLAPPING && pk.high != keys.high {
                    bad(format!(
                        "parent {pblk} has high key {:?}, node's largest is {:?}",
                        pk.high, keys.high
                    ));
                }
            }
            if level == 0 {
                if let Some((prev, pblk)) = last_key {
                    if keys.low <= prev {
                        bad(format!(
                            "first key {:?} not after {:?}, the last key of leaf {pblk}",
                            keys.low, prev
                        ));
                    }
                }
                last_key = Some((L::<O>::key_at(&n, cnt - 1), blk));
                if O::OVERLAPPING {
                    for i in 0..cnt {
                        let r = L::<O>::rec(&n, i);
                        if O::high_key(&r) < O::key(&r) {
                            bad(format!("record {i} ends before it starts: {r:?}"));
                        }
                    }
                }
            } else {
                // Pushed right to left so leaves are visited in key order.
                for i in (0..cnt).rev() {
                    let low = L::<O>::key_at(&n, i);
                    let high = if O::OVERLAPPING {
                        L::<O>::high(&n, i)
                    } else {
                        low
                    };
                    stack.push(Visit {
                        blk: L::<O>::ptr(&n, i),
                        level: level - 1,
                        parent: Some((blk, NodeKeys { low, high })),
                    });
                }
            }
        }
        Ok(problems)
    }

    /// Every block the tree occupies (root first, then depth-first), for
    /// scrub's accounting of the metadata area.
    pub async fn node_blocks(&mut self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.blk, self.root_level()?)];
        while let Some((blk, level)) = stack.pop() {
            out.push(blk);
            if level > 0 {
                let node = self.read(blk, level).await?;
                let n = node.borrow();
                stack.extend(
                    (0..n.nrecs())
                        .rev()
                        .map(|i| (L::<O>::ptr(&n, i), level - 1)),
                );
            }
        }
        Ok(out)
    }
}
