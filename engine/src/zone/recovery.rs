//! Formatting a zone, and opening one: newest valid superblock, its bitmap
//! copy and tree roots, then replay of the intent log written after it.
//!
//! Opening costs reads of the superblocks, one bitmap copy and the log — it
//! grows with log length, never with the amount of data stored. Every open
//! ends with a checkpoint that starts a new log epoch, so blocks written
//! before a crash past the end of the replayed log can never be mistaken for
//! new ones later.

use super::{Trees, Zone, ZoneConfig, ZoneState, ZoneStats};
use crate::bitmap::Bitmap;
use crate::btree::{Btree, DevTarget, TreeRoot};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use crate::format::header::COPIES;
use crate::format::{Geometry, Superblock, ZoneCounters};
use crate::intent_log::{decode_block, BlockRead, Record, MAX_BATCH_BLOCKS};
use crate::rmap::RmapRec;
use crate::sync::{KeyedRwLock, LocalMutex, Mutex};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

impl<D: BlockDev> Zone<D> {
    fn assemble(
        dev: Rc<D>,
        geo: Rc<Geometry>,
        idx: u32,
        cfg: ZoneConfig,
        meta: Rc<DevTarget<D>>,
        trees: Trees<D>,
        st: ZoneState,
    ) -> Self {
        Zone {
            idx,
            geo,
            dev,
            meta,
            trees: Mutex::new(trees),
            log_lock: LocalMutex::default(),
            space_build: LocalMutex::default(),
            st: RefCell::new(st),
            chunks: KeyedRwLock::default(),
            ends: RefCell::default(),
            cfg,
            on_shutdown: RefCell::default(),
        }
    }

    fn fresh_state(
        geo: &Geometry,
        committed: Bitmap,
        sb_gen: u64,
        epoch: u64,
        lsn: u64,
        seq: u64,
        counters: ZoneCounters,
    ) -> ZoneState {
        ZoneState {
            hwm: committed.end_of_set(geo.data_start, geo.zone_blocks),
            prealloc_end: committed.end_of_set(geo.data_start, geo.zone_blocks),
            alloc: committed.clone(),
            frees: 0,
            run_miss: None,
            committed,
            busy: VecDeque::new(),
            cursor: geo.data_start,
            next_seq: seq + 1,
            durable_seq: seq,
            log_epoch: epoch,
            next_lsn: lsn,
            start_lsn: lsn,
            pending: Vec::new(),
            sb_gen,
            counters,
            space: Default::default(),
            failed: None,
            stats: ZoneStats::default(),
            jobs: Vec::new(),
        }
    }

    /// Lay out an empty zone and write its first checkpoint.
    pub async fn format(dev: Rc<D>, geo: Rc<Geometry>, idx: u32, cfg: ZoneConfig) -> Result<Self> {
        // Clear every superblock copy: stale ones from an old pool must not count.
        let off = geo.abs(idx, 0) * BLOCK_SIZE as u64;
        let n = 2 * COPIES as usize;
        let (_b, r) = dev.write_at(AlignedBuf::zeroed(n * BLOCK_SIZE), off).await;
        r.map_err(|e| Error::io("format", off, e))?;
        let meta = Rc::new(DevTarget::format(
            dev.clone(),
            geo.abs(idx, geo.meta_start),
            geo.meta_blocks,
            idx,
            cfg.cache_nodes,
        )?);
        let mut trees = Trees {
            lmap: Btree::create(meta.clone()).await?,
            rmap: Btree::create(meta.clone()).await?,
            refc: Btree::create(meta.clone()).await?,
        };
        for (pblk, count, own) in geo.special_regions() {
            trees
                .rmap
                .insert(RmapRec {
                    pblk,
                    count,
                    owner: own,
                    offset: 0,
                    flags: 0,
                })
                .await?;
        }
        let mut committed = Bitmap::new(geo.zone_blocks);
        committed.set_range(0, geo.data_start);
        let st = Self::fresh_state(&geo, committed, 0, 1, 0, 0, ZoneCounters::default());
        let z = Self::assemble(dev, geo, idx, cfg, meta, trees, st);
        // Two checkpoints: both slots hold a valid superblock from the start,
        // so a slot with no valid copy is always damage (see read_superblock).
        z.checkpoint().await?;
        z.checkpoint().await?;
        Ok(z)
    }

