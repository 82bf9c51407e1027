//! GETFSMAP: who owns every block of a pool, in physical order, paged as
//! ioctl_getfsmap(2) pages.
//!
//! This module owns the answer. A zone's share ([`zone_walk`], run on the
//! zone's thread as [`crate::ZoneOp::Fsmap`]) comes from its fixed layout
//! (superblocks, bitmaps, log, metadata area), its reverse map (volume
//! data) and the gaps the reverse map leaves in the data area (free). The
//! pool's share ([`pool_fsmap`]) adds the pool header and catalog before
//! zone 0, walks the zones in order, maps volume ids to names through the
//! catalog, and honours the window (`start`, `end`), the page size and the
//! last record of the previous page (`after`).
//!
//! Records are clipped to the window and ordered by (physical, owner);
//! passing the last record of a page back as `after`, with the same window,
//! continues right after it, so the pages of a walk are exactly the records
//! of one big call. A block with several owners has one record per owner,
//! each flagged shared.

pub mod zone_walk;

#[cfg(test)]
mod shared_tests;

use crate::buf::BLOCK_SIZE;
use crate::error::{Error, Result};
use crate::format::{Catalog, Geometry};
use crate::zones::{ZoneOp, ZoneOut, Zones};
use std::collections::HashMap;
use std::sync::Arc;

/// Records a call returns when the caller does not say.
pub const DEFAULT_COUNT: usize = 1000;
/// The most records one call returns: bounds a zone's time under its
/// trees lock and the size of one reply.
pub const MAX_COUNT: usize = 10_000;

/// Owners of blocks that are not volume data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Special {
    PoolHeader,
    Catalog,
    Superblock,
    Bitmap,
    Log,
    Metadata,
    Free,
}

impl Special {
    pub const ALL: [Special; 7] = [
        Special::PoolHeader,
        Special::Catalog,
        Special::Superblock,
        Special::Bitmap,
        Special::Log,
        Special::Metadata,
        Special::Free,
    ];

    /// The name on the wire (`"pool-header"`, ..., `"free"`).
    pub fn name(self) -> &'static str {
        match self {
            Special::PoolHeader => "pool-header",
            Special::Catalog => "catalog",
            Special::Superblock => "superblock",
            Special::Bitmap => "bitmap",
            Special::Log => "log",
            Special::Metadata => "metadata",
            Special::Free => "free",
        }
    }

    pub fn parse(s: &str) -> Option<Special> {
        Special::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// An owner as a zone knows it: volumes by id. The derived order (volumes
/// by id and offset, then specials) is the order of records that start at
/// the same block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// `offset`: byte offset in the volume of the record's first block.
    Volume {
        id: u32,
        offset: u64,
    },
    Special(Special),
}

/// One record of a zone's map, zone-relative blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneRec {
    pub pblk: u32,
    pub count: u32,
    pub owner: Owner,
    /// Another volume record covers some block of this one (in the window).
    pub shared: bool,
    pub compressed: bool,
}

impl ZoneRec {
    fn key(&self) -> (u32, Owner) {
        (self.pblk, self.owner)
    }
}

/// What [`ZoneOp::Fsmap`] asks of one zone: records in `[lo, hi)`
/// (zone-relative blocks) with key after `after`, at most `limit`.
#[derive(Debug, Clone)]
pub struct ZoneQuery {
    pub lo: u32,
    pub hi: u32,
    pub after: Option<(u32, Owner)>,
    pub limit: usize,
    /// Chunk size of each volume by id, for a reverse-map record whose
    /// forward-map record is missing (scrub reports that; fsmap still
    /// answers).
    pub chunk_sizes: Arc<HashMap<u32, u64>>,
}

/// A record's owner as callers see it: volumes by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsmapOwner {
    Volume { name: String, offset: u64 },
    Special(Special),
}

/// One record of the pool's map, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmapRecord {
    pub physical: u64,
    pub length: u64,
    pub owner: FsmapOwner,
    pub shared: bool,
    pub compressed: bool,
}

