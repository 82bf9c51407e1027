//! One zone's share of GETFSMAP: its fixed regions from the geometry, its
//! volume data from the reverse map, and free runs where the reverse map
//! covers nothing of the data area.
//!
//! The reverse map is read in batches in key (start block) order while one
//! sweep keeps the records that may still overlap a later one ("active").
//! A record is final, shared flag included, once a batch's last record
//! starts at or after its start: anything overlapping it later starts
//! at that record's block or after, so it overlaps that record too, and
//! the sweep has marked both. Work per call is bounded by the page size
//! (plus one batch); the trees lock is held for the call so the page is
//! one consistent picture.

use super::{Owner, Special, ZoneQuery, ZoneRec};
use crate::buf::BLOCK_SIZE;
use crate::dev::BlockDev;
use crate::error::Result;
use crate::format::owner::FIRST_SPECIAL;
use crate::format::Geometry;
use crate::rmap::RmapRec;
use crate::zone::Zone;

/// Reverse-map records read per batch.
const BATCH: usize = 512;

/// The zone's fixed regions: (first block, blocks, owner), zone-relative.
/// Superblocks and their mirrors come first, then the bitmap copies; the
/// reverse map holds the two as one record (`owner::ZONE_HEADER`).
pub fn fixed_regions(g: &Geometry) -> [(u32, u32, Special); 4] {
    let sb = g.bitmap_rel(0, 0);
    [
        (0, sb, Special::Superblock),
        (sb, g.log_start - sb, Special::Bitmap),
        (g.log_start, g.meta_start - g.log_start, Special::Log),
        (g.meta_start, g.data_start - g.meta_start, Special::Metadata),
    ]
}

/// The records of `q` in zone `z` (see the module doc).
pub async fn zone_fsmap<D: BlockDev>(z: &Zone<D>, q: &ZoneQuery) -> Result<Vec<ZoneRec>> {
    let g = z.geometry();
    let hi = q.hi.min(g.zone_blocks);
    let mut w = Walk { q, out: Vec::new() };
    for (first, n, s) in fixed_regions(g) {
        let (a, b) = (first.max(q.lo), (first + n).min(hi));
        if a < b {
            w.emit(ZoneRec {
                pblk: a,
                count: b - a,
                owner: Owner::Special(s),
                shared: false,
                compressed: false,
            });
        }
    }
    let lo = q.lo.max(g.data_start);
    if lo >= hi || w.full() {
        let mut out = w.out;
        out.truncate(q.limit);
        return Ok(out);
    }
    // Start at the block `after` names: records and gaps that start before
    // it came earlier. A record that starts before it and is clipped to
    // the window's start can still come after it (same block, larger
    // owner), so the scan reaches back to every record overlapping `c`.
    let c = q.after.map_or(lo, |a| a.0.max(lo));
    let mut t = z.lock_trees().await;
    // A gap reaching back before `c` started before `after`: not ours.
    let gap_before_c = c > lo && {
        let k = (c - 1, 0, 0);
        let hit = t
            .rmap
            .query_overlap(&k, &(c - 1, u64::MAX, u64::MAX), None, 1)
            .await?;
        !hit.iter().any(|r| r.owner < FIRST_SPECIAL)
    };
    let mut s = Sweep {
        lo: q.lo,
        reach: c,
        skip_gap_at: gap_before_c.then_some(c),
        active: Vec::new(),
    };
    let (klo, khi) = ((c, 0, 0), (hi - 1, u64::MAX, u64::MAX));
    // A small page reads a small batch: the work follows the page size.
    let batch_len = q.limit.saturating_add(1).clamp(2, BATCH);
    let mut last = None;
    loop {
        let batch = t.rmap.query_overlap(&klo, &khi, last, batch_len).await?;
        let done = batch.len() < batch_len;
        last = batch.last().map(|r| (r.pblk, r.owner, r.offset));
        for r in batch.iter().filter(|r| r.owner < FIRST_SPECIAL) {
            let id = r.owner as u32;
            let known = q.chunk_sizes.get(&id).copied();
            // The forward map says how a chunk is stored; read it here only
            // when the answer changes the key (a record clipped at `lo`, or
            // a volume the catalog no longer names), else once per record
            // returned, below.
            let ext = if r.pblk < q.lo || known.is_none() {
                t.lmap.get(&(id, r.offset)).await?.map(|l| l.ext)
            } else {
                None
            };
            let chunk_size = ext
                .map(|e| e.chunk_size())
                .or(known)
                .unwrap_or(BLOCK_SIZE as u64);
            let compressed = ext.is_some_and(|e| e.compressed());
            s.add(r, hi, chunk_size, compressed, &mut w);
        }
        match (done, last) {
            (false, Some((f, _, _))) => s.settle_before(f, &mut w),
            _ => {
                s.settle_before(u32::MAX, &mut w);
                s.gap_to(hi, &mut w);
                break;
            }
        }
        if w.full() {
            break;
        }
    }
    // Settling emits in start order per batch; owners at one block may
    // settle out of key order.
    let mut out = w.out;
    out.sort_by_key(|r| r.key());
    out.truncate(q.limit);
    for r in out.iter_mut() {
        if let Owner::Volume { id, offset } = r.owner {
            // Already looked up: compressed, or a volume the catalog lacks.
            let Some(&cs) = q.chunk_sizes.get(&id).filter(|_| !r.compressed) else {
                continue;
            };
            if let Some(l) = t.lmap.get(&(id, offset / cs)).await? {
                r.compressed = l.ext.compressed();
            }
        }
    }
    Ok(out)
}

