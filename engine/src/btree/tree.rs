//! `Btree`: lookup, insert and remove on one tree, with copy-on-write.
//!
//! Every change follows the same three phases, so a failure (an I/O error,
//! or `Error::NoSpace` from the target) never leaves a half-changed tree:
//! 1. walk from the root and decide what changes (read-only);
//! 2. make every node that will change writable (shadow read-only nodes
//!    top-down: copy to a fresh block, repoint the parent or the root) and
//!    allocate every node the change needs: shadowing alone changes nothing
//!    the tree means;
//! 3. apply the change synchronously, with no `.await`, marking each node
//!    dirty right after changing it.
//!
//! Parents keep, per child, the child's first key and (interval trees) the
//! largest high key below it; both are kept exact on every change, which
//! `check` verifies and `query_overlap` relies on to prune.

use super::node::{Layout, NodeBuf, NodeKeys, MAX_LEVELS};
use super::ops::BtreeOps;
use super::target::{BufTarget, NodeRef};
use crate::error::{Error, Result, Structure};
use smallvec::SmallVec;
use std::marker::PhantomData;
use std::rc::Rc;

pub(super) type L<O> = Layout<O>;

/// Where a tree starts: what a zone persists in its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeRoot {
    pub blk: u64,
    /// Levels, root included: 1 for a tree that is a single leaf.
    pub height: u8,
}

pub struct Btree<O: BtreeOps, T: BufTarget> {
    pub(super) target: Rc<T>,
    pub(super) root: TreeRoot,
    _ops: PhantomData<O>,
}

/// One node on a root-to-leaf path and the slot the path continues through.
/// A root-to-leaf path. Inline up to 8 levels (a tree of 4 KiB nodes that
/// tall holds far more records than a zone has blocks): no heap allocation
/// per insert or remove.
pub(super) type Path = SmallVec<[Step; 8]>;

pub(super) struct Step {
    pub blk: u64,
    pub node: NodeRef,
    pub idx: usize,
}

/// A sibling prepared (read and made writable) for rebalancing.
struct Sibling {
    idx: usize,
    blk: u64,
    node: NodeRef,
}

/// What is being inserted into a node: a record into a leaf, or the entry
/// of a new right sibling into an interior node.
enum Item<O: BtreeOps> {
    Rec(O::Rec),
    Entry(NodeKeys<O::Key>, u64),
}

fn put<O: BtreeOps>(n: &mut NodeBuf, pos: usize, item: &Item<O>) {
    match item {
        Item::Rec(r) => L::<O>::insert_rec(n, pos, r),
        Item::Entry(k, b) => L::<O>::insert_entry(n, pos, k, *b),
    }
}

pub(super) fn corrupt(blk: u64, detail: String) -> Error {
    Error::corrupt(Structure::BtreeNode, blk, detail)
}

impl<O: BtreeOps, T: BufTarget> Btree<O, T> {
    /// A new empty tree (one empty leaf).
    pub async fn create(target: Rc<T>) -> Result<Self> {
        let () = L::<O>::VALID;
        let (blk, node) = target.alloc().await?;
        node.borrow_mut()
            .init(O::TREE_ID, 0, target.zone(), blk, target.generation());
        target.mark_dirty(blk);
        Ok(Self::open(target, TreeRoot { blk, height: 1 }))
    }

    /// A tree persisted earlier; nothing is read until it is used.
    pub fn open(target: Rc<T>, root: TreeRoot) -> Self {
        let () = L::<O>::VALID;
        Btree {
            target,
            root,
            _ops: PhantomData,
        }
    }

    /// The current root; it moves when the root is shadowed, split or
    /// collapsed.
    pub fn root(&self) -> TreeRoot {
        self.root
    }

    pub fn target(&self) -> &Rc<T> {
        &self.target
    }

    pub(super) fn root_level(&self) -> Result<u8> {
        let h = self.root.height;
        if h == 0 || h as usize > MAX_LEVELS {
            return Err(corrupt(
                self.root.blk,
                format!("{} tree height {h} out of range", O::NAME),
            ));
        }
        Ok(h - 1)
    }