impl FsmapRecord {
    /// Flags as the wire lists them: `shared`, `compressed`, `special`.
    pub fn flags(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.shared {
            f.push("shared");
        }
        if self.compressed {
            f.push("compressed");
        }
        if matches!(self.owner, FsmapOwner::Special(_)) {
            f.push("special");
        }
        f
    }
}

/// A `pool_get_fsmap` call: byte window `[start, end)` (`end` `None`: the
/// pool's end), page size, and the last record of the previous page.
#[derive(Debug, Clone, Default)]
pub struct FsmapQuery {
    pub start: u64,
    pub end: Option<u64>,
    pub count: Option<usize>,
    pub after: Option<FsmapRecord>,
}

/// The window in blocks, and the position after which to continue.
struct Plan {
    lo: u64,
    hi: u64,
    after: Option<(u64, Owner)>,
    limit: usize,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Check a query against the pool and resolve it into blocks and ids.
/// The window is widened to whole 4 KiB blocks.
fn plan(geo: &Geometry, names: &HashMap<String, u32>, q: &FsmapQuery) -> Result<Plan> {
    let bs = BLOCK_SIZE as u64;
    let size = geo.size_bytes();
    let end = q.end.unwrap_or(size);
    if end > size {
        return Err(invalid(format!(
            "end {end} is past the end of the pool ({size} bytes)"
        )));
    }
    if q.start >= end {
        return Err(invalid(format!("start {} is not below end {end}", q.start)));
    }
    let limit = q.count.unwrap_or(DEFAULT_COUNT);
    if limit == 0 || limit > MAX_COUNT {
        return Err(invalid(format!("count {limit} is not in 1..={MAX_COUNT}")));
    }
    let (lo, hi) = (q.start / bs, end.div_ceil(bs));
    let after = match &q.after {
        None => None,
        Some(a) => {
            if a.physical % bs != 0 || a.length == 0 || a.length % bs != 0 {
                return Err(invalid(
                    "after is not a record this call returned (physical and length must be whole 4 KiB blocks)",
                ));
            }
            let blk = a.physical / bs;
            if blk < lo || blk >= hi {
                return Err(invalid(format!(
                    "after starts at {}, outside the window {}..{end}: pass the same start and end as the call that returned it",
                    a.physical, q.start
                )));
            }
            let owner = match &a.owner {
                FsmapOwner::Special(s) => Owner::Special(*s),
                FsmapOwner::Volume { name, offset } => Owner::Volume {
                    id: volume_id(names, name).ok_or_else(|| {
                        invalid(format!(
                            "after names volume '{name}', which no longer exists: start the walk again"
                        ))
                    })?,
                    offset: *offset,
                },
            };
            Some((blk, owner))
        }
    };
    Ok(Plan {
        lo,
        hi,
        after,
        limit,
    })
}

/// A volume id the catalog does not name is shown as `#id` (and read back).
fn volume_id(names: &HashMap<String, u32>, name: &str) -> Option<u32> {
    names
        .get(name)
        .copied()
        .or_else(|| name.strip_prefix('#').and_then(|n| n.parse().ok()))
}

/// The pool's own blocks before zone 0: header, both catalog copies, the
/// backup header. (first block, blocks, owner), absolute.
fn pool_area(geo: &Geometry) -> [(u64, u64, Special); 3] {
    let cat_end = geo.catalog_start + 2 * geo.catalog_blocks as u64;
    [
        (0, geo.catalog_start, Special::PoolHeader),
        (
            geo.catalog_start,
            cat_end - geo.catalog_start,
            Special::Catalog,
        ),
        (cat_end, geo.zone0_start - cat_end, Special::PoolHeader),
    ]
}

/// Records of the pool in `q`'s window after `q.after`, in physical order,
/// at most `q.count` (see the module doc). Runs where the catalog lives;
/// zones are asked in order, each on its own thread, until the page is full.
pub async fn pool_fsmap<Z: Zones>(
    geo: &Geometry,
    catalog: &Catalog,
    zones: &Z,
    q: &FsmapQuery,
) -> Result<Vec<FsmapRecord>> {
    let names: HashMap<String, u32> = catalog
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.id))
        .collect();
    let p = plan(geo, &names, q)?;
    let bs = BLOCK_SIZE as u64;
    let mut out: Vec<(u64, ZoneRec)> = Vec::new();
    let after_key = |blk: u64, o: Owner| p.after.is_none_or(|a| (blk, o) > a);

    // The pool header area: fixed, clipped to the window.
    for (first, n, s) in pool_area(geo) {
        let (a, b) = (first.max(p.lo), (first + n).min(p.hi));
        if a < b && after_key(a, Owner::Special(s)) && out.len() < p.limit {
            let rec = ZoneRec {
                pblk: 0,
                count: (b - a) as u32,
                owner: Owner::Special(s),
                shared: false,
                compressed: false,
            };
            out.push((a, rec));
        }
    }

    // Zones in order, from the one holding the window's (or after's) start.
    let zb = geo.zone_blocks as u64;
    let from = p.after.map_or(p.lo, |a| a.0).max(p.lo);
    let first_zone = from.saturating_sub(geo.zone0_start) / zb;
    let chunk_sizes: Arc<HashMap<u32, u64>> = Arc::new(
        catalog
            .volumes
            .iter()
            .map(|v| (v.id, v.chunk_size() as u64))
            .collect(),
    );
    for z in first_zone..geo.nzones as u64 {
        if out.len() >= p.limit {
            break;
        }
        let base = geo.abs(z as u32, 0);
        if base >= p.hi {
            break;
        }
        let lo = p.lo.max(base) - base;
        let hi = p.hi.min(base + zb) - base;
        let after = p
            .after
            .filter(|a| a.0 >= base && a.0 < base + zb)
            .map(|(blk, o)| ((blk - base) as u32, o));
        let zq = ZoneQuery {
            lo: lo as u32,
            hi: hi as u32,
            after,
            limit: p.limit - out.len(),
            chunk_sizes: chunk_sizes.clone(),
        };
        match zones.on_zone(z as u32, ZoneOp::Fsmap(zq)).await? {
            ZoneOut::Fsmap(recs) => out.extend(recs.into_iter().map(|r| (base, r))),
            other => {
                return Err(Error::Invalid(format!(
                    "zone router returned {other:?} for fsmap"
                )))
            }
        }
    }

    let by_id: HashMap<u32, &str> = catalog
        .volumes
        .iter()
        .map(|v| (v.id, v.name.as_str()))
        .collect();
    Ok(out
        .into_iter()
        .map(|(base, r)| FsmapRecord {
            physical: (base + r.pblk as u64) * bs,
            length: r.count as u64 * bs,
            owner: match r.owner {
                Owner::Special(s) => FsmapOwner::Special(s),
                Owner::Volume { id, offset } => FsmapOwner::Volume {
                    name: by_id
                        .get(&id)
                        .map_or_else(|| format!("#{id}"), |n| n.to_string()),
                    offset,
                },
            },
            shared: r.shared,
            compressed: r.compressed,
        })
        .collect())
}

/// Every record of the window, following `after` page by page (pages of
/// `page` records): tools and tests; a caller across a socket does the same
/// with its own calls.
pub async fn pool_fsmap_all<Z: Zones>(
    geo: &Geometry,
    catalog: &Catalog,
    zones: &Z,
    start: u64,
    end: Option<u64>,
    page: usize,
) -> Result<Vec<FsmapRecord>> {
    let mut all: Vec<FsmapRecord> = Vec::new();
    loop {
        let q = FsmapQuery {
            start,
            end,
            count: Some(page),
            after: all.last().cloned(),
        };
        let got = pool_fsmap(geo, catalog, zones, &q).await?;
        let done = got.len() < page;
        all.extend(got);
        if done {
            return Ok(all);
        }
    }
}
