//! Committing mapping changes: intent records, group commit, FLUSH, and
//! copy-on-write checkpoints.
//!
//! Order of durability for a record: its data write completed before the
//! record was appended; a log write first flushes the device (so the data is
//! durable before any record naming it can be), then writes the log blocks,
//! then flushes again. A checkpoint writes dirty tree nodes (to blocks no
//! durable checkpoint references) and the bitmap copy of the other slot,
//! flushes, writes that slot's superblock, and flushes.

use super::{Busy, Trees, Zone};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use crate::format::header::COPIES;
use crate::format::superblock::RootPtr;
use crate::format::{owner, Superblock};
use crate::intent_log::{
    encode_block, ChunkExtent, LogBlockHeader, Record, LOG_HDR, MAX_BATCH_BLOCKS,
};
use crate::lmap::LmapRec;
use crate::refcount::{self, BlockRange, Delta};
use crate::rmap::RmapRec;
use futures::future::join_all;

/// Checkpoint when the log is this full (fraction in percent).
const CHECKPOINT_LOG_PCT: u64 = 50;
/// Keep this many metadata blocks free for one record's tree updates: an
/// lmap insert, an rmap remove and insert (each at worst a shadowed path
/// and a split per level), and a refcount adjust of one extent, which
/// rewrites the few records around it in one or two leaves of a small tree
/// (and nothing at all for a block that is not shared).
pub(crate) const META_RESERVE: u32 = 32;

impl<D: BlockDev> Zone<D> {
    /// Log and apply one mapping change. Returns once it is applied in memory
    /// (not necessarily durable: that is what `flush` is for).
    pub(crate) async fn commit(&self, rec: Record) -> Result<()> {
        if let Record::Map { vol, chunk, .. } | Record::Unmap { vol, chunk } = rec {
            self.catch_up(vol, chunk).await?;
        }
        self.reserve_meta(META_RESERVE).await?;
        let mut t = self.trees.lock().await;
        self.commit_locked(&mut t, rec).await?;
        drop(t);
        self.flush_if_full().await
    }

    /// Make sure `need` metadata blocks are free for the next record's tree
    /// updates, checkpointing first if pending frees would make room.
    pub(crate) async fn reserve_meta(&self, need: u32) -> Result<()> {
        if self.meta.free_blocks() < need {
            // Pending frees of the metadata area come back at a checkpoint.
            self.checkpoint().await?;
            if self.meta.free_blocks() < need {
                return Err(Error::NoSpace(format!(
                    "zone {} metadata area is full",
                    self.idx
                )));
            }
        }
        Ok(())
    }