/// What one call returns: records after `q.after`, until the page is full.
struct Walk<'a> {
    q: &'a ZoneQuery,
    out: Vec<ZoneRec>,
}

impl Walk<'_> {
    fn emit(&mut self, r: ZoneRec) {
        if self.q.after.is_none_or(|a| r.key() > a) {
            self.out.push(r);
        }
    }

    /// Full, and everything settled so far is in: later records sort after
    /// the ones kept (they start at a later block or at the last one).
    fn full(&self) -> bool {
        self.out.len() >= self.q.limit
    }
}

/// The sweep over volume records in start order.
struct Sweep {
    /// The window's first block: records starting before it are clipped.
    lo: u32,
    /// One past the last block covered so far (data area, from `c`).
    reach: u32,
    /// A free run starting here began before the first block we may report.
    skip_gap_at: Option<u32>,
    /// Records that may still overlap a later one, clipped, not yet emitted.
    active: Vec<ZoneRec>,
}

impl Sweep {
    /// Take record `r` (start order), clipped to the window `[lo, hi)`.
    fn add(&mut self, r: &RmapRec, hi: u32, chunk_size: u64, compressed: bool, w: &mut Walk) {
        let start = r.pblk.max(self.lo);
        let end = (r.pblk as u64 + r.count as u64).min(hi as u64) as u32;
        if start >= end {
            return;
        }
        self.gap_to(start, w);
        let skipped = (start - r.pblk) as u64 * BLOCK_SIZE as u64;
        let mut offset = r.offset.saturating_mul(chunk_size);
        // Compressed bytes have no per-block logical offset: a clipped
        // compressed record keeps its chunk's offset.
        if !compressed {
            offset = offset.saturating_add(skipped);
        }
        let mut rec = ZoneRec {
            pblk: start,
            count: end - start,
            owner: Owner::Volume {
                id: r.owner as u32,
                offset,
            },
            shared: false,
            compressed,
        };
        for a in self.active.iter_mut() {
            if a.pblk + a.count > start {
                a.shared = true;
                rec.shared = true;
            }
        }
        self.active.push(rec);
        self.reach = self.reach.max(end);
    }

    /// A free run from the covered end up to `to`, if there is one.
    fn gap_to(&mut self, to: u32, w: &mut Walk) {
        if to > self.reach {
            if self.skip_gap_at != Some(self.reach) {
                w.emit(ZoneRec {
                    pblk: self.reach,
                    count: to - self.reach,
                    owner: Owner::Special(Special::Free),
                    shared: false,
                    compressed: false,
                });
            }
            self.reach = to;
        }
        self.skip_gap_at = None;
    }

    /// Emit the active records that start before `f` and end by it... and
    /// those that start before `f` and reach past it: a record starting at
    /// `f` overlaps them, so their flag is already set.
    fn settle_before(&mut self, f: u32, w: &mut Walk) {
        let (done, keep): (Vec<ZoneRec>, Vec<ZoneRec>) =
            self.active.drain(..).partition(|a| a.pblk < f);
        for r in done {
            w.emit(r);
        }
        self.active = keep;
    }
}
