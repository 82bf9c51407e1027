//! Per-volume space in a zone: how many chunks of each volume are mapped
//! here, their logical bytes, and the data blocks their extents occupy
//! (`volume_get_volumes`' `mapped_bytes` and `allocated_bytes`).
//!
//! The zone-wide totals live in the superblock ([`crate::format::ZoneCounters`]);
//! a per-volume table does not fit there, and reading the whole forward map
//! at open would make opening cost grow with the data stored (it reads no
//! map node today). So the table is kept in memory only and built from the
//! forward map the first time it is asked for, in batches under the trees
//! lock with writes going on in between. Every mapping change that `apply`
//! makes to a key the scan has already passed updates the table too (the
//! live hook of XFS online repair); a key the scan has not reached yet is
//! counted when the scan gets there, as it is then. Once built, the table
//! follows every commit, unmap, volume delete and shrink until the zone is
//! closed. After a crash it is rebuilt from the recovered forward map, so it
//! is right by construction; scrub (`Zone::check`) compares it with the
//! trees, and the crash simulator with the data it wrote.
//!
//! A change that would take a figure below zero (or past `u64::MAX`) means
//! the table no longer matches the trees: the table is marked broken, every
//! later query fails naming the volume and the chunk, and scrub reports it.
//! It is rebuilt when the pool is reopened.

use super::Zone;
use crate::buf::BLOCK_SIZE;
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::intent_log::ChunkExtent;
use std::collections::HashMap;

/// Forward-map records read per batch while building the table (the trees
/// lock is released between batches).
const SCAN_BATCH: usize = 1024;

/// Space one volume takes in one zone (or, summed, in a pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeSpace {
    /// Chunks mapped (holes and never-written chunks are not).
    pub chunks: u64,
    /// Logical bytes of the mapped chunks: `chunks` x chunk size. A chunk
    /// written in part counts whole; an all-zero chunk is a hole and
    /// counts nothing.
    pub mapped_bytes: u64,
    /// 4 KiB data blocks the mapped chunks' extents occupy: each chunk's
    /// stored (compressed, or raw) length rounded up to whole blocks.
    pub data_blocks: u64,
}

impl VolumeSpace {
    /// Physical bytes the chunks occupy: `data_blocks` x 4096.
    pub fn allocated_bytes(&self) -> u64 {
        self.data_blocks * BLOCK_SIZE as u64
    }

    /// Add another zone's share.
    pub fn add(&mut self, o: &VolumeSpace) {
        self.chunks += o.chunks;
        self.mapped_bytes += o.mapped_bytes;
        self.data_blocks += o.data_blocks;
    }

    fn is_empty(&self) -> bool {
        *self == VolumeSpace::default()
    }
}

/// How far the table is built: keys (volume, chunk) below the bound, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Covered {
    Below((u32, u64)),
    All,
}

impl Covered {
    pub(crate) fn covers(&self, key: (u32, u64)) -> bool {
        match *self {
            Covered::Below(b) => key < b,
            Covered::All => true,
        }
    }
}

/// The per-volume table of one zone (part of `ZoneState`).
#[derive(Debug)]
pub(crate) struct SpaceTable {
    pub(crate) by_vol: HashMap<u32, VolumeSpace>,
    pub(crate) covered: Covered,
    /// Why the table stopped matching the trees, if it did.
    pub(crate) broken: Option<String>,
}

impl Default for SpaceTable {
    fn default() -> Self {
        SpaceTable {
            by_vol: HashMap::new(),
            covered: Covered::Below((0, 0)),
            broken: None,
        }
    }
}

impl SpaceTable {
    /// `(vol, chunk)` is now stored at `ext` (called by `apply`).
    pub(crate) fn mapped(&mut self, vol: u32, chunk: u64, ext: &ChunkExtent) {
        if self.covered.covers((vol, chunk)) {
            self.count(vol, chunk, ext, true);
        }
    }

    /// `(vol, chunk)` no longer uses `ext` (called by `apply` when a chunk
    /// is overwritten, unmapped or deleted).
    pub(crate) fn unmapped(&mut self, vol: u32, chunk: u64, ext: &ChunkExtent) {
        if self.covered.covers((vol, chunk)) {
            self.count(vol, chunk, ext, false);
        }
    }