    /// Open a zone, replaying its log.
    pub async fn open(dev: Rc<D>, geo: Rc<Geometry>, idx: u32, cfg: ZoneConfig) -> Result<Self> {
        let (sb, sb_bytes, bad_sb) = Self::read_superblock(&dev, &geo, idx).await?;
        let slot = sb.slot();
        let (bm, bad_bm) = Self::read_bitmap(&dev, &geo, idx, &sb).await?;
        // Rewrite a bad or stale copy of what was chosen, so that a second
        // bad block later still finds one good copy.
        for (rel, bytes) in bad_sb
            .into_iter()
            .map(|c| (geo.sb_rel(slot, c), &sb_bytes[..]))
            .chain(
                bad_bm
                    .into_iter()
                    .map(|c| (geo.bitmap_rel(slot, c), &bm[..])),
            )
        {
            let off = geo.abs(idx, rel) * BLOCK_SIZE as u64;
            let (_b, r) = dev.write_at(AlignedBuf::from_slice(bytes), off).await;
            r.map_err(|e| Error::io("metadata repair", off, e))?;
            dev.flush().await.map_err(|e| Error::io("flush", 0, e))?;
        }
        let dbytes = geo.data_bitmap_bytes();
        let committed = Bitmap::from_bytes(&bm[..dbytes], geo.zone_blocks);
        let meta_bm_len = (geo.meta_blocks as usize).div_ceil(8);
        let meta = Rc::new(DevTarget::open(
            dev.clone(),
            geo.abs(idx, geo.meta_start),
            geo.meta_blocks,
            idx,
            cfg.cache_nodes,
            &bm[dbytes..dbytes + meta_bm_len],
        )?);
        let root = |r: crate::format::superblock::RootPtr| TreeRoot {
            blk: r.blk,
            height: r.height,
        };
        // Zones checkpointed before the refcount tree existed have a zeroed
        // root slot (a real root has height >= 1): no block of theirs is
        // shared, so their tree is a new empty one, persisted by the
        // checkpoint that ends this open (docs/decisions.md).
        let refc = match sb.refc_root.height {
            0 => Btree::create(meta.clone()).await?,
            _ => Btree::open(meta.clone(), root(sb.refc_root)),
        };
        let trees = Trees {
            lmap: Btree::open(meta.clone(), root(sb.lmap_root)),
            rmap: Btree::open(meta.clone(), root(sb.rmap_root)),
            refc,
        };
        let st = Self::fresh_state(
            &geo,
            committed,
            sb.generation,
            sb.log_epoch,
            sb.log_start_lsn,
            sb.applied_seq,
            sb.counters,
        );
        let z = Self::assemble(dev, geo, idx, cfg, meta, trees, st);
        z.replay(&sb).await?;
        z.checkpoint().await?;
        Ok(z)
    }