    /// Read a node that must be at `level`.
    pub(super) async fn read(&self, blk: u64, level: u8) -> Result<NodeRef> {
        let node = self.target.read::<O>(blk).await?;
        {
            let n = node.borrow();
            if n.level() != level {
                return Err(corrupt(
                    blk,
                    format!("{} node at level {}, expected {level}", O::NAME, n.level()),
                ));
            }
            if level > 0 && n.nrecs() == 0 {
                return Err(corrupt(blk, format!("empty {} interior node", O::NAME)));
            }
        }
        Ok(node)
    }

    /// Read child `i` of interior node `parent` (at `level - 1`). A damaged
    /// child is reported with what it held, from its key in `parent` up to
    /// the next child's: the records (volumes and chunks, for the forward
    /// map) that are at risk.
    pub(super) async fn read_child(&self, parent: &NodeRef, i: usize) -> Result<(u64, NodeRef)> {
        let (blk, level, lo, hi) = {
            let p = parent.borrow();
            let hi = (i + 1 < p.nrecs()).then(|| L::<O>::key_at(&p, i + 1));
            (L::<O>::ptr(&p, i), p.level() - 1, L::<O>::key_at(&p, i), hi)
        };
        let node = self.read(blk, level).await;
        let node = node.map_err(|e| self.at_risk(e, Some(&lo), hi.as_ref()))?;
        Ok((blk, node))
    }

    /// Read the root; a damaged root puts the whole tree at risk.
    pub(super) async fn read_root(&self) -> Result<NodeRef> {
        let level = self.root_level()?;
        let node = self.read(self.root.blk, level).await;
        node.map_err(|e| self.at_risk(e, None, None))
    }

    /// Add to a corruption error what the damaged subtree held.
    fn at_risk(&self, e: Error, lo: Option<&O::Key>, hi: Option<&O::Key>) -> Error {
        match e {
            Error::Corrupt {
                structure,
                block,
                detail,
            } => Error::Corrupt {
                structure,
                block,
                detail: format!(
                    "{detail}; zone {}: {} at risk",
                    self.target.zone(),
                    O::describe_keys(lo, hi)
                ),
            },
            e => e,
        }
    }

    /// Root-to-leaf path choosing the child with `pick` at each interior node.
    pub(super) async fn descend_with(&self, pick: impl Fn(&NodeBuf) -> usize) -> Result<Path> {
        let mut level = self.root_level()?;
        let mut blk = self.root.blk;
        let mut path = Path::new();
        let mut next = None;
        loop {
            let node = match next.take() {
                Some(n) => n,
                None => self.read_root().await?,
            };
            if level == 0 {
                path.push(Step { blk, node, idx: 0 });
                return Ok(path);
            }
            let idx = {
                let n = node.borrow();
                pick(&n).min(n.nrecs() - 1)
            };
            let (child, child_node) = self.read_child(&node, idx).await?;
            path.push(Step { blk, node, idx });
            blk = child;
            level -= 1;
            next = Some(child_node);
        }
    }

    pub(super) async fn descend(&self, key: &O::Key) -> Result<Path> {
        self.descend_with(|n| L::<O>::child_index(n, key)).await
    }

    /// The block of the leaf where `key` is or would be (diagnostics).
    pub async fn leaf_of(&self, key: &O::Key) -> Result<u64> {
        let path = self.descend(key).await?;
        path.last()
            .map(|s| s.blk)
            .ok_or_else(|| corrupt(self.root.blk, format!("empty {} path", O::NAME)))
    }

    pub async fn get(&mut self, key: &O::Key) -> Result<Option<O::Rec>> {
        let mut node = self.read_root().await?;
        loop {
            let i = {
                let n = node.borrow();
                if n.level() == 0 {
                    return Ok(L::<O>::search(&n, key).ok().map(|i| L::<O>::rec(&n, i)));
                }
                L::<O>::child_index(&n, key)
            };
            node = self.read_child(&node, i).await?.1;
        }
    }