    /// Add (or take away) one chunk; a figure that would wrap marks the
    /// table broken instead.
    fn count(&mut self, vol: u32, chunk: u64, ext: &ChunkExtent, add: bool) {
        if self.broken.is_some() {
            return;
        }
        let s = self.by_vol.get(&vol).copied().unwrap_or_default();
        let step = |x: u64, d: u64| {
            if add {
                x.checked_add(d)
            } else {
                x.checked_sub(d)
            }
        };
        let next = (|| {
            Some(VolumeSpace {
                chunks: step(s.chunks, 1)?,
                mapped_bytes: step(s.mapped_bytes, ext.chunk_size())?,
                data_blocks: step(s.data_blocks, ext.nblk as u64)?,
            })
        })();
        match next {
            Some(n) if n.is_empty() => {
                self.by_vol.remove(&vol);
            }
            Some(n) => {
                self.by_vol.insert(vol, n);
            }
            None => {
                self.broken = Some(format!(
                    "volume {vol} chunk {chunk} ({} blocks, {} logical bytes) {} a table \
                     that holds {s:?} for the volume",
                    ext.nblk,
                    ext.chunk_size(),
                    if add {
                        "overflows"
                    } else {
                        "is taken away from"
                    }
                ));
            }
        }
    }
}

impl<D: BlockDev> Zone<D> {
    /// Space each volume with chunks in this zone takes here, by volume id
    /// (volumes with nothing mapped are absent). Builds the table on first
    /// use (see the module docs). Served by a shut-down zone too.
    pub async fn volume_space(&self) -> Result<Vec<(u32, VolumeSpace)>> {
        self.build_space_table().await?;
        let st = self.st.borrow();
        if let Some(why) = &st.space.broken {
            return Err(Error::Accounting {
                zone: self.idx,
                detail: format!("{why}; reopening the pool rebuilds it"),
            });
        }
        let mut out: Vec<(u32, VolumeSpace)> =
            st.space.by_vol.iter().map(|(v, s)| (*v, *s)).collect();
        out.sort_unstable_by_key(|e| e.0);
        Ok(out)
    }

    /// Whether the per-volume table is complete (for tests and scrub).
    pub fn volume_space_built(&self) -> bool {
        self.st.borrow().space.covered == Covered::All
    }

    /// Read the forward map from where the table's coverage ends, a batch
    /// per hold of the trees lock, until it covers every key. One build at
    /// a time; an error leaves the coverage where it got to.
    async fn build_space_table(&self) -> Result<()> {
        let _one = self.space_build.lock().await;
        loop {
            let from = match self.st.borrow().space.covered {
                Covered::All => return Ok(()),
                Covered::Below(k) => k,
            };
            let mut t = self.trees.lock().await;
            let recs = t
                .lmap
                .range(&from, &(u32::MAX, u64::MAX), SCAN_BATCH)
                .await?;
            // Still under the trees lock: no commit can come in between the
            // read and the move of the bound.
            let mut st = self.st.borrow_mut();
            for r in &recs {
                st.space.count(r.vol, r.chunk, &r.ext, true);
            }
            st.space.covered = match recs.last() {
                Some(l) if recs.len() == SCAN_BATCH => match (l.vol, l.chunk) {
                    (u32::MAX, u64::MAX) => Covered::All,
                    (v, u64::MAX) => Covered::Below((v + 1, 0)),
                    (v, c) => Covered::Below((v, c + 1)),
                },
                _ => Covered::All,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(nblk: u16, shift: u8) -> ChunkExtent {
        ChunkExtent {
            pblk: 100,
            nblk,
            flags: ChunkExtent::flags_for(nblk < (1 << (shift - 12)), shift),
            stored_len: nblk as u32 * 4096,
            crc: 0,
        }
    }

    #[test]
    fn counts_only_what_the_scan_has_passed() {
        let mut t = SpaceTable::default();
        t.mapped(1, 0, &ext(2, 14));
        assert!(t.by_vol.is_empty(), "nothing covered before the scan");
        t.covered = Covered::Below((1, 5));
        t.mapped(1, 4, &ext(2, 14));
        t.mapped(1, 5, &ext(4, 14));
        assert_eq!(
            t.by_vol[&1],
            VolumeSpace {
                chunks: 1,
                mapped_bytes: 16384,
                data_blocks: 2
            }
        );
        t.unmapped(1, 4, &ext(2, 14));
        assert!(t.by_vol.is_empty(), "an empty volume leaves the table");
        assert!(t.broken.is_none());
    }

    #[test]
    fn a_wrap_breaks_the_table_loudly() {
        let mut t = SpaceTable {
            covered: Covered::All,
            ..Default::default()
        };
        t.mapped(3, 0, &ext(1, 12));
        t.unmapped(3, 0, &ext(1, 12));
        t.unmapped(3, 7, &ext(1, 12));
        let why = t
            .broken
            .clone()
            .expect("taking a chunk from nothing breaks it");
        assert!(why.contains("volume 3 chunk 7"), "{why}");
        // Nothing more is counted once broken.
        t.mapped(3, 0, &ext(1, 12));
        assert!(t.by_vol.is_empty());
    }
}
