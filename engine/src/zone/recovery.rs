//! Formatting a zone, and opening one: newest valid superblock, its bitmap
//! copy and tree roots, then replay of the intent log written after it.
//!
//! Opening costs reads of the superblocks, one bitmap copy and the log — it
//! grows with log length, never with the amount of data stored. Every open
//! ends with a checkpoint that starts a new log epoch, so blocks written
//! before a crash past the end of the replayed log can never be mistaken for
//! new ones later.

use super::{State, Trees, Zone, ZoneConfig, ZoneStats};
use crate::bitmap::Bitmap;
use crate::btree::{Btree, DevTarget, TreeRoot};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use crate::format::{owner, Geometry, Superblock, ZoneCounters};
use crate::intent_log::{decode_block, BlockRead};
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
        st: State,
    ) -> Self {
        Zone {
            idx,
            geo,
            dev,
            meta,
            trees: Mutex::new(trees),
            log_lock: LocalMutex::default(),
            st: RefCell::new(st),
            chunks: KeyedRwLock::default(),
            ends: RefCell::default(),
            cfg,
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
    ) -> State {
        State {
            hwm: committed.end_of_set(geo.data_start, geo.zone_blocks),
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
            failed: None,
            stats: ZoneStats::default(),
        }
    }

    /// Lay out an empty zone and write its first checkpoint.
    pub async fn format(dev: Rc<D>, geo: Rc<Geometry>, idx: u32, cfg: ZoneConfig) -> Result<Self> {
        // Clear both superblock slots: stale ones from an old pool must not count.
        let off = geo.abs(idx, 0) * BLOCK_SIZE as u64;
        let (_b, r) = dev.write_at(AlignedBuf::zeroed(2 * BLOCK_SIZE), off).await;
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
        };
        for (pblk, count, own) in [
            (0, geo.log_start, owner::ZONE_HEADER),
            (geo.log_start, geo.log_blocks, owner::LOG),
            (geo.meta_start, geo.meta_blocks, owner::METADATA),
        ] {
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
        z.checkpoint().await?;
        Ok(z)
    }

    /// Open a zone, replaying its log.
    pub async fn open(dev: Rc<D>, geo: Rc<Geometry>, idx: u32, cfg: ZoneConfig) -> Result<Self> {
        let base = geo.abs(idx, 0);
        let (buf, r) = dev
            .read_at(AlignedBuf::zeroed(2 * BLOCK_SIZE), base * BLOCK_SIZE as u64)
            .await;
        r.map_err(|e| Error::io("superblock read", base * BLOCK_SIZE as u64, e))?;
        let mut best: Option<Superblock> = None;
        let mut first_err = None;
        for slot in 0..2u64 {
            let b = &buf[slot as usize * BLOCK_SIZE..(slot as usize + 1) * BLOCK_SIZE];
            match Superblock::decode(b, base + slot, idx, &geo.uuid) {
                Ok(Some(sb)) if sb.slot() as u64 == slot => {
                    if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                        best = Some(sb);
                    }
                }
                Ok(Some(_)) => {
                    first_err.get_or_insert(Error::corrupt(
                        Structure::Superblock,
                        base + slot,
                        "generation does not match its slot",
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some(sb) = best else {
            return Err(first_err.unwrap_or_else(|| {
                Error::corrupt(
                    Structure::Superblock,
                    base,
                    format!("zone {idx} has no valid superblock"),
                )
            }));
        };

        // The bitmap copy paired with this superblock.
        let bm_blk = geo.abs(idx, 2 + sb.slot() * geo.bm_blocks);
        let (bm, r) = dev
            .read_at(
                AlignedBuf::zeroed(geo.bm_blocks as usize * BLOCK_SIZE),
                bm_blk * BLOCK_SIZE as u64,
            )
            .await;
        r.map_err(|e| Error::io("bitmap read", bm_blk * BLOCK_SIZE as u64, e))?;
        if crc32c::crc32c(&bm) != sb.bitmap_crc {
            return Err(Error::corrupt(
                Structure::Bitmap,
                bm_blk,
                format!("zone {idx} bitmap copy {} checksum mismatch", sb.slot()),
            ));
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
        let trees = Trees {
            lmap: Btree::open(meta.clone(), root(sb.lmap_root)),
            rmap: Btree::open(meta.clone(), root(sb.rmap_root)),
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

    async fn replay(&self, sb: &Superblock) -> Result<()> {
        let g = &*self.geo;
        let cap = g.log_blocks as u64;
        let mut lsn = sb.log_start_lsn;
        let mut t = self.trees.lock().await;
        let mut replayed = 0u64;
        while lsn - sb.log_start_lsn < cap {
            let pos = (lsn % cap) as u32;
            let off = self.byte_off(g.log_start + pos);
            let (b, r) = self.dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), off).await;
            r.map_err(|e| Error::io("log read", off, e))?;
            let blk = off / BLOCK_SIZE as u64;
            let recs = match decode_block(&g.uuid, &b, blk, self.idx, sb.log_epoch, lsn)? {
                BlockRead::End => break,
                BlockRead::Valid(_, recs) => recs,
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
}