    /// Insert or replace the record with `rec`'s key; returns the replaced one.
    pub async fn insert(&mut self, rec: O::Rec) -> Result<Option<O::Rec>> {
        let key = O::key(&rec);
        let mut path = self.descend(&key).await?;
        let leaf = path.len() - 1;
        let found = L::<O>::search(&path[leaf].node.borrow(), &key);
        match found {
            Ok(i) => {
                let old = L::<O>::rec(&path[leaf].node.borrow(), i);
                if old == rec {
                    return Ok(Some(old));
                }
                let hold = self.leaf_keys_hold(&path, i, Some(&rec), Some(&old));
                self.make_writable(&mut path).await?;
                let s = &path[leaf];
                L::<O>::write_rec(&mut s.node.borrow_mut(), i, &rec);
                self.target.mark_dirty(s.blk);
                if !hold {
                    self.fix_keys(&path, leaf, KeyChange::Rescan);
                }
                Ok(Some(old))
            }
            Err(pos) => {
                self.insert_new(path, pos, rec).await?;
                Ok(None)
            }
        }
    }

    async fn insert_new(&mut self, mut path: Path, pos: usize, rec: O::Rec) -> Result<()> {
        // The leaf and every full ancestor directly above it split.
        let splits = path
            .iter()
            .rev()
            .take_while(|s| {
                let n = s.node.borrow();
                n.nrecs() >= L::<O>::max_slots(n.level())
            })
            .count();
        let grow = splits == path.len();
        let hold = splits == 0 && self.leaf_keys_hold(&path, pos, Some(&rec), None);
        let added_high = O::high_key(&rec);
        if grow && path.len() >= MAX_LEVELS {
            return Err(Error::NoSpace(format!(
                "{} tree is {MAX_LEVELS} levels tall",
                O::NAME
            )));
        }
        self.make_writable(&mut path).await?;
        let mut spare = Vec::with_capacity(splits + grow as usize);
        for _ in 0..splits + grow as usize {
            match self.target.alloc().await {
                Ok(x) => spare.push(x),
                Err(e) => {
                    for (b, _) in spare {
                        self.target.free(b);
                    }
                    return Err(e);
                }
            }
        }
        // Apply, bottom-up, without awaiting.
        let (zone, gen) = (self.target.zone(), self.target.generation());
        let mut item = Item::<O>::Rec(rec);
        let mut pos = pos;
        let mut l = path.len() - 1;
        loop {
            let s = &path[l];
            let full = {
                let n = s.node.borrow();
                n.nrecs() >= L::<O>::max_slots(n.level())
            };
            if !full {
                put(&mut s.node.borrow_mut(), pos, &item);
                self.target.mark_dirty(s.blk);
                if !hold {
                    // A leaf only gained a record; a split level is rescanned.
                    let change = if l == path.len() - 1 {
                        KeyChange::Added(&added_high)
                    } else {
                        KeyChange::Rescan
                    };
                    self.fix_keys(&path, l, change);
                }
                return Ok(());
            }
            let Some((rb, rn)) = spare.pop() else {
                return Err(corrupt(
                    s.blk,
                    format!("{} node filled up during insert", O::NAME),
                ));
            };
            let (level, lk, rk) = {
                let mut left = s.node.borrow_mut();
                let mut right = rn.borrow_mut();
                let level = left.level();
                right.init(O::TREE_ID, level, zone, rb, gen);
                // Split so both halves hold about half of cnt + 1.
                let total = left.nrecs() + 1;
                let lt = total / 2;
                if pos < lt {
                    L::<O>::move_tail(&mut left, lt - 1, &mut right);
                    put(&mut left, pos, &item);
                } else {
                    L::<O>::move_tail(&mut left, lt, &mut right);
                    put(&mut right, pos - lt, &item);
                }
                (level, L::<O>::node_keys(&left), L::<O>::node_keys(&right))
            };
            self.target.mark_dirty(s.blk);
            self.target.mark_dirty(rb);
            let (Some(lk), Some(rk)) = (lk, rk) else {
                return Err(corrupt(
                    s.blk,
                    format!("{} split left an empty node", O::NAME),
                ));
            };
            if l == 0 {
                let Some((nb, nn)) = spare.pop() else {
                    return Err(corrupt(
                        s.blk,
                        format!("{} root split without a spare", O::NAME),
                    ));
                };
                {
                    let mut r = nn.borrow_mut();
                    r.init(O::TREE_ID, level + 1, zone, nb, gen);
                    L::<O>::insert_entry(&mut r, 0, &lk, s.blk);
                    L::<O>::insert_entry(&mut r, 1, &rk, rb);
                }
                self.target.mark_dirty(nb);
                self.root = TreeRoot {
                    blk: nb,
                    height: self.root.height + 1,
                };
                return Ok(());
            }
            let p = &path[l - 1];
            L::<O>::set_keys(&mut p.node.borrow_mut(), p.idx, &lk);
            self.target.mark_dirty(p.blk);
            item = Item::Entry(rk, rb);
            pos = p.idx + 1;
            l -= 1;
        }
    }

