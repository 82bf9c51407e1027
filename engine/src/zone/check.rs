//! Scrub: cross-check a zone's forward map, reverse map, refcount tree,
//! bitmap and counters, and (deep) every chunk's stored bytes. Reports every inconsistency
//! precisely instead of stopping at the first.

use super::{Trees, VolumeSpace, Zone};
use crate::bitmap::Bitmap;
use crate::dev::BlockDev;
use crate::error::Result;
use crate::format::{owner, ZoneCounters};
use crate::lmap::LmapRec;
use crate::refcount::RefcountRec;
use crate::rmap::RmapRec;
use crate::volume::VolInfo;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub zone: u32,
    /// "lmap", "rmap", "bitmap", "counters", "data", ...
    pub what: &'static str,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zone {} {}: {}", self.zone, self.what, self.detail)
    }
}

/// Every record of a zone's three trees, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRecords {
    pub lmap: Vec<LmapRec>,
    pub rmap: Vec<RmapRec>,
    pub refcount: Vec<RefcountRec>,
}

impl<D: BlockDev> Zone<D> {
    /// Every record of the trees as they stand (in memory): what scrub
    /// reads, and what tests compare across a reopen.
    pub async fn tree_records(&self) -> Result<TreeRecords> {
        let mut t = self.trees.lock().await;
        Self::records_of(&mut t).await
    }

    async fn records_of(t: &mut Trees<D>) -> Result<TreeRecords> {
        let mut out = TreeRecords {
            lmap: Vec::new(),
            rmap: Vec::new(),
            refcount: Vec::new(),
        };
        t.lmap.for_each(|r| out.lmap.push(*r)).await?;
        t.rmap.for_each(|r| out.rmap.push(*r)).await?;
        t.refc.for_each(|r| out.refcount.push(*r)).await?;
        Ok(out)
    }

