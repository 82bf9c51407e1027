//! `DevTarget`: tree nodes in a region of a block device (a zone's metadata
//! area), with an allocation bitmap and copy-on-write checkpoint epochs.
//!
//! Crash safety comes from never overwriting a block the last durable
//! checkpoint references:
//! - blocks allocated in the current epoch are *fresh*: writable in place and
//!   written back whenever the cache needs room (no durable checkpoint can
//!   reference them);
//! - every other block is read-only; the tree shadows it (copy to a fresh
//!   block, repoint the parent, free the old one);
//! - freeing a fresh block frees it at once; freeing an older block makes it
//!   *pending*: it stays unallocatable until the checkpoint that stops
//!   referencing it is durable ([`DevTarget::checkpoint_committed`]).
//!
//! A checkpoint ([`DevTarget::checkpoint_write`]) snapshots, in one
//! synchronous step, every dirty node and the bitmap of live blocks, starts a
//! new epoch (so nothing it snapshots is writable any more), then writes the
//! snapshot. The caller flushes, persists the bitmap and the tree roots, and
//! flushes again before calling `checkpoint_committed`.

use super::cache::{Cache, Store};
use super::ops::BtreeOps;
use super::target::{BufTarget, CacheStats, NodeRef};
use crate::bitmap::Bitmap;
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use std::cell::RefCell;
use std::rc::Rc;

/// What a zone persists for a checkpoint of its metadata area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaCheckpoint {
    /// Pass to [`DevTarget::checkpoint_committed`] once durable.
    pub epoch: u64,
    /// Live blocks of the region, one bit per block (LSB first),
    /// `ceil(nblocks / 8)` bytes; hand it back to [`DevTarget::open`].
    pub bitmap: Vec<u8>,
}

struct DevStore<D> {
    dev: Rc<D>,
}

impl<D: BlockDev> Store for DevStore<D> {
    async fn read_block(&self, blk: u64) -> Result<AlignedBuf> {
        let off = blk * BLOCK_SIZE as u64;
        let (buf, r) = self.dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), off).await;
        r.map_err(|e| Error::io("b+tree node read", off, e))?;
        Ok(buf)
    }

    async fn write_blocks(&self, blk: u64, buf: AlignedBuf) -> Result<()> {
        let off = blk * BLOCK_SIZE as u64;
        let (_buf, r) = self.dev.write_at(buf, off).await;
        r.map_err(|e| Error::io("b+tree node write", off, e))
    }
}

/// Allocation state; bit indexes are region-relative.
struct Alloc {
    /// Not allocatable: live or pending.
    used: Bitmap,
    /// Referenced by a tree now: what the next checkpoint persists.
    live: Bitmap,
    /// Allocated in the current epoch: writable in place.
    fresh: Bitmap,
    /// (epoch the block was freed in, block): reusable once that epoch's
    /// checkpoint is committed.
    pending: Vec<(u64, u32)>,
    epoch: u64,
    cursor: u32,
}

pub struct DevTarget<D: BlockDev> {
    cache: Cache<DevStore<D>>,
    start: u64,
    nblocks: u32,
    zone: u32,
    st: RefCell<Alloc>,
}

impl<D: BlockDev> DevTarget<D> {
    /// An empty region `[start, start + nblocks)` (pool-absolute blocks) of
    /// `dev`, caching up to `budget` nodes. Writes nothing.
    pub fn format(dev: Rc<D>, start: u64, nblocks: u32, zone: u32, budget: usize) -> Result<Self> {
        Self::new(dev, start, nblocks, zone, budget, Bitmap::new(nblocks))
    }

    /// The region as of a checkpoint whose [`MetaCheckpoint::bitmap`] was
    /// persisted; blocks written after that checkpoint are free again.
    pub fn open(
        dev: Rc<D>,
        start: u64,
        nblocks: u32,
        zone: u32,
        budget: usize,
        persisted_bitmap: &[u8],
    ) -> Result<Self> {
        let need = (nblocks as usize).div_ceil(8);
        if persisted_bitmap.len() < need {
            return Err(Error::Invalid(format!(
                "metadata bitmap of {} bytes for {nblocks} blocks (need {need})",
                persisted_bitmap.len()
            )));
        }
        let live = Bitmap::from_bytes(persisted_bitmap, nblocks);
        Self::new(dev, start, nblocks, zone, budget, live)
    }

    fn new(
        dev: Rc<D>,
        start: u64,
        nblocks: u32,
        zone: u32,
        budget: usize,
        live: Bitmap,
    ) -> Result<Self> {
        let end = start.checked_add(nblocks as u64);
        if nblocks == 0 || end.is_none_or(|e| e * BLOCK_SIZE as u64 > dev.size()) {
            return Err(Error::Invalid(format!(
                "metadata region [{start}, +{nblocks}) does not fit a device of {} bytes",
                dev.size()
            )));
        }
        Ok(DevTarget {
            cache: Cache::new(DevStore { dev }, budget),
            start,
            nblocks,
            zone,
            st: RefCell::new(Alloc {
                used: live.clone(),
                live,
                fresh: Bitmap::new(nblocks),
                pending: Vec::new(),
                epoch: 1,
                cursor: 0,
            }),
        })
    }

