//! The refcount tree: how many references each *shared* physical block of a
//! zone has, as XFS's refcountbt. It owns one fact, the reference count of
//! data blocks that more than one chunk mapping points at (snapshots,
//! clones, reflinked ranges: issue 15), and nothing about who the owners
//! are (that is the reverse map's job, [`crate::rmap`]).
//!
//! Records are `(start, len, refcount)` extents over zone-relative blocks,
//! keyed by `start`, never overlapping, and maximal: two records that touch
//! always have different counts. **Only counts of 2 or more are stored.** A
//! block with no record has count 1 if the free-space bitmap says it is
//! allocated (and is free otherwise). So:
//! - a zone with no sharing has an empty tree, and the write path of a
//!   volume that was never cloned pays nothing beyond one empty-tree
//!   lookup;
//! - "must this block be copied before it is overwritten?" is one
//!   [`lookup`] (copy-on-write needs exactly that, not the owners);
//! - the tree stays as small as the sharing is, not as the zone.
//!
//! [`adjust`] is XFS's `xfs_refcount_adjust`: it is how a new sharer is
//! added (+1, clone/snapshot) and how one goes away (-1, overwrite, unmap or
//! delete of a shared chunk); a block that falls to 0 references is
//! returned to the caller to free. The operations here are written once
//! over the generic [`Btree`] for any `BtreeOps` with this record type
//! ([`Refcount`] is the on-disk one; tests also use bigger padded records
//! for deeper trees).
//!
//! Each `adjust` first reads and validates everything it will change and
//! computes the result; an overflow or a corrupt record is reported before
//! the tree changes. The tree updates that follow are each atomic, but a
//! failure between two of them (I/O, no node space) leaves the tree sound
//! and partly adjusted: the caller treats that like any failed metadata
//! update (the zone shuts down and log replay redoes the adjustment).

use crate::btree::{Btree, BtreeOps, BufTarget};
use crate::codec::*;
use crate::error::{Error, Result, Structure};

/// `refcount` references to blocks `start .. start + len` (zone-relative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefcountRec {
    pub start: u32,
    pub len: u32,
    /// Always >= 2 in a sound tree.
    pub refcount: u32,
}

impl RefcountRec {
    /// One past the last block (u64: cannot overflow).
    pub fn end(&self) -> u64 {
        self.start as u64 + self.len as u64
    }
}

/// The on-disk refcount tree of a zone.
pub struct Refcount;

impl BtreeOps for Refcount {
    type Key = u32;
    type Rec = RefcountRec;
    const TREE_ID: u8 = 3;
    const NAME: &'static str = "refcount";
    const KEY_SIZE: usize = 4;
    const REC_SIZE: usize = 12;
    const OVERLAPPING: bool = false;

    fn describe_keys(lo: Option<&u32>, hi: Option<&u32>) -> String {
        match (lo, hi) {
            (Some(lo), Some(hi)) => format!("reference counts of shared blocks {lo}..{hi}"),
            (Some(lo), None) => format!("reference counts of shared blocks from {lo}"),
            (None, _) => "the reference counts of every shared block in this zone".into(),
        }
    }

    fn key(r: &RefcountRec) -> u32 {
        r.start
    }
    fn encode_key(k: &u32, out: &mut [u8]) {
        put_u32(out, 0, *k);
    }
    fn decode_key(b: &[u8]) -> u32 {
        get_u32(b, 0)
    }
    fn encode_rec(r: &RefcountRec, out: &mut [u8]) {
        put_u32(out, 0, r.start);
        put_u32(out, 4, r.len);
        put_u32(out, 8, r.refcount);
    }
    fn decode_rec(b: &[u8]) -> RefcountRec {
        RefcountRec {
            start: get_u32(b, 0),
            len: get_u32(b, 4),
            refcount: get_u32(b, 8),
        }
    }
    fn rec_key(b: &[u8]) -> u32 {
        get_u32(b, 0)
    }
}

/// Which way [`adjust`] moves the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// One more reference (a clone or snapshot now shares the blocks).
    Inc,
    /// One reference fewer (a sharer overwrote, unmapped or was deleted).
    Dec,
}

/// A zone-relative block range `(start, len)`.
pub type BlockRange = (u32, u32);