    /// Remove the record with `key`; returns it. Underfull nodes borrow from
    /// or merge with a sibling; a root left with one child is collapsed.
    pub async fn remove(&mut self, key: &O::Key) -> Result<Option<O::Rec>> {
        let mut path = self.descend(key).await?;
        let leaf = path.len() - 1;
        let found = L::<O>::search(&path[leaf].node.borrow(), key);
        let Ok(pos) = found else {
            return Ok(None);
        };
        let old = L::<O>::rec(&path[leaf].node.borrow(), pos);
        let hold = self.leaf_keys_hold(&path, pos, None, Some(&old));
        self.make_writable(&mut path).await?;
        let mut sibs = self.prepare_rebalance(&mut path).await?;
        L::<O>::remove_slot(&mut path[leaf].node.borrow_mut(), pos);
        self.target.mark_dirty(path[leaf].blk);
        self.rebalance(&path, &mut sibs, hold, &O::high_key(&old));
        self.collapse_root(&path[0]);
        Ok(Some(old))
    }

    /// Read and make writable the siblings that rebalancing after removing
    /// one record from the path's leaf will touch.
    async fn prepare_rebalance(&self, path: &mut [Step]) -> Result<SmallVec<[Option<Sibling>; 8]>> {
        let mut sibs: SmallVec<[Option<Sibling>; 8]> = path.iter().map(|_| None).collect();
        let leaf = path.len() - 1;
        let mut cnt = path[leaf].node.borrow().nrecs() - 1;
        for l in (1..path.len()).rev() {
            let level = path[l].node.borrow().level();
            if cnt >= L::<O>::min_slots(level) {
                break;
            }
            let (si, sblk, pn) = {
                let p = path[l - 1].node.borrow();
                let (pn, pi) = (p.nrecs(), path[l - 1].idx);
                if pn < 2 {
                    break; // no sibling (only in a corrupt tree): stay underfull
                }
                let si = if pi + 1 < pn { pi + 1 } else { pi - 1 };
                (si, L::<O>::ptr(&p, si), pn)
            };
            if sblk == path[l].blk {
                return Err(corrupt(
                    path[l - 1].blk,
                    format!("{} node has two entries for block {sblk}", O::NAME),
                ));
            }
            let sib = self.read(sblk, level).await?;
            let (nb, sib) = self.shadow(sblk, &sib).await?;
            if nb != sblk {
                let p = &path[l - 1];
                L::<O>::set_ptr(&mut p.node.borrow_mut(), si, nb);
                self.target.mark_dirty(p.blk);
            }
            let merge = sib.borrow().nrecs() + cnt <= L::<O>::max_slots(level);
            sibs[l] = Some(Sibling {
                idx: si,
                blk: nb,
                node: sib,
            });
            if !merge {
                break;
            }
            cnt = pn - 1;
        }
        Ok(sibs)
    }