    /// The newest valid superblock among every copy of both slots, its
    /// bytes, and the copies of its slot that do not hold it.
    async fn read_superblock(
        dev: &Rc<D>,
        geo: &Geometry,
        idx: u32,
    ) -> Result<(Superblock, AlignedBuf, Vec<u32>)> {
        let base = geo.abs(idx, 0);
        let n = 2 * COPIES as usize;
        let (buf, r) = dev
            .read_at(AlignedBuf::zeroed(n * BLOCK_SIZE), base * BLOCK_SIZE as u64)
            .await;
        r.map_err(|e| Error::io("superblock read", base * BLOCK_SIZE as u64, e))?;
        let block = |rel: u32| &buf[rel as usize * BLOCK_SIZE..(rel as usize + 1) * BLOCK_SIZE];
        let decode = |slot: u32, copy: u32| {
            let rel = geo.sb_rel(slot, copy);
            match Superblock::decode(block(rel), base + rel as u64, idx, &geo.uuid) {
                Ok(Some(sb)) if sb.slot() != slot => Err(Error::corrupt(
                    Structure::Superblock,
                    base + rel as u64,
                    "generation does not match its slot",
                )),
                r => r,
            }
        };
        let mut best: Option<(Superblock, u32)> = None;
        let mut first_err = None;
        for copy in 0..COPIES {
            for slot in 0..2u32 {
                match decode(slot, copy) {
                    Ok(Some(sb)) => {
                        if best.as_ref().is_none_or(|b| sb.generation > b.0.generation) {
                            best = Some((sb, geo.sb_rel(slot, copy)));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        let Some((sb, rel)) = best else {
            return Err(first_err.unwrap_or_else(|| {
                Error::corrupt(
                    Structure::Superblock,
                    base,
                    format!("zone {idx} has no valid superblock"),
                )
            }));
        };
        // The other slot holds the checkpoint before (or, after a crash
        // during a checkpoint, a newer one that was never completed): one of
        // its copies is always valid, since format writes both slots and the
        // copies are written one after another. None valid means both were
        // damaged, and one of them may have been newer than `sb`: falling
        // back could silently drop records.
        let other = 1 - sb.slot();
        if !(0..COPIES).any(|c| matches!(decode(other, c), Ok(Some(_)))) {
            return Err(Error::corrupt(
                Structure::Superblock,
                base + geo.sb_rel(other, 0) as u64,
                format!(
                    "zone {idx}: both copies of superblock slot {other} are damaged; \
                     slot {} (generation {}) may be older, and replaying from it could \
                     lose records",
                    sb.slot(),
                    sb.generation
                ),
            ));
        }
        let bytes = AlignedBuf::from_slice(block(rel));
        let stale = (0..COPIES)
            .filter(|&c| block(geo.sb_rel(sb.slot(), c)) != &bytes[..])
            .collect();
        Ok((sb, bytes, stale))
    }

    /// The bitmap paired with `sb` (its first good copy) and the copies that
    /// fail its checksum.
    async fn read_bitmap(
        dev: &Rc<D>,
        geo: &Geometry,
        idx: u32,
        sb: &Superblock,
    ) -> Result<(AlignedBuf, Vec<u32>)> {
        let len = geo.bm_blocks as usize * BLOCK_SIZE;
        let mut bad = Vec::new();
        for copy in 0..COPIES {
            let blk = geo.abs(idx, geo.bitmap_rel(sb.slot(), copy));
            let (bm, r) = dev
                .read_at(AlignedBuf::zeroed(len), blk * BLOCK_SIZE as u64)
                .await;
            r.map_err(|e| Error::io("bitmap read", blk * BLOCK_SIZE as u64, e))?;
            if crc32c::crc32c(&bm) == sb.bitmap_crc {
                return Ok((bm, bad));
            }
            bad.push(copy);
        }
        Err(Error::corrupt(
            Structure::Bitmap,
            geo.abs(idx, geo.bitmap_rel(sb.slot(), 0)),
            format!(
                "zone {idx}: every copy of bitmap {} fails its checksum",
                sb.slot()
            ),
        ))
    }

    async fn replay(&self, sb: &Superblock) -> Result<()> {
        let cap = self.geo.log_blocks as u64;
        let mut lsn = sb.log_start_lsn;
        let mut t = self.trees.lock().await;
        let mut replayed = 0u64;
        while lsn - sb.log_start_lsn < cap {
            let Some((blk, recs)) = self.read_log_block(sb.log_epoch, lsn).await? else {
                self.check_log_end(sb, lsn).await?;
                break;
            };
            for (seq, rec) in recs {
                let next = self.st.borrow().next_seq;
                if seq < next {
                    continue; // already in the checkpoint
                }
                if seq != next {
                    return Err(Error::corrupt(
                        Structure::LogRecord,
                        blk,
                        format!("zone {}: record {seq} follows {}", self.idx, next - 1),
                    ));
                }
                self.apply(&mut t, seq, &rec, false).await?;
                self.st.borrow_mut().next_seq = seq + 1;
                replayed += 1;
            }
            lsn += 1;
        }
        let mut st = self.st.borrow_mut();
        st.durable_seq = st.next_seq - 1;
        st.next_lsn = lsn;
        // A new epoch: blocks of the old one beyond `lsn` are now stale.
        st.log_epoch += 1;
        st.stats.replayed_records = replayed;
        Ok(())
    }

    /// The records of log block `lsn` from whichever copy is valid (with
    /// the block it was read from); `None` when neither is.
    async fn read_log_block(
        &self,
        epoch: u64,
        lsn: u64,
    ) -> Result<Option<(u64, Vec<(u64, Record)>)>> {
        let mut first_err = None;
        for copy in 0..COPIES {
            let (blk, read) = self.read_log_copy(copy, epoch, lsn).await?;
            match read {
                Ok(BlockRead::Valid(_, recs)) => return Ok(Some((blk, recs))),
                Ok(BlockRead::End) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Read copy `copy` of log block `lsn` of `epoch`: the block it lives at
    /// and what it holds (an I/O error is the outer error).
    async fn read_log_copy(
        &self,
        copy: u32,
        epoch: u64,
        lsn: u64,
    ) -> Result<(u64, Result<BlockRead>)> {
        let g = &*self.geo;
        let off = self.byte_off(g.log_rel(copy, (lsn % g.log_blocks as u64) as u32));
        let (b, r) = self.dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), off).await;
        r.map_err(|e| Error::io("log read", off, e))?;
        let blk = off / BLOCK_SIZE as u64;
        Ok((blk, decode_block(&g.uuid, &b, blk, self.idx, epoch, lsn)))
    }

    /// Neither copy of log block `lsn` is valid: that is the end of the log
    /// only if it was part of the last, torn write. A valid block within
    /// MAX_BATCH_BLOCKS after it that was written after `lsn` was durable
    /// proves records are missing: an error naming the block, never a
    /// silent end of replay.
    async fn check_log_end(&self, sb: &Superblock, lsn: u64) -> Result<()> {
        let g = &*self.geo;
        let cap = g.log_blocks as u64;
        for next in lsn + 1..=lsn + MAX_BATCH_BLOCKS {
            if next - sb.log_start_lsn >= cap {
                break;
            }
            for copy in 0..COPIES {
                let Ok(BlockRead::Valid(h, _)) =
                    self.read_log_copy(copy, sb.log_epoch, next).await?.1
                else {
                    continue;
                };
                if h.batch_lsn > lsn {
                    let missing = self.geo.abs(self.idx, g.log_rel(0, (lsn % cap) as u32));
                    return Err(Error::corrupt(
                        Structure::LogBlock,
                        missing,
                        format!(
                            "zone {}: both copies of log block LSN {lsn} are unreadable but \
                             the log write at LSN {} after it is durable: records {}..{} \
                             are lost; chunks of this zone's volumes may read stale data",
                            self.idx,
                            h.batch_lsn,
                            self.st.borrow().next_seq,
                            h.first_seq
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