/// `start + len` as one past the last block; every block must be below
/// `u32::MAX` so extents and their ends always fit.
fn range_end(start: u32, len: u32) -> Result<u64> {
    let end = start as u64 + len as u64;
    if end > u32::MAX as u64 {
        return Err(Error::OutOfRange(format!(
            "refcount range of {len} blocks at {start} runs past block {}",
            u32::MAX
        )));
    }
    Ok(end)
}

/// A record that breaks the tree's invariants (count below 2, empty,
/// past the last block, overlapping the one before), as a corruption of the
/// leaf that holds it.
async fn bad_record<O, T>(tree: &Btree<O, T>, r: &RefcountRec, why: &str) -> Error
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let blk = tree.leaf_of(&r.start).await.unwrap_or(tree.root().blk);
    Error::corrupt(
        Structure::BtreeNode,
        blk,
        format!(
            "zone {}: {} record {r:?} {why}",
            tree.target().zone(),
            O::NAME
        ),
    )
}

async fn validate<O, T>(tree: &Btree<O, T>, r: &RefcountRec, prev_end: Option<u64>) -> Result<()>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let why = if r.refcount < 2 {
        "has a count below 2 (such blocks have no record)"
    } else if r.len == 0 {
        "is empty"
    } else if r.end() > u32::MAX as u64 {
        "runs past the last block"
    } else if prev_end.is_some_and(|e| e > r.start as u64) {
        "overlaps the record before it"
    } else {
        return Ok(());
    };
    Err(bad_record(tree, r, why).await)
}

/// Every record intersecting blocks `[lo, hi)`, in order, validated.
async fn records_in<O, T>(tree: &mut Btree<O, T>, lo: u32, hi: u64) -> Result<Vec<RefcountRec>>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let mut out = Vec::new();
    if hi <= lo as u64 {
        return Ok(out);
    }
    if let Some(p) = tree.lookup_le(&lo).await? {
        if p.start < lo && p.end() > lo as u64 {
            validate(tree, &p, None).await?;
            out.push(p);
        }
    }
    let last = (hi - 1) as u32;
    for r in tree.range(&lo, &last, usize::MAX).await? {
        validate(tree, &r, out.last().map(RefcountRec::end)).await?;
        out.push(r);
    }
    Ok(out)
}

/// The reference count of block `pblk`: the record's count, or 1 when no
/// record covers it (allocated and not shared; or free, which the bitmap,
/// not this tree, tells).
pub async fn lookup<O, T>(tree: &mut Btree<O, T>, pblk: u32) -> Result<u32>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    match tree.lookup_le(&pblk).await? {
        Some(r) if r.end() > pblk as u64 => {
            validate(tree, &r, None).await?;
            Ok(r.refcount)
        }
        _ => Ok(1),
    }
}

/// Whether `pblk` has more than one reference (must be copied before it is
/// overwritten).
pub async fn is_shared<O, T>(tree: &mut Btree<O, T>, pblk: u32) -> Result<bool>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    Ok(lookup(tree, pblk).await? >= 2)
}

/// Whether any block of `start .. start + len` has a record (is shared).
/// One `lookup_le`, no allocation: records do not overlap, so the one
/// starting last at or before the range's end is the only candidate that
/// can reach into it from the left, and any record starting inside the
/// range starts at or after it.
pub async fn any_shared<O, T>(tree: &mut Btree<O, T>, start: u32, len: u32) -> Result<bool>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let end = range_end(start, len)?;
    if len == 0 {
        return Ok(false);
    }
    let last = (end - 1) as u32;
    Ok(tree
        .lookup_le(&last)
        .await?
        .is_some_and(|r| r.end() > start as u64))
}

/// The shared parts of blocks `start .. start + len`, in order, as
/// `(start, len, refcount)` clipped to the range. Blocks not listed have
/// count 1 (or are free).
pub async fn shared_ranges<O, T>(
    tree: &mut Btree<O, T>,
    start: u32,
    len: u32,
) -> Result<Vec<(u32, u32, u32)>>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let end = range_end(start, len)?;
    let recs = records_in(tree, start, end).await?;
    Ok(recs
        .iter()
        .map(|r| {
            let a = r.start.max(start);
            let b = r.end().min(end);
            (a, (b - a as u64) as u32, r.refcount)
        })
        .collect())
}