    /// Bottom-up after a removal: merge or even out underfull nodes with the
    /// siblings `prepare_rebalance` readied, then fix keys above.
    /// `leaf_hold`: the removal left the leaf's keys as its parent has them;
    /// `removed_high`: the high key of the record removed.
    fn rebalance(
        &self,
        path: &[Step],
        sibs: &mut [Option<Sibling>],
        leaf_hold: bool,
        removed_high: &O::Key,
    ) {
        for l in (1..path.len()).rev() {
            let (level, n) = {
                let nb = path[l].node.borrow();
                (nb.level(), nb.nrecs())
            };
            if n >= L::<O>::min_slots(level) {
                if l < path.len() - 1 {
                    return self.fix_keys(path, l, KeyChange::Rescan);
                }
                if leaf_hold {
                    return;
                }
                return self.fix_keys(path, l, KeyChange::Removed(removed_high));
            }
            let Some(sib) = sibs[l].take() else {
                return self.fix_keys(path, l, KeyChange::Rescan);
            };
            let p = &path[l - 1];
            let me = (path[l].blk, path[l].node.clone());
            let (li, (lb, ln), (rb, rn)) = if sib.idx > p.idx {
                (p.idx, me, (sib.blk, sib.node))
            } else {
                (sib.idx, (sib.blk, sib.node), me)
            };
            let merged = {
                let mut left = ln.borrow_mut();
                let mut right = rn.borrow_mut();
                let (a, b) = (left.nrecs(), right.nrecs());
                if a + b <= L::<O>::max_slots(level) {
                    L::<O>::move_tail(&mut right, 0, &mut left);
                    true
                } else {
                    let want = (a + b) / 2;
                    if a < want {
                        L::<O>::move_head(&mut right, want - a, &mut left);
                    } else if a > want {
                        L::<O>::move_last_to_front(&mut left, a - want, &mut right);
                    }
                    false
                }
            };
            self.target.mark_dirty(lb);
            {
                let mut pn = p.node.borrow_mut();
                if merged {
                    L::<O>::remove_slot(&mut pn, li + 1);
                } else if let Some(k) = L::<O>::node_keys(&rn.borrow()) {
                    L::<O>::set_keys(&mut pn, li + 1, &k);
                }
                if let Some(k) = L::<O>::node_keys(&ln.borrow()) {
                    L::<O>::set_keys(&mut pn, li, &k);
                }
            }
            self.target.mark_dirty(p.blk);
            if merged {
                self.target.free(rb);
            } else {
                self.target.mark_dirty(rb);
                return self.fix_keys(path, l - 1, KeyChange::Rescan);
            }
        }
    }

    /// A root left with one child hands the root over to that child. One
    /// removal takes at most one entry from the root, and the child then
    /// has at least two (or is a leaf), so once is enough. Uses only the
    /// pinned root: no I/O, so nothing can fail after the removal applied.
    fn collapse_root(&mut self, root: &Step) {
        let child = {
            let n = root.node.borrow();
            if self.root.height <= 1 || n.nrecs() != 1 {
                return;
            }
            L::<O>::ptr(&n, 0)
        };
        self.target.free(root.blk);
        self.root = TreeRoot {
            blk: child,
            height: self.root.height - 1,
        };
    }

    /// Copy a read-only node to a fresh block (freeing the old one); the
    /// caller repoints the parent. Writable nodes are returned as they are.
    async fn shadow(&self, blk: u64, node: &NodeRef) -> Result<(u64, NodeRef)> {
        if self.target.is_writable(blk) {
            return Ok((blk, node.clone()));
        }
        let (nb, nn) = self.target.alloc().await?;
        {
            let mut n = nn.borrow_mut();
            n.copy_from(&node.borrow());
            n.relocate(nb, self.target.generation());
        }
        self.target.mark_dirty(nb);
        self.target.free(blk);
        Ok((nb, nn))
    }