    /// Log and apply `rec` under the trees lock `t` (so a caller can look
    /// the trees up and commit in one hold).
    pub(crate) async fn commit_locked(&self, t: &mut Trees<D>, rec: Record) -> Result<()> {
        self.check_ok()?;
        self.admit(&rec)?;
        let seq = {
            let mut st = self.st.borrow_mut();
            let s = st.next_seq;
            st.next_seq += 1;
            st.pending.push((s, rec.clone()));
            s
        };
        if let Err(e) = self.apply(t, seq, &rec, true).await {
            // The record is logged but only half applied: stop the zone;
            // reopening replays the log over the last checkpoint.
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Group commit: write the log once enough records are pending.
    pub(crate) async fn flush_if_full(&self) -> Result<()> {
        let n = self.st.borrow().pending.len();
        if n >= self.cfg.max_pending_records {
            self.flush().await?;
        }
        Ok(())
    }

    /// Apply a record to the trees and bitmaps. `live` is false during
    /// replay, when freed blocks need no busy period.
    pub(crate) async fn apply(
        &self,
        t: &mut Trees<D>,
        seq: u64,
        rec: &Record,
        live: bool,
    ) -> Result<()> {
        match *rec {
            Record::Map { vol, chunk, ext } => {
                // Fresh blocks only: data is never written over live blocks,
                // so a record naming referenced ones means a bitmap or log
                // gone wrong, and its refcounts would be too.
                self.check_bitmap(&ext, false, vol, chunk, "is mapped to")?;
                let n = ext.nblk as u32;
                let old = t.lmap.insert(LmapRec { vol, chunk, ext }).await?;
                if let Some(o) = old {
                    self.unlink(t, seq, vol, chunk, o.ext, live).await?;
                }
                t.rmap
                    .insert(RmapRec {
                        pblk: ext.pblk,
                        count: n,
                        owner: vol as u64,
                        offset: chunk,
                        flags: 0,
                    })
                    .await?;
                let mut st = self.st.borrow_mut();
                st.committed.set_range(ext.pblk, n);
                if !live {
                    st.alloc.set_range(ext.pblk, n);
                }
                st.counters.mapped_chunks += 1;
                st.counters.logical_bytes += ext.chunk_size();
                st.counters.data_blocks += n as u64;
                st.space.mapped(vol, chunk, &ext);
            }
            Record::Unmap { vol, chunk } => {
                if let Some(o) = t.lmap.remove(&(vol, chunk)).await? {
                    self.unlink(t, seq, vol, chunk, o.ext, live).await?;
                }
            }
            Record::DeleteVolume { vol } => loop {
                let recs = t.lmap.range(&(vol, 0), &(vol, u64::MAX), 512).await?;
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    t.lmap.remove(&(vol, r.chunk)).await?;
                    self.unlink(t, seq, vol, r.chunk, r.ext, live).await?;
                }
            },
            Record::Share { src, dst, from, to } => {
                self.apply_share(t, src, dst, from, to).await?;
            }
        }
        Ok(())
    }

    /// Drop the reverse mapping and one reference of an extent that
    /// (vol, chunk) no longer uses; free the blocks no one references any
    /// more (all of them unless the extent is shared).
    ///
    /// `data_blocks` counts physical blocks in use, so it drops only by
    /// what is freed; the chunk counts and the volume's own space drop by
    /// the whole extent (each sharer counts it).
    async fn unlink(
        &self,
        t: &mut Trees<D>,
        seq: u64,
        vol: u32,
        chunk: u64,
        e: ChunkExtent,
        live: bool,
    ) -> Result<()> {
        if t.rmap.remove(&(e.pblk, vol as u64, chunk)).await?.is_none() {
            return Err(Error::corrupt(
                Structure::BtreeNode,
                self.geo.abs(self.idx, e.pblk),
                format!(
                    "zone {}: rmap has no record for {} chunk {chunk} at block {}",
                    self.idx,
                    owner::name(vol as u64),
                    e.pblk
                ),
            ));
        }
        let n = e.nblk as u32;
        // A reference dropped from a free block would take its count below
        // zero: the maps and the bitmap disagree. Refuse before any count
        // moves.
        self.check_bitmap(&e, true, vol, chunk, "drops its reference to")?;
        // The common case, an extent no one else references, takes no
        // allocation: one lookup in the refcount tree, one in the rmap.
        let shared = refcount::any_shared(&mut t.refc, e.pblk, n).await?;
        let many;
        let one;
        let freed: &[BlockRange] = if shared {
            many = refcount::adjust(&mut t.refc, e.pblk, n, Delta::Dec).await?;
            &many
        } else {
            one = [(e.pblk, n)];
            &one
        };
        for &(pblk, len) in freed {
            // Count 0 means no owner is left; an rmap record still there
            // means the refcount tree lost a reference (freeing would hand
            // live data to the allocator).
            if let Some(r) = self.rmap_owner_in(t, pblk, len, shared).await? {
                return Err(Error::corrupt(
                    Structure::BtreeNode,
                    self.geo.abs(self.idx, pblk),
                    format!(
                        "zone {}: blocks {pblk}+{len} fell to no references, but {} chunk {} \
                         still maps block {}",
                        self.idx,
                        owner::name(r.owner),
                        r.offset,
                        r.pblk
                    ),
                ));
            }
        }
        let mut st = self.st.borrow_mut();
        // The counters come from the superblock: one that says fewer chunks
        // or blocks than the trees hold would wrap here. Fail loudly, before
        // any counter moves.
        let freed_blocks: u64 = freed.iter().map(|&(_, len)| len as u64).sum();
        let c = &st.counters;
        let (Some(chunks), Some(logical), Some(blocks)) = (
            c.mapped_chunks.checked_sub(1),
            c.logical_bytes.checked_sub(e.chunk_size()),
            c.data_blocks.checked_sub(freed_blocks),
        ) else {
            return Err(Error::corrupt(
                Structure::Superblock,
                self.geo.abs(self.idx, 0),
                format!(
                    "zone {}: counters ({} chunks, {} logical bytes, {} data blocks) are below \
                     what unmapping {} chunk {chunk} takes away",
                    self.idx,
                    c.mapped_chunks,
                    c.logical_bytes,
                    c.data_blocks,
                    owner::name(vol as u64)
                ),
            ));
        };
        st.counters.mapped_chunks = chunks;
        st.counters.logical_bytes = logical;
        st.counters.data_blocks = blocks;
        for &(pblk, len) in freed {
            st.committed.clear_range(pblk, len);
            if live {
                st.busy.push_back(Busy {
                    seq,
                    pblk,
                    nblk: len,
                });
            } else {
                st.release(pblk, len);
            }
        }
        st.space.unmapped(vol, chunk, &e);
        Ok(())
    }

    /// An rmap record over blocks `[pblk, pblk + len)`, if any. `exact`
    /// walks every overlapping record; otherwise one `lookup_le` finds the
    /// record starting last at or before the range's end, which is enough
    /// for an extent the refcount tree says no one shares: other owners
    /// of an extent map all of it (shares are whole extents, allocations
    /// disjoint), so theirs starts at the same block. The write path stays
    /// free of allocations.
    async fn rmap_owner_in(
        &self,
        t: &mut Trees<D>,
        pblk: u32,
        len: u32,
        exact: bool,
    ) -> Result<Option<RmapRec>> {
        let last = pblk + len - 1;
        if exact {
            let (lo, hi) = ((pblk, 0, 0), (last, u64::MAX, u64::MAX));
            return Ok(t
                .rmap
                .query_overlap(&lo, &hi, None, 1)
                .await?
                .first()
                .copied());
        }
        Ok(t.rmap
            .lookup_le(&(last, u64::MAX, u64::MAX))
            .await?
            .filter(|r| r.pblk as u64 + r.count as u64 > pblk as u64))
    }

    /// Every block of `e`, which (vol, chunk) names, is referenced in the
    /// bitmap (`referenced`: an extent already mapped) or none is (a fresh
    /// one); else corruption naming the first block that is not, `what`
    /// saying what (vol, chunk) was doing with it.
    pub(super) fn check_bitmap(
        &self,
        e: &ChunkExtent,
        referenced: bool,
        vol: u32,
        chunk: u64,
        what: &str,
    ) -> Result<()> {
        let st = self.st.borrow();
        let Some(b) = (e.pblk..e.pblk + e.nblk as u32).find(|&b| st.committed.get(b) != referenced)
        else {
            return Ok(());
        };
        let is = if referenced { "free" } else { "in use" };
        Err(Error::corrupt(
            Structure::Bitmap,
            self.geo.abs(self.idx, b),
            format!(
                "zone {}: {} chunk {chunk} {what} block {b}, which the bitmap says is {is}",
                self.idx,
                owner::name(vol as u64)
            ),
        ))
    }

    /// Make every change committed so far durable (NBD FLUSH).
    pub async fn flush(&self) -> Result<()> {
        self.check_ok()?;
        let _l = self.log_lock.lock().await;
        let r = self.flush_locked().await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    async fn flush_locked(&self) -> Result<()> {
        let (recs, target, first_lsn, epoch) = {
            let mut st = self.st.borrow_mut();
            if st.pending.is_empty() {
                return Ok(());
            }
            let recs = std::mem::take(&mut st.pending);
            (recs, st.next_seq - 1, st.next_lsn, st.log_epoch)
        };
        let blocks = self.pack(&recs, first_lsn, epoch);
        let nblocks = blocks.len() as u64 / BLOCK_SIZE as u64;
        let (start, cap) = {
            let st = self.st.borrow();
            (st.start_lsn, self.geo.log_blocks as u64)
        };
        if first_lsn + nblocks - start > cap {
            // No room in the ring: a checkpoint covers these records anyway.
            return self.checkpoint_locked().await;
        }
        // Writes of at most MAX_BATCH_BLOCKS, each between two flushes, so
        // replay can tell a torn last write from a hole (intent_log docs).
        let per = MAX_BATCH_BLOCKS as usize * BLOCK_SIZE;
        self.dev
            .flush()
            .await
            .map_err(|e| Error::io("flush", 0, e))?;
        for (i, part) in blocks.chunks(per).enumerate() {
            let lsn = first_lsn + (i * per / BLOCK_SIZE) as u64;
            self.write_log_blocks(part, lsn).await?;
            self.dev
                .flush()
                .await
                .map_err(|e| Error::io("flush", 0, e))?;
        }
        let used = {
            let mut st = self.st.borrow_mut();
            st.next_lsn = first_lsn + nblocks;
            st.stats.log_flushes += 1;
            st.stats.log_blocks_written += nblocks;
            Self::made_durable(&mut st, target);
            st.next_lsn - st.start_lsn
        };
        if used * 100 >= cap * CHECKPOINT_LOG_PCT {
            self.checkpoint_locked().await?;
        }
        Ok(())
    }

    /// Records up to `seq` are durable: their freed blocks become free.
    fn made_durable(st: &mut super::ZoneState, seq: u64) {
        st.durable_seq = st.durable_seq.max(seq);
        while let Some(b) = st.busy.front() {
            if b.seq > st.durable_seq {
                break;
            }
            let b = *b;
            st.busy.pop_front();
            st.release(b.pblk, b.nblk);
        }
    }

    /// Pack records into consecutive log blocks starting at `lsn` (written
    /// in batches of MAX_BATCH_BLOCKS from there).
    fn pack(&self, recs: &[(u64, Record)], lsn: u64, epoch: u64) -> AlignedBuf {
        let first_lsn = lsn;
        let mut blocks: Vec<u8> = Vec::new();
        let mut payload = Vec::with_capacity(BLOCK_SIZE);
        let mut first_seq = recs.first().map(|r| r.0).unwrap_or(0);
        let mut nrec = 0u16;
        let mut lsn = lsn;
        let mut emit = |payload: &mut Vec<u8>, first_seq: u64, nrec: u16, lsn: &mut u64| {
            let h = LogBlockHeader {
                zone: self.idx,
                epoch,
                lsn: *lsn,
                nrec,
                used: payload.len() as u16,
                first_seq,
                batch_lsn: *lsn - (*lsn - first_lsn) % MAX_BATCH_BLOCKS,
            };
            let o = blocks.len();
            blocks.resize(o + BLOCK_SIZE, 0);
            encode_block(&self.geo.uuid, &h, payload, &mut blocks[o..]);
            payload.clear();
            *lsn += 1;
        };
        for (seq, r) in recs {
            if payload.len() + r.encoded_len() > BLOCK_SIZE - LOG_HDR {
                emit(&mut payload, first_seq, nrec, &mut lsn);
                first_seq = *seq;
                nrec = 0;
            }
            r.encode(*seq, &mut payload);
            nrec += 1;
        }
        if nrec > 0 {
            emit(&mut payload, first_seq, nrec, &mut lsn);
        }
        AlignedBuf::from_slice(&blocks)
    }

    /// Write packed blocks into both copies of the ring, at once (each copy
    /// at most two writes: before and after the wrap point).
    async fn write_log_blocks(&self, blocks: &[u8], first_lsn: u64) -> Result<()> {
        let cap = self.geo.log_blocks as u64;
        let n = blocks.len() / BLOCK_SIZE;
        let mut writes = Vec::with_capacity(4);
        let mut done = 0usize;
        while done < n {
            let lsn = first_lsn + done as u64;
            let pos = (lsn % cap) as usize;
            let run = (n - done).min(cap as usize - pos);
            let part = &blocks[done * BLOCK_SIZE..(done + run) * BLOCK_SIZE];
            for copy in 0..COPIES {
                let off = self.byte_off(self.geo.log_rel(copy, pos as u32));
                writes.push(async move {
                    let (_b, r) = self.dev.write_at(AlignedBuf::from_slice(part), off).await;
                    r.map_err(|e| Error::io("log write", off, e))
                });
            }
            done += run;
        }
        join_all(writes).await.into_iter().collect()
    }

    /// Write a checkpoint now (also makes every committed change durable).
    pub async fn checkpoint(&self) -> Result<()> {
        self.check_ok()?;
        let _l = self.log_lock.lock().await;
        self.checkpoint_locked().await
    }

    pub(crate) async fn checkpoint_locked(&self) -> Result<()> {
        let mut t = self.trees.lock().await;
        let r = self.checkpoint_inner(&mut t).await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    async fn checkpoint_inner(&self, t: &mut Trees<D>) -> Result<()> {
        let g = &*self.geo;
        let bm_len = g.bm_blocks as usize * BLOCK_SIZE;
        let mut bm = AlignedBuf::zeroed(bm_len);
        let (applied, epoch, next_lsn, gen, counters) = {
            let mut st = self.st.borrow_mut();
            st.committed.to_bytes(&mut bm[..]);
            st.pending.clear();
            (
                st.next_seq - 1,
                st.log_epoch,
                st.next_lsn,
                st.sb_gen + 1,
                st.counters,
            )
        };
        let mc = self.meta.checkpoint_write().await?;
        let dbytes = g.data_bitmap_bytes();
        bm[dbytes..dbytes + mc.bitmap.len()].copy_from_slice(&mc.bitmap);
        let bitmap_crc = crc32c::crc32c(&bm);
        let slot = (gen % 2) as u32;
        self.write_copies(&bm, |c| g.bitmap_rel(slot, c), "bitmap write")
            .await?;
        self.dev
            .flush()
            .await
            .map_err(|e| Error::io("flush", 0, e))?;
        let root = |r: crate::btree::TreeRoot| RootPtr {
            blk: r.blk,
            height: r.height,
        };
        let sb = Superblock {
            zone: self.idx,
            uuid: g.uuid,
            generation: gen,
            log_epoch: epoch,
            log_start_lsn: next_lsn,
            applied_seq: applied,
            lmap_root: root(t.lmap.root()),
            rmap_root: root(t.rmap.root()),
            refc_root: root(t.refc.root()),
            bitmap_crc,
            counters,
        };
        // One copy at a time, each made durable: a crash tears at most one
        // copy, so two bad copies of a slot are damage, never a torn write
        // (recovery relies on it).
        let sb_bytes = sb.encode();
        for copy in 0..COPIES {
            let off = self.byte_off(g.sb_rel(slot, copy));
            let (_b, r) = self
                .dev
                .write_at(AlignedBuf::from_slice(&sb_bytes), off)
                .await;
            r.map_err(|e| Error::io("superblock write", off, e))?;
            self.dev
                .flush()
                .await
                .map_err(|e| Error::io("flush", 0, e))?;
        }
        self.meta.checkpoint_committed(mc.epoch);
        let mut st = self.st.borrow_mut();
        st.sb_gen = gen;
        st.start_lsn = next_lsn;
        st.stats.checkpoints += 1;
        Self::made_durable(&mut st, applied);
        Ok(())
    }

    /// Write `bytes` to each of the COPIES places `rel(copy)` of this zone, at once.
    pub(crate) async fn write_copies(
        &self,
        bytes: &[u8],
        rel: impl Fn(u32) -> u32,
        what: &'static str,
    ) -> Result<()> {
        let writes = (0..COPIES).map(|c| {
            let off = self.byte_off(rel(c));
            async move {
                let (_b, r) = self.dev.write_at(AlignedBuf::from_slice(bytes), off).await;
                r.map_err(|e| Error::io(what, off, e))
            }
        });
        join_all(writes).await.into_iter().collect()
    }
}