/// Add or drop one reference to every block of `start .. start + len`, as
/// XFS's `xfs_refcount_adjust`, and return the ranges whose count fell to 0
/// (only on [`Delta::Dec`]: blocks with no record had count 1), which the
/// caller must free.
///
/// Records are split at the range edges, covered records change count,
/// uncovered sub-ranges get a record (1 -> 2) or are freed (1 -> 0), records
/// that fall to 1 are deleted, and equal-count neighbours are merged, so the
/// tree stays maximal. Every block of the range must be allocated (count at
/// least 1); the tree cannot tell, the caller's bitmap can. A count that
/// would pass `u32::MAX` is [`Error::RefcountOverflow`], with nothing
/// changed.
pub async fn adjust<O, T>(
    tree: &mut Btree<O, T>,
    start: u32,
    len: u32,
    delta: Delta,
) -> Result<Vec<BlockRange>>
where
    O: BtreeOps<Key = u32, Rec = RefcountRec>,
    T: BufTarget,
{
    let end = range_end(start, len)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    // The range plus one block each side: the records a change can merge
    // with (one ending at `start`, one starting at `end`) come along.
    let old = records_in(
        tree,
        start.saturating_sub(1),
        (end + 1).min(u32::MAX as u64),
    )
    .await?;

    // Walk the window left to right as pieces of constant old count (gaps
    // inside the range count 1), cut at `start` and `end`, and give each
    // its new count.
    let mut plan = Plan::default();
    let mut cur = start as u64;
    let zone = tree.target().zone();
    for r in &old {
        plan.piece(cur, r.start as u64, 1, start, end, delta, zone)?;
        plan.piece(r.start as u64, r.end(), r.refcount, start, end, delta, zone)?;
        cur = cur.max(r.end());
    }
    plan.piece(cur, end, 1, start, end, delta, zone)?;

    // Apply the difference: drop old records whose start no new record
    // has, write new records that are not already there.
    for r in &old {
        if plan
            .new
            .binary_search_by_key(&r.start, |n| n.start)
            .is_err()
        {
            tree.remove(&r.start).await?;
        }
    }
    for n in &plan.new {
        let same = old.binary_search_by_key(&n.start, |r| r.start);
        if same.map_or(true, |i| old[i] != *n) {
            tree.insert(*n).await?;
        }
    }
    Ok(plan.freed)
}

/// The records `adjust` leaves in its window and the ranges it frees.
#[derive(Default)]
struct Plan {
    new: Vec<RefcountRec>,
    freed: Vec<BlockRange>,
}

impl Plan {
    /// Blocks `[a, b)` had count `c`: add the parts outside the adjusted
    /// range `[start, end)` unchanged and the part inside moved by `delta`.
    #[allow(clippy::too_many_arguments)]
    fn piece(
        &mut self,
        a: u64,
        b: u64,
        c: u32,
        start: u32,
        end: u64,
        delta: Delta,
        zone: u32,
    ) -> Result<()> {
        let s = start as u64;
        self.emit(a, b.min(s), c);
        let (ia, ib) = (a.max(s), b.min(end));
        if ia < ib {
            let n = match delta {
                Delta::Inc => c.checked_add(1).ok_or(Error::RefcountOverflow {
                    zone,
                    pblk: ia as u32,
                    refcount: c,
                })?,
                // Stored counts are >= 2 (validated) and gaps are 1.
                Delta::Dec => c - 1,
            };
            self.emit(ia, ib, n);
        }
        self.emit(a.max(end), b, c);
        Ok(())
    }

    /// Blocks `[a, b)` end with count `c`.
    fn emit(&mut self, a: u64, b: u64, c: u32) {
        if a >= b {
            return;
        }
        // Every block is below u32::MAX (range_end, validate).
        let (a32, len) = (a as u32, (b - a) as u32);
        match c {
            0 => match self.freed.last_mut() {
                Some(f) if f.0 as u64 + f.1 as u64 == a => f.1 += len,
                _ => self.freed.push((a32, len)),
            },
            1 => {}
            _ => match self.new.last_mut() {
                Some(p) if p.end() == a && p.refcount == c => p.len += len,
                _ => self.new.push(RefcountRec {
                    start: a32,
                    len,
                    refcount: c,
                }),
            },
        }
    }
}