    /// Check this zone against the volumes that exist (`vols` by id).
    pub async fn check(&self, vols: &HashMap<u32, VolInfo>, deep: bool) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let mut p = |what: &'static str, detail: String| {
            out.push(Problem {
                zone: self.idx,
                what,
                detail,
            })
        };
        if let Some(why) = self.is_failed() {
            p(
                "shutdown",
                format!(
                    "stopped after an error, serving reads only until the pool is reopened: {why}"
                ),
            );
        }
        let g = &*self.geo;
        let (
            TreeRecords {
                lmap: lrecs,
                rmap: rrecs,
                refcount: crecs,
            },
            space,
        ) = {
            let mut t = self.trees.lock().await;
            for s in t.lmap.check().await? {
                p("lmap", s);
            }
            for s in t.rmap.check().await? {
                p("rmap", s);
            }
            for s in t.refc.check().await? {
                p("refcount", s);
            }
            let recs = Self::records_of(&mut t).await?;
            // The per-volume table as it stands with these trees (same hold
            // of the trees lock: no commit in between).
            let st = self.st.borrow();
            let s = &st.space;
            (recs, (s.by_vol.clone(), s.covered, s.broken.clone()))
        };

        // Forward map -> reverse map, volumes and sizes.
        let rindex: HashMap<(u32, u64, u64), RmapRec> = rrecs
            .iter()
            .map(|r| ((r.pblk, r.owner, r.offset), *r))
            .collect();
        let mut counters = ZoneCounters::default();
        let (space_table, space_covered, space_broken) = space;
        let mut space_trees: HashMap<u32, VolumeSpace> = HashMap::new();
        // Physical blocks the forward map references (a shared one once).
        let mut referenced = Bitmap::new(g.zone_blocks);
        for l in &lrecs {
            let e = l.ext;
            counters.mapped_chunks += 1;
            counters.logical_bytes += e.chunk_size();
            let (a, b) = (e.pblk as u64, e.pblk as u64 + e.nblk as u64);
            for blk in a..b.min(g.zone_blocks as u64) {
                if !referenced.get(blk as u32) {
                    referenced.set(blk as u32);
                    counters.data_blocks += 1;
                }
            }
            if space_covered.covers((l.vol, l.chunk)) {
                space_trees.entry(l.vol).or_default().add(&VolumeSpace {
                    chunks: 1,
                    mapped_bytes: e.chunk_size(),
                    data_blocks: e.nblk as u64,
                });
            }
            match vols.get(&l.vol) {
                None => p(
                    "lmap",
                    format!("chunk {} of volume {} which does not exist", l.chunk, l.vol),
                ),
                Some(v) => {
                    if l.chunk >= v.nchunks() {
                        p(
                            "lmap",
                            format!("volume {} chunk {} is beyond its size", l.vol, l.chunk),
                        );
                    }
                    if e.chunk_size() != v.chunk_size() as u64 {
                        p(
                            "lmap",
                            format!(
                                "volume {} chunk {} records chunk size {}",
                                l.vol,
                                l.chunk,
                                e.chunk_size()
                            ),
                        );
                    }
                }
            }
            if e.pblk < g.data_start
                || e.pblk as u64 + e.nblk as u64 > g.zone_blocks as u64
                || e.nblk == 0
            {
                p(
                    "lmap",
                    format!(
                        "volume {} chunk {} extent {}+{} outside the data area",
                        l.vol, l.chunk, e.pblk, e.nblk
                    ),
                );
            }
            match rindex.get(&(e.pblk, l.vol as u64, l.chunk)) {
                None => p(
                    "rmap",
                    format!(
                        "no record for volume {} chunk {} at block {}",
                        l.vol, l.chunk, e.pblk
                    ),
                ),
                Some(r) if r.count != e.nblk as u32 => p(
                    "rmap",
                    format!(
                        "volume {} chunk {}: rmap says {} blocks, lmap {}",
                        l.vol, l.chunk, r.count, e.nblk
                    ),
                ),
                _ => {}
            }
        }

        // Reverse map -> owners, and the bitmap it implies.
        let lindex: HashMap<(u32, u64), &LmapRec> =
            lrecs.iter().map(|l| ((l.vol, l.chunk), l)).collect();
        let mut expect = Bitmap::new(g.zone_blocks);
        // Data owners per block (the rmap's count of references).
        let mut owners = vec![0u32; g.zone_blocks as usize];
        let specials = g.special_regions();
        let mut seen_special = [false; 3];
        for r in &rrecs {
            if r.pblk as u64 + r.count as u64 > g.zone_blocks as u64 || r.count == 0 {
                p("rmap", format!("record {r:?} outside the zone"));
                continue;
            }
            if r.owner >= owner::FIRST_SPECIAL {
                match specials.iter().position(|s| s.2 == r.owner) {
                    Some(i) if specials[i].0 == r.pblk && specials[i].1 == r.count => {
                        seen_special[i] = true
                    }
                    _ => p(
                        "rmap",
                        format!(
                            "unexpected special record {} at {}+{}",
                            owner::name(r.owner),
                            r.pblk,
                            r.count
                        ),
                    ),
                }
            } else {
                match lindex.get(&(r.owner as u32, r.offset)) {
                    Some(l) if l.ext.pblk == r.pblk && l.ext.nblk as u32 == r.count => {}
                    _ => p(
                        "rmap",
                        format!(
                            "block {}+{} claims {} chunk {} but lmap disagrees",
                            r.pblk,
                            r.count,
                            owner::name(r.owner),
                            r.offset
                        ),
                    ),
                }
            }
            let special = r.owner >= owner::FIRST_SPECIAL;
            for b in r.pblk..r.pblk + r.count {
                // Only data blocks may be shared (counted below).
                if expect.get(b) && (special || owners[b as usize] == 0) {
                    p("rmap", format!("block {b} has more than one owner"));
                }
                expect.set(b);
                if !special {
                    owners[b as usize] += 1;
                }
            }
        }
        for (i, s) in specials.iter().enumerate() {
            if !seen_special[i] {
                p("rmap", format!("missing {} record", owner::name(s.2)));
            }
        }

        self.check_refcounts(&crecs, &owners, &mut p);

        {
            let st = self.st.borrow();
            let mut diffs = Vec::new();
            for b in 0..g.zone_blocks {
                if st.committed.get(b) != expect.get(b) {
                    diffs.push(b);
                }
                if st.committed.get(b) && !st.alloc.get(b) {
                    p("bitmap", format!("block {b} is referenced but allocatable"));
                }
            }
            if !diffs.is_empty() {
                p(
                    "bitmap",
                    format!(
                        "{} blocks disagree with rmap (first: {:?})",
                        diffs.len(),
                        &diffs[..diffs.len().min(8)]
                    ),
                );
            }
            if st.counters != counters {
                p(
                    "counters",
                    format!(
                        "superblock counters {:?}, trees say {:?}",
                        st.counters, counters
                    ),
                );
            }
        }
        match space_broken {
            Some(why) => p("counters", format!("per-volume space table broken: {why}")),
            None => {
                let mut vols: Vec<u32> = space_table
                    .keys()
                    .chain(space_trees.keys())
                    .copied()
                    .collect();
                vols.sort_unstable();
                vols.dedup();
                for v in vols {
                    let (have, want) = (space_table.get(&v), space_trees.get(&v));
                    if have != want {
                        p(
                            "counters",
                            format!("volume {v}: per-volume space {have:?}, trees say {want:?}"),
                        );
                    }
                }
            }
        }

        if deep {
            for l in &lrecs {
                if let Some(v) = vols.get(&l.vol) {
                    if let Err(e) = self.load_chunk(&l.ext, v.chunk_size()).await {
                        p("data", format!("volume {} chunk {}: {e}", l.vol, l.chunk));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The refcount tree against the rmap: its records are sound (counts of
    /// 2 or more, in the zone, in order, maximal), and every block has as many
    /// data owners as its count (1 with no record, 0 only when free, which
    /// no record may cover).
    fn check_refcounts(
        &self,
        crecs: &[RefcountRec],
        owners: &[u32],
        p: &mut impl FnMut(&'static str, String),
    ) {
        let nblocks = owners.len() as u64;
        let mut stored = vec![0u32; owners.len()];
        let mut prev: Option<&RefcountRec> = None;
        for c in crecs {
            if c.refcount < 2 || c.len == 0 || c.end() > nblocks {
                p(
                    "refcount",
                    format!("record {c:?} is not a shared extent of this zone"),
                );
                continue;
            }
            if let Some(q) = prev {
                if q.end() > c.start as u64 {
                    p("refcount", format!("records {q:?} and {c:?} overlap"));
                } else if q.end() == c.start as u64 && q.refcount == c.refcount {
                    p("refcount", format!("records {q:?} and {c:?} should be one"));
                }
            }
            prev = Some(c);
            for b in c.start..c.start + c.len {
                stored[b as usize] = c.refcount;
            }
        }
        let mut bad = Vec::new();
        for (b, (&own, &cnt)) in owners.iter().zip(&stored).enumerate() {
            let want = match (own, cnt) {
                (0, 0) => continue,
                (_, 0) => 1,
                (_, c) => c,
            };
            if own != want {
                bad.push((b, own, cnt));
            }
        }
        if !bad.is_empty() {
            let (b, own, cnt) = bad[0];
            let said = match (own, cnt) {
                (0, _) => format!("a record (count {cnt}) on free block {b}"),
                (_, 0) => format!("block {b} has {own} owners in rmap and no record (count 1)"),
                _ => format!("block {b} has {own} owners in rmap, count {cnt}"),
            };
            p(
                "refcount",
                format!("{} blocks disagree with rmap (first: {said})", bad.len()),
            );
        }
    }
}