    /// Region-relative index of `blk`, if it is in the region.
    fn rel(&self, blk: u64) -> Option<u32> {
        blk.checked_sub(self.start)
            .filter(|&r| r < self.nblocks as u64)
            .map(|r| r as u32)
    }

    /// Snapshot the dirty nodes and the live bitmap, start a new epoch, and
    /// write the snapshot. Durable once the caller flushes the device.
    pub async fn checkpoint_write(&self) -> Result<MetaCheckpoint> {
        // Earlier write-backs must be complete so the caller's flush covers
        // them and no block ever has two writes in flight.
        self.cache.drain().await;
        let (ck, batch) = {
            let mut st = self.st.borrow_mut();
            let mut bitmap = vec![0u8; (self.nblocks as usize).div_ceil(8)];
            st.live.to_bytes(&mut bitmap);
            let ck = MetaCheckpoint {
                epoch: st.epoch,
                bitmap,
            };
            st.epoch += 1;
            st.fresh = Bitmap::new(self.nblocks);
            (ck, self.cache.take_all_dirty())
        };
        self.cache.write(batch, true).await?;
        Ok(ck)
    }

    /// The checkpoint of `epoch` is durable: blocks freed up to that epoch
    /// are no longer referenced by any checkpoint that could be recovered.
    pub fn checkpoint_committed(&self, epoch: u64) {
        let mut st = self.st.borrow_mut();
        let mut released = Vec::new();
        st.pending.retain(|&(e, rel)| {
            let done = e <= epoch;
            if done {
                released.push(rel);
            }
            !done
        });
        for rel in released {
            st.used.clear(rel);
        }
    }

    /// Blocks referenced by trees now.
    pub fn nodes_in_use(&self) -> u32 {
        self.st.borrow().live.count_ones()
    }

    /// Blocks that can be allocated now (pending frees excluded).
    pub fn free_blocks(&self) -> u32 {
        self.nblocks - self.st.borrow().used.count_ones()
    }

    /// Blocks freed but waiting for a checkpoint to commit.
    pub fn pending_frees(&self) -> usize {
        self.st.borrow().pending.len()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn region(&self) -> (u64, u32) {
        (self.start, self.nblocks)
    }

    pub fn epoch(&self) -> u64 {
        self.st.borrow().epoch
    }

    pub fn device(&self) -> &Rc<D> {
        &self.cache.store().dev
    }
}

impl<D: BlockDev> BufTarget for DevTarget<D> {
    fn zone(&self) -> u32 {
        self.zone
    }

    fn generation(&self) -> u64 {
        self.st.borrow().epoch
    }

    async fn read<O: BtreeOps>(&self, blk: u64) -> Result<NodeRef> {
        let Some(rel) = self.rel(blk) else {
            return Err(Error::corrupt(
                Structure::BtreeNode,
                blk,
                format!(
                    "{} pointer outside the metadata area [{}, {})",
                    O::NAME,
                    self.start,
                    self.start + self.nblocks as u64
                ),
            ));
        };
        if !self.st.borrow().live.get(rel) {
            return Err(Error::corrupt(
                Structure::BtreeNode,
                blk,
                format!("{} pointer to a free block", O::NAME),
            ));
        }
        self.cache.get_node::<O>(blk, self.zone).await
    }

    async fn alloc(&self) -> Result<(u64, NodeRef)> {
        self.cache.make_room().await?;
        let mut st = self.st.borrow_mut();
        let n = self.nblocks;
        // Next fit from the cursor, skipping blocks whose old contents are
        // still being written (rare: only during a write-back).
        let mut from = st.cursor;
        let mut found = None;
        for _ in 0..=self.cache.inflight_count() {
            let Some(rel) = st.used.find_run(0, n, from, 1) else {
                break;
            };
            if !self.cache.is_inflight(self.start + rel as u64) {
                found = Some(rel);
                break;
            }
            from = (rel + 1) % n;
        }
        let Some(rel) = found else {
            return Err(Error::NoSpace(format!(
                "zone {} b+tree metadata area is full ({} blocks, {} pending free)",
                self.zone,
                self.nblocks,
                st.pending.len()
            )));
        };
        st.used.set(rel);
        st.live.set(rel);
        st.fresh.set(rel);
        st.cursor = (rel + 1) % n;
        let blk = self.start + rel as u64;
        Ok((blk, self.cache.insert_new(blk)))
    }

    fn mark_dirty(&self, blk: u64) {
        debug_assert!(self.is_writable(blk), "dirtying read-only node {blk}");
        self.cache.mark_dirty(blk);
    }

    fn free(&self, blk: u64) {
        let Some(rel) = self.rel(blk) else { return };
        self.cache.forget(blk);
        let mut st = self.st.borrow_mut();
        if !st.live.get(rel) {
            return; // not allocated: a corrupt tree's duplicate pointer
        }
        st.live.clear(rel);
        if st.fresh.get(rel) {
            st.fresh.clear(rel);
            st.used.clear(rel);
        } else {
            let e = st.epoch;
            st.pending.push((e, rel));
        }
    }

    fn is_writable(&self, blk: u64) -> bool {
        self.rel(blk).is_some_and(|r| self.st.borrow().fresh.get(r))
    }

    fn is_allocated(&self, blk: u64) -> bool {
        self.rel(blk).is_some_and(|r| self.st.borrow().live.get(r))
    }
}