    /// Make every node of `path` writable, top-down, repointing parents.
    /// (Writability is closed upwards: a fresh node's ancestors were all
    /// shadowed when it was, so this shadows exactly the read-only prefix.)
    async fn make_writable(&mut self, path: &mut [Step]) -> Result<()> {
        for l in 0..path.len() {
            let (nb, nn) = self.shadow(path[l].blk, &path[l].node).await?;
            if nb == path[l].blk {
                continue;
            }
            path[l].blk = nb;
            path[l].node = nn;
            if l == 0 {
                self.root.blk = nb;
            } else {
                let p = &path[l - 1];
                L::<O>::set_ptr(&mut p.node.borrow_mut(), p.idx, nb);
                self.target.mark_dirty(p.blk);
            }
        }
        Ok(())
    }

    /// Whether putting `added` in at leaf slot `pos` and/or taking `removed`
    /// out of it leaves the leaf's keys as its parent holds them, so the
    /// O(records) recomputation in `fix_keys` can be skipped: the low key
    /// changes only at slot 0, and an interval tree's high key only when
    /// the record holding the maximum leaves or a higher one arrives.
    fn leaf_keys_hold(
        &self,
        path: &[Step],
        pos: usize,
        added: Option<&O::Rec>,
        removed: Option<&O::Rec>,
    ) -> bool {
        if pos == 0 || path.len() < 2 {
            return false;
        }
        if !O::OVERLAPPING {
            return true;
        }
        let p = &path[path.len() - 2];
        let high = L::<O>::high(&p.node.borrow(), p.idx);
        added.is_none_or(|r| O::high_key(r) <= high)
            && removed.is_none_or(|r| O::high_key(r) < high)
    }

    /// Propagate node `l`'s low/high keys into its ancestors until one
    /// already has them.
    ///
    /// `change` says what happened to node `l`, so an interval tree's high
    /// key can often be derived instead of rescanning every record:
    /// appending to the rmap as data is written otherwise rescans the
    /// rightmost node at every level on every insert (21 % of CPU for
    /// 128 KiB writes to a 4 KiB-chunk volume), and freeing the oldest
    /// blocks of a sequential overwrite rescans the leftmost leaf on every
    /// removal.
    fn fix_keys(&self, path: &[Step], mut l: usize, change: KeyChange<'_, O::Key>) {
        while l > 0 {
            let p = &path[l - 1];
            let keys = {
                let n = path[l].node.borrow();
                // Node `l`'s new high key from the one its parent holds,
                // where `change` allows that without a rescan.
                let derived = || {
                    let held = L::<O>::high(&p.node.borrow(), p.idx);
                    match change {
                        KeyChange::Rescan => None,
                        // The new high is the larger of the old and the added.
                        KeyChange::Added(h) => Some(held.max(*h)),
                        // Something else still ends at the old high.
                        KeyChange::Removed(h) => (*h < held).then_some(held),
                    }
                };
                match (O::OVERLAPPING && n.nrecs() > 0).then(derived).flatten() {
                    Some(high) => Some(NodeKeys {
                        low: L::<O>::key_at(&n, 0),
                        high,
                    }),
                    None => L::<O>::node_keys(&n),
                }
            };
            let Some(keys) = keys else {
                return;
            };
            {
                let mut pn = p.node.borrow_mut();
                let same_low = L::<O>::key_at(&pn, p.idx) == keys.low;
                if same_low && (!O::OVERLAPPING || L::<O>::high(&pn, p.idx) == keys.high) {
                    return;
                }
                L::<O>::set_keys(&mut pn, p.idx, &keys);
            }
            self.target.mark_dirty(p.blk);
            l -= 1;
        }
    }
}

/// What happened to a node whose keys [`Btree::fix_keys`] propagates.
#[derive(Clone, Copy)]
enum KeyChange<'a, K> {
    /// Anything (splits, merges, replaced records): recompute from the node.
    Rescan,
    /// Only records were added, the highest of them ending at this key.
    Added(&'a K),
    /// Only one record was removed; it ended at this key.
    Removed(&'a K),
}
